"""`llmlocal chat`: the session core with the real model, the REPL in a real pseudo-terminal.

The REPL tests drive a real `python -m llmlocal chat` process through pexpect (a real pty, so
readline, the prompts and Ctrl-C behave as they do for a person); the pty turns "\\n" into
"\\r\\n". The non-terminal mode runs as a real process with a pipe on stdin. Timeouts are only a
safety net against a hung child, never a speed check: another build may be using the CPU.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pexpect
import pytest
from click.testing import CliRunner

from llmlocal import chat, paths
from llmlocal.cli import cli
from llmlocal.errors import ContextOverflowError, InputFormatError, UsageError
from llmlocal.runtime import LoadOptions, Model, SamplingParams

GREEDY = ["--temperature", "0", "--seed", "1"]
TIMEOUT = 120  # seconds: a safety net for a hung child, not a speed limit
PROMPT = ">>> "


# ---------------------------------------------------------------- helpers


def run_chat(*args: str, input: str) -> subprocess.CompletedProcess:
    """`llmlocal chat` as a real process with a pipe (not a terminal) on stdin."""
    return subprocess.run([sys.executable, "-m", "llmlocal", "chat", *GREEDY, *args], input=input,
                          capture_output=True, text=True, env=os.environ.copy())


def spawn_chat(*args: str) -> pexpect.spawn:
    """`llmlocal chat` in a real pseudo-terminal, waiting at its first prompt."""
    child = pexpect.spawn(sys.executable, ["-m", "llmlocal", "chat", *GREEDY, *args], env=os.environ.copy(),
                          encoding="utf-8", timeout=TIMEOUT, dimensions=(40, 250))
    child.expect_exact("model smollm2-135m, context ")
    child.expect_exact(" tokens; /help for commands\r\n" + PROMPT)
    return child


def say(child: pexpect.spawn, line: str) -> str:
    """Send a line, wait for the next prompt, return what was printed in between (echo removed)."""
    child.sendline(line)
    child.expect_exact(PROMPT)
    echoed = line + "\r\n"
    assert child.before.startswith(echoed), child.before
    return child.before[len(echoed):]


def finish(child: pexpect.spawn) -> int:
    """Ctrl-D at the prompt; the child's exit status."""
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    return child.exitstatus


@pytest.fixture(scope="module")
def model(smollm2: Path):
    """One SmolLM2 context for this module's in-process tests (default n_batch, like the CLI)."""
    with Model(smollm2, LoadOptions(n_ctx=2048)) as m:
        yield m


def session_for(model: Model, **kw) -> chat.ChatSession:
    params = kw.pop("params", SamplingParams(temperature=0, seed=1, max_tokens=48))
    return chat.ChatSession(model, template=model.chat_template(), model_name="smollm2-135m", params=params, **kw)


# ---------------------------------------------------------------- templates (pure logic)

CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"}]

EXPECTED = {
    "chatml": "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
              "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n",
    "llama3": "<s><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
              "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
              "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
              "<|start_header_id|>user<|end_header_id|>\n\nBye<|eot_id|>"
              "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "gemma": "<s><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n"
             "<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n",
    "phi3": "<|system|>\nBe brief.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\nHello!<|end|>\n"
            "<|user|>\nBye<|end|>\n<|assistant|>\n",
    "mistral": "<s>[INST] Be brief.\n\nHi [/INST]Hello!</s>[INST] Bye [/INST]",
}


