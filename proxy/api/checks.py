"""Checks every front-end's parser shares: types, ranges, images, tool names, tool pairing.

Each raises (or returns) an `ApiError` 400 that names the offending parameter, so that any
body a client can send ends as a parsed request or a clear 4xx.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import re
from dataclasses import dataclass
from typing import Any

from ..conversation import Image, Message, Tool, ToolCall, ToolResult
from ..service.errors import ApiError

NUMBER = (int, float)
# Image types the CLI turns into inlineData parts, by the extension it infers them from.
IMAGE_TYPES = {
    "image/png": "png",
    "image/jpeg": "jpg",
    "image/jpg": "jpg",
    "image/webp": "webp",
    "image/gif": "gif",
    "image/heic": "heic",
    "image/heif": "heif",
}
MAX_IMAGE_BYTES = 20 * 1024 * 1024  # the CLI silently drops larger files
DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)(?P<params>(;[^;,]*)*?);base64,(?P<data>.*)$", re.S)

# Function names as the OpenAI API accepts them.
TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_STOP_SEQUENCES = 5  # Gemini's limit (OpenAI's is 4)


def model(body: dict, models: dict[str, str], aliases: tuple[tuple[str, str], ...] = ()) -> tuple[str, str]:
    """The requested model id and the CLI model it maps to: an id of the table, or a name an
    alias pattern (PROXY_MODEL_ALIASES, e.g. `claude-*=gemini-3-flash`) maps onto one."""
    name = body.get("model")
    if not isinstance(name, str) or not name:
        raise bad("`model` is required and must be a string.", "model")
    if name in models:
        return name, models[name]
    for pattern, target in aliases:
        if fnmatch.fnmatchcase(name, pattern) and target in models:
            return name, models[target]
    known = ", ".join(models)
    raise ApiError(404, f"The model `{name[:100]}` does not exist. Available models: {known}.",
                   code="model_not_found", param="model")


def bad(message: str, param: str | None) -> ApiError:
    return ApiError(400, message, code="invalid_request", param=param)


def optional(body: dict, name: str, types: tuple[type, ...], param: str | None = None) -> Any:
    """`body[name]` if present and of one of `types`, None if absent or null, else a 400."""
    value = body.get(name)
    if value is None:
        return None
    # bool is an int in Python; a JSON true is not a number here.
    if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
        raise bad(f"`{param or name}` has the wrong type.", param or name)
    return value


def number(body: dict, name: str, low: float, high: float | None) -> float | None:
    value = optional(body, name, NUMBER)
    if value is not None and not (low <= value and (high is None or value <= high)):
        bounds = f"between {low:g} and {high:g}" if high is not None else f"at least {low:g}"
        raise bad(f"`{name}` must be {bounds}.", name)
    return value


def int32(seed: int | None) -> int | None:
    """Gemini's seed is 32-bit; OpenAI's is not. Wrapping keeps a seed's answers repeatable."""
    return None if seed is None else (seed + 2**31) % 2**32 - 2**31


def tool(function: dict, param: str, schema_key: str = "parameters") -> Tool:
    """A function tool from `{name, description, <schema_key>}`."""
    name = function.get("name")
    if not isinstance(name, str) or not TOOL_NAME.match(name):
        raise bad(f"`{param}.name` must be 1-64 letters, digits, `_` or `-`.", param)
    description = function.get("description")
    if description is not None and not isinstance(description, str):
        raise bad(f"`{param}.description` must be a string.", param)
    parameters = function.get(schema_key)
    if parameters is None:
        parameters = {"type": "object", "properties": {}}
    if not isinstance(parameters, dict):
        raise bad(f"`{param}.{schema_key}` must be a JSON schema object.", param)
    return Tool(name=name, description=description or "", parameters=parameters)


def image_from_url(value: Any, param: str) -> Image:
    """An image from an OpenAI `image_url` value (`{"url": ...}` or the URL itself)."""
    url = value.get("url") if isinstance(value, dict) else value
    if not isinstance(url, str):
        raise bad(f"`{param}.image_url.url` must be a string.", param)
    if url.startswith(("http://", "https://")):
        raise remote_image(param)
    match = DATA_URL.match(url)
    if not match:
        raise bad(f"`{param}.image_url.url` must be a base64 `data:` URL.", param)
    return image(match["mime"], match["data"], param)


