"""llmlocal.tools: the tool-call format's prompt, schema and reader, as pure logic (no model).

The reader is fed text as a constrained generation would produce it; the real model's replies
are covered end to end in tests/test_serve_structured.py.
"""

from __future__ import annotations

import json

import jsonschema
import pytest

from llmlocal import tools
from llmlocal.errors import InvalidSchemaError

WEATHER = tools.Tool("get_weather", "The weather in a city",
                     {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]})
TIME = tools.Tool("get_time")


def _stream(text: str, step: int) -> tuple[list[tools.Delta], tools.Reply]:
    reader = tools.ReplyReader()
    deltas = [d for i in range(0, len(text), step) for d in reader.feed(text[i:i + step])]
    return deltas, reader.reply()


@pytest.mark.parametrize("step", [1, 3, 1000])
def test_streamed_pieces_add_up_to_the_whole_reply(step):
    text = '{"tool_calls": [{"name": "get_weather", "arguments": {\n  "city": "Pa\\"ris", "n": [1, 2.5]}}, ' \
           '{"name": "get_time", "arguments": { }}]}'
    deltas, reply = _stream(text, step)
    whole = tools.parse(text)
    assert [(c.name, c.arguments) for c in reply.calls] == [(c.name, c.arguments) for c in whole.calls] == [
        ("get_weather", '{"city":"Pa\\"ris","n":[1,2.5]}'), ("get_time", "{}")]
    assert reply.content is None
    starts = [d for d in deltas if d.id is not None]
    assert [(d.index, d.name) for d in starts] == [(0, "get_weather"), (1, "get_time")]
    for index, call in enumerate(reply.calls):
        assert "".join(d.arguments or "" for d in deltas if d.index == index) == call.arguments
        assert json.loads(call.arguments) is not None


def test_an_answer_is_decoded_escapes_and_surrogate_pairs_included():
    text = '{"response": "Hi \\ud83d\\ude00 \\"there\\"\\n\\u00e9 \\ud83d!"}'
    deltas, reply = _stream(text, 1)
    assert reply == tools.Reply('Hi 😀 "there"\né \ufffd!')
    assert "".join(d.content or "" for d in deltas) == reply.content
    # An answer held to a schema (response_format with tools) is passed as its JSON text.
    assert tools.parse('{"response": {"a b": [1, "x y"]}}').content == '{"a b":[1,"x y"]}'


def test_a_cut_reply_reads_as_far_as_it_goes():
    assert tools.parse('{"tool_call": {"name": "get_weather", "arguments": {"ci').calls[0].arguments == '{"ci'
    assert tools.parse('{"tool_call": {"name": "get_wea').calls == ()  # never named: left out
    assert tools.parse('{"response": "Hel') == tools.Reply("Hel")
    assert tools.parse("") == tools.Reply("")


def test_the_schema_holds_calls_to_the_tools_parameters():
    auto = tools.schema(tools.ToolSet((WEATHER, TIME)))
    ok = {"tool_call": {"name": "get_weather", "arguments": {"city": "Oslo"}}}
    jsonschema.validate(ok, auto)
    jsonschema.validate({"response": "hello"}, auto)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"tool_call": {"name": "get_weather", "arguments": {}}}, auto)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"tool_call": {"name": "nope", "arguments": {}}}, auto)
    named = tools.schema(tools.ToolSet((WEATHER, TIME), "required", "get_time"))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(ok, named)  # only the named tool
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"response": "hello"}, tools.schema(tools.ToolSet((WEATHER,), "required")))
    parallel = tools.schema(tools.ToolSet((WEATHER,), "required", parallel=True))
    jsonschema.validate({"tool_calls": [ok["tool_call"], ok["tool_call"]]}, parallel)


def test_the_constraint_is_off_for_none_and_a_bad_parameters_schema_is_named():
    assert tools.constraint(tools.ToolSet((WEATHER,), "none")) is None
    assert tools.constraint(tools.ToolSet((), "auto")) is None
    assert tools.constraint(tools.ToolSet((WEATHER,))).kind == "schema"
    bad = tools.Tool("broken", parameters={"type": "object", "properties": {"x": {"type": "nope"}}})
    with pytest.raises(InvalidSchemaError, match="the parameters of tool 'broken'"):
        tools.constraint(tools.ToolSet((bad,)))


def test_history_renders_calls_and_results_as_turns_a_plain_template_shows():
    calls = [tools.ToolCall("c1", "get_weather", '{"city": "Oslo"}'), tools.ToolCall("c2", "get_time", "{}")]
    messages = [{"role": "user", "content": "Weather and time?"},
                {"role": "assistant", "content": "", "tool_calls": calls},
                {"role": "tool", "tool_call_id": "c1", "content": "4 C"},
                {"role": "tool", "tool_call_id": "c2", "content": "12:00"}]
    out = tools.template_messages(messages, tools.ToolSet((WEATHER, TIME)))
    assert [m["role"] for m in out] == ["system", "user", "assistant", "user"]  # the results share one turn
    assert json.loads(out[2]["content"]) == {"tool_calls": [{"name": "get_weather", "arguments": {"city": "Oslo"}},
                                                           {"name": "get_time", "arguments": {}}]}
    assert [json.loads(line) for line in out[3]["content"].splitlines()] == [
        {"tool_response": {"name": "get_weather", "content": "4 C"}},
        {"tool_response": {"name": "get_time", "content": "12:00"}}]
    assert "get_weather" in out[0]["content"] and "get_time" in out[0]["content"]


def test_instructions_say_what_the_choice_allows():
    assert '{"response":' in tools.instructions(tools.ToolSet((WEATHER,)))
    required = tools.instructions(tools.ToolSet((WEATHER,), "required"))
    assert '{"response":' not in required and '{"tool_call":' in required
    assert "calling the tool get_time" in tools.instructions(tools.ToolSet((WEATHER, TIME), "required", "get_time"))
    assert '{"tool_calls": [' in tools.instructions(tools.ToolSet((WEATHER,), parallel=True))
