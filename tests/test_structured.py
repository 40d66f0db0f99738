"""Structured output with the real models: schemas, grammars and `--format json` on every surface
but the server (tests/test_serve_structured.py), logprobs, logit bias and penalties.

The schema parsing tests at the top are pure logic and need no model. The rest generate with
the real SmolLM2 (and Gemma 3 270M for the large vocabulary) through the real llama.cpp
grammar sampler; generation stays short so the suite is quick on a busy CPU.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import jsonschema
import pytest
from click.testing import CliRunner

import llmlocal
from llmlocal import generate, structured
from llmlocal.cli import cli
from llmlocal.engine import Engine, Finished, Request, TokenText
from llmlocal.errors import InvalidParameterError, InvalidSchemaError, StructuredOutputError, UsageError
from llmlocal.generate import Generator
from llmlocal.runtime import LoadOptions, Model, SamplingParams
from tests.test_complete import assert_clean_error, run_llmlocal

PERSON = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
          "required": ["name", "age"]}
# Nested: objects, arrays, enums and required fields (the 100-line batch schema).
ORDER = {
    "type": "object",
    "properties": {
        "customer": {"type": "object", "properties": {"name": {"type": "string", "maxLength": 40},
                                                      "vip": {"type": "boolean"}},
                     "required": ["name", "vip"], "additionalProperties": False},
        "items": {"type": "array", "minItems": 1, "maxItems": 3,
                  "items": {"type": "object",
                            "properties": {"product": {"type": "string", "maxLength": 30},
                                           "quantity": {"type": "integer"},
                                           "size": {"enum": ["small", "medium", "large"]}},
                            "required": ["product", "quantity", "size"], "additionalProperties": False}},
        "status": {"enum": ["new", "paid", "shipped"]},
    },
    "required": ["customer", "items", "status"],
    "additionalProperties": False,
}
GREEDY = ["--temperature", "0"]


def invoke(*args: str, input: str | None = None):
    return CliRunner().invoke(cli, list(args), input=input)


def chat_tokens(model: Model, text: str) -> list[int]:
    return generate.prompt_tokens(model, text)[0]


@pytest.fixture(scope="module")
def model(smollm2: Path):
    with Model(smollm2, LoadOptions(n_ctx=2048)) as m:
        yield m


@pytest.fixture(scope="module")
def quad(smollm2: Path):
    """Four sequences (what `llmlocal batch -p 4` loads)."""
    with Model(smollm2, LoadOptions(n_ctx=4096, n_seq_max=4, kv_unified=False)) as m:
        yield m


# ---------------------------------------------------------------- pure logic (no model)


def test_concise_form() -> None:
    schema = structured.concise("name, age int, tags list of str, score float?: how sure\n"
                                "mood one of happy|sad, ok bool, ids: int[]")
    props = schema["properties"]
    assert list(props) == ["name", "age", "tags", "score", "mood", "ok", "ids"]  # the order given
    assert props["name"] == {"type": "string"} and props["age"] == {"type": "integer"}
    assert props["tags"] == {"type": "array", "items": {"type": "string"}}
    assert props["score"] == {"type": "number", "description": "how sure"}
    assert props["mood"] == {"type": "string", "enum": ["happy", "sad"]}
    assert props["ids"] == {"type": "array", "items": {"type": "integer"}}
    assert "score" not in schema["required"] and "name" in schema["required"]
    assert schema["additionalProperties"] is False
    # llm's "name: description" still reads as a description when it is not a type
    assert structured.concise("bio: a short bio")["properties"]["bio"] == {"type": "string",
                                                                         "description": "a short bio"}


@pytest.mark.parametrize("text, message", [
    ("", "empty"), ("age integr", "unknown type 'integr'"), ("9lives", "does not start with a name"),
    ("a, a int", "given twice"), ('{"type": ', "not valid JSON"),
    ('{"type": "objectx"}', "not a valid JSON Schema"),
])
def test_bad_schemas_are_refused_before_any_model(text: str, message: str) -> None:
    with pytest.raises(InvalidSchemaError, match=message):
        structured.parse_option(text)


def test_schema_file_and_pydantic(tmp_path: Path) -> None:
    pydantic = pytest.importorskip("pydantic")
    path = tmp_path / "person.json"
    path.write_text(json.dumps(PERSON))
    assert structured.parse_option(str(path)).schema == PERSON
    with pytest.raises(InvalidSchemaError, match="no such file"):
        structured.parse_option(str(tmp_path / "missing.json"))

    class Person(pydantic.BaseModel):
        name: str
        age: int

    assert structured.from_schema(Person).schema["required"] == ["name", "age"]


def test_one_constraint_at_a_time() -> None:
    with pytest.raises(UsageError, match="cannot be combined"):
        structured.resolve(schema=PERSON, format="json")
    assert structured.resolve(format="json").kind == "json"
    assert structured.resolve(format=PERSON).kind == "schema"  # Ollama's format takes a schema too
    assert structured.resolve() is None


def test_check_never_passes_off_a_cut_value() -> None:
    c = structured.from_schema(PERSON)
    assert structured.check(c, '{"name": "A", "age": 3}', "stop").valid
    cut = structured.check(c, '{"name": "A", "age": 3}', "length")  # parses, but max_tokens cut it
    assert not cut.valid and "max_tokens" in (cut.error or "")
    wrong = structured.check(c, '{"name": "A"}', "stop")
    assert not wrong.valid and "'age' is a required property" in (wrong.error or "")


def test_sampling_rules_for_the_new_fields() -> None:
    p = SamplingParams.from_mapping({"logit_bias": {"12": -100, 7: 2.5}, "presence_penalty": 0.5})
    assert p.logit_bias == ((7, 2.5), (12, -100.0))
    assert p.as_dict()["logit_bias"] == {"7": 2.5, "12": -100.0}
    for bad in ({"logit_bias": {"x": 1}}, {"logit_bias": {"1": math.nan}}, {"logit_bias": {"1": 101}},
                {"presence_penalty": math.inf}, {"logprobs": 21}, {"constraint": "json"}):
        with pytest.raises(InvalidParameterError):
            SamplingParams.from_mapping(bad)


def test_a_lines_schema_survives_the_trip_to_a_ray_worker() -> None:
    """Ray jobs ship items as JSON (distributed.run_batch): the constraint must come back as one."""
    from dataclasses import asdict

    from llmlocal import batch, distributed

    item = batch.BatchItem(line=1, id="x", prompt="p", constraint=structured.from_value("name, age int", what="s"))
    assert distributed._batch_item(json.loads(json.dumps(asdict(item)))) == item


# ---------------------------------------------------------------- the grammar sampler


def test_schema_output_is_valid_json(model: Model) -> None:
    c = structured.from_schema(ORDER)
    tokens = chat_tokens(model, "Alice (a VIP) ordered two large coffees and one small tea; she has paid. "
                         "Give the order as JSON.")
    result = Generator(model).complete(tokens, SamplingParams(temperature=0, max_tokens=200, constraint=c))
    assert result.checked is not None and result.checked.valid, result.text
    jsonschema.validate(json.loads(result.text), ORDER)
    assert result.finish_reason == "stop" and result.value == json.loads(result.text)
    assert result.params["constraint"] == {"kind": "schema", "schema": ORDER}  # provenance


def test_generation_stops_as_soon_as_the_value_closes(model: Model) -> None:
    """Nothing after the closing brace: no trailing whitespace run, no extra decode."""
    c = structured.from_schema(PERSON)
    result = Generator(model).complete(chat_tokens(model, "Bob is 40. JSON please."),
                                       SamplingParams(temperature=0, max_tokens=100, constraint=c))
    assert result.text.endswith("}") and result.checked and result.checked.valid


def test_sampled_generation_under_a_schema_is_valid(model: Model) -> None:
    c = structured.from_schema(PERSON)
    gen = Generator(model)
    for seed in range(4):
        result = gen.complete(chat_tokens(model, "Invent a person as JSON."),
                              SamplingParams(temperature=1.0, seed=seed, max_tokens=120, constraint=c))
        assert result.checked is not None
        assert result.checked.valid or result.finish_reason == "length", (seed, result.text)


def test_a_grammar_driven_to_its_end_never_aborts(model: Model) -> None:
    """After the grammar is complete only an end-of-generation token is allowed; llama.cpp aborts
    the process ("Unexpected empty grammar stack") if any other token is accepted. The model here
    would rather go on writing, and ignore_eos (benchmarks) asks to go past the end."""
    c = structured.from_grammar('root ::= "yes" | "no"')
    tokens = chat_tokens(model, "Write a long story about the sea. Is the sea blue?")
    result = Generator(model).complete(tokens, SamplingParams(temperature=0, max_tokens=50, constraint=c))
    assert result.text in ("yes", "no") and result.finish_reason == "stop" and result.checked.valid
    engine = Engine(model, 1, ignore_eos=True)
    (_, done), = list(engine.run([Request(tokens, SamplingParams(temperature=0.9, seed=3, max_tokens=50,
                                                                 constraint=c))]))
    assert done.text in ("yes", "no") and done.finish_reason == "stop"


def test_unparsable_grammar_is_an_error_before_any_token(model: Model) -> None:
    bad = structured.from_grammar('root ::= "unclosed')
    with pytest.raises(InvalidSchemaError, match="cannot parse the grammar"):
        Generator(model).stream(chat_tokens(model, "hi"), SamplingParams(constraint=bad))
    with pytest.raises(InvalidSchemaError):
        Engine(model, 1).submit(Request(chat_tokens(model, "hi"), SamplingParams(constraint=bad)))


def test_streamed_equals_whole_and_batch_equals_complete(model: Model, quad: Model) -> None:
    """Temperature 0: the streamed pieces join to the non-streamed text, and the parallel engine
    (a constrained and an unconstrained request sharing one batch) gives complete()'s output."""
    c = structured.from_schema(PERSON)
    prompts = ["Carol is 28. Give JSON.", "Dan, aged 61, as JSON.", "Eve is 19 years old; JSON."]
    params = SamplingParams(temperature=0, max_tokens=60, constraint=c)
    gen = Generator(model)
    whole = [gen.complete(chat_tokens(model, p), params).text for p in prompts]
    streamed = ["".join(gen.stream(chat_tokens(model, p), params)) for p in prompts]
    assert streamed == whole
    free = SamplingParams(temperature=0, max_tokens=24)
    free_text = gen.complete(chat_tokens(quad, "Name three fruits."), free).text
    engine = Engine(quad, 4)
    requests = [Request(chat_tokens(quad, p), params, tag=i) for i, p in enumerate(prompts)]
    requests.append(Request(chat_tokens(quad, "Name three fruits."), free, tag="free"))
    out = {req.tag: res for req, res in engine.run(requests)}
    assert [out[i].text for i in range(3)] == whole
    assert out["free"].text == free_text and out["free"].checked is None
    assert all(out[i].checked.valid for i in range(3))


