"""Sampling parameters: their names, types, ranges and defaults, in one place.

Every surface that takes sampling settings (the CLI's options, chat's ``/set`` and transcripts,
batch lines, the Python API, the server's requests) builds them with
:meth:`SamplingParams.from_mapping`, so a rule such as "NaN is not a temperature" is written
once. Surface-specific rules stay with their surface: OpenAI's ``temperature <= 2`` and
four-stop limit in ``serve/openai_format``, chat's "a reply has at least one token" in chat.
This module imports nothing heavy, so request parsing never loads llama.cpp.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from .errors import InvalidParameterError, option

# llama.cpp reads seed 0xFFFFFFFF (LLAMA_DEFAULT_SEED) as "pick one at random", so it can never
# be a reproducible seed; -1 is the conventional way to ask for that (llama-cli, Ollama).
MAX_SEED = 2**32 - 2
RANDOM_SEED = -1
_INT32_MAX = 2**31 - 1


@dataclass(frozen=True)
class _Rule:
    kind: type  # int or float
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # low itself is not allowed
    why: str = ""  # appended to the range message
    interval: bool = False  # state the range as an interval; else only the side that was crossed


_RULES: dict[str, _Rule] = {
    "temperature": _Rule(float, low=0, high=1e6, why="0 is greedy"),
    "top_p": _Rule(float, low=0, high=1, low_open=True, interval=True),
    "top_k": _Rule(int, low=0, high=_INT32_MAX, why="0 disables it"),
    "min_p": _Rule(float, low=0, high=1, interval=True),
    "repeat_penalty": _Rule(float, low=0, high=1e6, low_open=True, why="1.0 disables it"),
    "repeat_last_n": _Rule(int, low=0, high=_INT32_MAX),
    "seed": _Rule(int, low=RANDOM_SEED, high=MAX_SEED, why="-1 picks one at random"),
    "max_tokens": _Rule(int, low=0, high=_INT32_MAX),
    # OpenAI's penalties (-2..2 there, checked by the server); llama.cpp takes any finite value.
    "presence_penalty": _Rule(float, low=-100, high=100, interval=True, why="0 disables it"),
    "frequency_penalty": _Rule(float, low=-100, high=100, interval=True, why="0 disables it"),
    # How many alternatives to report with each token's log-probability (OpenAI's top_logprobs <= 20).
    "logprobs": _Rule(int, low=0, high=20),
}
_BIAS = _Rule(float, low=-100, high=100, interval=True, why="-100 bans the token")


@dataclass(frozen=True)
class Constraint:
    """What a generation must match: a GBNF grammar the sampler enforces token by token.

    ``kind``: "json" (any object), "schema" or "grammar". Built and checked by llmlocal.structured
    (JSON Schema conversion, the concise form, validation afterwards); it lives here because it is
    a sampling parameter like any other.

    ``schema_text`` is the schema as canonical JSON (kept as text so the frozen SamplingParams that
    carry a Constraint stay hashable and picklable to Ray workers).
    """

    kind: str
    grammar: str
    schema_text: str | None = None
    name: str | None = None  # the schema's name (OpenAI's json_schema.name), for messages

    @property
    def schema(self) -> dict[str, Any] | None:
        return json.loads(self.schema_text) if self.schema_text is not None else None

    @property
    def is_json(self) -> bool:
        return self.kind in ("json", "schema")

    def as_dict(self) -> dict[str, Any]:
        """For provenance: what held the generation."""
        out: dict[str, Any] = {"kind": self.kind}
        if self.kind == "grammar":
            out["grammar"] = self.grammar
        else:
            out["schema"] = self.schema
        if self.name:
            out["name"] = self.name
        return out


@dataclass(frozen=True)
class SamplingParams:
    """How the next token is chosen. temperature 0 means greedy (deterministic)."""

    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.1
    repeat_last_n: int = 64
    seed: int | None = None  # None: a fresh random seed, recorded in the result
    max_tokens: int = 512
    stop: tuple[str, ...] = ()
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, added to its logit), sorted by id
    logprobs: int | None = None  # None: none; N: each token's log-probability and N alternatives
    constraint: Constraint | None = None  # a grammar the output must match (llmlocal.structured)

    @classmethod
    def from_mapping(cls, obj: Mapping[str, Any], *, where: str = "", name: Callable[[str], str] = option,
                     base: SamplingParams | None = None) -> SamplingParams:
        """Checked parameters from ``obj``; keys that are absent or None keep ``base``'s values.

        ``where`` prefixes messages ("line 3"); ``name`` shows a field as the surface spells it
        (by default :func:`errors.option`: ``--top-p`` on the command line, ``'top_p'`` in
        Python). Unknown keys are an error: a misspelt parameter silently ignored is a wrong
        result.

        Raises:
            InvalidParameterError: a wrong type, NaN or infinity, or a value out of range.
        """
        return replace(base or cls(), **check(obj, where=where, name=name))

    def with_changes(self, **changes: Any) -> SamplingParams:
        """A copy with some fields changed, checked by the same rules as :meth:`from_mapping`."""
        return self.from_mapping(changes, base=self)

    def validate(self) -> None:
        """Check a directly constructed instance by the same rules (the engine's last guard)."""
        check({f.name: getattr(self, f.name) for f in fields(self)})

    def resolved(self) -> SamplingParams:
        """A copy with a concrete seed, so the result says how to reproduce it."""
        if self.seed is not None and self.seed != RANDOM_SEED:
            return self
        return replace(self, seed=random.randrange(2**31))

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values: what a result records as the parameters used."""
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "constraint":
                v = v.as_dict() if v is not None else None
            elif f.name == "logit_bias":
                v = {str(t): b for t, b in v}
            elif isinstance(v, tuple):
                v = list(v)
            out[f.name] = v
        return out


FIELDS: tuple[str, ...] = tuple(f.name for f in fields(SamplingParams))


def check(obj: Mapping[str, Any], *, where: str = "", name: Callable[[str], str] = option) -> dict[str, Any]:
    """The given (non-None) entries of ``obj``, each checked and normalised (see from_mapping)."""
    prefix = f"{where}: " if where else ""
    out: dict[str, Any] = {}
    for key, value in obj.items():
        if value is None:
            continue
        if key == "stop":
            out["stop"] = normalise_stop(value, where=where, name=name)
            continue
        if key == "logit_bias":
            out["logit_bias"] = normalise_bias(value, where=where, name=name)
            continue
        if key == "constraint":
            if not isinstance(value, Constraint):
                raise InvalidParameterError(f"{prefix}{name(key)} must be a Constraint (llmlocal.structured)",
                                            field=key)
            out[key] = value
            continue
        rule = _RULES.get(key)
        if rule is None:
            raise InvalidParameterError(f"{prefix}unknown sampling parameter {name(key)}; known: "
                                        + ", ".join(name(k) for k in FIELDS), field=key)
        out[key] = _check_number(key, value, rule, prefix, name)
    return out


def parse_value(key: str, text: str) -> int | float:
    """One parameter's value from text (chat's ``/set top_p 0.9``), checked."""
    rule = _RULES.get(key)
    if rule is None:
        raise InvalidParameterError(f"unknown sampling parameter '{key}'", field=key)
    try:
        value = rule.kind(text.strip())
    except ValueError:
        what = "an integer" if rule.kind is int else "a number"
        raise InvalidParameterError(f"{key} must be {what}, got '{text}'", field=key) from None
    return _check_number(key, value, rule, "", lambda k: k)


def normalise_stop(value: Any, *, where: str = "", name: Callable[[str], str] = option) -> tuple[str, ...]:
    """A stop string or list of them as a tuple; empty strings dropped (they would stop at once)."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(s, str) for s in value):
        prefix = f"{where}: " if where else ""
        raise InvalidParameterError(f"{prefix}{name('stop')} must be a string or a list of strings", field="stop")
    return tuple(s for s in value if s)


