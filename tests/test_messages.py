"""The Anthropic Messages API (/v1/messages, /v1/messages/count_tokens), end to end through the
official `anthropic` SDK: SDK -> gunicorn/gevent -> proxy -> real `gemini` -> mock API; plus the
parser and the stream encoder on their own."""

from __future__ import annotations

import base64
import json

import anthropic
import httpx2
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.answer import Delta, Finished, Thinking, ToolCalled
from proxy.api.messages import MessageEncoder
from proxy.api.messages_request import MessagesRequest
from proxy.config import DEFAULT_MODEL_ALIASES, DEFAULT_MODELS, parse_model_aliases
from proxy.conversation import ToolCall
from proxy.service.errors import ApiError
from tests.mock_gemini_api import calls_then_text, contents_text, declared_tools
from tests.proxy_server import REAL_GEMINI, ProxyServer
from tests.test_real_cli import last_body, prompt_text

WEATHER = {"name": "get_weather", "description": "Current weather for a city.",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
TIME = {"name": "get_time", "description": "Local time in a time zone.",
        "input_schema": {"type": "object", "properties": {"tz": {"type": "string"}}}}
PNG = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")
ALIASES = parse_model_aliases(DEFAULT_MODEL_ALIASES)
KEY = "sk-ant-lab-0123456789"


def make_client(base_url: str, **kwargs) -> anthropic.Anthropic:
    options = {"api_key": "sk-ant-test", "max_retries": 0, "timeout": 60}
    options.update(kwargs)
    return anthropic.Anthropic(base_url=base_url, **options)


@pytest.fixture
def claude(real_server) -> anthropic.Anthropic:
    return make_client(real_server.base_url)


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]






# -- through the SDK, the real CLI and the mock API --------------------------------------------------

def test_non_streamed_text_answer_with_usage(claude, mock):
    mock.configure(chunks=["Bonjour", " tout", " le monde"],
                   usage={"promptTokenCount": 11, "candidatesTokenCount": 4, "totalTokenCount": 15})
    message = claude.messages.create(model="gemini-cli", max_tokens=1024, messages=user("say hi"))
    assert message.type == "message" and message.role == "assistant" and message.model == "gemini-cli"
    assert message.id.startswith("msg_") and len(message.id) == 28
    assert [(b.type, b.text) for b in message.content] == [("text", "Bonjour tout le monde")]
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    assert (message.usage.input_tokens, message.usage.output_tokens) == (11, 4)
    assert message.usage.cache_read_input_tokens == 0 and message.usage.cache_creation_input_tokens == 0
    assert "say hi" in prompt_text(last_body(mock))
    assert message._request_id


def test_the_raw_body_is_anthropics_shape(real_server, mock):
    response = requests.post(real_server.base_url + "/v1/messages?beta=true", timeout=60,
                             headers={"x-api-key": "x", "anthropic-version": "2023-06-01",
                                      "anthropic-beta": "whatever-2099-01-01"},
                             json={"model": "gemini-cli", "max_tokens": 50, "messages": user("hi")})
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"id", "type", "role", "model", "content", "stop_reason", "stop_sequence", "usage"}
    assert body["content"] == [{"type": "text", "text": "Hello from the mock!"}]
    assert body["usage"] == {"input_tokens": 7, "output_tokens": 3, "cache_creation_input_tokens": 0,
                             "cache_read_input_tokens": 0}


def test_streamed_with_the_sdk_stream_helper(real_server, mock):
    mock.configure(chunks=["one ", "two ", "three"], chunk_delay_s=0.05,
                   usage={"promptTokenCount": 9, "candidatesTokenCount": 3, "totalTokenCount": 12})
    strict = make_client(real_server.base_url, _strict_response_validation=True)
    with strict.messages.stream(model="gemini-cli", max_tokens=100, messages=user("count")) as stream:
        texts = list(stream.text_stream)
        final = stream.get_final_message()
    assert "".join(texts) == "one two three"
    assert [(b.type, b.text) for b in final.content] == [("text", "one two three")]
    assert final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (9, 3)


def test_raw_stream_events_in_order(claude, mock):
    events = list(claude.messages.create(model="gemini-cli", max_tokens=100, messages=user("hi"), stream=True))
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    assert kinds[1] == "content_block_start" and kinds[-3] == "content_block_stop"
    assert set(kinds[2:-3]) == {"content_block_delta"}
    assert events[0].message.content == [] and events[0].message.stop_reason is None
    assert "".join(e.delta.text for e in events if e.type == "content_block_delta") == "Hello from the mock!"


