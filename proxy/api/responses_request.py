"""ResponsesRequest: an OpenAI Responses API request (stateless), validated, as a `Conversation`.

The gateway keeps nothing between requests: `previous_response_id`, `conversation` and item
references get a 400 that says to send the whole input (with `store: false`). Non-function
tools (web_search, file_search, custom, ...) are not offered to the model and are ignored, so
that agents that always send them (Codex) still work with their function tools.
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
    PairingWords,
    bad,
    image_from_url,
    int32,
    number,
    openai_turns,
    optional,
    pair_tool_results,
)
from .request import ApiRequest

ROLES = {"user", "assistant", "system", "developer"}
STATELESS = ("This gateway keeps no state between requests: send the whole conversation in `input` "
             "(and `store: false`) instead of `{}`.")
IGNORED_PARAMS: dict[str, tuple[type, ...]] = {
    "store": (bool,), "include": (list,), "metadata": (dict,), "user": (str,), "prompt_cache_key": (str,),
    "safety_identifier": (str,), "service_tier": (str,), "truncation": (str,), "max_tool_calls": (int,),
    "stream_options": (dict,), "client_metadata": (dict,), "prompt": (dict,),
}


@dataclass
class ResponsesRequest(ApiRequest):
    """A Responses request: the conversation, plus what the response object echoes back."""

    echo: dict[str, Any]  # instructions, tools, tool_choice, ... as the client sent them

    @classmethod
    def from_json(cls, body: Any, models: dict[str, str], aliases: tuple[tuple[str, str], ...] = ()
                  ) -> ResponsesRequest:
        if not isinstance(body, dict):
            raise ApiError(400, "The request body must be a JSON object.", code="invalid_json")
        model, cli_model = checks.model(body, models, aliases)
        for name in ("previous_response_id", "conversation"):
            if body.get(name) is not None:
                raise bad(STATELESS.format(f"`{name}`"), name)
        if optional(body, "background", (bool,)):
            raise bad("`background` responses need stored state, which this gateway does not keep.", "background")
        if optional(body, "top_logprobs", (int,)):
            raise bad("`top_logprobs` is not supported: the gemini CLI does not report log probabilities.",
                      "top_logprobs")
        for name, types in IGNORED_PARAMS.items():
            optional(body, name, types)
        messages: list[Message] = []
        instructions = optional(body, "instructions", (str,))
        if instructions:
            messages.append(Message("system", [instructions]))
        messages += _input(body.get("input"))
        if not messages:
            raise bad("`input` must be a non-empty string or array of items.", "input")
        pair_tool_results(openai_turns(messages), PairingWords(where="input"))
        tools = _tools(optional(body, "tools", (list,)) or [])
        conversation = Conversation(
            model=model, cli_model=cli_model, messages=messages, tools=tools,
            tool_choice=_tool_choice(body.get("tool_choice"), tools),
            parallel_tool_calls=optional(body, "parallel_tool_calls", (bool,)) is not False,
            generation=_generation(body), stream=bool(optional(body, "stream", (bool,))),
        )
        echo = {key: body.get(key) for key in ("instructions", "metadata", "temperature", "top_p",
                                               "max_output_tokens", "user")}
        echo.update(tools=body.get("tools") or [], tool_choice=body.get("tool_choice") or "auto",
                    parallel_tool_calls=conversation.parallel_tool_calls, reasoning=body.get("reasoning"),
                    text=body.get("text") or {"format": {"type": "text"}})
        return cls(conversation=conversation, echo=echo)


def _input(value: Any) -> list[Message]:
    if isinstance(value, str):
        return [Message("user", [value])] if value else []
    if not isinstance(value, list):
        raise bad("`input` must be a string or an array of items.", "input")
    messages: list[Message] = []
    for i, item in enumerate(value):
        param = f"input[{i}]"
        if not isinstance(item, dict):
            raise bad(f"`{param}` must be an object.", param)
        kind = item.get("type", "message")
        if kind == "message":
            messages.append(_message(item, param))
        elif kind in ("function_call", "custom_tool_call"):
            call = _call(item, param, kind)
            last = messages[-1] if messages else None
            if last is not None and last.role == "assistant":
                last.parts.append(call)  # the calls of one turn, and its text, stay one turn
            else:
                messages.append(Message("assistant", [call]))
        elif kind in ("function_call_output", "custom_tool_call_output"):
            call_id = item.get("call_id")
            if not isinstance(call_id, str) or not call_id:
                raise bad(f"`{param}.call_id` must be a string.", param)
            messages.append(Message("tool", [ToolResult(call_id=call_id, content=_output_text(item.get("output"),
                                                                                                param))]))
        elif kind == "reasoning":
            continue  # the model's earlier thoughts: not sent back to it (documented)
        elif kind == "item_reference":
            raise bad(STATELESS.format("item references"), param)
        else:
            raise bad(f"`{param}`: input items of type `{str(kind)[:40]}` are not supported.", param)
    return messages


def _message(item: dict, param: str) -> Message:
    role = item.get("role")
    if not isinstance(role, str) or role not in ROLES:
        raise bad(f"`{param}.role` must be one of {', '.join(sorted(ROLES))}.", f"{param}.role")
    content = item.get("content")
    parts: list[Part] = []
    if isinstance(content, str):
        parts.append(content)
    elif isinstance(content, list):
        for j, part in enumerate(content):
            part_param = f"{param}.content[{j}]"
            kind = part.get("type") if isinstance(part, dict) else None
            if kind in ("input_text", "output_text", "text", "summary_text"):
                if not isinstance(part.get("text"), str):
                    raise bad(f"`{part_param}.text` must be a string.", part_param)
                parts.append(part["text"])
            elif kind == "refusal" and isinstance(part.get("refusal"), str):
                parts.append(part["refusal"])
            elif kind == "input_image" and role == "user":
                if part.get("file_id") is not None:
                    raise bad("Uploaded files (`file_id`) are not kept by this gateway; send the image as a "
                              "base64 data URL.", part_param)
                parts.append(image_from_url(part.get("image_url"), part_param))
            else:
                raise bad(f"`{part_param}`: content of type `{str(kind)[:40]}` is not supported here.", part_param)
    elif content is not None:
        raise bad(f"`{param}.content` must be a string or an array of content parts.", param)
    return Message("system" if role == "developer" else role, parts)


def _call(item: dict, param: str, kind: str) -> ToolCall:
    call_id, name = item.get("call_id"), item.get("name")
    if not isinstance(call_id, str) or not call_id or not isinstance(name, str) or not name:
        raise bad(f"`{param}` needs a `call_id` and a `name`.", param)
    if kind == "custom_tool_call":
        arguments = json.dumps({"input": item.get("input")}, ensure_ascii=False)
    else:
        arguments = item.get("arguments", "{}")
        if not isinstance(arguments, str):
            raise bad(f"`{param}.arguments` must be a JSON string.", param)
    return ToolCall(id=call_id, name=name, arguments=arguments)


def _output_text(output: Any, param: str) -> str:
    if isinstance(output, str):
        return output
    if isinstance(output, list):
        texts = [p.get("text") for p in output if isinstance(p, dict) and isinstance(p.get("text"), str)]
        return "\n".join(texts)
    raise bad(f"`{param}.output` must be a string or an array of content parts.", param)


def _tools(raw_tools: list) -> list[Tool]:
    tools = []
    for i, raw in enumerate(raw_tools):
        if not isinstance(raw, dict):
            raise bad(f"`tools[{i}]` must be an object.", f"tools[{i}]")
        if raw.get("type") == "function":
            tools.append(checks.tool(raw, f"tools[{i}]"))
    if len({t.name for t in tools}) != len(tools):
        raise bad("`tools` has two functions of the same name.", "tools")
    return tools


def _tool_choice(value: Any, tools: list[Tool]) -> str:
    if value is None or value == "auto":
        return "auto"
    if value in ("none", "required"):
        return "none" if value == "none" or not tools else value
    if isinstance(value, dict):
        if value.get("type") == "function":
            if value.get("name") not in {t.name for t in tools}:
                raise bad("`tool_choice` names a function that is not in `tools`.", "tool_choice")
            return value["name"]
        return "auto"  # allowed_tools, a built-in tool type: the function tools stay offered
    raise bad("`tool_choice` must be `auto`, `none`, `required` or an object.", "tool_choice")


def _generation(body: dict) -> Generation:
    max_tokens = optional(body, "max_output_tokens", (int,))
    if max_tokens is not None and max_tokens < 1:
        raise bad("`max_output_tokens` must be at least 1.", "max_output_tokens")
    reasoning = optional(body, "reasoning", (dict,)) or {}
    effort = reasoning.get("effort")
    if effort is not None and effort not in REASONING_EFFORTS:
        raise bad(f"`reasoning.effort` must be one of {', '.join(REASONING_EFFORTS)}.", "reasoning")
    text = optional(body, "text", (dict,)) or {}
    fmt = text.get("format") or {"type": "text"}
    if not isinstance(fmt, dict) or fmt.get("type") not in ("text", "json_object", "json_schema"):
        raise bad("`text.format.type` must be `text`, `json_object` or `json_schema`.", "text")
    schema = fmt.get("schema") if fmt["type"] == "json_schema" else None
    if fmt["type"] == "json_schema" and not isinstance(schema, dict):
        raise bad("`text.format.schema` must be a JSON schema object.", "text")
    stop = optional(body, "stop", (list,)) or []
    if len(stop) > MAX_STOP_SEQUENCES or not all(isinstance(s, str) for s in stop):
        raise bad(f"`stop` must be up to {MAX_STOP_SEQUENCES} strings.", "stop")
    return Generation(temperature=number(body, "temperature", 0, 2), top_p=number(body, "top_p", 0, 1),
                      max_output_tokens=max_tokens, stop=tuple(s for s in stop if s),
                      seed=int32(optional(body, "seed", (int,))), json_output=fmt["type"] != "text",
                      json_schema=schema, reasoning_effort=effort)

