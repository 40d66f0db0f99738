"""The server's structured output, tools, logprobs, n and sampling extras, end to end.

As in tests/test_serve.py: a real `llmlocal serve` process with the real SmolLM2 GGUF on a
loopback port, driven by the official `openai` client (its parse() and stream helpers included).
Temperature 0 makes a streamed reply comparable with the unstreamed one.
"""

from __future__ import annotations

import json

import jsonschema
import pytest

from tests.test_serve import ServerProcess, _home, http

pytestmark = pytest.mark.slow

openai = pytest.importorskip("openai")
pydantic = pytest.importorskip("pydantic")

MODEL = "smollm2-135m"


@pytest.fixture(scope="module")
def server(tmp_path_factory, _seed_blobs):
    s = ServerProcess(_home(tmp_path_factory, _seed_blobs), "-m", MODEL, "--parallel", "4", "--ctx", "1024")
    yield s
    assert s.stop() == 0, "".join(s.lines)
    assert "Traceback" not in "".join(s.lines)


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server.url, api_key="not-needed", max_retries=0, timeout=600)


def _streamed_text(chunks) -> tuple[str, list[str]]:
    pieces, reasons = [], []
    for chunk in chunks:
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            if choice.finish_reason:
                reasons.append(choice.finish_reason)
    return "".join(pieces), reasons


# ---------------------------------------------------------------- response_format

PERSON = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
          "required": ["name", "age"], "additionalProperties": False}
ASK_PERSON = [{"role": "user", "content": "Invent a person. Reply in JSON with their name and age."}]


@pytest.mark.parametrize("response_format", [
    {"type": "json_object"},
    {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}},
], ids=["json_object", "json_schema"])
def test_response_format_holds_the_reply_streamed_or_not(client, response_format):
    kw = dict(model=MODEL, messages=ASK_PERSON, temperature=0, max_tokens=120, response_format=response_format)
    whole = client.chat.completions.create(**kw)
    content = whole.choices[0].message.content
    value = json.loads(content)
    assert isinstance(value, dict) and whole.choices[0].finish_reason == "stop"
    if response_format["type"] == "json_schema":
        jsonschema.validate(value, PERSON)
    text, reasons = _streamed_text(client.chat.completions.create(**kw, stream=True))
    assert text == content and reasons == ["stop"]


def test_the_clients_parse_returns_a_pydantic_object(client):
    class Person(pydantic.BaseModel):
        name: str
        age: int

    r = client.chat.completions.parse(model=MODEL, messages=ASK_PERSON, temperature=0, max_tokens=120,
                                      response_format=Person)
    person = r.choices[0].message.parsed
    assert isinstance(person, Person) and person.name


def test_completions_take_a_response_format_too(client):
    r = client.completions.create(model=MODEL, prompt="A JSON object describing a cat:", temperature=0,
                                  max_tokens=80, extra_body={"response_format": {"type": "json_object"}})
    assert isinstance(json.loads(r.choices[0].text), dict)


def test_an_invalid_schema_is_a_400_naming_the_problem(server):
    for stream in (False, True):
        status, body = http(server, "POST", "/v1/chat/completions", {
            "model": MODEL, "messages": ASK_PERSON, "stream": stream,
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "strnig"}}}})
        assert status == 400 and body["error"]["param"] == "response_format", body
        assert "not a valid JSON Schema" in body["error"]["message"] and "strnig" in body["error"]["message"]


# ---------------------------------------------------------------- tools

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                   "required": ["city", "unit"]}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "The time now in a timezone",
    "parameters": {"type": "object", "properties": {"timezone": {"type": "string"}}, "required": ["timezone"]}}}
ASK_WEATHER = [{"role": "user", "content": "What is the weather in Paris?"}]
PARAMETERS = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, TIME)}


def _calls(message) -> list[tuple[str, str]]:
    return [(c.function.name, c.function.arguments) for c in message.tool_calls or []]


def _streamed(client, **kw):
    """The reply as the official client's stream helper accumulates it."""
    with client.chat.completions.stream(**kw) as stream:
        return stream.get_final_completion().choices[0]


@pytest.mark.parametrize("tool_choice, name", [
    ("required", None),
    ({"type": "function", "function": {"name": "get_time"}}, "get_time"),
], ids=["required", "named"])
def test_required_and_named_tool_calls_are_well_formed_streamed_or_not(client, tool_choice, name):
    kw = dict(model=MODEL, messages=ASK_WEATHER, tools=[WEATHER, TIME], tool_choice=tool_choice, temperature=0,
              max_tokens=150)
    whole = client.chat.completions.create(**kw).choices[0]
    assert whole.finish_reason == "tool_calls" and whole.message.content is None
    [call] = whole.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    if name:
        assert call.function.name == name
    jsonschema.validate(json.loads(call.function.arguments), PARAMETERS[call.function.name])
    streamed = _streamed(client, **kw)
    assert _calls(streamed.message) == _calls(whole.message) and streamed.finish_reason == "tool_calls"