def test_beta_messages_and_a_claude_model_name(claude, mock):
    message = claude.beta.messages.create(model="claude-opus-5-5", max_tokens=64, messages=user("hi"),
                                          betas=["interleaved-thinking-2025-05-14"])
    assert message.model == "claude-opus-5-5"
    assert message.content[0].text == "Hello from the mock!"
    assert mock.generate_requests()[-1].model.startswith("gemini-3")


@pytest.mark.parametrize("stream", [False, True])
def test_tool_loop(claude, mock, stream):
    mock.configure(script=calls_then_text(("get_weather", {"city": "Oslo"}), ("get_time", {"tz": "CET"}),
                                          text="Oslo is rainy."))
    messages = user("Weather in Oslo, and the time?")
    kwargs = {"model": "gemini-cli", "max_tokens": 500, "tools": [WEATHER, TIME]}
    if stream:
        with claude.messages.stream(messages=messages, **kwargs) as sdk_stream:
            first = sdk_stream.get_final_message()
    else:
        first = claude.messages.create(messages=messages, **kwargs)
    assert first.stop_reason == "tool_use"
    uses = [b for b in first.content if b.type == "tool_use"]
    assert [(u.name, u.input) for u in uses] == [("get_weather", {"city": "Oslo"}), ("get_time", {"tz": "CET"})]
    assert all(u.id.startswith("toolu_") for u in uses) and len({u.id for u in uses}) == 2
    assert sorted(d["name"] for d in declared_tools(last_body(mock))) == ["mcp_fn_get_time", "mcp_fn_get_weather"]
    assert len(mock.generate_requests()) == 1  # the run ended at the calls

    messages += [{"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
                 {"role": "user", "content": [
                     {"type": "tool_result", "tool_use_id": uses[0].id, "content": "rain in Oslo"},
                     {"type": "tool_result", "tool_use_id": uses[1].id,
                      "content": [{"type": "text", "text": "no clock"}], "is_error": True},
                     {"type": "text", "text": "Summarise, please."}]}]
    if stream:
        with claude.messages.stream(messages=messages, **kwargs) as sdk_stream:
            texts = list(sdk_stream.text_stream)
            final = sdk_stream.get_final_message()
        assert "".join(texts) == "Oslo is rainy."
    else:
        final = claude.messages.create(messages=messages, **kwargs)
    assert final.stop_reason == "end_turn"
    assert [(b.type, b.text) for b in final.content] == [("text", "Oslo is rainy.")]
    second = contents_text(last_body(mock))
    assert f"call id {uses[0].id}" in second and f"result of call {uses[0].id} to get_weather" in second
    assert "rain in Oslo" in second and "Error: no clock" in second
    # The results come before the rest of the user's turn.
    assert second.index("rain in Oslo") < second.index("Error: no clock") < second.index("Summarise, please.")


def test_a_tool_result_image_reaches_the_api(claude, mock):
    claude.messages.create(model="gemini-cli", max_tokens=50, tools=[WEATHER], messages=[
        {"role": "user", "content": "screenshot?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_s1", "name": "get_weather",
                                           "input": {"city": "Oslo"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_s1", "content": [
            {"type": "text", "text": "here it is"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}]}]}])
    body = last_body(mock)
    assert "here it is" in contents_text(body) and "result of call toolu_s1 to get_weather" in contents_text(body)
    assert any("inlineData" in p for c in body["contents"] for p in c.get("parts", []))


