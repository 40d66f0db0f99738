"""The terminal half of ``llmlocal chat``: prompts, line editing, slash commands, Ctrl-C.

The conversation itself is :class:`llmlocal.chat.ChatSession`; this module only reads, prints
and dispatches. In a terminal it uses the stdlib ``readline`` (history in
``paths.history_path()``). With stdin not a terminal it reads one message per line and prints
each reply on its own line(s), with no prompts or banner, so it can be scripted.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from typing import TextIO

from . import paths, tabular
from .chat import PARAMS, ChatSession, format_name
from .errors import InputFormatError, LlmlocalError, error_lines

PROMPT = ">>> "
CONTINUATION = "... "
FENCE = '"""'
HISTORY_LENGTH = 1000

COMMANDS = ("/help", "/system", "/set", "/index", "/reset", "/save", "/load", "/stats", "/exit", "/quit", "/bye")

HELP = f"""\
Commands:
  /help               show this help
  /system [TEXT]      set the system prompt (without TEXT: show it)
  /set [PARAM VALUE]  set a sampling parameter (without arguments: show them all)
                      PARAM is one of {", ".join(PARAMS)}
  /set format F       hold replies to F: json, a JSON Schema (inline, a .json file, or
                      'name, age int'), or off
  /index NAME|off     answer from document index NAME (`llmlocal index`): each message
                      retrieves sources, listed under the reply
  /reset              forget the conversation (keeps the system prompt and settings)
  /save FILE          save the conversation as JSON
  /load FILE          load a conversation saved with /save and continue it
  /stats              turns, tokens, speed, context use, cache reuse
  /exit, /quit, /bye  leave (or Ctrl-D)
Type {FENCE} to start a message of several lines and a line ending in {FENCE} to send it.
Ctrl-C stops a reply (what was written is kept); at an empty prompt it leaves."""


def run_repl(session: ChatSession, *, stdin: TextIO | None = None, stdout: TextIO | None = None,
             stderr: TextIO | None = None, interactive: bool | None = None) -> None:
    """Chat until /exit, end of input, or Ctrl-C at an empty prompt.

    ``interactive`` (default: stdin is the process's terminal) turns on prompts, the banner,
    readline editing and history, and Ctrl-C handling; otherwise a Ctrl-C propagates.
    """
    stdin = stdin or sys.stdin
    if interactive is None:
        interactive = stdin is sys.stdin and stdin.isatty()
    try:
        _Repl(session, stdin, stdout or sys.stdout, stderr or sys.stderr, interactive).run()
    finally:
        close = getattr(session.retriever, "close", None)  # an index opened by /index (or --index)
        if close is not None:
            close()
        session.retriever = None


