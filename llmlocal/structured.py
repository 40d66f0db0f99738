"""Structured output: what a constrained generation must produce, and whether it did.

A :class:`Constraint` is the one description every surface builds (``--schema``, ``--grammar``,
``--format json``, a batch line's ``schema``, the server's ``response_format`` and ``tools``, the
Python API's ``schema=``). It carries a GBNF grammar, which the runtime's sampler enforces token
by token, and, for JSON, the schema that :func:`check` validates afterwards with ``jsonschema``:
the grammar holds structure (types, required keys, enums, array lengths, string lengths and
patterns) while some keywords (numeric bounds, most ``format``s) are only checked afterwards.

This module imports nothing heavy: the JSON Schema to GBNF conversion is llama-cpp-python's port
of llama.cpp's converter, reached through ``runtime.schema_to_gbnf`` (the llama_cpp owner).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InvalidSchemaError, UsageError, option
from .sampling import Constraint

__all__ = ["ANY_OBJECT", "Checked", "Constraint", "any_json", "cached_schema", "check", "closes", "concise",
           "extraction_prompt", "from_grammar", "from_response_format", "from_schema", "from_value", "parse_option",
           "read_grammar", "resolve", "validate"]

# What `--format json` and OpenAI's {"type": "json_object"} mean: some JSON object (Ollama's and
# OpenAI's reading; llama.cpp's json.gbnf root is an object too).
ANY_OBJECT: dict[str, Any] = {"type": "object"}


@dataclass(frozen=True)
class Checked:
    """A constrained generation's outcome: the parsed value (JSON kinds), and whether it is valid."""

    valid: bool
    value: Any = None
    error: str | None = None

    def fields(self) -> dict[str, Any]:
        """The record fields every surface adds: ``json`` (JSON kinds), ``valid``, ``error`` if any."""
        out: dict[str, Any] = {"json": self.value, "valid": self.valid}
        if self.error:
            out["error"] = self.error
        return out


def any_json() -> Constraint:
    return Constraint("json", _to_gbnf(ANY_OBJECT), json.dumps(ANY_OBJECT))


def from_schema(schema: Any, *, name: str | None = None, what: str = "the schema") -> Constraint:
    """A constraint from a JSON Schema (a dict, or a pydantic model class where pydantic is installed).

    Raises:
        InvalidSchemaError: not a valid JSON Schema, or one the grammar converter cannot express.
    """
    schema = as_schema(schema, what=what)
    _check_schema(schema, what)
    grammar = _to_gbnf(schema, what=what)
    return Constraint("schema", grammar, json.dumps(schema), name or schema.get("title"))


def from_grammar(text: str, *, what: str = "the grammar") -> Constraint:
    """A constraint from GBNF text; llama.cpp parses it when a sampler is made (errors then)."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidSchemaError(f"{what} is empty", hint="a GBNF grammar needs at least a `root ::= ...` rule")
    if not re.search(r"(^|\n)\s*root\s*::=", text):
        raise InvalidSchemaError(f"{what} has no `root` rule", hint="GBNF starts from `root ::= ...`")
    return Constraint("grammar", text)


def as_schema(schema: Any, *, what: str = "the schema") -> dict[str, Any]:
    """``schema`` as a JSON Schema dict: a dict as it is, a pydantic model's JSON schema."""
    if isinstance(schema, Mapping):
        return dict(schema)
    json_schema = getattr(schema, "model_json_schema", None)  # pydantic v2 models, without importing it
    if isinstance(schema, type) and callable(json_schema):
        return json_schema()
    raise InvalidSchemaError(f"{what} must be a JSON Schema object (or a pydantic model), "
                             f"not {type(schema).__name__}")


def resolve(*, schema: Any = None, grammar: str | None = None, format: Any = None) -> Constraint | None:
    """The one constraint that ``schema``, ``grammar`` (GBNF text) or ``format`` ask for, or None.

    ``schema``: a JSON Schema dict, a pydantic model, or text (``--schema``'s forms: a .json file,
    inline JSON, the concise form). ``format``: "json" (any JSON object) or a JSON Schema, as
    Ollama's ``format`` takes. At most one may be given.
    """
    given = [n for n, v in (("schema", schema), ("grammar", grammar), ("format", format)) if v is not None]
    if len(given) > 1:
        raise UsageError(f"{option(given[0])} and {option(given[1])} cannot be combined: give one constraint")
    if schema is not None:
        return parse_option(schema) if isinstance(schema, str) else from_schema(schema)
    if grammar is not None:
        return from_grammar(grammar)
    if format is None:
        return None
    if isinstance(format, str) and format.strip().lower() == "json":
        return any_json()
    if isinstance(format, str):
        raise UsageError(f"{option('format')} takes 'json' or a JSON Schema, not {format!r}")
    return from_schema(format, what=f"the {option('format')} schema")