def test_pings_while_the_model_is_silent(real_server, mock):
    mock.configure(chunks=["late"], first_chunk_delay_s=1.5)
    with requests.post(real_server.base_url + "/v1/messages", timeout=60, stream=True, json={
            "model": "gemini-cli", "max_tokens": 10, "stream": True, "messages": user("hi")}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = response.text
    assert 'event: ping\ndata: {"type": "ping"}\n\n' in raw
    assert raw.index("event: message_start") < raw.index("event: ping")
    assert raw.rstrip().endswith('event: message_stop\ndata: {"type":"message_stop"}')


def test_tool_choice_reaches_the_api(claude, mock):
    mock.configure(script=calls_then_text(("get_time", {"tz": "UTC"}), text="Oslo is rainy."))
    message = claude.messages.create(model="gemini-cli", max_tokens=50, messages=user("time?"), tools=[WEATHER, TIME],
                                     tool_choice={"type": "tool", "name": "get_time"})
    assert message.stop_reason == "tool_use" and message.content[0].input == {"tz": "UTC"}
    body = last_body(mock)
    assert [d["name"] for d in declared_tools(body)] == ["mcp_fn_get_time"]
    assert body["toolConfig"]["functionCallingConfig"]["mode"] == "ANY"
    mock.configure(chunks=["plain"])
    message = claude.messages.create(model="gemini-cli", max_tokens=50, messages=user("hi"), tools=[WEATHER],
                                     tool_choice={"type": "none"})
    assert message.content[0].text == "plain" and declared_tools(last_body(mock)) == []


def test_disable_parallel_tool_use_returns_one_call(claude, mock):
    mock.configure(script=calls_then_text(("get_weather", {"city": "Oslo"}), ("get_weather", {"city": "Rome"}),
                                          text="Oslo is rainy."))
    message = claude.messages.create(model="gemini-cli", max_tokens=50, messages=user("weather?"), tools=[WEATHER],
                                     tool_choice={"type": "auto", "disable_parallel_tool_use": True})
    assert [b.input for b in message.content if b.type == "tool_use"] == [{"city": "Oslo"}]


def test_server_tools_are_left_out(claude, mock):
    claude.messages.create(model="gemini-cli", max_tokens=50, messages=user("hi"), tools=[
        WEATHER, {"type": "web_search_20250305", "name": "web_search", "max_uses": 2},
        {"type": "bash_20250124", "name": "bash"},
        {"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"}])
    assert [d["name"] for d in declared_tools(last_body(mock))] == ["mcp_fn_get_weather"]


def test_mid_conversation_system_turns_join_the_system_prompt(claude, mock):
    # Claude Code sends its environment as a `system` turn after the first user turn.
    reply = claude.messages.create(model="claude-opus-5-5", max_tokens=50, system="Base.", messages=[
        {"role": "user", "content": "hi"},
        {"role": "system", "content": [{"type": "text", "text": "Working directory: /tmp/x"}]}])
    assert reply.content[0].text == "Hello from the mock!"
    assert last_body(mock)["systemInstruction"]["parts"][0]["text"] == "Base.\n\nWorking directory: /tmp/x"


def test_system_blocks_reach_the_system_instruction(claude, mock):
    claude.messages.create(model="gemini-cli", max_tokens=50, messages=user("hi"), system=[
        {"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": "Answer in French."}])
    assert last_body(mock)["systemInstruction"]["parts"][0]["text"] == "You are terse.\nAnswer in French."
    claude.messages.create(model="gemini-cli", max_tokens=50, messages=user("hi"), system="Be kind.")
    assert last_body(mock)["systemInstruction"]["parts"][0]["text"] == "Be kind."


def test_generation_settings_reach_the_api(claude, mock):
    claude.messages.create(model="gemini-cli", max_tokens=321, messages=user("hi"), stop_sequences=["END", "STOP"],
                           thinking={"type": "enabled", "budget_tokens": 2048},
                           extra_body={"temperature": 0.25, "top_p": 0.5, "top_k": 7})
    assert last_body(mock)["generationConfig"] == {
        "temperature": 0.25, "topP": 0.5, "topK": 7, "maxOutputTokens": 321, "stopSequences": ["END", "STOP"],
        "thinkingConfig": {"includeThoughts": True, "thinkingLevel": "MEDIUM"}}
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    claude.messages.create(model="gemini-2.5-pro", max_tokens=99, messages=user("json"),
                           thinking={"type": "disabled"},
                           output_config={"format": {"type": "json_schema", "schema": schema}})
    config = last_body(mock)["generationConfig"]
    assert config["thinkingConfig"] == {"includeThoughts": False, "thinkingBudget": 0}
    assert config["responseMimeType"] == "application/json" and config["responseJsonSchema"] == schema


def test_hints_change_nothing(claude, mock):
    claude.messages.create(model="gemini-cli", max_tokens=50, messages=user("hi"), metadata={"user_id": "u1"},
                           service_tier="auto", thinking={"type": "adaptive"}, cache_control={"type": "ephemeral"},
                           extra_body={"context_management": {"edits": []}, "mcp_servers": [], "container": None})
    hinted = last_body(mock)
    claude.messages.create(model="gemini-cli", max_tokens=50, messages=user("hi"))
    plain = last_body(mock)
    assert hinted["generationConfig"] == plain["generationConfig"]
    assert json.dumps(hinted["contents"][1:]) == json.dumps(plain["contents"][1:])


def test_an_image_reaches_the_api(claude, mock):
    claude.messages.create(model="gemini-cli", max_tokens=50, messages=[{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "text", "text": "What is this?"}]}])
    parts = [c for c in last_body(mock)["contents"] if c.get("role") == "user"][-1]["parts"]
    inline = [p["inlineData"] for p in parts if "inlineData" in p]
    assert inline and inline[0]["mimeType"] == "image/png" and base64.b64decode(inline[0]["data"]) == \
        base64.b64decode(PNG)


