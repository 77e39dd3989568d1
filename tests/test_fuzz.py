"""Property-based: whatever a client sends, the real server (gunicorn, gevent, stand-in CLI)
answers 2xx or a 4xx in OpenAI's error shape, keeps answering, and leaves no run behind."""

from __future__ import annotations

import json

import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.proxy_server import wait_until

URL = "/v1/chat/completions"
KNOWN_PARAMS = [
    "stream", "stream_options", "n", "temperature", "top_p", "top_k", "max_tokens", "max_completion_tokens", "stop",
    "seed", "response_format", "reasoning_effort", "tools", "tool_choice", "parallel_tool_calls", "functions",
    "function_call", "logprobs", "top_logprobs", "audio", "modalities", "user", "metadata", "store", "logit_bias",
    "frequency_penalty", "presence_penalty", "prompt_cache_key", "service_tier", "prediction",
]
ROLES = ["system", "developer", "user", "assistant", "tool", "function"]

odd_text = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", "\x00", "\ud7ff\ue000", "FAKE", "@/etc/passwd", "/init", "\u202e", "x" * 70_000,
                     "data:image/png;base64,!!!", "data:image/png;base64,iVBORw0KGgo="]),
)
json_leaf = st.one_of(st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
                      st.floats(allow_nan=False), odd_text)
any_json = st.recursive(json_leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)), max_leaves=12)


def field(good: st.SearchStrategy) -> st.SearchStrategy:
    """Mostly a plausible value, sometimes any JSON at all."""
    return st.one_of(good, good, any_json)


part = st.fixed_dictionaries({"type": field(st.sampled_from(["text", "image_url", "input_audio", "refusal", "file"]))},
                             optional={"text": field(odd_text), "image_url": field(st.fixed_dictionaries(
                                 {"url": field(odd_text)})), "refusal": any_json})
tool_call = st.fixed_dictionaries({"id": field(odd_text), "type": field(st.just("function")),
                                   "function": field(st.fixed_dictionaries(
                                       {"name": field(odd_text), "arguments": field(odd_text)}))})
message = st.fixed_dictionaries(
    {"role": field(st.sampled_from(ROLES))},
    optional={"content": field(st.one_of(odd_text, st.lists(part, max_size=3))), "name": field(odd_text),
              "tool_calls": field(st.lists(tool_call, max_size=2)), "tool_call_id": field(odd_text),
              "function_call": any_json},
)
tool = st.fixed_dictionaries({"type": field(st.just("function")), "function": field(st.fixed_dictionaries(
    {"name": field(st.from_regex(r"[a-z_]{1,70}", fullmatch=True)), "parameters": any_json}))})
params = st.dictionaries(st.sampled_from(KNOWN_PARAMS), st.one_of(any_json, st.lists(tool, max_size=2)), max_size=4)
body = st.builds(
    lambda model, messages, extra: {"model": model, "messages": messages, **extra},
    field(st.sampled_from(["gemini-cli", "gemini-2.5-pro", "nope"])), field(st.lists(message, min_size=1, max_size=4)),
    params,
)
# Well-formed requests with odd text and edge values: these reach the CLI run and the reply paths.
plain_message = st.fixed_dictionaries({"role": st.sampled_from(["system", "developer", "user", "assistant"]),
                                       "content": odd_text})
good_tool = st.fixed_dictionaries({"type": st.just("function"), "function": st.fixed_dictionaries(
    {"name": st.from_regex(r"[a-zA-Z0-9_-]{1,64}", fullmatch=True), "description": odd_text,
     "parameters": st.just({"type": "object", "properties": {"q": {"type": "string"}}})})})
plausible_body = st.fixed_dictionaries(
    {"model": st.sampled_from(["gemini-cli", "gemini-2.5-pro"]), "messages": st.lists(plain_message, min_size=1,
                                                                                       max_size=4)},
    optional={"stream": st.booleans(), "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
              "temperature": st.floats(0, 2), "top_p": st.floats(0, 1), "max_tokens": st.integers(1, 2**31),
              "stop": st.one_of(odd_text, st.lists(odd_text, max_size=5)), "seed": st.integers(-2**63, 2**63),
              "reasoning_effort": st.sampled_from(["none", "minimal", "low", "medium", "high", "xhigh"]),
              "tools": st.lists(good_tool, max_size=3, unique_by=lambda t: t["function"]["name"]),
              "response_format": st.sampled_from([{"type": "text"}, {"type": "json_object"}]),
              "user": odd_text, "metadata": st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3)},
)
raw_body = st.one_of(
    st.binary(max_size=200),
    st.just(b"[" * 100_000 + b"]" * 100_000),
    st.just(b'{"model": "gemini-cli", "messages": ' + b'{"a":' * 50_000 + b"1" + b"}" * 50_000 + b"}"),
    st.just(b'{"model": "gemini-cli", "messages": [{"role": "user", "content": "\xff\xfe"}]}'),
    st.just(b'{"model": "gemini-cli", "messages": [{"role": "user", "content": "\\ud800"}]}'),
)
content_type = st.sampled_from([None, "application/json", "text/plain", "application/x-www-form-urlencoded",
                                "multipart/form-data; boundary=x", "application/json; charset=latin-1"])


def check(server, data: bytes, ctype: str | None) -> None:
    headers = {"Content-Type": ctype} if ctype else {}
    response = requests.post(server.base_url + URL, data=data, headers=headers, timeout=60)
    assert response.status_code < 500, (response.status_code, response.text[:500])
    if response.status_code >= 400:
        error = response.json()["error"]
        assert isinstance(error["message"], str) and error["message"]
        assert {"type", "param", "code"} <= set(error)
    else:
        assert response.content  # a whole completion or a whole stream
    # Nothing is left running or on disk, and the server still answers.
    assert wait_until(lambda: not list(server.run_dir.glob("gemini-proxy-*")), 10), "a run dir was left"
    assert requests.get(server.base_url + "/healthz", timeout=10).status_code == 200


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                        HealthCheck.function_scoped_fixture])


@FUZZ
@given(body=body, ctype=content_type)
def test_generated_requests_never_get_a_5xx(server, body, ctype):
    check(server, json.dumps(body).encode(), ctype)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(body=plausible_body)
def test_plausible_requests_are_answered(server, body):
    check(server, json.dumps(body).encode(), "application/json")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(data=raw_body, ctype=content_type)
def test_raw_bodies_never_get_a_5xx(server, data, ctype):
    check(server, data, ctype)


def test_no_cli_process_is_left_after_the_fuzzing(server):
    """The worker's children: none once every request has ended (the stand-in's runs included)."""
    import os

    workers = [int(p) for p in os.listdir("/proc") if p.isdigit() and _ppid(int(p)) == server.proc.pid]
    assert workers
    assert wait_until(lambda: not [p for p in os.listdir("/proc") if p.isdigit() and _ppid(int(p)) in workers], 10)


def _ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().split(") ", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None