def test_auto_calls_a_tool_or_answers_and_streams_the_same(client):
    for messages in (ASK_WEATHER, [{"role": "user", "content": "Say hello."}]):
        kw = dict(model=MODEL, messages=messages, tools=[WEATHER], temperature=0, max_tokens=150)
        whole = client.chat.completions.create(**kw).choices[0]
        if whole.message.tool_calls:
            assert whole.finish_reason == "tool_calls" and whole.message.content is None
            for name, arguments in _calls(whole.message):
                jsonschema.validate(json.loads(arguments), PARAMETERS[name])
        else:
            assert whole.finish_reason == "stop" and not whole.message.content.lstrip().startswith('{"response"')
        streamed = _streamed(client, **kw)
        assert _calls(streamed.message) == _calls(whole.message)
        assert (streamed.message.content or None) == whole.message.content


def test_auto_calls_the_weather_tool_for_a_weather_question(client):
    # What this model does with the README's example (greedy): a call, with the city asked about.
    r = client.chat.completions.create(model=MODEL, messages=ASK_WEATHER, tools=[WEATHER], temperature=0)
    [(name, arguments)] = _calls(r.choices[0].message)
    assert name == "get_weather" and json.loads(arguments)["city"] == "Paris"


def test_tool_choice_none_answers_in_plain_text(client):
    r = client.chat.completions.create(model=MODEL, messages=ASK_WEATHER, tools=[WEATHER], tool_choice="none",
                                       temperature=0, max_tokens=30)
    choice = r.choices[0]
    assert choice.message.tool_calls is None and choice.message.content
    assert choice.finish_reason in ("stop", "length")


def test_a_conversation_with_tool_results_continues(client):
    first = client.chat.completions.create(model=MODEL, messages=ASK_WEATHER, tools=[WEATHER],
                                           tool_choice="required", temperature=0)
    call = first.choices[0].message.tool_calls[0]
    messages = [*ASK_WEATHER, first.choices[0].message.model_dump(exclude_none=True),
                {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 18, "sky": "sunny"}'}]
    r = client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER], temperature=0,
                                       max_tokens=100)
    choice = r.choices[0]
    assert choice.message.content or choice.message.tool_calls
    assert r.usage.prompt_tokens > first.usage.prompt_tokens  # the call and its result are in the prompt


def test_strict_pydantic_tools_are_parsed_by_the_client(client):
    class GetWeather(pydantic.BaseModel):
        city: str

    r = client.chat.completions.parse(model=MODEL, messages=ASK_WEATHER, tools=[openai.pydantic_function_tool(
        GetWeather)], tool_choice="required", temperature=0, max_tokens=100)
    parsed = r.choices[0].message.tool_calls[0].function.parsed_arguments
    assert isinstance(parsed, GetWeather) and parsed.city


def test_a_bad_tool_schema_is_a_400(server):
    bad = {"type": "function", "function": {"name": "f", "parameters": {"type": "object",
                                                                         "properties": {"x": {"type": 5}}}}}
    status, body = http(server, "POST", "/v1/chat/completions", {"model": MODEL, "messages": ASK_WEATHER,
                                                                 "tools": [bad], "stream": True})
    assert status == 400 and body["error"]["param"] == "tools" and "tool 'f'" in body["error"]["message"]


# ---------------------------------------------------------------- logprobs

CHAT = [{"role": "user", "content": "Name three colours of the rainbow."}]


def test_chat_logprobs_streamed_or_not(client):
    # Logprobs are the model's own distribution; repeat_penalty (1.1 by default) would reshape the
    # greedy choice, so it is off here and the chosen token is always the likeliest.
    kw = dict(model=MODEL, messages=CHAT, temperature=0, max_tokens=12, logprobs=True, top_logprobs=3,
              extra_body={"repeat_penalty": 1.0})
    r = client.chat.completions.create(**kw)
    entries = r.choices[0].logprobs.content
    assert len(entries) == r.usage.completion_tokens
    assert "".join(e.token for e in entries) == r.choices[0].message.content
    for e in entries:
        assert e.logprob <= 0 and len(e.top_logprobs) == 3 and bytes(e.bytes).decode() == e.token
        assert [t.logprob for t in e.top_logprobs] == sorted((t.logprob for t in e.top_logprobs), reverse=True)
        assert e.top_logprobs[0].token == e.token  # greedy: the top alternative is the token chosen
    streamed = [e for chunk in client.chat.completions.create(**kw, stream=True) for choice in chunk.choices
                if choice.logprobs for e in choice.logprobs.content]
    assert [e.token for e in streamed] == [e.token for e in entries]
    assert [e.logprob for e in streamed] == pytest.approx([e.logprob for e in entries], abs=1e-4)