def remote_image(param: str) -> ApiError:
    return bad("Remote image URLs are not fetched by this gateway; send the image inline as base64 data.", param)


def image(mime: Any, data: Any, param: str) -> Image:
    """An image from its media type and base64 data."""
    if not isinstance(mime, str) or not isinstance(data, str):
        raise bad(f"`{param}` needs a media type and base64 data.", param)
    mime = mime.lower()
    if mime not in IMAGE_TYPES:
        raise bad(f"Image type `{mime[:60]}` is not supported; use one of "
                  f"{', '.join(sorted(set(IMAGE_TYPES) - {'image/jpg'}))}.", param)
    try:
        decoded = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise bad(f"`{param}`: the image is not valid base64.", param) from None
    if len(decoded) > MAX_IMAGE_BYTES:
        raise bad(f"An image is larger than {MAX_IMAGE_BYTES // (1024 * 1024)} MB.", param)
    return Image(mime=mime, extension=IMAGE_TYPES[mime], data=decoded)


Turn = list[tuple[int, Message]]  # messages answered together, each with the index its errors name


@dataclass
class PairingWords:
    """How a front-end words the errors of `pair_tool_results`: OpenAI's, naming `messages[i]`
    (or `where`, for a front-end whose items are not those messages)."""

    where: str | None = None

    def unexpected(self, index: int, result: ToolResult) -> ApiError:
        param = self.where or f"messages[{index}]"
        what = f"`{result.call_id[:80]}`" if result.call_id else f"of function `{result.name}`"
        return bad(f"`{param}`: the tool result {what} does not answer a tool call of the assistant message "
                   "before it (or that call was already answered).", self.where or f"{param}.tool_call_id")

    def duplicate(self, index: int, call_id: str) -> ApiError:
        param = self.where or f"messages[{index}]"
        return bad(f"`{param}` has two tool calls with the id `{call_id[:80]}`.", self.where or f"{param}.tool_calls")

    def unanswered(self, open_calls: dict[str, int], before: int | None) -> ApiError:
        """`open_calls`: call id -> the index of the message that made it; `before`: the index of
        the message that came instead of their results (None: the conversation ended)."""
        place = (f"before `{self.where or f'messages[{before}]'}`" if before is not None
                 else f"at the end of `{self.where or 'messages'}`")
        return bad(f"The tool calls {', '.join(list(open_calls)[:5])} have no result {place}; send one for each "
                   "call, right after the turn that made them.", self.where or "messages")


def openai_turns(messages: list[Message]) -> list[Turn]:
    """OpenAI's messages as turns: system messages aside (instructions, wherever they stand, join
    the system prompt), each message a turn, but consecutive tool messages one turn."""
    turns: list[Turn] = []
    for index, message in enumerate(messages):
        if message.role == "system":
            continue
        if message.role == "tool" and turns and turns[-1][-1][1].role == "tool":
            turns[-1].append((index, message))
        else:
            turns.append([(index, message)])
    return turns


def pair_tool_results(turns: list[Turn], words: PairingWords | None = None) -> None:
    """Every tool result answers a call of the turn right before it, and every call of a turn is
    answered by the turn right after it: the model must get them paired, in order. Fills in each
    result's tool name (and a legacy `function` result's call id)."""
    words = words or PairingWords()
    open_calls: dict[str, tuple[int, ToolCall]] = {}
    for position, turn in enumerate(turns):
        results = [(index, result) for index, message in turn for result in message.tool_results]
        if open_calls and not results:
            raise words.unanswered({call_id: made for call_id, (made, _) in open_calls.items()}, turn[0][0])
        for index, result in results:
            if not result.call_id:  # legacy `function` message: the open call of that name
                result.call_id = next((c.id for _, c in open_calls.values() if c.name == result.name), "")
            made = open_calls.pop(result.call_id, None)
            if made is None:
                raise words.unexpected(index, result)
            result.name = made[1].name
        if open_calls:
            before = turns[position + 1][0][0] if position + 1 < len(turns) else None
            raise words.unanswered({call_id: made for call_id, (made, _) in open_calls.items()}, before)
        for index, message in turn:
            for call in message.tool_calls:
                if call.id in open_calls:
                    raise words.duplicate(index, call.id)
                open_calls[call.id] = (index, call)
    if open_calls:
        raise words.unanswered({call_id: made for call_id, (made, _) in open_calls.items()}, None)