class _Repl:
    def __init__(self, session: ChatSession, stdin: TextIO, stdout: TextIO, stderr: TextIO,
                 interactive: bool) -> None:
        self.session, self.stdin, self.out, self.err = session, stdin, stdout, stderr
        self.interactive = interactive
        self.readline = None
        self.in_block = False  # reading the lines of a """ block (Ctrl-C discards it)
        self.fenced = False  # the last message came from a block: never a slash command
        self.line_number = 0  # of stdin, for errors in piped input

    # -- the loop

    def run(self) -> None:
        if self.interactive:
            self.readline = _start_readline()
            self.err.write(f"model {self.session.model_name}, context {self.session.model.n_ctx} tokens; "
                           "/help for commands\n")
            self.err.flush()
        try:
            while True:
                try:
                    text = self.read_message()
                except InputFormatError as exc:
                    if not self.interactive:  # piped input that is not text: stop, as complete does
                        raise
                    self.error(exc)
                    continue
                except KeyboardInterrupt:
                    if not self.interactive:
                        raise
                    # Like a shell: Ctrl-C clears a typed line or block; on an empty prompt it leaves.
                    typed = self.in_block or bool(self.readline and self.readline.get_line_buffer())
                    self.out.write("\n")
                    if typed:
                        continue
                    return
                if text is None:  # Ctrl-D or end of input
                    if self.interactive:
                        self.out.write("\n")
                    return
                if not text.strip():
                    continue
                if text.startswith("/") and not self.fenced:
                    try:
                        if not self.command(text.strip()):
                            return
                    except KeyboardInterrupt:  # e.g. a slow /load: back to the prompt
                        if not self.interactive:
                            raise
                        self.out.write("\n")
                    continue
                self.reply(text)
        finally:
            if self.readline is not None:
                _save_history(self.readline)

    def reply(self, text: str) -> None:
        def write(piece: str) -> None:
            self.out.write(piece)
            self.out.flush()

        try:
            result = self.session.send(text, on_text=write)
        except KeyboardInterrupt:
            if not self.interactive:
                raise
            self.out.write("\n\n")
            self.out.flush()
            return
        except LlmlocalError as exc:
            self.error(exc)
            return
        self.out.write("\n\n" if self.interactive else "\n")
        self.out.flush()
        self.sources()
        if result.checked is not None and not result.checked.valid:
            self.note(f"note: the reply does not match the format: {result.checked.error}")
        if result.finish_reason == "length":
            self.note(f"note: reply cut at {result.completion_tokens} tokens; /set max_tokens N for longer ones")
        elif result.finish_reason == "context":
            self.note("note: reply stopped because the context window is full; /reset or raise --ctx")

    # -- input

    def read_line(self, prompt: str) -> str | None:
        self.line_number += 1
        if self.interactive:
            try:
                return self.checked(input(prompt))
            except EOFError:
                return None
        line = self.stdin.readline()
        return self.checked(line.rstrip("\n").rstrip("\r")) if line else None

    def checked(self, line: str) -> str:
        """The line, if it is text; bytes that are not UTF-8 are an error naming the line."""
        return tabular.check_text(line, "<stdin>" if not self.interactive else "your message",
                                  line=self.line_number if not self.interactive else None)

    def read_message(self) -> str | None:
        """One message: a line, or a block from a line starting with \"\"\" to one ending with it."""
        self.in_block = self.fenced = False
        line = self.read_line(PROMPT)
        if line is None or not line.lstrip().startswith(FENCE):
            return line
        self.in_block = self.fenced = True
        first = line.lstrip()[len(FENCE):]
        if first.rstrip().endswith(FENCE):  # """one line"""
            self.in_block = False
            return first.rstrip()[: -len(FENCE)]
        parts = [first] if first.strip() else []
        while True:
            line = self.read_line(CONTINUATION)
            if line is None:  # end of input ends the block too
                break
            if line.rstrip().endswith(FENCE):
                last = line.rstrip()[: -len(FENCE)]
                if last.strip():
                    parts.append(last)
                break
            parts.append(line)
        self.in_block = False
        return "\n".join(parts)

    # -- slash commands

    def command(self, line: str) -> bool:
        """Run one slash command; False means leave."""
        name, _, arg = line.partition(" ")
        arg = arg.strip()
        name = name.lower()
        session = self.session
        try:
            if name in ("/exit", "/quit", "/bye"):
                return False
            if name == "/help":
                self.print(HELP)
            elif name == "/system":
                if arg:
                    session.system = arg
                    self.print("system prompt set")
                else:
                    self.print(f"system prompt: {session.system}" if session.system
                               else "no system prompt (the template's default applies)")
            elif name == "/set":
                self.set(arg)
            elif name == "/index":
                if not arg:
                    return self.usage("/index NAME|off")
                self.use_index(None if arg.lower() == "off" else arg)
            elif name == "/reset":
                session.reset()
                self.print("conversation cleared")
            elif name == "/save":
                if not arg:
                    return self.usage("/save FILE")
                path = session.save(arg)
                self.print(f"saved {session.stats().turns} turns to {path}")
            elif name == "/load":
                if not arg:
                    return self.usage("/load FILE")
                session.load(arg)
                self.print(f"loaded {session.stats().turns} turns from {arg}")
            elif name == "/stats":
                self.stats()
            else:
                self.err.write(f"unknown command {name}; commands: {', '.join(COMMANDS)} (/help explains them)\n")
        except (LlmlocalError, OSError) as exc:
            self.error(exc)
        return True

    def use_index(self, name: str | None) -> None:
        from .documents.job import Retriever

        old = self.session.retriever
        if name is not None:
            self.session.retriever = Retriever(name)
            self.print(f"answering from index {name}")
        else:
            self.session.retriever = None
            self.print("no index")
        if isinstance(old, Retriever):
            old.close()

    def sources(self) -> None:
        """The sources the last message retrieved, under the reply."""
        sources = self.session.last_sources
        if self.session.retriever is None:
            return
        if not sources:
            self.note("(no source in the index matches this message)")
            return
        self.print("Sources: " + "; ".join(f"[{s.number}] {s.where}" for s in sources))

    def set(self, arg: str) -> None:
        params = self.session.params
        if not arg:
            for key in PARAMS:
                self.print(f"{key} = {_show(getattr(params, key))}")
            self.print(f"format = {format_name(params.constraint)}")
            return
        key, _, value = arg.partition(" ")
        if not value.strip():
            self.usage("/set format json|SCHEMA|off" if key.lower() == "format" else "/set PARAM VALUE")
            return
        if key.lower() == "format":
            self.print(f"format = {self.session.set_format(value)}")
            return
        new = self.session.set_param(key, value)
        self.print(f"{key.lower().replace('-', '_')} = {_show(new)}")

    def stats(self) -> None:
        s = self.session.stats()
        dropped = f" ({s.dropped_turns} dropped to fit the context)" if s.dropped_turns else ""
        self.print(f"turns: {s.turns}{dropped}\n"
                   f"tokens: {s.prompt_tokens} prompt + {s.completion_tokens} generated\n"
                   f"speed: {s.last_tokens_per_second:.1f} tokens/s (last reply)\n"
                   f"context: {s.context_used} / {s.n_ctx} tokens\n"
                   f"cached: {s.cached_tokens} prompt tokens reused last turn")

    # -- output

    def print(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def note(self, text: str) -> None:
        self.err.write(text + "\n")
        self.err.flush()

    def usage(self, text: str) -> bool:
        self.note(f"usage: {text}")
        return True

    def error(self, exc: BaseException) -> None:
        for line in error_lines(exc):
            self.note(line)


def _show(value: object) -> str:
    return "random" if value is None else str(value)


def _start_readline():
    """readline with the saved history and /command completion; None where it is missing."""
    try:
        import readline
    except ImportError:  # e.g. Windows without pyreadline: plain input() still works
        return None
    with contextlib.suppress(OSError):
        readline.read_history_file(paths.history_path())
    readline.set_history_length(HISTORY_LENGTH)

    def complete(text: str, state: int) -> str | None:
        matches = [c for c in COMMANDS if c.startswith(text)] if text.startswith("/") else []
        return matches[state] if state < len(matches) else None

    readline.set_completer(complete)
    readline.set_completer_delims(" \t\n")
    if "libedit" in (readline.__doc__ or ""):
        readline.parse_and_bind("bind ^I rl_complete")
    else:
        readline.parse_and_bind("tab: complete")
    return readline


def _save_history(readline) -> None:
    """Write the history beside its file and rename it into place: never half written."""
    path = paths.history_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        try:
            readline.write_history_file(tmp)
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    except OSError as exc:  # history is a convenience: say so, but never fail the session for it
        print(f"note: could not save chat history to {path}: {exc}", file=sys.stderr)
