"""ChatRequest: an OpenAI chat completion request, validated, as a `Conversation`.

What the gateway can honour is honoured (generation settings, tools, response formats);
what would change the reply in a way it cannot deliver (`n` > 1, `logprobs`, audio output)
is refused with a 400 naming the parameter; hints that change nothing the client gets back
(`user`, `metadata`, `store`, penalties, ...) are accepted, type-checked, and ignored.
Any body a client can send gets either a `ChatRequest` or an `ApiError` (4xx).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..conversation import Conversation, Message, Part, Tool, ToolCall, ToolResult
from ..generation import REASONING_EFFORTS, Generation
from ..service.errors import ApiError
from . import checks
from .checks import (
    MAX_STOP_SEQUENCES,
    NUMBER,
    bad,
    image_from_url,
    int32,
    number,
    openai_turns,
    optional,
    pair_tool_results,
    tool,
)
from .request import ApiRequest

ROLES = {"system", "developer", "user", "assistant", "tool", "function"}

# Accepted and ignored: they change nothing the client gets back (JSON null allowed for all).
IGNORED_PARAMS: dict[str, tuple[type, ...]] = {
    "frequency_penalty": NUMBER,
    "presence_penalty": NUMBER,
    "logit_bias": (dict,),
    "user": (str,),
    "metadata": (dict,),
    "store": (bool,),
    "service_tier": (str,),
    "prediction": (dict,),
    "prompt_cache_key": (str,),
    "safety_identifier": (str,),
    "verbosity": (str,),
    "web_search_options": (dict,),
}


@dataclass
class ChatRequest(ApiRequest):
    """A chat completion request: the conversation plus OpenAI wire options."""

    include_usage: bool = False

    @classmethod
    def from_json(cls, body: Any, models: dict[str, str], aliases: tuple[tuple[str, str], ...] = ()) -> ChatRequest:
        if not isinstance(body, dict):
            raise ApiError(400, "The request body must be a JSON object.", code="invalid_json")
        model, cli_model = checks.model(body, models, aliases)
        stream = optional(body, "stream", (bool,)) or False
        options = optional(body, "stream_options", (dict,)) or {}
        include_usage = options.get("include_usage", False)
        if not isinstance(include_usage, bool):
            raise bad("`stream_options.include_usage` must be a boolean.", "stream_options")
        _refuse_unservable(body)
        for name, types in IGNORED_PARAMS.items():
            optional(body, name, types)
        raw_messages = body.get("messages")
        if not isinstance(raw_messages, list) or not raw_messages:
            raise bad("`messages` must be a non-empty array.", "messages")
        messages = [_message(raw, i) for i, raw in enumerate(raw_messages)]
        pair_tool_results(openai_turns(messages))
        tools, tool_choice = _tools(body)
        conversation = Conversation(
            model=model, cli_model=cli_model, messages=messages, tools=tools, tool_choice=tool_choice,
            parallel_tool_calls=optional(body, "parallel_tool_calls", (bool,)) is not False,
            generation=_generation(body), stream=stream,
        )
        return cls(conversation=conversation, include_usage=bool(stream and include_usage))


def _refuse_unservable(body: dict) -> None:
    """Parameters whose effect the gateway cannot deliver: a 400 rather than a silent surprise."""
    n = optional(body, "n", (int,))
    if n is not None and n != 1:
        raise bad("Only `n: 1` is supported: the gemini CLI returns one answer per request.", "n")
    if optional(body, "logprobs", (bool,)):
        raise bad("`logprobs` is not supported: the gemini CLI does not report token log probabilities.",
                  "logprobs")
    if optional(body, "top_logprobs", (int,)):
        raise bad("`top_logprobs` is not supported: the gemini CLI does not report token log "
                  "probabilities.", "top_logprobs")
    if optional(body, "audio", (dict,)) is not None:
        raise bad("`audio` output is not supported: this gateway answers in text.", "audio")
    modalities = optional(body, "modalities", (list,))
    if modalities is not None and any(m != "text" for m in modalities):
        raise bad("Only the `text` modality is supported: this gateway answers in text.", "modalities")


def _generation(body: dict) -> Generation:
    max_tokens = optional(body, "max_completion_tokens", (int,))
    name = "max_completion_tokens"
    if max_tokens is None:
        max_tokens, name = optional(body, "max_tokens", (int,)), "max_tokens"
    if max_tokens is not None and max_tokens < 1:
        raise bad(f"`{name}` must be at least 1.", name)
    top_k = optional(body, "top_k", (int,))
    if top_k is not None and top_k < 1:
        raise bad("`top_k` must be at least 1.", "top_k")
    stop = optional(body, "stop", (str, list))
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if not all(isinstance(s, str) for s in stops):
        raise bad("`stop` must be a string or an array of strings.", "stop")
    stops = [s for s in stops if s]
    if len(stops) > MAX_STOP_SEQUENCES:
        raise bad(f"`stop` may hold at most {MAX_STOP_SEQUENCES} sequences.", "stop")
    effort = optional(body, "reasoning_effort", (str,))
    if effort is not None and effort not in REASONING_EFFORTS:
        raise bad(f"`reasoning_effort` must be one of {', '.join(REASONING_EFFORTS)}.", "reasoning_effort")
    json_output, schema = _response_format(optional(body, "response_format", (dict,)))
    return Generation(
        temperature=number(body, "temperature", 0, 2), top_p=number(body, "top_p", 0, 1), top_k=top_k,
        max_output_tokens=max_tokens, stop=tuple(stops), seed=int32(optional(body, "seed", (int,))),
        json_output=json_output, json_schema=schema, reasoning_effort=effort,
    )


def _response_format(value: dict | None) -> tuple[bool, dict | None]:
    if value is None:
        return False, None
    kind = value.get("type")
    if kind == "text":
        return False, None
    if kind == "json_object":
        return True, None
    if kind == "json_schema":
        spec = value.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise bad("`response_format.json_schema.schema` must be a JSON schema object.", "response_format")
        return True, schema
    raise bad("`response_format.type` must be `text`, `json_object` or `json_schema`.", "response_format")


def _tools(body: dict) -> tuple[list[Tool], str]:
    """`tools` + `tool_choice`, or the legacy `functions` + `function_call`."""
    raw_tools = optional(body, "tools", (list,))
    choice_param = "tool_choice"
    if raw_tools is None and optional(body, "functions", (list,)) is not None:
        raw_tools = [{"type": "function", "function": f} for f in body["functions"]]
        choice_param = "function_call"
    tools: list[Tool] = []
    for i, raw in enumerate(raw_tools or []):
        param = f"tools[{i}]"
        if not isinstance(raw, dict) or raw.get("type", "function") != "function":
            raise bad(f"`{param}`: only tools of type `function` are supported.", param)
        function = raw.get("function")
        if not isinstance(function, dict):
            raise bad(f"`{param}.function` must be an object.", param)
        tools.append(tool(function, f"{param}.function"))
    if len({t.name for t in tools}) != len(tools):
        raise bad("`tools` has two functions of the same name.", "tools")
    choice = _tool_choice(optional(body, choice_param, (str, dict)), choice_param, tools)
    return tools, choice


def _tool_choice(value: str | dict | None, param: str, tools: list[Tool]) -> str:
    if value is None:
        return "auto"
    if isinstance(value, str):
        if value not in {"auto", "none", "required"}:
            raise bad(f"`{param}` must be `auto`, `none`, `required` or a function.", param)
        if value == "required" and not tools:
            raise bad(f"`{param}: required` needs `tools`.", param)
        return value
    function = value.get("function") if param == "tool_choice" else value
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(name, str) or name not in {t.name for t in tools}:
        raise bad(f"`{param}` names a function that is not in `tools`.", param)
    return name


def _message(raw: Any, index: int) -> Message:
    param = f"messages[{index}]"
    if not isinstance(raw, dict):
        raise bad(f"`{param}` must be an object.", param)
    role = raw.get("role")
    if not isinstance(role, str) or role not in ROLES:
        raise bad(f"`{param}.role` must be one of {', '.join(sorted(ROLES))}.", f"{param}.role")
    name = optional(raw, "name", (str,), f"{param}.name")
    parts = _content(raw.get("content"), f"{param}.content", allow_images=role == "user")
    if role == "developer":
        role = "system"
    if role == "assistant":
        parts += _tool_calls(raw, param, index)
    elif role == "tool":
        call_id = raw.get("tool_call_id")
        if not isinstance(call_id, str) or not call_id:
            raise bad(f"`{param}.tool_call_id` is required for a tool message.", f"{param}.tool_call_id")
        parts = [ToolResult(call_id=call_id, content=_joined(parts))]
    elif role == "function":
        if not name:
            raise bad(f"`{param}.name` is required for a function message.", f"{param}.name")
        role, parts = "tool", [ToolResult(call_id="", content=_joined(parts), name=name)]
    return Message(role=role, parts=parts, name=name)


def _joined(parts: list[Part]) -> str:
    return "\n".join(p for p in parts if isinstance(p, str))


def _content(content: Any, param: str, allow_images: bool) -> list[Part]:
    if content is None:
        return []
    if isinstance(content, str):
        return [content]
    if not isinstance(content, list):
        raise bad(f"`{param}` must be a string or an array of content parts.", param)
    parts: list[Part] = []
    for i, part in enumerate(content):
        part_param = f"{param}[{i}]"
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise bad(f"`{part_param}` must be an object with a `type`.", part_param)
        kind = part["type"]
        if kind in {"text", "input_text", "output_text", "refusal"}:
            text = part.get("refusal") if kind == "refusal" else part.get("text")
            if not isinstance(text, str):
                raise bad(f"`{part_param}.{'refusal' if kind == 'refusal' else 'text'}` must be a string.",
                          part_param)
            parts.append(text)
        elif kind == "image_url" and allow_images:
            parts.append(image_from_url(part.get("image_url"), part_param))
        elif kind == "image_url":
            raise bad(f"`{part_param}`: images are only supported in user messages.", part_param)
        else:
            raise bad(f"Content parts of type `{kind[:40]}` are not supported; send text or image_url "
                      "(base64 data: URLs) parts.", part_param)
    return parts


def _tool_calls(raw: dict, param: str, index: int) -> list[Part]:
    """An assistant turn's `tool_calls` (or legacy `function_call`), validated."""
    calls: list[Part] = []
    raw_calls = raw.get("tool_calls")
    if raw_calls is not None and not isinstance(raw_calls, list):
        raise bad(f"`{param}.tool_calls` must be an array.", f"{param}.tool_calls")
    for i, call in enumerate(raw_calls or []):
        call_param = f"{param}.tool_calls[{i}]"
        function = call.get("function") if isinstance(call, dict) else None
        call_id = call.get("id") if isinstance(call, dict) else None
        if not isinstance(call_id, str) or not call_id or not isinstance(function, dict):
            raise bad(f"`{call_param}` needs an `id` and a `function`.", call_param)
        calls.append(_call(call_id, function, call_param))
    legacy = raw.get("function_call")
    if legacy is not None:
        if not isinstance(legacy, dict):
            raise bad(f"`{param}.function_call` must be an object.", f"{param}.function_call")
        # The legacy form has no ids: the `function` message after it answers it by name.
        calls.append(_call(f"call_legacy_{index}", legacy, f"{param}.function_call"))
    return calls


def _call(call_id: str, function: dict, param: str) -> ToolCall:
    name, arguments = function.get("name"), function.get("arguments", "{}")
    if not isinstance(name, str) or not name:
        raise bad(f"`{param}.function.name` must be a string.", param)
    if isinstance(arguments, dict):  # some clients send the object itself
        arguments = json.dumps(arguments, ensure_ascii=False)
    if not isinstance(arguments, str):
        raise bad(f"`{param}.function.arguments` must be a JSON string.", param)
    return ToolCall(id=call_id, name=name, arguments=arguments)


