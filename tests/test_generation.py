"""Generation settings, `finish_reason: length` and instruction-only conversations, end to end
through the real CLI: what the client sets is what the mock API's `generationConfig` holds."""

from __future__ import annotations

import json

import openai
import pytest

from tests.test_real_cli import ask, last_body, prompt_text

# The CLI's own generationConfig for gemini-3 models, as it sends it when nothing is set.
CLI_DEFAULTS = {"temperature": 1, "topP": 0.95, "topK": 64,
                "thinkingConfig": {"includeThoughts": True, "thinkingLevel": "HIGH"}}


def generation_config(mock) -> dict:
    return last_body(mock)["generationConfig"]


def test_every_generation_setting_reaches_the_api(real_oai, mock):
    real_oai.chat.completions.create(
        model="gemini-cli", messages=ask("hi"), temperature=0.25, top_p=0.5, max_tokens=321, stop=["END", "STOP"],
        seed=42, reasoning_effort="low", extra_body={"top_k": 7})
    assert generation_config(mock) == {
        "temperature": 0.25, "topP": 0.5, "topK": 7, "maxOutputTokens": 321, "stopSequences": ["END", "STOP"],
        "seed": 42, "thinkingConfig": {"includeThoughts": True, "thinkingLevel": "LOW"}}


def test_thinking_budget_for_older_models(real_oai, mock):
    real_oai.chat.completions.create(model="gemini-2.5-pro", messages=ask("hi"), reasoning_effort="medium",
                                     max_completion_tokens=99, stop="X")
    config = generation_config(mock)
    assert config["thinkingConfig"] == {"includeThoughts": True, "thinkingBudget": 8192}
    assert config["maxOutputTokens"] == 99 and config["stopSequences"] == ["X"]


def test_response_formats(real_oai, mock):
    mock.configure(chunks=['{"a": 1}'])
    reply = real_oai.chat.completions.create(model="gemini-cli", messages=ask("json"),
                                             response_format={"type": "json_object"})
    assert json.loads(reply.choices[0].message.content) == {"a": 1}
    assert generation_config(mock)["responseMimeType"] == "application/json"
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    real_oai.chat.completions.create(model="gemini-cli", messages=ask("json"), response_format={
        "type": "json_schema", "json_schema": {"name": "thing", "schema": schema, "strict": True}})
    config = generation_config(mock)
    assert config["responseMimeType"] == "application/json" and config["responseJsonSchema"] == schema


def test_no_settings_no_change(real_oai, mock):
    # Hints that change nothing the client gets back are accepted and leave the request as is.
    real_oai.chat.completions.create(model="gemini-cli", messages=ask("hi"), user="u1", metadata={"k": "v"},
                                     store=False, presence_penalty=0.5, frequency_penalty=0.1,
                                     logit_bias={"50256": -100}, extra_body={"prompt_cache_key": "p"})
    hinted = last_body(mock)
    real_oai.chat.completions.create(model="gemini-cli", messages=ask("hi"))
    plain = last_body(mock)
    assert plain["generationConfig"] == hinted["generationConfig"] == CLI_DEFAULTS
    assert json.dumps(plain["contents"][1:]) == json.dumps(hinted["contents"][1:])


@pytest.mark.parametrize("stream", [False, True])
def test_finish_reason_length_at_the_token_limit(real_oai, mock, stream):
    mock.configure(chunks=["one", " two"], usage={"promptTokenCount": 5, "candidatesTokenCount": 8,
                                                   "totalTokenCount": 13})
    kwargs = {"model": "gemini-cli", "messages": ask("count"), "max_tokens": 8}
    if stream:
        reasons = [c.choices[0].finish_reason for c in real_oai.chat.completions.create(stream=True, **kwargs)
                   if c.choices]
        assert reasons[-1] == "length"
    else:
        assert real_oai.chat.completions.create(**kwargs).choices[0].finish_reason == "length"
    # Below the limit it is an ordinary stop.
    assert real_oai.chat.completions.create(**(kwargs | {"max_tokens": 9})).choices[0].finish_reason == "stop"


@pytest.mark.parametrize("messages", [
    [{"role": "developer", "content": "Write a haiku about rain."}],
    [{"role": "system", "content": "Write a haiku about rain."}, {"role": "assistant", "content": "Sure:"}],
])
def test_a_conversation_without_user_message_is_answered(real_oai, mock, messages):
    reply = real_oai.chat.completions.create(model="gemini-cli", messages=messages)
    assert reply.choices[0].message.content == "Hello from the mock!"
    body = last_body(mock)
    assert "Write a haiku about rain." in prompt_text(body)
    # The instruction is the turn to answer; the system prompt is the gateway's default.
    assert body["systemInstruction"]["parts"][0]["text"] == "You are a helpful assistant."


@pytest.mark.parametrize("extra, param", [
    ({"n": 2}, "n"), ({"logprobs": True}, "logprobs"), ({"top_logprobs": 3}, "top_logprobs"),
    ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"), ({"modalities": ["text", "audio"]}, "modalities"),
    ({"temperature": 3}, "temperature"), ({"top_p": -1}, "top_p"), ({"max_tokens": 0}, "max_tokens"),
    ({"stop": ["a"] * 6}, "stop"), ({"reasoning_effort": "extreme"}, "reasoning_effort"),
    ({"response_format": {"type": "xml"}}, "response_format"),
])
def test_parameters_that_cannot_be_honoured_are_refused(real_oai, mock, extra, param):
    with pytest.raises(openai.BadRequestError) as caught:
        real_oai.chat.completions.create(model="gemini-cli", messages=ask("hi"), extra_body=extra)
    assert caught.value.body["param"] == param
    assert mock.generate_requests() == []