@pytest.mark.parametrize("family", sorted(chat.FAMILIES))
def test_family_templates_render_in_llama_cpp_sandbox(family: str) -> None:
    """Pure rendering: llama-cpp-python's own Jinja formatter, no model needed."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    fmt = Jinja2ChatFormatter(chat.FAMILIES[family], eos_token="</s>", bos_token="<s>", add_generation_prompt=True)
    assert fmt(messages=CONVERSATION).prompt == EXPECTED[family]


def test_gemma_template_without_system_prompt() -> None:
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    fmt = Jinja2ChatFormatter(chat.FAMILIES["gemma"], eos_token="</s>", bos_token="<s>", add_generation_prompt=True)
    assert fmt(messages=CONVERSATION[1:2]).prompt == "<s><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"


def test_choose_template_order() -> None:
    chosen = chat.choose_template("m", gguf_template="GGUF", family="chatml", override="llama3")
    assert chosen == chat.FAMILIES["llama3"]
    assert chat.choose_template("m", gguf_template="GGUF", family="chatml") == "GGUF"
    assert chat.choose_template("m", gguf_template=None, family="phi3") == chat.FAMILIES["phi3"]
    with pytest.raises(UsageError, match=r"^unknown template 'zephyr'; choose one of: chatml, llama3"):
        chat.choose_template("m", gguf_template="GGUF", override="zephyr")
    with pytest.raises(UsageError, match=r"^base has no chat template .*`llmlocal complete --raw`.*--template NAME"):
        chat.choose_template("base", gguf_template=None, family="none")


# ---------------------------------------------------------------- ChatSession with the real model


def test_second_turn_reuses_the_cached_conversation(model: Model) -> None:
    session = session_for(model)
    first = session.send("Hi!")
    second = session.send("What is the capital of France?")
    assert first.cached_tokens == 0 and first.finish_reason == "stop" and first.text
    # The whole first turn (its prompt and, re-tokenized, its reply) is re-used from the KV
    # cache: only the new message and the template's markers are evaluated.
    assert second.cached_tokens == first.prompt_tokens + first.completion_tokens
    assert second.prompt_tokens - second.cached_tokens < 30
    assert "Paris" in second.text
    assert [m["role"] for m in session.messages] == ["user", "assistant"] * 2
    assert session.messages[3]["content"] == second.text
    stats = session.stats()
    assert (stats.turns, stats.cached_tokens, stats.n_ctx) == (2, second.cached_tokens, 2048)
    assert stats.prompt_tokens == first.prompt_tokens + second.prompt_tokens
    assert stats.context_used == second.prompt_tokens + second.completion_tokens + 2  # + "<|im_end|>\n"


@pytest.mark.slow
def test_reply_with_reused_cache_matches_a_fresh_session(model: Model, smollm2: Path) -> None:
    """Prefix reuse changes what is evaluated, not the answer.

    The fresh session is loaded with n_batch=32. llama.cpp's CPU backend (this build) computes a
    batch of 64 or more tokens along a different kernel path, whose rounding differs from smaller
    batches by up to ~0.8 in a logit: a fresh session evaluating a long history in one 512-token
    batch can then pick a different greedy token than the session, whose cache was filled a few
    tokens at a time. Batches under 64 tokens give bit-identical logits (checked while writing
    this test), so with n_batch=32 the two must agree exactly.
    """
    session = session_for(model)
    session.send("Tell me about cats in one sentence.")
    reused = session.send("Now about dogs, in one sentence.")
    assert reused.cached_tokens > 0
    with Model(smollm2, LoadOptions(n_ctx=2048, n_batch=32)) as small_batches:
        fresh = session_for(small_batches)
        fresh.messages = [dict(m) for m in session.messages[:2]]
        again = fresh.send("Now about dogs, in one sentence.")
    assert again.cached_tokens == 0
    assert again.prompt_tokens == reused.prompt_tokens
    assert again.text == reused.text


def test_interrupt_keeps_the_partial_reply_and_the_session_continues(model: Model) -> None:
    session = session_for(model, params=SamplingParams(temperature=0, seed=1, max_tokens=300))
    shown: list[str] = []

    def stop_after_five(piece: str) -> None:
        shown.append(piece)
        if len(shown) == 5:
            raise KeyboardInterrupt  # what Ctrl-C raises in the middle of generation

    with pytest.raises(KeyboardInterrupt):
        session.send("Write a long story about a dragon.", on_text=stop_after_five)
    assert session.last.finish_reason == "interrupted"
    assert session.messages[-1] == {"role": "assistant", "content": "".join(shown)}
    assert session.last.completion_tokens == 5
    session.set_param("max_tokens", "24")
    after = session.send("Give it a title.")
    assert after.finish_reason in ("stop", "length") and after.text
    # The interrupted turn's cache is still good: its prompt and the reply so far are re-used.
    assert after.cached_tokens >= session.stats().prompt_tokens - after.prompt_tokens
    assert session.stats().turns == 2


@pytest.mark.slow
def test_context_budget_drops_oldest_turns_and_notes_it_once(smollm2: Path) -> None:
    notes: list[str] = []
    long = "Summarise this in one short sentence: " + "The river flows past the old mill and the green fields. " * 12
    with Model(smollm2, LoadOptions(n_ctx=512)) as small:
        session = session_for(small, params=SamplingParams(temperature=0, seed=1, max_tokens=32), on_note=notes.append)
        results = [session.send(f"{i}. {long}") for i in range(5)]
        stats = session.stats()
    assert all(r.prompt_tokens + 32 <= 512 for r in results)
    assert len(notes) == 1 and re.fullmatch(r"note: dropped \d+ old turns? to fit the context", notes[0]), notes
    assert stats.dropped_turns >= 2
    assert stats.turns == 5 and len(session.messages) == 10  # the transcript keeps every turn
    assert stats.context_used <= 512


def test_a_message_too_long_for_the_context_is_refused_without_changing_the_session(model: Model) -> None:
    session = session_for(model)
    session.send("Hi!")
    with pytest.raises(ContextOverflowError, match="context holds 2048") as err:
        session.send("word " * 3000)
    assert "/set max_tokens" in err.value.hint
    assert len(session.messages) == 2


def test_set_param_validates_and_returns_the_value(model: Model) -> None:
    session = session_for(model)
    assert session.set_param("temperature", "0.5") == 0.5 and session.params.temperature == 0.5
    assert session.set_param("top-k", "20") == 20 and session.params.top_k == 20
    assert session.set_param("seed", "random") is None and session.params.seed is None
    assert session.set_param("max_tokens", "64") == 64
    for name, value, message in [("temperature", "-1", "temperature must be >= 0"),
                                 ("top_p", "2", "top_p must be in (0, 1]"),
                                 ("top_k", "1.5", "top_k must be an integer"),
                                 ("max_tokens", "0", "max_tokens must be at least 1"),
                                 ("min_p", "nan", "min_p must be a finite number"),
                                 ("colour", "red", "unknown parameter 'colour'")]:
        with pytest.raises(UsageError, match=re.escape(message)):
            session.set_param(name, value)
    assert session.params.temperature == 0.5 and session.params.max_tokens == 64


def test_save_and_load_round_trip(model: Model, tmp_path: Path) -> None:
    session = session_for(model, system="Answer briefly.")
    session.send("Name a fruit.")
    session.set_param("temperature", "0.3")
    path = session.save(tmp_path / "t.json")
    data = json.loads(path.read_text())
    assert data["model"] == "smollm2-135m" and data["system"] == "Answer briefly."
    assert [m["role"] for m in data["messages"]] == ["user", "assistant"]
    assert data["params"] == {"temperature": 0.3, "top_p": 0.95, "top_k": 40, "min_p": 0.05,
                              "repeat_penalty": 1.1, "seed": 1, "max_tokens": 48}
    notes: list[str] = []
    other = chat.ChatSession(model, template=model.chat_template(), model_name="other", on_note=notes.append)
    other.load(path)
    assert (other.system, other.messages, other.params) == (session.system, session.messages, session.params)
    assert notes == ["note: t.json was saved with model smollm2-135m; continuing with other"]


@pytest.mark.parametrize("content, problem", [
    ("not json", "not a JSON transcript"),
    ("[]", "a transcript is a JSON object"),
    ('{"messages": [{"role": "assistant", "content": "x"}]}', "message 1 should be from the user"),
    ('{"messages": [{"role": "user", "content": "x"}]}', "the last user message has no reply"),
    ('{"messages": [], "params": {"top_k": 2.5}}', "params.top_k must be an integer"),
    ('{"messages": [], "params": {"temperature": -1}}', "params.temperature must be >= 0"),
    ('{"messages": [], "params": {"colour": 1}}', "unknown param 'colour'"),
])
def test_load_rejects_a_malformed_transcript(model: Model, tmp_path: Path, content: str, problem: str) -> None:
    session = session_for(model)
    session.messages = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    with pytest.raises(InputFormatError, match=re.escape(problem)):
        session.load(bad)
    assert len(session.messages) == 2 and session.params.temperature == 0


# ---------------------------------------------------------------- the command, not a terminal


def test_base_model_without_template_refuses(installed: Path) -> None:
    result = CliRunner().invoke(cli, ["chat", "-m", "gemma3-270m-base"], input="Hi\n")
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr == ("Error: gemma3-270m-base has no chat template (a base model?): use "
                             "`llmlocal complete --raw` for plain text, or chat with --template NAME "
                             "(chatml, llama3, gemma, phi3, mistral)\n")


@pytest.mark.slow
def test_template_option_lets_a_base_model_chat(installed: Path) -> None:
    result = CliRunner().invoke(cli, ["chat", "-m", "gemma3-270m-base", "--template", "gemma", *GREEDY,
                                      "--max-tokens", "8"], input="Hi\n")
    assert result.exit_code == 0, result.output
    assert result.stdout.endswith("\n") and result.stdout.strip()
    unknown = CliRunner().invoke(cli, ["chat", "--template", "zephyr"], input="Hi\n")
    assert unknown.exit_code == 2 and "unknown template 'zephyr'" in unknown.stderr


@pytest.mark.slow
def test_piped_stdin_gives_one_reply_per_message_deterministically(installed: Path) -> None:
    lines = "Hi!\nWhat is the capital of France?\n"
    first, second = run_chat("--max-tokens", "48", input=lines), run_chat("--max-tokens", "48", input=lines)
    assert first.returncode == 0, first.stderr
    assert first.stderr == ""  # no banner, no prompt: scriptable
    replies = first.stdout.splitlines()
    assert len(replies) == 2 and all(replies), first.stdout
    assert "Paris" in replies[1]
    assert second.stdout == first.stdout


def test_piped_stdin_runs_slash_commands_and_multiline_blocks(installed: Path, tmp_path: Path) -> None:
    saved = tmp_path / "chat.json"
    script = f'"""\nName one colour.\nReply with one word.\n"""\n/set max_tokens 8\n/bogus\n/save {saved}\n/stats\n'
    result = run_chat(input=script)
    assert result.returncode == 0, result.stderr
    reply, *rest = result.stdout.splitlines()
    assert reply
    assert rest[:2] == ["max_tokens = 8", f"saved 1 turns to {saved}"]
    assert rest[2] == "turns: 1"
    assert result.stderr.startswith("unknown command /bogus; commands: /help, /system, /set,")
    data = json.loads(saved.read_text())
    assert data["messages"][0] == {"role": "user", "content": "Name one colour.\nReply with one word."}
    assert data["params"]["max_tokens"] == 8


@pytest.mark.slow
def test_piped_long_turns_in_a_small_context_drop_old_turns_with_one_note(installed: Path) -> None:
    long = "Summarise this in one short sentence: " + "The river flows past the old mill and the green fields. " * 12
    script = "".join(f"{i}. {long}\n" for i in range(5)) + "/stats\n"
    result = run_chat("--ctx", "512", "--max-tokens", "32", input=script)
    assert result.returncode == 0, result.stderr
    assert len(re.findall(r"^note: dropped \d+ old turns? to fit the context$", result.stderr, re.M)) == 1
    stats = result.stdout.splitlines()[-5:]
    assert re.fullmatch(r"turns: 5 \([2-4] dropped to fit the context\)", stats[0]), stats
    used, n_ctx = map(int, re.fullmatch(r"context: (\d+) / (\d+) tokens", stats[3]).groups())
    assert n_ctx == 512 and used <= 512


# ---------------------------------------------------------------- the REPL in a real terminal


@pytest.mark.slow
def test_repl_turn_multiline_and_slash_commands(installed: Path) -> None:
    child = spawn_chat("--max-tokens", "48")
    reply = say(child, "Hi!")
    assert reply.endswith("\r\n\r\n") and reply.strip()
    assert say(child, "/set temperature 0.5") == "temperature = 0.5\r\n"
    assert say(child, "/set top_p 7").startswith("Error: top_p must be in (0, 1]")
    child.sendline('"""')
    child.expect_exact("... ")
    child.sendline("Name a colour.")
    child.expect_exact("... ")
    child.sendline('Reply with one word."""')
    child.expect_exact(PROMPT)
    assert child.before.strip()
    stats = say(child, "/stats").splitlines()
    assert stats[0] == "turns: 2"
    assert re.fullmatch(r"tokens: \d+ prompt \+ \d+ generated", stats[1])
    assert re.fullmatch(r"speed: \d+\.\d tokens/s \(last reply\)", stats[2])
    assert re.fullmatch(r"context: \d+ / 4096 tokens", stats[3])
    cached = int(re.fullmatch(r"cached: (\d+) prompt tokens reused last turn", stats[4]).group(1))
    assert cached > 0
    assert say(child, "/nope").startswith("unknown command /nope; commands: /help,")
    assert "/set [PARAM VALUE]" in say(child, "/help")
    assert finish(child) == 0