def from_response_format(value: Any, *, what: str = "'response_format'") -> Constraint | None:
    """OpenAI's ``response_format``: {"type": "text"} (None), {"type": "json_object"}, or
    {"type": "json_schema", "json_schema": {"name", "schema", "strict"}}. ``strict`` needs nothing
    extra: the grammar always holds the schema, and the result is validated either way."""
    if not isinstance(value, Mapping):
        raise InvalidSchemaError(f"{what} must be an object such as {{\"type\": \"json_object\"}}")
    kind = value.get("type")
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        return any_json()
    if kind != "json_schema":
        raise InvalidSchemaError(f"{what}.type must be text, json_object or json_schema, not {kind!r}")
    spec = value.get("json_schema")
    if not isinstance(spec, Mapping):
        raise InvalidSchemaError(f"{what}.json_schema must be an object with 'name' and 'schema'")
    name = spec.get("name")
    if name is not None and not isinstance(name, str):
        raise InvalidSchemaError(f"{what}.json_schema.name must be a string")
    schema = spec.get("schema", {})
    if not isinstance(schema, Mapping):
        raise InvalidSchemaError(f"{what}.json_schema.schema must be a JSON Schema object")
    return cached_schema(json.dumps(schema), name, f"{what}.json_schema.schema")


def from_value(value: Any, *, what: str) -> Constraint:
    """A schema given as data (a batch line's ``schema``): a JSON Schema object, or a string in
    inline JSON or the concise form (never a file name: input lines do not open files)."""
    if isinstance(value, Mapping):
        return cached_schema(json.dumps(value), None, what)
    if isinstance(value, str) and value.strip():
        text = value.strip()
        if text.startswith("{"):
            return cached_schema(json.dumps(_load_json(text, what)), None, what)
        return cached_schema(json.dumps(concise(text)), None, what)
    raise InvalidSchemaError(f"{what} must be a JSON Schema object or a concise schema string")


@functools.lru_cache(maxsize=64)
def cached_schema(schema_json: str, name: str | None, what: str) -> Constraint:
    """from_schema, once per distinct schema: a batch of 10,000 lines with one schema converts it once."""
    return from_schema(json.loads(schema_json), name=name, what=what)


def parse_option(value: str, *, what: str | None = None) -> Constraint:
    """``--schema VALUE``: a file holding a JSON Schema, inline JSON, or the concise form."""
    what = what or option("schema")
    text = value.strip()
    if not text:
        raise InvalidSchemaError(f"{what} is empty", hint=CONCISE_HINT)
    if not text.startswith("{"):
        path = Path(value)
        if path.suffix.lower() == ".json" or (len(text) < 4096 and "\n" not in text and path.is_file()):
            try:
                text = path.read_text(encoding="utf-8")
            except FileNotFoundError:
                raise InvalidSchemaError(f"{what}: no such file '{value}'") from None
            except (OSError, UnicodeDecodeError) as exc:
                raise InvalidSchemaError(f"{what}: cannot read '{value}': {exc}") from None
            what = f"{what} file '{value}'"
            return from_schema(_load_json(text, what), what=what)
        return from_schema(concise(text), what=what)
    return from_schema(_load_json(text, what), what=what)


