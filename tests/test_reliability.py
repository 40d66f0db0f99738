"""Bad input at the front ends: each case once crashed, lied about provenance or took garbage.

Every failure must be one ``Error:`` line and a true ``hint:``, exit 1 (2 for usage), never a
signal or a traceback; exit 0 only when the work was done. The commands run in real processes
where the process boundary is the point (a signal, stdin bytes), through the real model.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from click.testing import CliRunner

from llmlocal import hardware
from llmlocal.cli import cli
from tests.test_complete import assert_clean_error, run_llmlocal


def llmlocal_bytes(*args: str, stdin: bytes) -> subprocess.CompletedProcess:
    """A real process fed raw bytes, as `printf 'caf\\xe9' | llmlocal ...` does."""
    return subprocess.run([sys.executable, "-m", "llmlocal", *args], input=stdin, capture_output=True,
                          env=os.environ.copy())


# ---------------------------------------------------------------- threads (#2)


@pytest.mark.parametrize("threads", ["100000", "5000", "0"])
def test_a_thread_count_out_of_bounds_is_a_usage_error_not_a_segfault(installed, threads) -> None:
    result = run_llmlocal("complete", "-t", threads, "-n", "4", "hi")
    assert result.returncode == 2, result.stderr
    assert_clean_error(result.stderr, "threads")
    limit = hardware.max_threads()
    if int(threads) > limit:
        assert f"at most {limit}" in result.stderr and f"use at most {os.cpu_count()}" in result.stderr


def test_the_thread_limit_is_four_per_logical_cpu() -> None:
    assert hardware.max_threads() == 4 * os.cpu_count()
    hardware.check_threads(hardware.max_threads())  # the limit itself is allowed


def test_serve_checks_threads_before_listening(installed) -> None:
    result = run_llmlocal("serve", "--port", "0", "-t", "100000")
    assert result.returncode == 2 and "serving on" not in result.stderr
    assert_clean_error(result.stderr, "threads")


# ---------------------------------------------------------------- text input (#7, #10)


def test_non_utf8_stdin_to_complete_is_an_input_error_naming_the_line(installed) -> None:
    result = llmlocal_bytes("complete", "-n", "4", stdin=b"hello\ncaf\xe9\n")
    stderr = result.stderr.decode()
    assert result.returncode == 1, stderr
    assert_clean_error(stderr, r"^Error: <stdin>:2: not valid UTF-8 \(byte 0xe9 at column 4\)")


def test_non_utf8_prompt_argument_is_an_input_error(installed) -> None:
    # Python passes undecodable argv bytes as lone surrogates (PEP 383).
    result = subprocess.run([sys.executable.encode(), b"-m", b"llmlocal", b"complete", b"-n", b"4", b"caf\xe9"],
                            capture_output=True, env=os.environ.copy())
    assert result.returncode == 1
    assert_clean_error(result.stderr.decode(), r"the prompt argument: not valid UTF-8 \(byte 0xe9")


def test_non_utf8_line_piped_to_chat_is_an_input_error_naming_the_line(installed) -> None:
    result = llmlocal_bytes("chat", "--temperature", "0", "-n", "4", stdin=b"caf\xe9\n")
    stderr = result.stderr.decode()
    assert result.returncode == 1, stderr
    assert_clean_error(stderr, r"^Error: <stdin>:1: not valid UTF-8 \(byte 0xe9 at column 4\)")


def test_classify_reads_the_same_bytes_by_the_same_rule(installed) -> None:
    result = llmlocal_bytes("classify", "-l", "a,b", stdin=b"hello\ncaf\xe9\n")
    assert result.returncode == 1
    assert "<stdin>:2: not valid UTF-8 (byte 0xe9 at column 4)" in result.stderr.decode()


@pytest.mark.parametrize("stdin", [b"", b"\n  \n"])
def test_empty_stdin_to_complete_is_refused_as_chat_and_the_server_refuse_it(installed, stdin) -> None:
    result = llmlocal_bytes("complete", "-n", "4", stdin=stdin)
    assert result.returncode == 2
    assert_clean_error(result.stderr.decode(), "the prompt on stdin is empty")


def test_empty_prompt_argument_is_refused(installed) -> None:
    result = CliRunner().invoke(cli, ["complete", "-n", "4", "  "])
    assert result.exit_code == 2 and "the prompt given is empty" in result.stderr


# ---------------------------------------------------------------- numbers (#8, #9)


@pytest.mark.parametrize("option, value, words", [
    ("--temperature", "nan", "--temperature must be a finite number, got nan"),
    ("--temperature", "inf", "--temperature must be a finite number, got inf"),
    ("--repeat-penalty", "nan", "--repeat-penalty must be a finite number"),
    ("--top-p", "nan", "--top-p must be a finite number"),
    ("--min-p", "-inf", "--min-p must be a finite number"),
    ("--top-p", "0", "--top-p must be in (0, 1]"),
    ("--top-k", "99999999999", "--top-k must be <= 2147483647"),
    ("--seed", "-2", "--seed must be >= -1 (-1 picks one at random)"),
    ("--seed", "4294967295", "--seed must be <= 4294967294"),
    ("--max-tokens", "-1", "--max-tokens must be >= 0"),
])
def test_non_finite_and_out_of_range_numbers_are_usage_errors(option, value, words) -> None:
    # Checked before any model is loaded (the home is empty), so no model is needed.
    result = CliRunner().invoke(cli, ["complete", option, value, "hi"])
    assert result.exit_code == 2, result.output
    assert_clean_error(result.stderr, re.escape(words))


@pytest.mark.slow
def test_seed_minus_one_is_random_and_the_seed_really_used_is_recorded(installed) -> None:
    runs = [json.loads(run_llmlocal("complete", "--json", "--seed", "-1", "-n", "6", "Tell me a story").stdout)
            for _ in range(2)]
    seeds = [r["params"]["seed"] for r in runs]
    assert all(0 <= s < 2**31 for s in seeds) and seeds[0] != seeds[1]
    again = json.loads(run_llmlocal("complete", "--json", "--seed", str(seeds[0]), "-n", "6",
                                    "Tell me a story").stdout)
    assert again["text"] == runs[0]["text"]  # the recorded seed reproduces the run


def test_api_refuses_nan_and_records_the_real_seed(installed) -> None:
    import llmlocal
    from llmlocal.errors import InvalidParameterError

    with llmlocal.load("smollm2-135m", ctx=512) as m:
        with pytest.raises(InvalidParameterError, match=r"'temperature' must be a finite number") as err:
            m.complete("hi", temperature=float("nan"))
        assert err.value.field == "temperature"
        m.complete("hi", seed=-1, max_tokens=2)
        assert m.last.params["seed"] not in (None, -1)


# ---------------------------------------------------------------- context rounding


def test_a_rounded_context_is_said_and_the_overflow_names_the_real_size(installed) -> None:
    result = CliRunner().invoke(cli, ["complete", "--ctx", "64", "--temperature", "0", "word " * 300])
    assert result.exit_code == 1
    assert "note: context rounded up from 64 to 256 tokens" in result.stderr
    assert "the context holds 256" in result.stderr


# ---------------------------------------------------------------- serve options (#14)


@pytest.mark.parametrize("value", ["1e308", "nan", "inf", "0", "-3"])
def test_serve_max_body_is_checked_as_a_usage_error(value) -> None:
    result = CliRunner().invoke(cli, ["serve", "--max-body-mb", value])
    assert result.exit_code == 2, result.output
    assert_clean_error(result.stderr, "--max-body-mb must be a number of megabytes above 0")


# ---------------------------------------------------------------- messages that name the right thing


def test_chat_save_error_names_the_path_typed_not_a_temporary_file(smollm2, tmp_path) -> None:
    from llmlocal import chat
    from llmlocal.errors import OutputNotWritableError
    from llmlocal.runtime import LoadOptions, Model

    with Model(smollm2, LoadOptions(n_ctx=256)) as model:
        session = chat.ChatSession(model, template=model.chat_template())
        typed = str(tmp_path / "no-such-dir" / "t.json")
        with pytest.raises(OutputNotWritableError) as err:
            session.save(typed)
        assert str(err.value) == f"cannot write {typed}: No such file or directory"
        assert ".tmp" not in str(err.value) and "-o" not in err.value.hint


@pytest.mark.parametrize("value", ["0", "100000"])
def test_serve_parallel_is_bounded_before_listening(installed, value) -> None:
    result = run_llmlocal("serve", "--port", "0", "--parallel", value)
    assert result.returncode == 2 and "serving on" not in result.stderr
    assert_clean_error(result.stderr, "--parallel must be between 1 and 64")


# ---------------------------------------------------------------- documents nested past Python's recursion limit


DEEP = "[" * 50_000 + "]" * 50_000


@pytest.mark.parametrize("file, text, words", [
    ("models.toml", f"a = {DEEP}\n", "models.toml: invalid TOML: nested too deeply to read"),
    ("config.toml", f"default_model = {DEEP}\n", "config.toml: invalid TOML: nested too deeply to read"),
])
def test_a_hostile_toml_file_in_the_home_is_a_clean_error(installed, file, text, words) -> None:
    (installed / file).write_text(text)
    result = run_llmlocal("complete", "-n", "2", "hi")
    assert result.returncode == 1
    assert_clean_error(result.stderr, re.escape(words))


def test_a_hostile_chat_transcript_is_an_input_error(smollm2, tmp_path) -> None:
    from llmlocal import chat
    from llmlocal.errors import InputFormatError
    from llmlocal.runtime import LoadOptions, Model

    path = tmp_path / "deep.json"
    path.write_text('{"messages": ' + DEEP + "}")
    with Model(smollm2, LoadOptions(n_ctx=256)) as model:
        with pytest.raises(InputFormatError, match="not a JSON transcript .nested too deeply"):
            chat.ChatSession(model, template=model.chat_template()).load(path)


def test_core_messages_spell_parameters_as_the_callers_surface_does() -> None:
    """Pure logic: the same check reads --abstain-below on the command line, 'abstain_below' in Python."""
    from llmlocal import classify
    from llmlocal.cli import _flag_name
    from llmlocal.errors import UsageError, option_style

    bad = classify.Settings(abstain_below=2.0)
    with pytest.raises(UsageError, match=r"^'abstain_below' must be a probability in \[0, 1\]$"):
        bad.validate()
    with option_style(_flag_name), pytest.raises(UsageError, match=r"^--abstain-below must be a probability"):
        bad.validate()
    with pytest.raises(UsageError) as err:
        classify.Settings(abstain_label="spam").validate(["spam", "ham"])
    assert err.value.hint == "choose another with 'abstain_label'"