@pytest.mark.slow
def test_repl_save_then_load_in_a_new_process_continues(installed: Path, tmp_path: Path) -> None:
    saved = tmp_path / "talk.json"
    child = spawn_chat("--max-tokens", "48", "--system", "You answer briefly.")
    say(child, "Name a fruit.")
    assert say(child, f"/save {saved}") == f"saved 1 turns to {saved}\r\n"
    assert finish(child) == 0
    first = json.loads(saved.read_text())
    assert first["model"] == "smollm2-135m" and first["system"] == "You answer briefly."
    assert first["messages"][0] == {"role": "user", "content": "Name a fruit."}
    assert first["params"]["max_tokens"] == 48 and first["params"]["temperature"] == 0

    child = spawn_chat("--max-tokens", "16")  # /load restores the saved params (48) and system prompt
    assert say(child, f"/load {saved}") == f"loaded 1 turns from {saved}\r\n"
    assert say(child, "/stats").splitlines()[0] == "turns: 1"
    assert say(child, "What colour is it?").strip()
    assert say(child, "/stats").splitlines()[0] == "turns: 2"
    assert say(child, f"/save {saved}") == f"saved 2 turns to {saved}\r\n"
    assert finish(child) == 0
    second = json.loads(saved.read_text())
    assert second["messages"][:2] == first["messages"]
    assert second["system"] == "You answer briefly." and second["params"]["max_tokens"] == 48


