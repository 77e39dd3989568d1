"""Conversation: what any API front-end asks of the model, in one shape.

Each front-end (`chat_request.py` for OpenAI chat completions) parses its own JSON into a
`Conversation`; everything after that (the prompt, the CLI settings, the run, the answer
events) is shared. A front-end keeps only its wire details (e.g. `include_usage`) to itself.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from .generation import Generation

SYSTEM_ROLES = {"system", "developer"}


@dataclass(eq=False)  # compared by identity: two equal images are still two parts
class Image:
    """An image part from a `data:` URL, to be written into the run's workspace."""

    mime: str
    extension: str
    data: bytes


def json_text(value: Any) -> str:
    """JSON as the APIs carry tool arguments: a compact string."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


@dataclass
class ToolCall:
    """A call of a client tool: made by the model (answer) or replayed from history."""

    id: str
    name: str
    arguments: str  # JSON text of an object, as the OpenAI API carries it

    def arguments_object(self) -> Any:
        try:
            return json.loads(self.arguments) if self.arguments.strip() else {}
        except ValueError:
            return self.arguments


@dataclass
class ToolResult:
    """What a client tool returned for one call (a `tool` message)."""

    call_id: str
    content: str
    name: str | None = None  # the tool's name, filled in from the call it answers


Part = str | Image | ToolCall | ToolResult


@dataclass
class Message:
    """One turn: `system`, `user`, `assistant` or `tool`, with its parts in their order."""

    role: str
    parts: list[Part] = field(default_factory=list)
    name: str | None = None

    @property
    def text(self) -> str:
        return "\n".join(p for p in self.parts if isinstance(p, str))

    @property
    def images(self) -> list[Image]:
        return [p for p in self.parts if isinstance(p, Image)]

    @property
    def tool_calls(self) -> list[ToolCall]:
        return [p for p in self.parts if isinstance(p, ToolCall)]

    @property
    def tool_results(self) -> list[ToolResult]:
        return [p for p in self.parts if isinstance(p, ToolResult)]


@dataclass
class Tool:
    """A client function the model may call: name, description, JSON schema of its arguments."""

    name: str
    description: str
    parameters: dict[str, Any]


@dataclass
class Conversation:
    """The request, API-neutral: model, system text, turns, tools and generation settings."""

    model: str  # the id the client asked for
    cli_model: str  # what the CLI gets as `-m`
    messages: list[Message]
    tools: list[Tool] = field(default_factory=list)
    # "auto", "none", "required", or the name of the one tool the model must call.
    tool_choice: str = "auto"
    parallel_tool_calls: bool = True
    generation: Generation = field(default_factory=Generation)
    stream: bool = False

    @property
    def system_text(self) -> str:
        """The client's system prompt; empty when its instructions are the turn to answer."""
        if not self.has_user_turn:
            return ""
        return "\n\n".join(m.text for m in self.messages if m.role in SYSTEM_ROLES and m.text.strip())

    @property
    def turns(self) -> list[Message]:
        """The turns the model answers. A conversation of system messages only (valid for the
        OpenAI API) has no turn to answer: its instructions become the user's turn."""
        turns = [m for m in self.messages if m.role not in SYSTEM_ROLES]
        if not self.has_user_turn:
            instructions = [Message("user", list(m.parts)) for m in self.messages if m.role in SYSTEM_ROLES]
            return instructions + turns
        return turns

    @property
    def has_user_turn(self) -> bool:
        return any(m.role in {"user", "tool"} for m in self.messages)

    @property
    def images(self) -> list[Image]:
        return [image for m in self.turns for image in m.images]

    @property
    def offered_tools(self) -> list[Tool]:
        """The tools the model is told about: none for `tool_choice: "none"`, only the named
        one for a forced choice, else all of them."""
        if self.tool_choice == "none":
            return []
        if self.tool_choice not in {"auto", "required"}:
            return [t for t in self.tools if t.name == self.tool_choice]
        return list(self.tools)
