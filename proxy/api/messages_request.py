"""MessagesRequest: an Anthropic Messages API request, validated, as a `Conversation`.

What the gateway can honour is honoured: `system`, the turns with their text, images, tool
uses and tool results, client `tools` and `tool_choice`, `max_tokens`, `temperature`,
`top_p`, `top_k`, `stop_sequences`, `thinking` and `output_config` (`effort`, and `format`
as the response JSON schema). Anthropic's server tools (`web_search_*`, `bash_*`,
`text_editor_*`, ... : any tool whose `type` is not `custom`) run on Anthropic's side, which
this gateway has none of: they are left out, and the model is offered the client tools only.
`thinking` / `redacted_thinking` blocks of earlier assistant turns are dropped (the model
cannot read another model's signed thoughts). Hints that change nothing the client gets back
(`metadata`, `service_tier`, `container`, `cache_control`, ...) are accepted, type-checked
and ignored. Blocks the gateway cannot pass on (`document`, `search_result`, server tool
blocks, ...) and `mcp_servers` are refused with a 400 naming them. Any body a client can
send gets either a `MessagesRequest` or an `ApiError` (4xx).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from ..conversation import Conversation, Image, Message, Part, Tool, ToolCall, ToolResult, json_text
from ..generation import Generation
from ..service.errors import ApiError
from . import checks
from .checks import MAX_STOP_SEQUENCES, PairingWords, bad, number, optional, pair_tool_results
from .request import ApiRequest

# Accepted and ignored: they change nothing the client gets back (JSON null allowed for all).
IGNORED_PARAMS: dict[str, tuple[type, ...]] = {
    "metadata": (dict,),
    "service_tier": (str,),
    "context_management": (dict,),
    "container": (str, dict),
    "cache_control": (dict,),
    "diagnostics": (dict,),
    "inference_geo": (str,),
    "speed": (str,),
    "user_profile_id": (str,),
    "workspace_id": (str,),
}

# `thinking.budget_tokens` -> the gateway's reasoning effort (then Gemini's level or budget).
EFFORT_BUDGETS = ((1024, "low"), (8192, "medium"))
# `output_config.effort` -> the gateway's reasoning effort.
OUTPUT_EFFORTS = {"low": "low", "medium": "medium", "high": "high", "xhigh": "xhigh", "max": "xhigh"}
# Gemini counts an image of up to 384x384 pixels as 258 tokens (larger ones in tiles of as many).
IMAGE_TOKENS = 258


@dataclass
class MessagesRequest(ApiRequest):
    """A Messages request: the conversation (plus nothing else the wire needs)."""

    @classmethod
    def from_json(cls, body: Any, models: dict[str, str], aliases: tuple[tuple[str, str], ...] = (),
                  count_only: bool = False) -> MessagesRequest:
        """Validate a `POST /v1/messages` body (`count_only`: a `count_tokens` body, which has no
        `max_tokens` and no `stream`)."""
        if not isinstance(body, dict):
            raise ApiError(400, "The request body must be a JSON object.", code="invalid_json")
        model, cli_model = checks.model(body, models, aliases)
        stream = False if count_only else bool(optional(body, "stream", (bool,)))
        for name, types in IGNORED_PARAMS.items():
            optional(body, name, types)
        servers = optional(body, "mcp_servers", (list,))
        if servers:
            raise bad("`mcp_servers` is not supported: this gateway connects to no MCP server; declare "
                      "the tools in `tools` and run them on the client.", "mcp_servers")
        messages = _system(body.get("system"))
        raw_messages = body.get("messages")
        if not isinstance(raw_messages, list) or not raw_messages:
            raise bad("`messages` must be a non-empty array.", "messages")
        turns = [_turn(raw, i) for i, raw in enumerate(raw_messages)]
        pair_tool_results([[(i, m) for m in turn] for i, turn in enumerate(turns)], AnthropicPairing())
        for turn in turns:
            messages += turn
        tools, tool_choice, parallel = _tools(body)
        conversation = Conversation(
            model=model, cli_model=cli_model, messages=messages, tools=tools, tool_choice=tool_choice,
            parallel_tool_calls=parallel, generation=_generation(body, count_only), stream=stream,
        )
        return cls(conversation=conversation)

    def estimated_input_tokens(self) -> int:
        """An estimate of the request's input tokens: about four characters a token over the
        system prompt, the turns and the tool declarations, plus a fixed count per image."""
        conversation = self.conversation
        characters, images = 0, 0
        for message in conversation.messages:
            for part in message.parts:
                if isinstance(part, str):
                    characters += len(part)
                elif isinstance(part, Image):
                    images += 1
                elif isinstance(part, ToolCall):
                    characters += len(part.name) + len(part.arguments)
                elif isinstance(part, ToolResult):
                    characters += len(part.content)
        for tool in conversation.offered_tools:
            characters += len(json.dumps({"name": tool.name, "description": tool.description,
                                          "input_schema": tool.parameters}, ensure_ascii=False))
        return max(1, math.ceil(characters / 4) + images * IMAGE_TOKENS)


def _system(value: Any) -> list[Message]:
    """`system`: a string or an array of text blocks, as one system message."""
    if value is None:
        return []
    if isinstance(value, str):
        return [Message("system", [value])] if value else []
    if not isinstance(value, list):
        raise bad("`system` must be a string or an array of text blocks.", "system")
    texts = []
    for i, block in enumerate(value):
        param = f"system[{i}]"
        if not isinstance(block, dict) or block.get("type") != "text":
            raise bad(f"`{param}` must be a text block (`{{\"type\": \"text\", \"text\": ...}}`).", param)
        texts.append(_text(block, param))
    return [Message("system", texts)] if any(texts) else []


def _text(block: dict, param: str) -> str:
    text = block.get("text")
    if not isinstance(text, str):
        raise bad(f"`{param}.text` must be a string.", param)
    return text


def _turn(raw: Any, index: int) -> list[Message]:
    """One `messages` entry as the conversation's messages: an assistant turn is one message; a
    user turn is one `tool` message per `tool_result` block, then the rest of the turn."""
    param = f"messages[{index}]"
    if not isinstance(raw, dict):
        raise bad(f"`{param}` must be an object.", param)
    role = raw.get("role")
    if role not in ("user", "assistant", "system"):
        raise bad(f"`{param}.role` must be `user`, `assistant` or `system`.", f"{param}.role")
    content = raw.get("content")
    if role == "system":
        # Claude Code sends mid-conversation system turns (its environment, its agents): they
        # join the system prompt, text only.
        if isinstance(content, list):
            if not all(isinstance(b, dict) and b.get("type") == "text" for b in content):
                raise bad(f"`{param}`: a system message holds text blocks only.", f"{param}.content")
            content = "\n".join(_text(b, f"{param}.content[{i}]") for i, b in enumerate(content))
        if not isinstance(content, str):
            raise bad(f"`{param}.content` must be a string or text blocks.", f"{param}.content")
        return [Message("system", [content])]
    if isinstance(content, str):
        return [Message(role, [content])]
    if not isinstance(content, list):
        raise bad(f"`{param}.content` must be a string or an array of content blocks.", f"{param}.content")
    results: list[Message] = []
    parts: list[Part] = []
    for i, block in enumerate(content):
        block_param = f"{param}.content[{i}]"
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise bad(f"`{block_param}` must be an object with a `type`.", block_param)
        kind = block["type"]
        if kind == "text":  # cache_control and citations change nothing the model reads
            parts.append(_text(block, block_param))
        elif kind == "image" and role == "user":
            parts.append(_image(block, block_param))
        elif kind == "tool_result" and role == "user":
            results.append(_tool_result(block, block_param))
        elif kind == "tool_use" and role == "assistant":
            parts.append(_tool_use(block, block_param))
        elif kind in {"thinking", "redacted_thinking"} and role == "assistant":
            continue  # signed by the model that wrote them, readable by no other
        elif kind in {"image", "tool_result", "tool_use", "thinking", "redacted_thinking"}:
            raise bad(f"`{block_param}`: `{kind}` blocks are not allowed in {role} messages.", block_param)
        else:
            raise bad(f"Content blocks of type `{kind[:40]}` are not supported by this gateway; send "
                      "text, image (base64), tool_use and tool_result blocks.", block_param)
    if role == "assistant":
        return [Message(role, parts)]
    return results + ([Message(role, parts)] if parts or not results else [])


def _image(block: dict, param: str) -> Image:
    source = block.get("source")
    if not isinstance(source, dict):
        raise bad(f"`{param}.source` must be an object.", param)
    kind = source.get("type")
    if kind == "base64":
        return checks.image(source.get("media_type"), source.get("data"), f"{param}.source")
    if kind == "url":
        raise checks.remote_image(param)
    raise bad(f"`{param}.source.type` must be `base64` (files and other sources are not supported).",
              param)


def _tool_use(block: dict, param: str) -> ToolCall:
    call_id, name, arguments = block.get("id"), block.get("name"), block.get("input")
    if arguments is None:
        arguments = {}
    if not isinstance(call_id, str) or not call_id:
        raise bad(f"`{param}.id` must be a non-empty string.", param)
    if not isinstance(name, str) or not name:
        raise bad(f"`{param}.name` must be a non-empty string.", param)
    if not isinstance(arguments, dict):
        raise bad(f"`{param}.input` must be an object.", param)
    return ToolCall(id=call_id, name=name, arguments=json_text(arguments))


def _tool_result(block: dict, param: str) -> Message:
    """A `tool_result` block as a `tool` message: its text (prefixed `Error: ` when `is_error`),
    then its images."""
    call_id = block.get("tool_use_id")
    if not isinstance(call_id, str) or not call_id:
        raise bad(f"`{param}.tool_use_id` must be a non-empty string.", param)
    is_error = optional(block, "is_error", (bool,), f"{param}.is_error")
    content = block.get("content")
    texts: list[str] = []
    images: list[Part] = []
    if isinstance(content, str):
        texts.append(content)
    elif isinstance(content, list):
        for i, inner in enumerate(content):
            inner_param = f"{param}.content[{i}]"
            kind = inner.get("type") if isinstance(inner, dict) else None
            if kind == "text":
                texts.append(_text(inner, inner_param))
            elif kind == "image":
                images.append(_image(inner, inner_param))
            else:
                raise bad(f"`{inner_param}`: a tool result may hold text and image blocks only"
                          + (f", not `{kind[:40]}`." if isinstance(kind, str) else "."), inner_param)
    elif content is not None:
        raise bad(f"`{param}.content` must be a string or an array of text and image blocks.", param)
    text = "\n".join(texts)
    if is_error:
        text = f"Error: {text}"
    return Message("tool", [ToolResult(call_id=call_id, content=text), *images])


class AnthropicPairing(PairingWords):
    """Anthropic's wording of the pairing rule, with its indices (`messages[i]` of the turns)."""

    def unexpected(self, index: int, result: ToolResult) -> ApiError:
        return bad(f"`messages[{index}]`: unexpected `tool_use_id` found in `tool_result` blocks: "
                   f"`{result.call_id[:80]}`. Each `tool_result` block must have a corresponding `tool_use` block "
                   "in the previous message (and answer it once).", f"messages[{index}].content")

    def duplicate(self, index: int, call_id: str) -> ApiError:
        return bad(f"`messages[{index}]` has two `tool_use` blocks with the id `{call_id[:80]}`.",
                   f"messages[{index}].content")

    def unanswered(self, open_calls: dict[str, int], before: int | None) -> ApiError:
        made, ids = next(iter(open_calls.values())), ", ".join(list(open_calls)[:5])
        then = ("Each `tool_use` block must have a corresponding `tool_result` block in the next message."
                if before is not None else "Send a user message with a `tool_result` block for each.")
        return bad(f"`messages[{made}]`: `tool_use` ids were found without `tool_result` blocks immediately after: "
                   f"{ids}. {then}", f"messages[{made}].content")


