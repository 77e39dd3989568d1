"""ChatRequest: a validated OpenAI chat completion request.

Only what the gateway uses is kept; every other OpenAI parameter (temperature, top_p,
max_tokens, stop, seed, tools, user, metadata, ...) is accepted and ignored, but still
type-checked so that a malformed request gets a 400 rather than a silent surprise.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field
from typing import Any

from .errors import ApiError

ROLES = {"system", "developer", "user", "assistant", "tool", "function"}
SYSTEM_ROLES = {"system", "developer"}

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

# Ignored parameters and the JSON types they may have (None = JSON null allowed everywhere).
_NUMBER = (int, float)
IGNORED_PARAMS: dict[str, tuple[type, ...]] = {
    "temperature": _NUMBER,
    "top_p": _NUMBER,
    "frequency_penalty": _NUMBER,
    "presence_penalty": _NUMBER,
    "max_tokens": (int,),
    "max_completion_tokens": (int,),
    "seed": (int,),
    "stop": (str, list),
    "logit_bias": (dict,),
    "logprobs": (bool,),
    "top_logprobs": (int,),
    "user": (str,),
    "metadata": (dict,),
    "tools": (list,),
    "tool_choice": (str, dict),
    "parallel_tool_calls": (bool,),
    "response_format": (dict,),
    "reasoning_effort": (str,),
    "service_tier": (str,),
    "store": (bool,),
    "modalities": (list,),
    "audio": (dict,),
    "prediction": (dict,),
    "functions": (list,),
    "function_call": (str, dict),
}


@dataclass(eq=False)  # compared by identity: two equal images are still two parts
class Image:
    """An image part from a `data:` URL, to be written into the run's workspace."""

    mime: str
    extension: str
    data: bytes


@dataclass
class Message:
    """One message: its role and its content, text and images in their order."""

    role: str
    parts: list[str | Image] = field(default_factory=list)
    name: str | None = None

    @property
    def text(self) -> str:
        return "\n".join(p for p in self.parts if isinstance(p, str))

    @property
    def images(self) -> list[Image]:
        return [p for p in self.parts if isinstance(p, Image)]


@dataclass
class ChatRequest:
    """What a chat completion request asks the gateway to do."""

    model: str
    cli_model: str
    messages: list[Message]
    stream: bool = False
    include_usage: bool = False

    @property
    def system_text(self) -> str:
        return "\n\n".join(m.text for m in self.messages if m.role in SYSTEM_ROLES and m.text.strip())

    @property
    def conversation(self) -> list[Message]:
        return [m for m in self.messages if m.role not in SYSTEM_ROLES]

    @property
    def images(self) -> list[Image]:
        return [image for m in self.messages for image in m.images]

    @classmethod
    def from_json(cls, body: Any, models: dict[str, str]) -> ChatRequest:
        if not isinstance(body, dict):
            raise ApiError(400, "The request body must be a JSON object.", code="invalid_json")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise _bad("`model` is required and must be a string.", "model")
        if model not in models:
            known = ", ".join(models)
            raise ApiError(404, f"The model `{model}` does not exist. Available models: {known}.",
                           code="model_not_found", param="model")
        stream = _optional(body, "stream", (bool,)) or False
        options = _optional(body, "stream_options", (dict,)) or {}
        include_usage = options.get("include_usage", False)
        if not isinstance(include_usage, bool):
            raise _bad("`stream_options.include_usage` must be a boolean.", "stream_options")
        n = _optional(body, "n", (int,))
        if n is not None and n != 1:
            raise _bad("Only `n: 1` is supported: the gateway returns one choice.", "n")
        for name, types in IGNORED_PARAMS.items():
            _optional(body, name, types)
        raw_messages = body.get("messages")
        if not isinstance(raw_messages, list) or not raw_messages:
            raise _bad("`messages` must be a non-empty array.", "messages")
        messages = [_message(raw, i) for i, raw in enumerate(raw_messages)]
        if not any(m.role not in SYSTEM_ROLES for m in messages):
            raise _bad("`messages` needs at least one user message.", "messages")
        return cls(model=model, cli_model=models[model], messages=messages, stream=stream,
                   include_usage=bool(stream and include_usage))