def read_grammar(path: str) -> Constraint:
    """``--grammar FILE``."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InvalidSchemaError(f"{option('grammar')}: no such file '{path}'") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidSchemaError(f"{option('grammar')}: cannot read '{path}': {exc}") from None
    return from_grammar(text, what=f"the grammar in '{path}'")


def _load_json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidSchemaError(f"{what} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
                                 hint=CONCISE_HINT) from None


# -- the concise form

CONCISE_HINT = ("give a JSON Schema (inline or a .json file) or the concise form, e.g. "
                "'name, age int, tags list of str, mood one of happy|sad: how they feel'")
_TYPES = {"str": "string", "string": "string", "int": "integer", "integer": "integer", "float": "number",
          "number": "number", "bool": "boolean", "boolean": "boolean"}
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*")


def concise(text: str) -> dict[str, Any]:
    """The concise schema form (after simonw/llm's) as a JSON Schema object.

    Fields are separated by commas or newlines. Each is ``NAME [TYPE] [: DESCRIPTION]``, every
    field required. TYPE is ``str`` (the default), ``int``, ``float``, ``bool``, ``list of TYPE``
    (or ``TYPE[]``), or ``one of A|B|C`` (an enum of strings); a trailing ``?`` makes the field
    optional. ``NAME: TYPE`` also works when the text after the colon is exactly a type.
    """
    properties: dict[str, Any] = {}
    required: list[str] = []
    for raw in re.split(r"[,\n]", text):
        item = raw.strip()
        if not item:
            continue
        head, _, desc = item.partition(":")
        head, desc = head.strip(), desc.strip()
        m = _NAME.match(head)
        if not m:
            raise InvalidSchemaError(f"schema field '{item}' does not start with a name", hint=CONCISE_HINT)
        name, type_text = m.group(0), head[m.end():].strip()
        if not type_text and desc and _type(desc, item, strict=False) is not None:
            type_text, desc = desc, ""  # "tags: list of str"
        optional = type_text.endswith("?")
        type_text = type_text.rstrip("?").strip()
        prop = _type(type_text or "str", item, strict=True)
        assert prop is not None
        if desc:
            prop["description"] = desc
        if name in properties:
            raise InvalidSchemaError(f"schema field '{name}' is given twice", hint=CONCISE_HINT)
        properties[name] = prop
        if not optional:
            required.append(name)
    if not properties:
        raise InvalidSchemaError("the schema names no fields", hint=CONCISE_HINT)
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}


def _type(text: str, item: str, *, strict: bool) -> dict[str, Any] | None:
    t = text.strip().lower()
    if t in _TYPES:
        return {"type": _TYPES[t]}
    if t.startswith("list of ") or t.endswith("[]"):
        inner = t[len("list of "):] if t.startswith("list of ") else t[:-2]
        sub = _type(inner, item, strict=strict)
        return None if sub is None else {"type": "array", "items": sub}
    if t.startswith("one of "):
        values = [v.strip() for v in text.strip()[len("one of "):].split("|") if v.strip()]
        if values:
            return {"type": "string", "enum": values}
    if not strict:
        return None
    raise InvalidSchemaError(f"schema field '{item}': unknown type '{text}' (str, int, float, bool, "
                             "list of TYPE, one of A|B)", hint=CONCISE_HINT)


# -- schema checks and conversion

def _check_schema(schema: dict[str, Any], what: str) -> None:
    import jsonschema

    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "/".join(str(p) for p in exc.path)
        raise InvalidSchemaError(f"{what} is not a valid JSON Schema: {exc.message}"
                                 + (f" (at {where})" if where else "")) from None


def _to_gbnf(schema: dict[str, Any], *, what: str = "the schema") -> str:
    from .runtime import schema_to_gbnf

    try:
        return schema_to_gbnf(json.dumps(schema))
    except RecursionError:
        raise InvalidSchemaError(f"{what} nests too deeply to turn into a grammar") from None
    except (AssertionError, KeyError, ValueError, TypeError, AttributeError, RuntimeError) as exc:
        # The converter asserts on schemas it cannot express (an unknown type, an unresolvable $ref).
        detail = str(exc) or type(exc).__name__
        raise InvalidSchemaError(f"{what} cannot be turned into a grammar: {detail}",
                                 hint="see the README's list of supported schema keywords") from None


# -- the extraction prompt

EXTRACT_INSTRUCTIONS = ("Extract the information in the text as JSON that matches the schema. "
                        "Use only what the text says.")


def extraction_prompt(text: str, constraint: Constraint, *, instructions: str | None = None,
                      raw: bool = False) -> tuple[str | None, str]:
    """(system prompt, user text) for extracting ``constraint``'s schema from ``text``.

    The model is shown the schema: the grammar keeps the output well-formed, but only the prompt
    tells a small model which field means what (OpenAI and Ollama put it in the prompt too). For
    a base model (``raw``, no chat template) it is one text ending where the JSON begins.
    """
    schema = json.dumps(constraint.schema or ANY_OBJECT, ensure_ascii=False)
    task = instructions or EXTRACT_INSTRUCTIONS
    if raw:
        return None, f"{task}\nSchema: {schema}\nText: {text}\nJSON:"
    return task, f"Schema: {schema}\n\nText:\n{text}"


# -- after generation

def closes(text: str) -> bool:
    """Whether ``text`` already holds one complete JSON value (generation can stop here).

    Cheap: only tried when the text ends with a character that can end an object, array or string.
    """
    stripped = text.strip()
    if not stripped or stripped[-1] not in '}]"':
        return False
    try:
        _, end = json.JSONDecoder().raw_decode(stripped)
    except ValueError:
        return False
    return end == len(stripped)


def check(constraint: Constraint, text: str, finish_reason: str, *, ended_by_grammar: bool = False) -> Checked:
    """Whether ``text`` satisfies ``constraint``: parsed, complete and (for schemas) valid.

    A generation cut by ``max_tokens`` or the context is never valid, even when what it wrote
    happens to parse. ``ended_by_grammar``: the grammar let the model end there (GBNF kinds).
    """
    cut = finish_reason in ("length", "context")
    if constraint.kind == "grammar":
        if cut:
            return Checked(False, error=_cut_message(finish_reason))
        if not ended_by_grammar:
            return Checked(False, error="the generation stopped before the grammar was complete (a stop sequence?)")
        return Checked(True)
    try:
        value = json.loads(text)
    except ValueError as exc:
        message = _cut_message(finish_reason) if cut else f"the output is not valid JSON: {exc}"
        return Checked(False, error=message)
    if cut:
        return Checked(False, value, _cut_message(finish_reason))
    error = validate(value, constraint.schema or ANY_OBJECT)
    return Checked(error is None, value, error)


def validate(value: Any, schema: dict[str, Any]) -> str | None:
    """The first way ``value`` breaks ``schema`` (jsonschema's words and where), or None."""
    import jsonschema

    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = sorted(validator.iter_errors(value), key=lambda e: list(e.path))
    if not errors:
        return None
    first = errors[0]
    where = "/".join(str(p) for p in first.path)
    return f"does not match the schema: {first.message}" + (f" (at {where})" if where else "")


def _cut_message(finish_reason: str) -> str:
    limit = "max_tokens" if finish_reason == "length" else "the context window"
    return f"the generation reached {limit} before the value was complete"