def _tools(body: dict) -> tuple[list[Tool], str, bool]:
    """Client tools (server tools are left out), `tool_choice` and its parallel flag."""
    tools: list[Tool] = []
    server_tools: set[str] = set()
    for i, raw in enumerate(optional(body, "tools", (list,)) or []):
        param = f"tools[{i}]"
        if not isinstance(raw, dict):
            raise bad(f"`{param}` must be an object.", param)
        kind = raw.get("type")
        if kind is not None and not isinstance(kind, str):
            raise bad(f"`{param}.type` must be a string.", param)
        if kind not in (None, "custom"):
            if isinstance(raw.get("name"), str):
                server_tools.add(raw["name"])
            continue  # an Anthropic server tool: runs on Anthropic's side, which is not here
        tools.append(checks.tool(raw, param, schema_key="input_schema"))
    if len({t.name for t in tools}) != len(tools):
        raise bad("`tools` has two tools of the same name.", "tools")
    choice = optional(body, "tool_choice", (dict,))
    if choice is None:
        return tools, "auto", True
    kind = choice.get("type")
    parallel = optional(choice, "disable_parallel_tool_use", (bool,), "tool_choice.disable_parallel_tool_use")
    parallel = not parallel
    if kind == "auto":
        return tools, "auto", parallel
    if kind == "none":
        return tools, "none", parallel
    if kind == "any":
        if not tools:
            raise bad("`tool_choice: any` needs client `tools`.", "tool_choice")
        return tools, "required", parallel
    if kind == "tool":
        name = choice.get("name")
        if not isinstance(name, str):
            raise bad("`tool_choice.name` must be a string.", "tool_choice")
        if name not in {t.name for t in tools}:
            why = " (it is a server tool, which this gateway does not run)" if name in server_tools else ""
            raise bad(f"`tool_choice.name` must name a tool of `tools`{why}.", "tool_choice")
        return tools, name, parallel
    raise bad("`tool_choice.type` must be `auto`, `any`, `tool` or `none`.", "tool_choice")