def test_large_vocabulary_grammar(installed) -> None:
    """Gemma 3 270M: 262k tokens, a base model (no chat template), the same guarantees."""
    from tests.models import gemma_base_path

    with Model(gemma_base_path(installed), LoadOptions(n_ctx=1024)) as gemma:
        c = structured.from_schema(PERSON)
        tokens = gemma.tokenize("Text: Frank is 52 years old.\nThe person as JSON:")
        result = Generator(gemma).complete(tokens, SamplingParams(temperature=0, max_tokens=60, constraint=c))
        assert result.checked is not None and result.checked.valid, result.text


# ---------------------------------------------------------------- logprobs, logit bias, penalties


def test_logprobs_are_the_models_distribution(model: Model) -> None:
    tokens = chat_tokens(model, "What colour is the sky?")
    # Without penalties greedy takes the top token of the raw distribution (logprobs are the
    # model's, before repeat penalties or logit bias reshape it, as OpenAI reports them).
    params = SamplingParams(temperature=0, max_tokens=6, logprobs=3, repeat_penalty=1.0)
    result = Generator(model).complete(tokens, params)
    assert result.logprobs is not None and len(result.logprobs) == result.completion_tokens
    for entry in result.logprobs:
        assert entry["logprob"] <= 0 and len(entry["top_logprobs"]) == 3
        best = entry["top_logprobs"][0]
        assert best["token"] == entry["token"] and best["logprob"] == entry["logprob"]  # greedy takes the top
        assert bytes(entry["bytes"]).decode("utf-8", "replace") == entry["token"]
        assert sum(math.exp(t["logprob"]) for t in entry["top_logprobs"]) <= 1 + 1e-6
    assert "".join(e["token"] for e in result.logprobs) == result.text


