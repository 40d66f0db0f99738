"""The OpenAI request and response rules, as pure functions (no model, no server: nothing to mock)."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from llmlocal.generate import Completion
from llmlocal.serve import openai_format as oai

CHAT = [{"role": "user", "content": "hi"}]


def _refused(fn, body) -> oai.ApiError:
    with pytest.raises(oai.ApiError) as err:
        fn(body)
    assert err.value.status == 400
    return err.value


def test_chat_messages_accept_text_parts_and_developer_role():
    req = oai.parse_chat({"messages": [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hello "}, {"type": "text", "text": "there"}]},
        {"role": "assistant", "content": None}]})
    assert req.messages == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"},
                            {"role": "assistant", "content": ""}]
    assert req.model is None and req.max_tokens is None and not req.stream


def test_images_audio_and_deprecated_functions_are_refused_by_name():
    image = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}
    assert "image_url" in _refused(oai.parse_chat, image).message
    assert _refused(oai.parse_chat, {"messages": CHAT, "functions": [{"name": "f"}]}).param == "functions"
    assert _refused(oai.parse_chat, {"messages": CHAT, "audio": {"voice": "alloy"}}).param == "audio"
    assert _refused(oai.parse_chat, {"messages": CHAT, "modalities": ["text", "audio"]}).param == "modalities"
    assert _refused(oai.parse_chat, {"messages": [{"role": "function", "content": "x"}]}).param == "messages[0].role"
    # The defaults clients send anyway are fine.
    req = oai.parse_chat({"messages": CHAT, "presence_penalty": 0, "frequency_penalty": 0, "n": 1,
                          "logprobs": False, "response_format": {"type": "text"}, "user": "someone"})
    assert req.params.constraint is None and req.params.logprobs is None and req.n == 1


def test_response_format_becomes_a_constraint_and_a_bad_schema_a_400():
    assert oai.parse_chat({"messages": CHAT, "response_format": {"type": "json_object"}}).params.constraint.kind \
        == "json"
    schema = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"],
              "additionalProperties": False}
    c = oai.parse_chat({"messages": CHAT, "response_format": {
        "type": "json_schema", "json_schema": {"name": "person", "schema": schema, "strict": True}}}).params.constraint
    assert c.kind == "schema" and c.name == "person" and c.schema == schema
    assert oai.parse_completion({"prompt": "x", "response_format": {"type": "json_object"}}).params.constraint
    bad = _refused(oai.parse_chat, {"messages": CHAT, "response_format": {
        "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "strnig"}}}})
    assert bad.param == "response_format" and "not a valid JSON Schema" in bad.message
    assert _refused(oai.parse_chat, {"messages": CHAT, "response_format": {"type": "yaml"}}).param == "response_format"


WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                           "required": ["city"]}}}


def test_tools_shape_the_prompt_and_the_constraint():
    req = oai.parse_chat({"messages": [{"role": "system", "content": "Be brief."}, *CHAT], "tools": [WEATHER]})
    assert req.tools.mode == "auto" and req.tool_format and req.params.constraint.kind == "schema"
    assert req.messages[0]["role"] == "system" and req.messages[0]["content"].startswith("Be brief.\n\n")
    assert '"get_weather"' in req.messages[0]["content"] and '{"response":' in req.messages[0]["content"]
    assert len(req.messages) == 2  # the instructions join the caller's system message
    named = oai.parse_chat({"messages": CHAT, "tools": [WEATHER],
                            "tool_choice": {"type": "function", "function": {"name": "get_weather"}}})
    assert named.tools.name == "get_weather" and "response" not in named.params.constraint.schema_text
    off = oai.parse_chat({"messages": CHAT, "tools": [WEATHER], "tool_choice": "none"})
    assert not off.tool_format and off.params.constraint is None and off.messages == CHAT  # not even described


@pytest.mark.parametrize("changes, param, words", [
    ({"tools": [{"type": "custom", "custom": {}}]}, "tools[0]", "only function tools"),
    ({"tools": [{"type": "function", "function": {"name": "has space"}}]}, "tools[0].function.name", "letters"),
    ({"tools": [WEATHER, WEATHER]}, "tools", "twice"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice",
     "not among"),
    ({"tools": [WEATHER], "tool_choice": "always"}, "tool_choice", "'required'"),
    ({"tool_choice": "required"}, "tool_choice", "needs 'tools'"),
    ({"tools": [], "tool_choice": "required"}, "tool_choice", "empty"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "nope"}}}]}, "tools",
     "the parameters of tool 'f'"),
])
def test_bad_tools_are_400s_naming_the_field(changes, param, words):
    err = _refused(oai.parse_chat, {"messages": CHAT, **changes})
    assert err.param == param and words in err.message, err.message


def test_tool_history_is_rendered_as_text_the_template_can_show():
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
    req = oai.parse_chat({"tools": [WEATHER], "messages": [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "4 C, rain"}]})
    history = req.messages[1:]
    assert history[1] == {"role": "assistant",
                          "content": '{"tool_call": {"name": "get_weather", "arguments": {"city": "Oslo"}}}'}
    assert history[2] == {"role": "user",
                          "content": '{"tool_response": {"name": "get_weather", "content": "4 C, rain"}}'}
    assert _refused(oai.parse_chat, {"messages": [{"role": "tool", "content": "x"}]}).param \
        == "messages[0].tool_call_id"
    bad_call = {"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": {}}}]}
    assert _refused(oai.parse_chat, {"messages": [bad_call]}).param == "messages[0].tool_calls[0].function.arguments"


def test_logprobs_n_bias_and_penalties_map_to_sampling_params():
    req = oai.parse_chat({"messages": CHAT, "logprobs": True, "top_logprobs": 3, "n": 3, "seed": 7,
                          "logit_bias": {"42": -100, "7": 5}, "presence_penalty": 0.5, "frequency_penalty": -1})
    p = req.params
    assert p.logprobs == 3 and p.logit_bias == ((7, 5.0), (42, -100.0))
    assert (p.presence_penalty, p.frequency_penalty) == (0.5, -1)
    assert [c.seed for c in req.choice_params()] == [7, 8, 9]
    assert oai.parse_chat({"messages": CHAT, "logprobs": True}).params.logprobs == 0  # the tokens, no alternatives
    assert oai.parse_completion({"prompt": "x", "logprobs": 2}).params.logprobs == 2
    assert _refused(oai.parse_chat, {"messages": CHAT, "top_logprobs": 2}).param == "top_logprobs"
    assert _refused(oai.parse_chat, {"messages": CHAT, "logprobs": True, "top_logprobs": 21}).param \
        == "top_logprobs"
    assert _refused(oai.parse_chat, {"messages": CHAT, "n": 129}).param == "n"
    assert _refused(oai.parse_chat, {"messages": CHAT, "presence_penalty": 2.5}).param == "presence_penalty"
    assert _refused(oai.parse_chat, {"messages": CHAT, "logit_bias": {"5": 101}}).param == "logit_bias"
    assert _refused(oai.parse_chat, {"messages": CHAT, "logit_bias": {"word": 1}}).param == "logit_bias"
    assert _refused(oai.parse_chat, {"messages": CHAT, "logit_bias": [1, 2]}).param == "logit_bias"


def _completion(text: str, reason: str = "stop", logprobs: list | None = None) -> Completion:
    # A real Completion value, as the engine returns it: the shaping is pure logic.
    return Completion(text=text, finish_reason=reason, prompt_tokens=5, completion_tokens=len(text),
                      logprobs=logprobs)


def _entry(token: bytes, logprob: float) -> dict:
    return {"token": token.decode("utf-8", "replace"), "logprob": logprob, "bytes": list(token),
            "top_logprobs": [{"token": token.decode("utf-8", "replace"), "logprob": logprob, "bytes": list(token)}]}


def test_a_streamed_tool_call_adds_up_to_the_whole_choice():
    req = oai.parse_chat({"messages": CHAT, "tools": [WEATHER], "tool_choice": "required"})
    text = '{"tool_call": {"name": "get_weather", "arguments": {"city": "Oslo"}}}'
    whole = oai.ChoiceWriter(req, 0).whole(_completion(text))
    assert whole["finish_reason"] == "tool_calls" and whole["message"]["content"] is None
    [call] = whole["message"]["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"] == {"name": "get_weather", "arguments": '{"city":"Oslo"}'}

    writer = oai.ChoiceWriter(req, 0)
    chunks = [writer.opening()] + [writer.piece(text[i:i + 5], None) for i in range(0, len(text), 5)]
    chunks.append(writer.closing(_completion(text)))
    deltas = [c["delta"] for c in chunks if c is not None]
    calls = [tc for d in deltas for tc in d.get("tool_calls", [])]
    assert calls[0]["index"] == 0 and calls[0]["function"]["name"] == "get_weather" and calls[0]["id"]
    assert all(set(tc) == {"index", "function"} for tc in calls[1:])  # the id and name come once
    assert "".join(tc["function"]["arguments"] for tc in calls) == '{"city":"Oslo"}'
    assert chunks[-1]["finish_reason"] == "tool_calls" and chunks[-1]["delta"] == {}


def test_an_auto_answer_is_unwrapped_into_content():
    req = oai.parse_chat({"messages": CHAT, "tools": [WEATHER]})
    text = '{"response": "It is \\"fine\\"\\n\\u00e9"}'
    whole = oai.ChoiceWriter(req, 0).whole(_completion(text))
    assert whole["message"] == {"role": "assistant", "content": 'It is "fine"\né', "refusal": None}
    assert whole["finish_reason"] == "stop"
    writer = oai.ChoiceWriter(req, 0)
    pieces = [writer.piece(ch, None) for ch in text]
    assert "".join(p["delta"].get("content", "") for p in pieces if p) == whole["message"]["content"]


def test_legacy_logprobs_offsets_count_characters_from_the_prompt():
    req = oai.parse_completion({"prompt": "Hi", "logprobs": 1})
    e = [_entry(b" caf", -0.5), _entry(b"\xc3", -1.0), _entry(b"\xa9!", -0.25)]  # "é" split over two tokens
    whole = oai.ChoiceWriter(req, 0).whole(_completion(" café!", logprobs=e))["logprobs"]
    assert whole["text_offset"] == [2, 6, 6] and whole["token_logprobs"] == [-0.5, -1.0, -0.25]
    assert whole["top_logprobs"][0] == {" caf": -0.5}
    writer = oai.ChoiceWriter(req, 0)
    streamed = [writer.piece(" caf", e[:1]), writer.piece("", e[1:2]), writer.piece("é!", e[2:])]
    assert [o for c in streamed for o in c["logprobs"]["text_offset"]] == whole["text_offset"]


def test_sampling_fields_map_to_llama_cpp_parameters():
    req = oai.parse_chat({"messages": CHAT, "temperature": 0, "top_p": 0.5, "top_k": 7, "min_p": 0.1,
                          "repeat_penalty": 1.2, "seed": 2**40 + 5, "stop": "END", "max_completion_tokens": 9,
                          "max_tokens": 100, "stream": True, "stream_options": {"include_usage": True}})
    p = req.params
    assert (p.temperature, p.top_p, p.top_k, p.min_p, p.repeat_penalty) == (0, 0.5, 7, 0.1, 1.2)
    assert p.seed == (2**40 + 5) % 2**31 and p.stop == ("END",)
    assert req.max_tokens == 9  # max_completion_tokens wins, as OpenAI documents
    assert req.stream and req.include_usage
    assert _refused(oai.parse_chat, {"messages": CHAT, "stop": ["a", "b", "c", "d", "e"]}).param == "stop"
    assert _refused(oai.parse_chat, {"messages": CHAT, "temperature": 3}).param == "temperature"
    assert _refused(oai.parse_chat, {"messages": CHAT, "max_tokens": 1.5}).param == "max_tokens"
    assert _refused(oai.parse_chat, {"messages": CHAT, "stream": "yes"}).param == "stream"


def test_completions_default_to_16_tokens_and_take_one_prompt():
    assert oai.parse_completion({"prompt": "x"}).max_tokens == 16
    assert oai.parse_completion({"prompt": ["x"]}).prompt == "x"
    assert _refused(oai.parse_completion, {"prompt": ["a", "b"]}).param == "prompt"
    assert _refused(oai.parse_completion, {}).param == "prompt"
    assert "JSON object" in _refused(oai.parse_completion, ["not", "an", "object"]).message


def test_max_tokens_is_capped_by_the_context_and_a_full_prompt_refused():
    assert oai.fit_max_tokens(100, 1024, None) == 924
    assert oai.fit_max_tokens(100, 1024, 50) == 50
    assert oai.fit_max_tokens(1000, 1024, 500) == 24
    with pytest.raises(oai.ApiError) as err:
        oai.fit_max_tokens(1024, 1024, 10)
    assert err.value.code == "context_length_exceeded" and "1024" in err.value.message


def test_finish_reasons_are_openais():
    req = oai.parse_chat({"messages": CHAT})
    writer = oai.ChoiceWriter(req, 0)
    assert writer.whole(_completion("t", "context"))["finish_reason"] == "length"
    assert writer.closing(_completion("t")) == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    assert writer.opening()["delta"] == {"role": "assistant", "content": ""}
    head = oai.ResponseHead("chat", "m")
    assert head.id.startswith("chatcmpl-") and oai.ResponseHead("completion", "m").id.startswith("cmpl-")
    assert head.chunk(writer.opening())["object"] == "chat.completion.chunk"


def test_embeddings_base64_is_little_endian_float32():
    vectors = np.array([[0.25, -1.0, 3.5]])
    body = oai.embeddings_response("m", vectors, as_base64=True, prompt_tokens=3)
    decoded = np.frombuffer(base64.b64decode(body["data"][0]["embedding"]), dtype="<f4")
    assert decoded.tolist() == [0.25, -1.0, 3.5]
    assert oai.parse_embeddings({"input": "x"}).texts == ["x"]
    assert _refused(oai.parse_embeddings, {"input": [1, 2, 3]}).param == "input"
    assert _refused(oai.parse_embeddings, {"input": "x", "dimensions": 64}).param == "dimensions"


def test_classify_requests_need_labels_or_examples():
    req = oai.parse_classify({"input": "free prize", "examples": [{"text": "win", "label": "spam"}]})
    assert req.texts == ["free prize"] and req.labels is None and req.examples == [("win", "spam")]
    assert _refused(oai.parse_classify, {"input": ["x"]}).param == "labels"
    assert _refused(oai.parse_classify, {"input": ["x"], "labels": ["a"], "method": "knn"}).param == "method"
    assert _refused(oai.parse_classify, {"input": ["x"], "examples": [{"text": "y"}]}).param == "examples[0]"
    same = oai.parse_classify({"input": "other text", "examples": [{"text": "win", "label": "spam"}]})
    assert same.key() == req.key()  # the classifier does not depend on the texts