@pytest.mark.slow
def test_repl_ctrl_c_stops_a_long_reply_and_keeps_it(installed: Path, tmp_path: Path) -> None:
    child = spawn_chat("--max-tokens", "2000")
    echo = "Write a very long story about a dragon and a knight, with many chapters.\r\n"
    child.send(echo.replace("\r\n", "\n"))
    child.expect_exact(echo)
    child.expect(r"(\w+\W+){8}")  # the reply is streaming
    shown = child.before + child.after
    child.sendintr()
    child.expect_exact(PROMPT)
    shown += child.before
    saved = tmp_path / "story.json"
    assert say(child, f"/save {saved}") == f"saved 1 turns to {saved}\r\n"
    partial = json.loads(saved.read_text())["messages"][1]["content"]
    # What was on the screen is what was kept (the terminal echoes "^C" wherever it lands).
    assert shown.replace("^C", "") == partial.replace("\n", "\r\n") + "\r\n\r\n"
    stats = say(child, "/stats").splitlines()
    generated = int(re.fullmatch(r"tokens: \d+ prompt \+ (\d+) generated", stats[1]).group(1))
    assert 8 <= generated < 2000
    assert say(child, "/set max_tokens 16") == "max_tokens = 16\r\n"
    assert say(child, "Thank you!").strip()  # the session keeps going
    assert say(child, "/stats").splitlines()[0] == "turns: 2"
    assert finish(child) == 0


def test_repl_ctrl_c_clears_a_line_then_exits_at_an_empty_prompt(installed: Path) -> None:
    child = spawn_chat()
    child.send("half a thought")
    child.expect_exact("half a thought")
    child.sendintr()
    child.expect_exact(PROMPT)  # the line is gone, the session stays
    assert say(child, "/stats").splitlines()[0] == "turns: 0"
    child.sendintr()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


@pytest.mark.slow
def test_repl_ctrl_d_exits_zero_and_keeps_history(installed: Path) -> None:
    child = spawn_chat("--max-tokens", "8")
    say(child, "Hello there")
    assert finish(child) == 0
    assert paths.history_path().read_text().splitlines()[-1] == "Hello there"
    child = spawn_chat()  # the history is there for the next session: Up recalls it
    child.send("\x1b[A")
    child.expect_exact("Hello there")
    child.sendintr()
    child.expect_exact(PROMPT)
    assert finish(child) == 0
