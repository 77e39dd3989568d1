"""The model's thoughts, end to end through the real CLI (over ACP) and the mock API scripted to
send thought parts: `reasoning_content` (chat), reasoning items (Responses), thinking blocks
(Messages); streamed before the answer, and not streamed."""

from __future__ import annotations

import anthropic
import pytest

from tests.conftest import make_client as make_openai_client
from tests.mock_gemini_api import model_turn
from tests.test_real_cli import ask

THOUGHT = "Weighing the options"
TURN = [{"text": THOUGHT, "thought": True}, {"text": "Take"}, {"text": " the train."}]


@pytest.fixture
def thinking_mock(mock):
    mock.configure(raw_events=model_turn(TURN))
    return mock


def test_chat_reasoning_content_non_streamed(real_oai, thinking_mock):
    reply = real_oai.chat.completions.create(model="gemini-cli", messages=ask("train or bus?"))
    message = reply.choices[0].message
    assert message.content == "Take the train."
    assert message.model_extra["reasoning_content"] == THOUGHT


def test_chat_reasoning_content_streams_before_the_answer(real_oai, thinking_mock):
    chunks = list(real_oai.chat.completions.create(model="gemini-cli", messages=ask("train or bus?"), stream=True))
    kinds = [("reasoning" if (c.choices[0].delta.model_extra or {}).get("reasoning_content") else
              "text" if c.choices[0].delta.content else None) for c in chunks if c.choices]
    kinds = [k for k in kinds if k]
    assert kinds[0] == "reasoning" and set(kinds[1:]) == {"text"}
    reasoning = "".join((c.choices[0].delta.model_extra or {}).get("reasoning_content") or ""
                        for c in chunks if c.choices)
    assert reasoning == THOUGHT


def test_responses_reasoning_item(real_server, thinking_mock):
    client = make_openai_client(real_server.base_url, _strict_response_validation=True)
    response = client.responses.create(model="gemini-cli", input="train or bus?", reasoning={"effort": "low"})
    kinds = [item.type for item in response.output]
    assert kinds == ["reasoning", "message"]
    assert response.output[0].summary[0].text == THOUGHT and response.output_text == "Take the train."
    events = list(client.responses.create(model="gemini-cli", input="train or bus?", stream=True))
    deltas = [e.delta for e in events if e.type == "response.reasoning_summary_text.delta"]
    assert "".join(deltas) == THOUGHT
    first_text = next(i for i, e in enumerate(events) if e.type == "response.output_text.delta")
    assert max(i for i, e in enumerate(events) if e.type == "response.reasoning_summary_text.delta") < first_text


def test_messages_thinking_block(real_server, thinking_mock):
    client = anthropic.Anthropic(base_url=real_server.base_url, api_key="sk-test", max_retries=0)
    message = client.messages.create(model="gemini-cli", max_tokens=500, messages=ask("train or bus?"),
                                     thinking={"type": "enabled", "budget_tokens": 2048})
    assert [b.type for b in message.content] == ["thinking", "text"]
    assert message.content[0].thinking == THOUGHT and message.content[1].text == "Take the train."
    with client.messages.stream(model="gemini-cli", max_tokens=500, messages=ask("train or bus?")) as stream:
        thinking = "".join(e.delta.thinking for e in stream if e.type == "content_block_delta"
                           and e.delta.type == "thinking_delta")
        final = stream.get_final_message()
    assert thinking == THOUGHT and [b.type for b in final.content] == ["thinking", "text"]
