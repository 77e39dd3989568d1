"""Tool calling end to end: openai SDK -> gunicorn/gevent -> proxy -> real `gemini` -> mock API.

The mock is scripted per request: while the conversation has no tool result it answers with
`functionCall` parts for the declared tools; once results are there, with text.
"""

from __future__ import annotations

import json

import openai
import pytest

from tests.mock_gemini_api import calls_then_text, contents_text, declared_tools, function_call, model_turn
from tests.proxy_server import wait_until
from tests.test_real_cli import ask, last_body

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather for a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "Local time in a time zone.",
    "parameters": {"type": "object", "properties": {"tz": {"type": "string", "enum": ["UTC", "CET"]}}}}}








def test_tool_loop_non_streamed(real_oai, real_server, mock):
    mock.configure(script=calls_then_text(("get_weather", {"city": "Oslo"}), ("get_weather", {"city": "Bergen"})))
    messages = ask("What is the weather in Oslo and Bergen?")
    first = real_oai.chat.completions.create(model="gemini-cli", messages=messages, tools=[WEATHER, TIME])
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("get_weather", {"city": "Oslo"}), ("get_weather", {"city": "Bergen"})]
    assert len({c.id for c in calls}) == 2 and all(c.type == "function" for c in calls)
    # The model was told exactly the client's tools (under the CLI's MCP names), nothing else.
    declared = declared_tools(last_body(mock))
    assert sorted(d["name"] for d in declared) == ["mcp_fn_get_time", "mcp_fn_get_weather"]
    assert next(d for d in declared if d["name"] == "mcp_fn_get_time")["parametersJsonSchema"][
        "properties"]["tz"]["enum"] == ["UTC", "CET"]
    # The run ended at the calls: one request reached the API, no tool result was sent to it.
    assert len(mock.generate_requests()) == 1
    assert wait_until(lambda: not real_server.run_dirs(), 10)

    messages += [choice.message.model_dump(exclude_none=True)]
    messages += [{"role": "tool", "tool_call_id": c.id,
                  "content": f"rain in {json.loads(c.function.arguments)['city']}"} for c in calls]
    final = real_oai.chat.completions.create(model="gemini-cli", messages=messages, tools=[WEATHER, TIME])
    assert final.choices[0].finish_reason == "stop"
    assert final.choices[0].message.content == "Oslo is rainy, Bergen is too."
    history = contents_text(last_body(mock))
    # Both calls and both results reached the model, paired by id, in order.
    for call, city in zip(calls, ("Oslo", "Bergen"), strict=True):
        assert f"call id {call.id}" in history and f"result of call {call.id} to get_weather" in history
        assert f"rain in {city}" in history
    assert history.index(f"result of call {calls[0].id}") < history.index(f"result of call {calls[1].id}")