def test_logit_bias_bans_a_token_and_penalties_apply(model: Model) -> None:
    tokens = chat_tokens(model, "What colour is the sky?")
    gen = Generator(model)
    first = gen.complete(tokens, SamplingParams(temperature=0, max_tokens=1, logprobs=1))
    banned = model.tokenize(first.text, add_special=False)[0]
    again = gen.complete(tokens, SamplingParams(temperature=0, max_tokens=1, logit_bias=((banned, -100.0),)))
    assert model.tokenize(again.text, add_special=False)[0] != banned
    with pytest.raises(InvalidParameterError, match="not in the vocabulary"):
        gen.stream(tokens, SamplingParams(logit_bias=((10**7, 1.0),)))
    long = SamplingParams(temperature=0, max_tokens=40, repeat_penalty=1.0)
    plain = gen.complete(tokens, long).text
    penalised = gen.complete(tokens, SamplingParams(temperature=0, max_tokens=40, repeat_penalty=1.0,
                                                    frequency_penalty=1.5, presence_penalty=1.5)).text
    assert penalised != plain


# ---------------------------------------------------------------- the CLI


def test_complete_schema_cli(installed) -> None:
    result = invoke("complete", "--schema", "name, age int", "--json", "--logprobs", "2", *GREEDY, "-n", "60",
                    "Extract the person: Gina is 33.")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["valid"] is True and out["json"] == json.loads(out["text"])
    assert set(out["json"]) == {"name", "age"} and isinstance(out["json"]["age"], int)
    assert out["params"]["constraint"]["kind"] == "schema" and out["params"]["logprobs"] == 2
    assert len(out["logprobs"]) == out["usage"]["completion_tokens"]
    plain = invoke("complete", "--format", "json", *GREEDY, "-n", "80",
                   'What colour is the sky? Answer as JSON like {"colour": "..."}')
    assert plain.exit_code == 0 and isinstance(json.loads(plain.stdout), dict), plain.output


