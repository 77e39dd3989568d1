"""The OpenAI Responses API through the official SDK (strict), gunicorn, the real CLI and the mock."""

from __future__ import annotations

import json

import openai
import pytest
import requests

from tests.conftest import make_client
from tests.mock_gemini_api import declared_tools, function_call, model_turn
from tests.test_real_cli import last_body, prompt_text

SHELL = {"type": "function", "name": "exec_command", "description": "Run a shell command.",
         "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}, "required": ["cmd"]},
         "strict": False}


@pytest.fixture
def strict(real_server) -> openai.OpenAI:
    return make_client(real_server.base_url, _strict_response_validation=True)


def calls_until_result(text: str = "Done: 42 files."):
    def script(body):
        if "result of call" in json.dumps(body["contents"]):
            return model_turn([{"text": text}])
        if declared_tools(body):
            return model_turn([function_call("mcp_fn_exec_command", {"cmd": "ls | wc -l"})])
        return None
    return script


def test_text_answer_non_streamed(strict, mock):
    mock.configure(chunks=["Hello", " there"], usage={"promptTokenCount": 9, "candidatesTokenCount": 2,
                                                      "totalTokenCount": 11})
    response = strict.responses.create(model="gemini-cli", instructions="Be terse.", input="say hello",
                                       temperature=0.5, max_output_tokens=50, store=False)
    assert response.status == "completed" and response.output_text == "Hello there"
    assert (response.usage.input_tokens, response.usage.output_tokens, response.usage.total_tokens) == (9, 2, 11)
    body = last_body(mock)
    assert body["systemInstruction"]["parts"][0]["text"] == "Be terse."
    assert body["generationConfig"]["temperature"] == 0.5 and body["generationConfig"]["maxOutputTokens"] == 50
    assert prompt_text(body).endswith("say hello")


def test_text_answer_streamed_event_sequence(strict, mock):
    mock.configure(chunks=["a", "b", "c"])
    events = list(strict.responses.create(model="gemini-cli", input=[
        {"role": "developer", "content": "sys"}, {"role": "user", "content": [{"type": "input_text", "text": "hi"}]}],
        stream=True))
    kinds = [e.type for e in events]
    assert kinds == ["response.created", "response.in_progress", "response.output_item.added",
                     "response.content_part.added", "response.output_text.delta", "response.output_text.delta",
                     "response.output_text.delta", "response.output_text.done", "response.content_part.done",
                     "response.output_item.done", "response.completed"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[-1].response.output_text == "abc"


def test_tool_loop_streamed_and_not(strict, mock):
    mock.configure(script=calls_until_result())
    items: list = [{"role": "user", "content": "count the files"}]
    first = strict.responses.create(model="gemini-cli", input=items, tools=[SHELL, {"type": "web_search"}])
    calls = [item for item in first.output if item.type == "function_call"]
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("exec_command", {"cmd": "ls | wc -l"})]
    # Only the function tool reached the model.
    assert [d["name"] for d in declared_tools(last_body(mock))] == ["mcp_fn_exec_command"]
    items += [c.model_dump(exclude_none=True) for c in calls]
    items += [{"type": "function_call_output", "call_id": calls[0].call_id, "output": "42"}]
    with strict.responses.stream(model="gemini-cli", input=items, tools=[SHELL]) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == final.output_text == "Done: 42 files."
    history = json.dumps(last_body(mock)["contents"])
    assert f"result of call {calls[0].call_id} to exec_command" in history and "42" in history


def test_streamed_function_call_events(strict, mock):
    mock.configure(script=calls_until_result())
    events = list(strict.responses.create(model="gemini-cli", input="count", tools=[SHELL], stream=True))
    kinds = [e.type for e in events]
    assert kinds[-5:] == ["response.output_item.added", "response.function_call_arguments.delta",
                          "response.function_call_arguments.done", "response.output_item.done",
                          "response.completed"]
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    assert json.loads(done.arguments) == {"cmd": "ls | wc -l"}
    assert events[-1].response.output[-1].type == "function_call"


def test_max_output_tokens_makes_it_incomplete(strict, mock):
    mock.configure(usage={"promptTokenCount": 3, "candidatesTokenCount": 16, "totalTokenCount": 19})
    response = strict.responses.create(model="gemini-cli", input="long", max_output_tokens=16)
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"


def test_json_schema_text_format(strict, mock):
    mock.configure(chunks=['{"n": 1}'])
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"],
              "additionalProperties": False}
    response = strict.responses.create(model="gemini-cli", input="n?", text={"format": {
        "type": "json_schema", "name": "n", "schema": schema, "strict": True}})
    assert json.loads(response.output_text) == {"n": 1}
    assert last_body(mock)["generationConfig"]["responseJsonSchema"] == schema


@pytest.mark.parametrize("body, param", [
    ({"model": "gemini-cli", "input": "hi", "previous_response_id": "resp_1"}, "previous_response_id"),
    ({"model": "gemini-cli", "input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0]"),
    ({"model": "gemini-cli", "input": [{"type": "function_call_output", "call_id": "nope", "output": "x"}]},
     "input"),
    ({"model": "gemini-cli", "input": ""}, "input"),
    ({"model": "gemini-cli", "input": "hi", "reasoning": {"effort": "max"}}, "reasoning"),
])
def test_stateless_and_invalid_requests_get_clear_400s(real_server, body, param):
    response = requests.post(real_server.base_url + "/v1/responses", json=body, timeout=30)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_stored_responses_cannot_be_retrieved(strict):
    with pytest.raises(openai.BadRequestError) as caught:
        strict.responses.retrieve("resp_123")
    assert "send the whole conversation" in caught.value.message