def test_tool_loop_streamed_with_the_sdk_stream_helper(real_oai, mock):
    mock.configure(script=calls_then_text(("get_weather", {"city": "Oslo"}), ("get_time", {"tz": "CET"})))
    messages = ask("Weather in Oslo, and the time?")
    with real_oai.chat.completions.stream(model="gemini-cli", messages=messages, tools=[WEATHER, TIME]) as stream:
        for _ in stream:
            pass
        completion = stream.get_final_completion()
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert [(c.function.name, json.loads(c.function.arguments)) for c in choice.message.tool_calls] == [
        ("get_weather", {"city": "Oslo"}), ("get_time", {"tz": "CET"})]
    messages += [choice.message.model_dump(exclude_none=True, exclude={"parsed"})]
    messages += [{"role": "tool", "tool_call_id": c.id, "content": [{"type": "text", "text": "ok"}]}
                 for c in choice.message.tool_calls]
    chunks = list(real_oai.chat.completions.create(model="gemini-cli", messages=messages, tools=[WEATHER, TIME],
                                                   stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Oslo is rainy, Bergen is too."
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_streamed_tool_call_chunks_carry_index_id_and_name(real_oai, mock):
    mock.configure(script=calls_then_text(("get_weather", {"city": "Oslo"}), ("get_weather", {"city": "Rome"})))
    chunks = list(real_oai.chat.completions.create(model="gemini-cli", messages=ask("weather?"), tools=[WEATHER],
                                                   stream=True, stream_options={"include_usage": True}))
    deltas = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert [(d.index, d.function.name) for d in deltas] == [(0, "get_weather"), (1, "get_weather")]
    assert all(d.id and d.type == "function" for d in deltas)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"


def test_tool_choice_none_declares_no_tool(real_oai, mock):
    mock.configure(chunks=["plain answer"])
    reply = real_oai.chat.completions.create(model="gemini-cli", messages=ask("hi"), tools=[WEATHER],
                                             tool_choice="none")
    assert reply.choices[0].message.content == "plain answer"
    assert declared_tools(last_body(mock)) == []


@pytest.mark.parametrize("choice, declared", [
    ("required", ["mcp_fn_get_time", "mcp_fn_get_weather"]),
    ({"type": "function", "function": {"name": "get_time"}}, ["mcp_fn_get_time"]),
])
def test_forced_tool_choice_makes_the_api_call_a_function(real_oai, mock, choice, declared):
    mock.configure(script=calls_then_text(("get_time", {"tz": "UTC"})))
    reply = real_oai.chat.completions.create(model="gemini-cli", messages=ask("time?"), tools=[WEATHER, TIME],
                                             tool_choice=choice)
    assert reply.choices[0].finish_reason == "tool_calls"
    body = last_body(mock)
    assert sorted(d["name"] for d in declared_tools(body)) == declared
    assert body["toolConfig"]["functionCallingConfig"]["mode"] == "ANY"


def test_parallel_tool_calls_false_returns_one_call(real_oai, mock):
    mock.configure(script=calls_then_text(("get_weather", {"city": "Oslo"}), ("get_weather", {"city": "Rome"})))
    reply = real_oai.chat.completions.create(model="gemini-cli", messages=ask("weather?"), tools=[WEATHER],
                                             parallel_tool_calls=False)
    assert [json.loads(c.function.arguments) for c in reply.choices[0].message.tool_calls] == [{"city": "Oslo"}]


def test_schemas_as_agents_send_them_reach_the_model(real_oai, mock):
    long_name = "a" * 64
    agent_tool = {"type": "function", "function": {"name": long_name, "description": "edit files", "parameters": {
        "$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object",
        "$defs": {"edit": {"type": "object", "properties": {"old": {"type": "string"}, "new": {"type": "string"}},
                           "required": ["old", "new"]}},
        "properties": {"path": {"type": "string"}, "edits": {"type": "array", "items": {"$ref": "#/$defs/edit"}},
                       "mode": {"type": "string", "enum": ["a", "b"]}, "opts": {"type": "object", "properties": {
                           "dry": {"type": "boolean"}}}},
        "required": ["path"]}}}
    mock.configure(script=lambda body: model_turn([function_call(declared_tools(body)[0]["name"], {
        "path": "x.py", "edits": [{"old": "a", "new": "b"}], "wait_for_previous": False})]))
    reply = real_oai.chat.completions.create(model="gemini-cli", messages=ask("edit"), tools=[agent_tool])
    call = reply.choices[0].message.tool_calls[0]
    assert call.function.name == long_name
    # The CLI's own `wait_for_previous` argument is not the client's: it is not passed on.
    assert json.loads(call.function.arguments) == {"path": "x.py", "edits": [{"old": "a", "new": "b"}]}
    declared = declared_tools(last_body(mock))[0]
    assert len(declared["name"]) <= 63
    schema = declared["parametersJsonSchema"]
    assert schema["properties"]["edits"]["items"] == {"$ref": "#/$defs/edit"} and "edit" in schema["$defs"]


@pytest.mark.parametrize("messages, param", [
    ([{"role": "user", "content": "x"}, {"role": "tool", "tool_call_id": "never-made", "content": "r"}],
     "messages[1].tool_call_id"),
    ([{"role": "user", "content": "x"},
      {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
                                            "function": {"name": "get_weather", "arguments": "{}"}}]},
      {"role": "user", "content": "and?"}], "messages"),
])
def test_unpaired_tool_history_is_a_clear_400(real_oai, messages, param):
    with pytest.raises(openai.BadRequestError) as caught:
        real_oai.chat.completions.create(model="gemini-cli", messages=messages, tools=[WEATHER])
    assert caught.value.body["param"] == param