def _bad(message: str, param: str | None) -> ApiError:
    return ApiError(400, message, code="invalid_request", param=param)


def _optional(body: dict, name: str, types: tuple[type, ...]) -> Any:
    value = body.get(name)
    if value is None:
        return None
    # bool is an int in Python; a JSON true is not a number here.
    if isinstance(value, bool) and bool not in types:
        raise _bad(f"`{name}` has the wrong type.", name)
    if not isinstance(value, types):
        raise _bad(f"`{name}` has the wrong type.", name)
    return value


def _message(raw: Any, index: int) -> Message:
    param = f"messages[{index}]"
    if not isinstance(raw, dict):
        raise _bad(f"`{param}` must be an object.", param)
    role = raw.get("role")
    if role not in ROLES:
        raise _bad(f"`{param}.role` must be one of {', '.join(sorted(ROLES))}.", f"{param}.role")
    name = raw.get("name") if isinstance(raw.get("name"), str) else None
    if role == "tool" and isinstance(raw.get("tool_call_id"), str):
        name = name or raw["tool_call_id"]
    parts = _content(raw.get("content"), f"{param}.content")
    if role == "assistant":
        parts += _tool_calls(raw.get("tool_calls"), param)
    message = Message(role=role, parts=parts, name=name)
    if message.images and role != "user":
        raise _bad(f"`{param}`: images are only supported in user messages.", f"{param}.content")
    return message


def _content(content: Any, param: str) -> list[str | Image]:
    if content is None:
        return []
    if isinstance(content, str):
        return [content]
    if not isinstance(content, list):
        raise _bad(f"`{param}` must be a string or an array of content parts.", param)
    parts: list[str | Image] = []
    for i, part in enumerate(content):
        part_param = f"{param}[{i}]"
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise _bad(f"`{part_param}` must be an object with a `type`.", part_param)
        kind = part["type"]
        if kind in {"text", "input_text"}:
            if not isinstance(part.get("text"), str):
                raise _bad(f"`{part_param}.text` must be a string.", part_param)
            parts.append(part["text"])
        elif kind == "image_url":
            parts.append(_image(part.get("image_url"), part_param))
        else:
            raise _bad(f"Content parts of type `{kind}` are not supported; send text or image_url "
                       "(base64 data: URLs) parts.", part_param)
    return parts


def _image(value: Any, param: str) -> Image:
    url = value.get("url") if isinstance(value, dict) else value
    if not isinstance(url, str):
        raise _bad(f"`{param}.image_url.url` must be a string.", param)
    if url.startswith(("http://", "https://")):
        raise _bad("Remote image URLs are not fetched by this gateway; send the image inline as a "
                   "base64 `data:` URL.", param)
    match = DATA_URL.match(url)
    if not match:
        raise _bad(f"`{param}.image_url.url` must be a base64 `data:` URL.", param)
    mime = match["mime"].lower()
    if mime not in IMAGE_TYPES:
        raise _bad(f"Image type `{mime}` is not supported; use one of "
                   f"{', '.join(sorted(set(IMAGE_TYPES) - {'image/jpg'}))}.", param)
    try:
        data = base64.b64decode(match["data"], validate=True)
    except (binascii.Error, ValueError):
        raise _bad(f"`{param}.image_url.url` is not valid base64.", param) from None
    if len(data) > MAX_IMAGE_BYTES:
        raise _bad(f"An image is larger than {MAX_IMAGE_BYTES // (1024 * 1024)} MB.", param)
    return Image(mime=mime, extension=IMAGE_TYPES[mime], data=data)


def _tool_calls(tool_calls: Any, param: str) -> list[str | Image]:
    """An assistant turn's tool calls as text, so the model sees its own history."""
    if tool_calls is None:
        return []
    if not isinstance(tool_calls, list):
        raise _bad(f"`{param}.tool_calls` must be an array.", f"{param}.tool_calls")
    lines: list[str | Image] = []
    for call in tool_calls:
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            lines.append(f"[called tool {function.get('name')} with arguments {function.get('arguments')}]")
    return lines