def test_completion_logprobs_in_the_legacy_shape(client):
    prompt = "The capital of France is"
    r = client.completions.create(model=MODEL, prompt=prompt, temperature=0, max_tokens=6, logprobs=2)
    lp = r.choices[0].logprobs
    assert "".join(lp.tokens) == r.choices[0].text and len(lp.tokens) == r.usage.completion_tokens
    assert lp.text_offset[0] == len(prompt) and lp.text_offset == sorted(lp.text_offset)
    assert all(v <= 0 for v in lp.token_logprobs) and all(len(top) == 2 for top in lp.top_logprobs)
    chunks = list(client.completions.create(model=MODEL, prompt=prompt, temperature=0, max_tokens=6, logprobs=2,
                                            stream=True))
    assert [t for c in chunks for ch in c.choices if ch.logprobs for t in ch.logprobs.tokens] == lp.tokens
    assert [o for c in chunks for ch in c.choices if ch.logprobs for o in ch.logprobs.text_offset] == lp.text_offset


# ---------------------------------------------------------------- n

def test_n_choices_share_the_prompt_and_are_indexed(client):
    one = client.chat.completions.create(model=MODEL, messages=CHAT, temperature=0, max_tokens=20)
    r = client.chat.completions.create(model=MODEL, messages=CHAT, temperature=0, max_tokens=20, n=2)
    assert [c.index for c in r.choices] == [0, 1]
    assert r.choices[0].message.content == r.choices[1].message.content == one.choices[0].message.content
    assert r.usage.prompt_tokens == one.usage.prompt_tokens  # the prompt counts once
    assert r.usage.completion_tokens == 2 * one.usage.completion_tokens

    texts: dict[int, str] = {}
    for chunk in client.chat.completions.create(model=MODEL, messages=CHAT, temperature=0, max_tokens=20, n=2,
                                                stream=True):
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
    assert texts == {0: one.choices[0].message.content, 1: one.choices[0].message.content}


def test_n_choices_draw_with_seed_seed_plus_one_and_so_on(client):
    kw = dict(model=MODEL, prompt="Once upon a time", temperature=1.0, max_tokens=12)
    both = client.completions.create(**kw, n=2, seed=40)
    assert [c.index for c in both.choices] == [0, 1]
    assert both.choices[1].text == client.completions.create(**kw, seed=41).choices[0].text


# ---------------------------------------------------------------- logit_bias and penalties

def test_logit_bias_bans_a_token(client):
    from llmlocal import runtime
    from tests.models import smollm2_path

    prompt = "The capital of France is"
    first = client.completions.create(model=MODEL, prompt=prompt, temperature=0, max_tokens=1, logprobs=2)
    token = first.choices[0].logprobs.tokens[0]
    with runtime.Model(smollm2_path(), runtime.LoadOptions(n_ctx=64)) as model:
        [token_id] = model.tokenize(token, add_special=False)
    banned = client.completions.create(model=MODEL, prompt=prompt, temperature=0, max_tokens=1, logprobs=2,
                                       logit_bias={str(token_id): -100})
    assert banned.choices[0].logprobs.tokens[0] != token
    assert banned.choices[0].logprobs.tokens[0] == list(first.choices[0].logprobs.top_logprobs[0])[1]


def test_penalties_are_accepted_and_checked(client, server):
    r = client.chat.completions.create(model=MODEL, messages=CHAT, temperature=0, max_tokens=20,
                                       presence_penalty=0.6, frequency_penalty=0.6)
    assert r.choices[0].message.content
    status, body = http(server, "POST", "/v1/chat/completions", {"model": MODEL, "messages": CHAT,
                                                                 "frequency_penalty": 2.5})
    assert status == 400 and body["error"]["param"] == "frequency_penalty"


def test_a_logit_bias_outside_the_vocabulary_is_a_400_before_the_stream(server):
    status, body = http(server, "POST", "/v1/completions", {"model": MODEL, "prompt": "hi", "stream": True,
                                                            "logit_bias": {"999999": -100}})
    assert status == 400 and body["error"]["param"] == "logit_bias" and "vocabulary" in body["error"]["message"]


def test_images_are_still_refused_by_name(server):
    status, body = http(server, "POST", "/v1/chat/completions", {"model": MODEL, "messages": [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}]}]})
    assert status == 400 and "image_url" in body["error"]["message"]
    assert body["error"]["param"] == "messages[0].content"
