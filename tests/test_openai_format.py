"""The OpenAI request and response rules, as pure functions (no model, no server: nothing to mock)."""

from __future__ import annotations

import base64

import numpy as np
import pytest

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


def test_images_tools_and_unsupported_sampling_are_refused_by_name():
    image = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}
    assert "image_url" in _refused(oai.parse_chat, image).message
    assert _refused(oai.parse_chat, {"messages": CHAT, "tools": [{"type": "function"}]}).param == "tools"
    assert _refused(oai.parse_chat, {"messages": CHAT, "presence_penalty": 0.5}).param == "presence_penalty"
    assert _refused(oai.parse_chat, {"messages": CHAT, "logprobs": True}).param == "logprobs"
    assert _refused(oai.parse_chat, {"messages": CHAT, "response_format": {"type": "json_object"}}).param \
        == "response_format"
    # The defaults clients send anyway are fine.
    oai.parse_chat({"messages": CHAT, "presence_penalty": 0, "frequency_penalty": 0, "n": 1, "logprobs": False,
                    "response_format": {"type": "text"}, "user": "someone"})


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
    head = oai.ResponseHead("chat", "m")
    assert head.response("t", "context", oai.usage(1, 2))["choices"][0]["finish_reason"] == "length"
    assert head.chunk(reason="stop")["choices"][0] == {"index": 0, "delta": {}, "logprobs": None,
                                                        "finish_reason": "stop"}
    assert head.chunk(role=True)["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert head.id.startswith("chatcmpl-") and oai.ResponseHead("completion", "m").id.startswith("cmpl-")


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