def test_complete_cut_value_exits_1_with_a_true_hint(installed) -> None:
    proc = run_llmlocal("complete", "--schema", "name, age int", *GREEDY, "-n", "3", "Gina is 33.")
    assert proc.returncode == 1
    assert_clean_error(proc.stderr, r"not valid: the generation reached max_tokens")
    assert "raise --max-tokens (it was 3)" in proc.stderr
    # the hint is true: with more tokens the same command succeeds
    ok = run_llmlocal("complete", "--schema", "name, age int", *GREEDY, "-n", "60", "Gina is 33.")
    assert ok.returncode == 0 and json.loads(ok.stdout)


def test_cli_refuses_bad_constraints(installed, tmp_path: Path) -> None:
    bad = tmp_path / "bad.gbnf"
    bad.write_text('root ::= "unclosed\n')
    proc = run_llmlocal("complete", "--grammar", str(bad), "hi")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert_clean_error(proc.stderr, "cannot parse the grammar")
    proc = run_llmlocal("complete", "--schema", "age integr", "hi")
    assert proc.returncode == 1
    assert_clean_error(proc.stderr, "unknown type 'integr'")
    both = invoke("complete", "--schema", "a", "--format", "json", "hi")
    assert both.exit_code == 2 and "cannot be combined" in both.output
    nojson = invoke("complete", "--logprobs", "2", "hi")
    assert nojson.exit_code == 2 and "add --json" in nojson.output