def _generation(body: dict, count_only: bool) -> Generation:
    max_tokens = None if count_only else optional(body, "max_tokens", (int,))
    if max_tokens is not None and max_tokens < 1:
        raise bad("`max_tokens` must be at least 1.", "max_tokens")
    top_k = optional(body, "top_k", (int,))
    if top_k is not None and top_k < 1:
        raise bad("`top_k` must be at least 1.", "top_k")
    stops = optional(body, "stop_sequences", (list,)) or []
    if not all(isinstance(s, str) for s in stops):
        raise bad("`stop_sequences` must be an array of strings.", "stop_sequences")
    stops = [s for s in stops if s]
    if len(stops) > MAX_STOP_SEQUENCES:
        raise bad(f"`stop_sequences` may hold at most {MAX_STOP_SEQUENCES} sequences.", "stop_sequences")
    json_output, schema, effort = _output_config(optional(body, "output_config", (dict,)))
    thinking_effort = _thinking(optional(body, "thinking", (dict,)))
    return Generation(
        temperature=number(body, "temperature", 0, 1), top_p=number(body, "top_p", 0, 1), top_k=top_k,
        max_output_tokens=max_tokens, stop=tuple(stops), json_output=json_output, json_schema=schema,
        reasoning_effort=thinking_effort if thinking_effort is not None else effort,
    )


