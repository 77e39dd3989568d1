"""ApiRequest: what every front-end's parser makes of a body (its `Conversation`, plus the
options only its own wire needs, in a subclass)."""

from __future__ import annotations

from dataclasses import dataclass

from ..conversation import Conversation


@dataclass
class ApiRequest:
    """A validated request: the conversation every layer below reads."""

    conversation: Conversation

    @property
    def model(self) -> str:
        """The model id the client asked for (answers carry it)."""
        return self.conversation.model

    @property
    def stream(self) -> bool:
        return self.conversation.stream