def test_grammar_file_cli(installed, tmp_path: Path) -> None:
    g = tmp_path / "answer.gbnf"
    g.write_text('root ::= ("yes" | "no") "."\n')
    result = invoke("complete", "--grammar", str(g), "--json", *GREEDY, "Is water wet?")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["text"] in ("yes.", "no.") and out["valid"] is True and out["json"] is None


def test_chat_format_and_transcript(installed, tmp_path: Path) -> None:
    saved = tmp_path / "t.json"
    script = f"Bob is 5\n/set format off\nSay hi\n/set format json\n/save {saved}\n"
    result = invoke("chat", "--schema", "name, age int", *GREEDY, "-n", "60", input=script)
    assert result.exit_code == 0, result.output
    first = result.stdout.split("\n}\n")[0] + "\n}"
    assert set(json.loads(first)) == {"name", "age"}
    assert "format = off" in result.stdout and "format = json" in result.stdout
    data = json.loads(saved.read_text())
    assert data["params"]["format"] == "json"
    loaded = invoke("chat", *GREEDY, "-n", "80", input=f"/load {saved}\n/set\n")
    assert "format = json" in loaded.stdout, loaded.output


def test_batch_schema_lines(installed, tmp_path: Path) -> None:
    lines = [{"id": "a", "prompt": "Hana is 22. JSON."},
             {"id": "b", "prompt": 'What colour is the sky? Answer as JSON like {"colour": "..."}',
              "response_format": {"type": "json_object"}},
             {"id": "c", "prompt": "Ivan is 70.", "max_tokens": 3},
             {"id": "d", "prompt": "x", "schema": {"type": "nope"}},
             {"id": "e", "prompt": "Say hi.", "schema": "greeting"}]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = tmp_path / "out.jsonl"
    result = invoke("batch", str(src), "-o", str(out), "--schema", "name, age int", *GREEDY, "-n", "80", "-q")
    assert result.exit_code == 0, result.output
    rows = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert rows["a"]["valid"] and set(rows["a"]["json"]) == {"name", "age"}
    assert rows["b"]["valid"] and isinstance(rows["b"]["json"], dict)
    cut = rows["c"]
    assert cut["finish_reason"] == "length" and cut["valid"] is False and "max_tokens" in cut["error"]
    assert "not a valid JSON Schema" in rows["d"]["error"]
    assert rows["e"]["valid"] and set(rows["e"]["json"]) == {"greeting"}
    meta = json.loads(Path(f"{out}.meta.json").read_text())
    assert meta["params"]["constraint"]["kind"] == "schema"
    # Resuming with another schema would mix two jobs' results: refused.
    other = invoke("batch", str(src), "-o", str(out), "--schema", "title", *GREEDY, "-n", "80", "-q")
    assert other.exit_code == 1 and "constraint" in other.output