def _thinking(value: dict | None) -> str | None:
    """`thinking`: enabled with a budget -> an effort by the budget; disabled -> none; adaptive
    (or between_tools, or absent) -> the model's default."""
    if value is None:
        return None
    kind = value.get("type")
    if kind == "enabled":
        budget = optional(value, "budget_tokens", (int,), "thinking.budget_tokens")
        if budget is None or budget < 1:
            raise bad("`thinking.budget_tokens` must be a positive integer.", "thinking.budget_tokens")
        return next((effort for limit, effort in EFFORT_BUDGETS if budget < limit), "high")
    if kind == "disabled":
        return "none"
    if kind in ("adaptive", "between_tools"):
        return None
    raise bad("`thinking.type` must be `enabled`, `disabled` or `adaptive`.", "thinking")


def _output_config(value: dict | None) -> tuple[bool, dict | None, str | None]:
    """`output_config`: `format` (a JSON schema the answer follows) and `effort`."""
    if value is None:
        return False, None, None
    effort = optional(value, "effort", (str,), "output_config.effort")
    if effort is not None and effort not in OUTPUT_EFFORTS:
        raise bad(f"`output_config.effort` must be one of {', '.join(OUTPUT_EFFORTS)}.", "output_config.effort")
    output_format = optional(value, "format", (dict,), "output_config.format")
    schema = None
    if output_format is not None:
        schema = output_format.get("schema")
        if output_format.get("type") != "json_schema" or not isinstance(schema, dict):
            raise bad("`output_config.format` must be `{\"type\": \"json_schema\", \"schema\": {...}}`.",
                      "output_config.format")
    return schema is not None, schema, OUTPUT_EFFORTS.get(effort) if effort else None