@pytest.mark.parametrize("stream", [False, True])
def test_stop_reason_max_tokens(claude, mock, stream):
    mock.configure(chunks=["one", " two"], usage={"promptTokenCount": 5, "candidatesTokenCount": 8,
                                                   "totalTokenCount": 13})
    kwargs = {"model": "gemini-cli", "messages": user("count"), "max_tokens": 8}
    if stream:
        with claude.messages.stream(**kwargs) as sdk_stream:
            message = sdk_stream.get_final_message()
    else:
        message = claude.messages.create(**kwargs)
    assert message.stop_reason == "max_tokens"
    assert claude.messages.create(**(kwargs | {"max_tokens": 9})).stop_reason == "end_turn"


def test_count_tokens(claude, mock):
    small = claude.messages.count_tokens(model="gemini-cli", messages=user("hi"))
    big = claude.messages.count_tokens(model="claude-sonnet-4-5", system="Be brief. " * 100,
                                       messages=user("x" * 4000), tools=[WEATHER])
    assert isinstance(small.input_tokens, int) and small.input_tokens > 0
    assert big.input_tokens > 1000 + small.input_tokens
    assert mock.generate_requests() == []  # no CLI run


def test_unknown_model_is_an_anthropic_not_found(claude, mock):
    with pytest.raises(anthropic.NotFoundError) as caught:
        claude.messages.create(model="gpt-nope", max_tokens=10, messages=user("hi"))
    body = caught.value.body
    assert body["type"] == "error" and body["error"]["type"] == "not_found_error"
    assert "gpt-nope" in body["error"]["message"] and set(body) == {"type", "error"}
    with pytest.raises(anthropic.NotFoundError):
        claude.messages.count_tokens(model="gpt-nope", messages=user("hi"))


@pytest.mark.parametrize("extra", [
    {"messages": []},
    {"messages": [{"role": "user", "content": "x"}, {"role": "system", "content": [{"type": "image"}]}]},
    {"messages": [{"role": "user", "content": [{"type": "document", "source": {"type": "text", "data": "x",
                                                                                "media_type": "text/plain"}}]}]},
    {"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "url",
                                                                             "url": "https://x/y.png"}}]}]},
    {"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_never"}]}]},
    {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": [
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}]},
        {"role": "user", "content": "and?"}]},
    {"temperature": 1.5}, {"max_tokens": 0}, {"top_k": 0}, {"stop_sequences": ["a"] * 6},
    {"thinking": {"type": "enabled"}}, {"tool_choice": {"type": "any"}}, {"mcp_servers": [{"type": "url"}]},
    {"tools": [{"name": "bad name!"}]}, {"system": [{"type": "image"}]},
])
def test_bad_bodies_are_anthropic_bad_requests(claude, mock, extra):
    body = {"model": "gemini-cli", "max_tokens": 10, "messages": user("hi")} | extra
    with pytest.raises(anthropic.BadRequestError) as caught:
        claude.post("/v1/messages", body=body, cast_to=dict)
    error = caught.value.body
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert error["error"]["message"]
    assert mock.generate_requests() == []


def test_not_json_is_a_bad_request(real_server):
    response = requests.post(real_server.base_url + "/v1/messages", data=b"{nope", timeout=10)
    assert response.status_code == 400 and response.json()["type"] == "error"


def test_an_api_failure_before_the_stream_starts_is_a_real_status(claude, mock):
    mock.configure(status=429, retry_after_s=3)
    with pytest.raises(anthropic.RateLimitError) as caught:
        with claude.messages.stream(model="gemini-cli", max_tokens=10, messages=user("x")) as sdk_stream:
            sdk_stream.get_final_message()
    assert caught.value.body["error"]["type"] == "rate_limit_error"


@pytest.fixture(scope="module")
def keyed_server(mock_api, tmp_path_factory):
    with ProxyServer({"PROXY_API_KEYS": KEY, "GEMINI_BIN": str(REAL_GEMINI),
                      "GOOGLE_GEMINI_BASE_URL": mock_api.base_url,
                      "HOME": str(tmp_path_factory.mktemp("home"))}) as proxy:
        yield proxy