@pytest.mark.slow
def test_batch_of_100_nested_records_all_validate(installed, tmp_path: Path) -> None:
    names = ["Ada", "Ben", "Cy", "Dee", "Eli", "Fay", "Gus", "Hal", "Ivy", "Jo"]
    things = ["coffee", "tea", "cake", "bagel", "juice"]
    src = tmp_path / "orders.jsonl"
    with src.open("w") as f:
        for i in range(100):
            text = (f"{names[i % 10]} {'(VIP) ' if i % 3 == 0 else ''}ordered {i % 4 + 1} "
                    f"{['small', 'medium', 'large'][i % 3]} {things[i % 5]}; the order is "
                    f"{['new', 'paid', 'shipped'][i % 3]}. Give it as JSON.")
            f.write(json.dumps({"id": i, "prompt": text}) + "\n")
    schema = tmp_path / "order.json"
    schema.write_text(json.dumps(ORDER))
    out = tmp_path / "out.jsonl"
    result = invoke("batch", str(src), "-o", str(out), "--schema", str(schema), "-p", "8", *GREEDY, "-n", "160",
                    "-q")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 100
    valid = [r for r in rows if r.get("valid")]
    for r in valid:
        jsonschema.validate(r["json"], ORDER)
        assert json.loads(r["text"]) == r["json"]
    for r in rows:
        if not r.get("valid"):  # only a value cut by max_tokens may be invalid, and it says so
            assert r["finish_reason"] == "length" and "error" in r
    assert len(valid) >= 95


# ---------------------------------------------------------------- the Python API


def test_api_extract_and_complete_schema(installed) -> None:
    pydantic = pytest.importorskip("pydantic")

    class Person(pydantic.BaseModel):
        name: str
        age: int

    with llmlocal.load("smollm2-135m") as m:
        person = m.extract("Kim is 45 years old.", Person)
        assert isinstance(person, Person)
        assert isinstance(m.extract("Kim is 45 years old.", "name, age int"), dict)
        text = m.complete("Lee is 30. JSON.", schema=PERSON, temperature=0, max_tokens=60)
        assert m.last is not None and m.last.checked is not None and m.last.checked.valid
        assert json.loads(text) == m.last.value
        with pytest.raises(StructuredOutputError, match="max_tokens") as err:
            m.extract("Kim is 45 years old.", Person, max_tokens=3)
        assert err.value.completion.finish_reason == "length"
        with pytest.raises(TypeError, match="unknown sampling argument"):
            m.complete("hi", constraint=None)


def test_engine_streams_logprobs_with_text(quad: Model) -> None:
    engine = Engine(quad, 2)
    engine.submit(Request(chat_tokens(quad, "Name a fruit."), SamplingParams(temperature=0, max_tokens=8,
                                                                                logprobs=1)))
    seen, final = [], None
    while not engine.idle:
        for event in engine.step():
            if isinstance(event, TokenText):
                seen.extend(event.logprobs or [])
            elif isinstance(event, Finished):
                final = event.completion
    assert final is not None and final.logprobs is not None
    assert [e["token"] for e in seen] == [e["token"] for e in final.logprobs][: len(seen)]


def test_the_readme_structured_example_runs(installed, capsys) -> None:
    """The README's Structured output Python example, verbatim."""
    pytest.importorskip("pydantic")
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Structured output", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    exec(compile(code, "README.md", "exec"), {})
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("True ") and "age" in lines[0]
    assert lines[-1].startswith("{'token': ")


def test_the_grammars_cheap_second_pass_equals_a_full_one(model: Model, monkeypatch) -> None:
    """A rejected token is first resampled among the likeliest runtime.SUBSET tokens, with a check
    that a pass over the whole vocabulary could not pick otherwise; forcing full passes (a subset
    as large as the vocabulary) must give byte-identical outputs, greedy and sampled."""
    from llmlocal import runtime

    c = structured.from_schema({"type": "object", "properties": {"age": {"type": "integer"},
                                                                "tags": {"type": "array", "items": {"type": "string"},
                                                                         "maxItems": 2}},
                                "required": ["age", "tags"]})
    cases = [SamplingParams(temperature=0, max_tokens=40, constraint=c),  # penalties on (the default)
             SamplingParams(temperature=0.8, repeat_penalty=1.0, seed=5, max_tokens=40, constraint=c)]
    prompts = ["Tom is thirty. JSON.", "A list of hobbies as JSON.", "Describe a cat."]
    gen = Generator(model)

    def run() -> list[str]:
        return [gen.complete(chat_tokens(model, p), params).text for p in prompts for params in cases]

    cheap = run()
    monkeypatch.setattr(runtime, "SUBSET", 10**9)
    assert run() == cheap