def normalise_bias(value: Any, *, where: str = "",
                   name: Callable[[str], str] = option) -> tuple[tuple[int, float], ...]:
    """A logit bias ({token id: bias}, ids as ints or decimal strings as JSON has them) as sorted pairs."""
    prefix = f"{where}: " if where else ""
    items = value.items() if isinstance(value, Mapping) else value
    if not isinstance(items, (list, tuple)) and not isinstance(value, Mapping):
        raise InvalidParameterError(f"{prefix}{name('logit_bias')} must map token ids to numbers", field="logit_bias")
    out: dict[int, float] = {}
    for pair in items:
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise InvalidParameterError(f"{prefix}{name('logit_bias')} must map token ids to numbers",
                                        field="logit_bias")
        token, bias = pair
        if isinstance(token, str) and token.strip().isdigit():
            token = int(token)
        if isinstance(token, bool) or not isinstance(token, int) or token < 0:
            raise InvalidParameterError(f"{prefix}{name('logit_bias')}: {token!r} is not a token id "
                                        "(a non-negative integer)", field="logit_bias")
        out[token] = float(_check_number("logit_bias", bias, _BIAS, prefix, name))
    return tuple(sorted(out.items()))


def _check_number(key: str, value: Any, rule: _Rule, prefix: str, name: Callable[[str], str]) -> int | float:
    what = "an integer" if rule.kind is int else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidParameterError(f"{prefix}{name(key)} must be {what}, not {type(value).__name__} {value!r}",
                                    field=key)
    if rule.kind is int and isinstance(value, float):
        if not (math.isfinite(value) and value.is_integer()):
            raise InvalidParameterError(f"{prefix}{name(key)} must be {what}, got {value!r}", field=key)
        value = int(value)
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidParameterError(f"{prefix}{name(key)} must be a finite number, got {value!r}", field=key)
    low, high = rule.low, rule.high
    too_low = low is not None and (value <= low if rule.low_open else value < low)
    too_high = high is not None and value > high
    if too_low or too_high:
        if rule.interval and low is not None and high is not None:
            bounds = f"in {'(' if rule.low_open else '['}{_num(low)}, {_num(high)}]"
        elif too_low and low is not None:
            bounds = f"{'>' if rule.low_open else '>='} {_num(low)}"
        else:
            bounds = f"<= {_num(high or 0)}"
        why = f" ({rule.why})" if rule.why else ""
        raise InvalidParameterError(f"{prefix}{name(key)} must be {bounds}{why}; got {value!r}", field=key)
    return rule.kind(value)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)