def test_x_api_key(keyed_server, mock):
    message = make_client(keyed_server.base_url, api_key=KEY).messages.create(
        model="claude-haiku-4-5", max_tokens=20, messages=user("hello"))
    assert message.content and message.content[0].text
    with pytest.raises(anthropic.AuthenticationError) as caught:
        make_client(keyed_server.base_url, api_key="sk-wrong").messages.create(
            model="claude-haiku-4-5", max_tokens=20, messages=user("hello"))
    assert caught.value.status_code == 401
    assert caught.value.body["type"] == "error" and caught.value.body["error"]["type"] == "authentication_error"
    response = requests.post(keyed_server.base_url + "/v1/messages/count_tokens", timeout=10,
                             json={"model": "gemini-cli", "messages": user("hi")})
    assert response.status_code == 401 and response.json()["error"]["type"] == "authentication_error"


# -- the parser -----------------------------------------------------------------------------------

def parse(**body) -> MessagesRequest:
    return MessagesRequest.from_json({"model": "gemini-cli", "max_tokens": 10} | body, DEFAULT_MODELS, ALIASES)


def test_turns_become_the_conversation():
    conversation = parse(system="sys", messages=[
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "hm", "signature": "s"},
                                          {"type": "redacted_thinking", "data": "x"},
                                          {"type": "text", "text": "let me look"},
                                          {"type": "tool_use", "id": "toolu_a", "name": "f", "input": {"x": 1}}]},
        {"role": "user", "content": [{"type": "text", "text": "after"},
                                     {"type": "tool_result", "tool_use_id": "toolu_a", "content": [
                                         {"type": "text", "text": "r1"},
                                         {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                                      "data": PNG}}]}]},
    ]).conversation
    assert [m.role for m in conversation.messages] == ["system", "user", "assistant", "tool", "user"]
    assistant = conversation.messages[2]
    assert assistant.text == "let me look" and assistant.tool_calls[0].arguments == '{"x":1}'
    result = conversation.messages[3].tool_results[0]
    assert (result.call_id, result.content, result.name) == ("toolu_a", "r1", "f")
    assert len(conversation.images) == 1 and conversation.messages[4].text == "after"


@pytest.mark.parametrize("thinking, effort", [
    (None, None), ({"type": "adaptive"}, None), ({"type": "disabled"}, "none"),
    ({"type": "enabled", "budget_tokens": 500}, "low"), ({"type": "enabled", "budget_tokens": 1024}, "medium"),
    ({"type": "enabled", "budget_tokens": 8191}, "medium"), ({"type": "enabled", "budget_tokens": 8192}, "high"),
])
def test_thinking_budget_to_effort(thinking, effort):
    body = {"messages": user("x")} | ({"thinking": thinking} if thinking else {})
    assert parse(**body).conversation.generation.reasoning_effort == effort


def test_tool_choice_mapping():
    tools = [WEATHER, TIME]
    assert parse(messages=user("x"), tools=tools).conversation.tool_choice == "auto"
    any_choice = parse(messages=user("x"), tools=tools, tool_choice={"type": "any", "disable_parallel_tool_use": True})
    assert any_choice.conversation.tool_choice == "required" and not any_choice.conversation.parallel_tool_calls
    assert parse(messages=user("x"), tools=tools,
                 tool_choice={"type": "tool", "name": "get_time"}).conversation.tool_choice == "get_time"
    assert parse(messages=user("x"), tools=tools, tool_choice={"type": "none"}).conversation.tool_choice == "none"


def test_max_tokens_may_be_missing_and_claude_names_map():
    request = MessagesRequest.from_json({"model": "claude-3-5-haiku-latest", "messages": user("x")},
                                        DEFAULT_MODELS, ALIASES)
    assert request.conversation.generation.max_output_tokens is None
    assert request.conversation.cli_model == "gemini-3.1-flash-lite"


text = st.one_of(st.text(max_size=20), st.sampled_from(["", PNG, "toolu_1", "image/png", "base64"]))
leaf = st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40), st.floats(allow_nan=False), text)
any_json = st.recursive(leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=10), inner, max_size=3)), max_leaves=10)


def maybe(good):
    return st.one_of(good, good, any_json)


