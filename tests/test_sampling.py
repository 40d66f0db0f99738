"""The one home of sampling rules, tested as pure logic (no model: the rules are arithmetic).

Property-based: whatever a surface hands over (a CLI float, a JSON value, a transcript field),
from_mapping either returns parameters every field of which is in range and finite, or raises
InvalidParameterError naming the field. Never another exception, never NaN let through.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmlocal import sampling
from llmlocal.errors import InvalidParameterError, UsageError
from llmlocal.sampling import FIELDS, SamplingParams
from llmlocal.serve import openai_format as oai

anything = st.none() | st.booleans() | st.integers(min_value=-2**80, max_value=2**80) | st.floats() \
    | st.text(max_size=5) | st.lists(st.text(max_size=3) | st.integers(), max_size=3) \
    | st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)


def _in_range(p: SamplingParams) -> bool:
    return (p.temperature >= 0 and 0 < p.top_p <= 1 and p.top_k >= 0 and 0 <= p.min_p <= 1
            and p.repeat_penalty > 0 and p.max_tokens >= 0
            and (p.seed is None or -1 <= p.seed <= sampling.MAX_SEED)
            and all(isinstance(s, str) and s for s in p.stop)
            and all(math.isfinite(v) for v in (p.temperature, p.top_p, p.min_p, p.repeat_penalty)))


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.sampled_from(FIELDS), anything, max_size=4))
def test_from_mapping_returns_valid_params_or_names_the_field(given_values) -> None:
    try:
        params = SamplingParams.from_mapping(given_values)
    except InvalidParameterError as exc:
        assert exc.field in given_values and exc.field in str(exc)
        return
    assert _in_range(params)
    params.validate()


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from([*FIELDS, "n", "logprobs", "max_completion_tokens", "stream"]),
                       anything, max_size=4))
def test_openai_requests_are_parsed_or_refused_with_a_400(fields) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], **fields}
    try:
        req = oai.parse_chat(body)
    except oai.ApiError as exc:
        assert exc.status == 400 and exc.message
        return
    assert _in_range(req.params) and req.params.seed is not None and req.params.seed >= 0
    assert req.max_tokens is None or req.max_tokens >= 0


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("field", ["temperature", "top_p", "min_p", "repeat_penalty"])
def test_non_finite_numbers_are_refused_everywhere(field, value) -> None:
    with pytest.raises(InvalidParameterError, match="finite"):
        SamplingParams.from_mapping({field: value})
    with pytest.raises(oai.ApiError, match="finite"):
        oai.parse_chat({"messages": [{"role": "user", "content": "hi"}], field: value})
    with pytest.raises(UsageError):
        SamplingParams(**{field: value}).validate()  # built directly: the engine's guard catches it


def test_stop_is_normalised_in_one_place() -> None:
    assert SamplingParams.from_mapping({"stop": "END"}).stop == ("END",)  # not ("E", "N", "D")
    assert SamplingParams.from_mapping({"stop": ["a", "", "b"]}).stop == ("a", "b")
    with pytest.raises(InvalidParameterError, match="'stop' must be a string or a list of strings"):
        SamplingParams.from_mapping({"stop": [1]})


def test_surfaces_name_the_field_their_way() -> None:
    with pytest.raises(InvalidParameterError, match=r"^line 3: --top-k must be an integer, got 1\.5$"):
        SamplingParams.from_mapping({"top_k": 1.5}, where="line 3", name=lambda k: "--" + k.replace("_", "-"))
    with pytest.raises(InvalidParameterError, match=r"unknown sampling parameter 'colour'"):
        SamplingParams.from_mapping({"colour": 1})


def test_seed_minus_one_means_random_and_resolves_to_a_real_seed() -> None:
    params = SamplingParams.from_mapping({"seed": -1}).resolved()
    assert 0 <= params.seed < 2**31
    assert SamplingParams.from_mapping({"seed": 7}).resolved().seed == 7
    for bad in (-2, sampling.MAX_SEED + 1):
        with pytest.raises(InvalidParameterError, match="seed"):
            SamplingParams.from_mapping({"seed": bad})


def test_absent_and_none_keep_the_base() -> None:
    base = SamplingParams(temperature=0.3, max_tokens=9)
    assert SamplingParams.from_mapping({"temperature": None}, base=base) == base
    assert base.with_changes(top_k=5) == SamplingParams(temperature=0.3, max_tokens=9, top_k=5)
