"""What a CLI run answers, as typed events: the language the drivers (proxy/cli/) speak to the
gateway and the front-ends (proxy/api/), whichever way the CLI is driven.

A run yields `Thinking` and `Delta` pieces, one `ToolCalled` per client tool call, then one
`Finished`; the gateway adds `Silence` for every heartbeat interval in which nothing came.
"""

from __future__ import annotations

from dataclasses import dataclass

from .conversation import ToolCall


@dataclass
class Delta:
    """A piece of the answer's text."""

    text: str


@dataclass
class Thinking:
    """A piece of the model's thoughts (reasoning), streamed before its answer."""

    text: str


@dataclass
class ToolCalled:
    """The model called one of the client's tools."""

    call: ToolCall


@dataclass
class Silence:
    """Nothing came for a heartbeat interval (the gateway's, not the CLI's)."""


@dataclass
class Finished:
    finish_reason: str  # stop, length, content_filter or tool_calls (OpenAI's names)
    usage: dict[str, int] | None


AnswerEvent = Delta | Thinking | ToolCalled | Finished