block = st.fixed_dictionaries(
    {"type": maybe(st.sampled_from(["text", "image", "tool_use", "tool_result", "thinking", "document"]))},
    optional={"text": maybe(text), "id": maybe(st.just("toolu_1")), "tool_use_id": maybe(st.just("toolu_1")),
              "name": maybe(text), "input": any_json, "is_error": any_json, "content": any_json,
              "source": maybe(st.fixed_dictionaries({"type": maybe(st.sampled_from(["base64", "url"])),
                                                     "media_type": maybe(text), "data": maybe(text)}))})
message = st.fixed_dictionaries({"role": maybe(st.sampled_from(["user", "assistant"])),
                                 "content": maybe(st.one_of(text, st.lists(block, max_size=3)))})
bodies = st.fixed_dictionaries(
    {"model": maybe(st.sampled_from(["gemini-cli", "claude-x", "nope"])), "messages": maybe(st.lists(message,
                                                                                                    max_size=3))},
    optional={name: any_json for name in [
        "max_tokens", "system", "tools", "tool_choice", "temperature", "top_p", "top_k", "stop_sequences", "thinking",
        "stream", "metadata", "output_config", "mcp_servers", "container", "service_tier"]})


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=st.one_of(bodies, any_json))
def test_any_body_parses_or_is_a_4xx(body):
    for count_only in (False, True):
        try:
            request = MessagesRequest.from_json(body, DEFAULT_MODELS, ALIASES, count_only=count_only)
        except ApiError as error:
            assert 400 <= error.status < 500 and error.message
        else:
            assert request.estimated_input_tokens() >= 1


# -- the stream encoder, read back by the SDK --------------------------------------------------------

def sdk_read(frames: list[str]) -> anthropic.Anthropic:
    """A client whose every request gets these SSE frames as a 200 stream."""
    body = "".join(frames).encode()

    def handler(request):
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    return anthropic.Anthropic(api_key="x", base_url="http://127.0.0.1:9", max_retries=0,
                               http_client=httpx2.Client(transport=httpx2.MockTransport(handler)))


def encode(items, error: ApiError | None = None) -> list[str]:
    encoder = MessageEncoder("claude-x", input_estimate=5)
    frames = list(encoder.start()) + [encoder.heartbeat()]
    for item in items:
        frames += list(encoder.event(item))
    frames += list(encoder.error(error)) if error else list(encoder.end())
    return frames


def test_encoder_thinking_then_text_then_tool_use():
    call = ToolCall(id="call_abc", name="get_weather", arguments='{"city":"Oslo"}')
    frames = encode([Thinking("hmm, "), Thinking("rain?"), Delta("Let me "), Delta("check."), ToolCalled(call),
                     Finished("tool_calls", None)])
    assert frames[1] == 'event: ping\ndata: {"type": "ping"}\n\n'
    with sdk_read(frames).messages.stream(model="claude-x", max_tokens=10, messages=user("x")) as sdk_stream:
        message = sdk_stream.get_final_message()
    assert [b.type for b in message.content] == ["thinking", "text", "tool_use"]
    assert message.content[0].thinking == "hmm, rain?" and message.content[0].signature == ""
    assert message.content[1].text == "Let me check."
    assert (message.content[2].id, message.content[2].name, message.content[2].input) == (
        "toolu_abc", "get_weather", {"city": "Oslo"})
    assert message.stop_reason == "tool_use" and message.usage.input_tokens == 5
    starts = [json.loads(f.split("data: ", 1)[1]) for f in frames if f.startswith("event: content_block_start")]
    assert [s["index"] for s in starts] == [0, 1, 2]


def test_encoder_usage_and_refusal():
    frames = encode([Delta("no"), Finished("content_filter", {"prompt_tokens": 12, "completion_tokens": 1})])
    with sdk_read(frames).messages.stream(model="claude-x", max_tokens=10, messages=user("x")) as sdk_stream:
        message = sdk_stream.get_final_message()
    assert message.stop_reason == "refusal"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (12, 1)


def test_encoder_error_after_the_start_is_an_error_event():
    frames = encode([Delta("partial")], error=ApiError(504, "too slow", code="deadline_exceeded"))
    assert frames[-1].startswith("event: error\n")
    assert json.loads(frames[-1].split("data: ", 1)[1]) == {
        "type": "error", "error": {"type": "api_error", "message": "too slow"}}
    with pytest.raises(anthropic.APIStatusError) as caught:
        with sdk_read(frames).messages.stream(model="claude-x", max_tokens=10, messages=user("x")) as sdk_stream:
            sdk_stream.get_final_message()
    assert "too slow" in str(caught.value)
