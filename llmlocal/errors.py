"""Typed errors for llmlocal.

Each error subclasses the builtin a caller would naturally catch (KeyError for an unknown
name, OSError for file trouble, ...) and carries the fields a program needs. ``str(err)`` is
the one line a person reads; ``err.hint`` says what to do next. cli.py prints both, once.
This module imports nothing from the package.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator


# How a parameter is spelt where the user typed it: ``max_examples`` for Python and HTTP callers,
# ``--max-examples`` on the command line (cli.py sets that style). Core messages name parameters
# through option(), so each surface's users read the name they know.
def quoted(name: str) -> str:
    """The style for Python and HTTP callers: the keyword or JSON field, quoted."""
    return f"'{name}'"


_option_style: contextvars.ContextVar[Callable[[str], str]] = contextvars.ContextVar("option_style", default=quoted)


def option(name: str) -> str:
    """``name`` (a keyword argument's name) as the current surface spells the parameter."""
    return _option_style.get()(name)


def set_option_style(style: Callable[[str], str]) -> None:
    """Spell parameters with ``style`` for the rest of this context (a server request's own task)."""
    _option_style.set(style)


@contextlib.contextmanager
def option_style(style: Callable[[str], str]) -> Iterator[None]:
    """Within the block, core messages spell parameters with ``style`` (the CLI's: ``--top-p``)."""
    token = _option_style.set(style)
    try:
        yield
    finally:
        _option_style.reset(token)


class LlmlocalError(Exception):
    """Base class: a failure with a one-line message and an optional next step."""

    hint: str | None = None

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        if hint is not None:
            self.hint = hint

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return str(self.args[0]) if self.args else ""

    def __reduce__(self):
        # Pickle by state, not by calling __init__ again (subclasses take other arguments), so an
        # error raised in a Ray worker reaches the driver as itself.
        return _rebuild, (type(self), self.args, self.__dict__)


def _rebuild(cls: type[LlmlocalError], args: tuple, state: dict) -> LlmlocalError:
    err = cls.__new__(cls)
    Exception.__init__(err, *args)
    err.__dict__.update(state)
    return err


def error_lines(exc: BaseException | str, hint: str | None = None) -> list[str]:
    """How any failure reads on a terminal: one ``Error:`` line, then its ``hint:`` if it has one.

    The CLI and the chat REPL both print through this, so the shape is the same everywhere.
    """
    lines = [f"Error: {exc}"]
    hint = hint if hint is not None else getattr(exc, "hint", None)
    if hint:
        lines.append(f"  hint: {hint}")
    return lines


class VerificationFailedError(LlmlocalError, OSError):
    """``verify`` found models whose bytes are missing or changed."""

    def __init__(self, bad: list[str], total: int) -> None:
        self.bad = list(bad)
        super().__init__(f"{len(bad)} of {total} model(s) failed verification: " + ", ".join(bad),
                         hint="`llmlocal rm NAME` then `llmlocal pull NAME` to fetch clean bytes")


class UsageError(LlmlocalError, ValueError):
    """The request itself is wrong (bad option combination, bad reference syntax). Exit 2."""


class InvalidParameterError(UsageError):
    """A sampling (or similar) parameter of the wrong type, non-finite, or out of range."""

    def __init__(self, message: str, *, field: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.field = field


class InvalidSchemaError(LlmlocalError, ValueError):
    """A JSON schema or GBNF grammar that cannot hold a generation (refused before any token)."""


class StructuredOutputError(LlmlocalError, ValueError):
    """A constrained generation that did not produce a valid value (``completion`` has what it did)."""

    def __init__(self, message: str, *, completion: object = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.completion = completion


class CatalogError(LlmlocalError, ValueError):
    """A models.toml file is unreadable or has a bad entry."""

    def __init__(self, path: str, problem: str, *, entry: str | None = None) -> None:
        where = f"{path}" + (f", entry '{entry}'" if entry else "")
        super().__init__(f"{where}: {problem}", hint="fix the file (see README: Catalogue) and retry")
        self.path, self.entry, self.problem = path, entry, problem


class ConfigError(LlmlocalError, ValueError):
    """The home's config.toml is unreadable, not TOML, or holds a bad or unknown setting."""

    def __init__(self, path: str, problem: str, *, key: str | None = None) -> None:
        where = f"{path}" + (f", key '{key}'" if key else "")
        super().__init__(f"{where}: {problem}", hint="fix or delete the file (see README: Where things "
                         "live); a missing file means the defaults")
        self.path, self.key, self.problem = path, key, problem


class UnknownModelError(LlmlocalError, KeyError):
    """A model name that is neither in the catalogue nor a file nor an hf: reference."""

    def __init__(self, name: str, suggestions: list[str] | tuple[str, ...] = ()) -> None:
        self.name, self.suggestions = name, tuple(suggestions)
        msg = f"unknown model '{name}'"
        if self.suggestions:
            msg += "; did you mean " + ", ".join(f"'{s}'" for s in self.suggestions) + "?"
        super().__init__(msg, hint="`llmlocal models` lists the catalogue")


class NotInstalledError(LlmlocalError, FileNotFoundError):
    """The model is known but its bytes are not in the store."""

    def __init__(self, name: str, *, reason: str | None = None, hint: str | None = None) -> None:
        self.name = name
        super().__init__(f"model '{name}' is not installed" + (f": {reason}" if reason else ""),
                         hint=hint or f"run `llmlocal pull {name}`")


class ChecksumMismatchError(LlmlocalError, OSError):
    """Bytes on disk (or just downloaded) do not hash to the pinned SHA-256."""

    def __init__(self, name: str, path: str, expected: str, actual: str, *, deleted: bool) -> None:
        self.name, self.path, self.expected, self.actual = name, path, expected, actual
        self.deleted = deleted
        what = "the bad bytes were deleted" if deleted else f"file: {path}"
        super().__init__(
            f"checksum mismatch for '{name}': expected sha256 {expected}, got {actual}; {what}",
            hint="the upstream file may have changed; pull again, or update the catalogue entry "
            "only if you trust the new bytes",
        )


class UpstreamChangedError(LlmlocalError, OSError):
    """The Hub's etag or size disagrees with the catalogue before any byte is fetched."""

    def __init__(self, name: str, field: str, expected: str, actual: str) -> None:
        self.name, self.field, self.expected, self.actual = name, field, expected, actual
        super().__init__(
            f"the Hub's {field} for '{name}' is {actual}, the catalogue pins {expected}; "
            "nothing was downloaded",
            hint="the upstream file may have changed; check the model page before trusting it",
        )


class NetworkError(LlmlocalError, ConnectionError):
    """The Hub (or mirror) could not be reached, or answered with a server error."""


class OfflineError(LlmlocalError, ConnectionError):
    """Network access was needed but offline mode forbids it."""


class RemoteNotFoundError(LlmlocalError, FileNotFoundError):
    """The repository, revision or file does not exist on the Hub (404)."""


class GatedModelError(LlmlocalError, PermissionError):
    """The repository needs an accepted licence and a token (401/403)."""


class DiskSpaceError(LlmlocalError, OSError):
    """Too little free space, or the disk filled during a write (``path``: the file, if known)."""

    path: str | None = None


class StorePermissionError(LlmlocalError, PermissionError):
    """The llmlocal home (or a file in it) cannot be written."""


class GGUFError(LlmlocalError, ValueError):
    """A file is not a GGUF model, or is truncated or corrupt."""

    def __init__(self, path: str, problem: str, *, hint: str | None = None) -> None:
        self.path, self.problem = path, problem
        super().__init__(
            f"{path}: {problem}",
            hint=hint or "re-download it (`llmlocal pull`, or `llmlocal verify` to check the store)",
        )


class ModelLoadError(LlmlocalError, RuntimeError):
    """llama.cpp refused to load a model (corrupt file, unsupported architecture)."""


class DecodeError(LlmlocalError, RuntimeError):
    """llama_decode refused a batch; ``code`` is its return value (1: no room in the KV cache)."""

    def __init__(self, code: int) -> None:
        self.code = code
        what = {1: "no room left in the KV cache", 2: "aborted"}.get(code, "see the log with verbose on")
        super().__init__(f"llama.cpp could not evaluate the batch (llama_decode returned {code}: {what})",
                         hint="use a larger context, or fewer parallel sequences" if code == 1 else None)


class InsufficientMemoryError(LlmlocalError, MemoryError):
    """The model and its KV cache would not fit in available RAM."""


class BusyError(LlmlocalError, RuntimeError):
    """A long-running server cannot take the request now (every model slot is in use)."""


class ContextOverflowError(LlmlocalError, ValueError):
    """A prompt (plus room to generate) does not fit the context window."""

    def __init__(self, prompt_tokens: int, n_ctx: int, *, needed: int | None = None, message: str | None = None,
                 hint: str | None = None, index: int | None = None, detail: str | None = None) -> None:
        """``message`` and ``hint`` replace the generic ones; ``index`` is the position of the text
        at fault in the caller's list and ``detail`` what is wrong with it, for :meth:`about`."""
        self.prompt_tokens, self.n_ctx = prompt_tokens, n_ctx
        self.needed = needed if needed is not None else prompt_tokens
        self.index, self.detail = index, detail
        super().__init__(
            message or f"prompt is {prompt_tokens} tokens but the context holds {n_ctx}"
            + (f" (needs {self.needed} with room to generate)" if self.needed > prompt_tokens + 1 else ""),
            hint=hint or f"shorten the prompt, or load the model with a larger context ({option('ctx')})",
        )

    def about(self, name: str, *, hint: str | None = None) -> ContextOverflowError:
        """The same error, its message naming the text it is about (``item 7 (line 9 of a.csv)``)."""
        message = f"{name} {self.detail}" if self.detail else f"{name}: {self}"
        return ContextOverflowError(self.prompt_tokens, self.n_ctx, needed=self.needed, message=message,
                                    hint=hint or self.hint)

    def at(self, index: int) -> ContextOverflowError:
        """The same error about the text at ``index`` of another list of the same texts."""
        return ContextOverflowError(self.prompt_tokens, self.n_ctx, needed=self.needed, message=str(self),
                                    hint=self.hint, index=index, detail=self.detail)


class InputFormatError(LlmlocalError, ValueError):
    """Malformed user input file (CSV/JSONL/...), with the line that is wrong."""

    def __init__(self, path: str, problem: str, *, line: int | None = None, hint: str | None = None) -> None:
        self.path, self.problem, self.line = path, problem, line
        where = f"{path}:{line}" if line is not None else path
        if hint is None:
            hint = (f"fix line {line} of {path} (or the options that read it), then try again" if line is not None
                    else "check the file (its path and contents) and the options that read it, then try again")
        super().__init__(f"{where}: {problem}", hint=hint)


class OutputNotWritableError(LlmlocalError, PermissionError):
    """A result file (or its directory) cannot be written; raised before any work starts."""

    def __init__(self, path: str, reason: str) -> None:
        self.path, self.reason = path, reason
        super().__init__(f"cannot write {path}: {reason}",
                         hint="choose an output path in a writable directory")


class ResumeMismatchError(LlmlocalError, ValueError):
    """An existing batch output was made with another model or other parameters."""

    def __init__(self, path: str, differences: list[str]) -> None:
        self.path, self.differences = path, list(differences)
        super().__init__(
            f"{path} holds results made differently ({'; '.join(self.differences)}); "
            "refusing to mix them",
            hint=f"resume with the same model and options, write to a new {option('output')} file, "
            f"or pass {option('force')} to add to it anyway",
        )


class ModelClosedError(LlmlocalError, ValueError):
    """A loaded model was used after close() (ValueError, as for a closed file)."""


class OutputWriteError(LlmlocalError, OSError):
    """A result file could not be written part-way through a job (an I/O error, a size limit).

    A full disk is a :class:`DiskSpaceError` instead. ``hint`` says what was kept and how to go on.
    """

    def __init__(self, path: str, reason: str, *, hint: str | None = None, errno: int | None = None) -> None:
        self.path, self.reason = path, reason
        super().__init__(f"cannot write {path}: {reason}", hint=hint)
        self.errno = errno


class ForeignOutputError(LlmlocalError, FileExistsError):
    """An output path holds a file llmlocal did not write (or cannot recognise); it is left alone."""

    def __init__(self, path: str, reason: str) -> None:
        self.path, self.reason = path, reason
        super().__init__(f"{path} {reason}; refusing to change it",
                         hint=f"choose a new output file (-o), or remove {path} if you no longer need it")


class BatchFailedError(LlmlocalError, RuntimeError):
    """Every line a batch job ran failed; their error records are in the output.

    ``summary`` is the job's :class:`~llmlocal.batch.BatchSummary`; ``first`` the first error record.
    """

    def __init__(self, summary: object, first: dict | None, *, hint: str) -> None:
        self.summary, self.first = summary, first
        total = getattr(summary, "failed", 0)
        where = ""
        if first is not None:
            where = f"; the first, line {first.get('line')} (id {_short_json(first.get('id'))}): {first.get('error')}"
        super().__init__(f"none of the {total} line(s) that ran succeeded{where}", hint=hint)


class ClassifyFailedError(LlmlocalError, RuntimeError):
    """Every item of a classification job failed (each has its error row in the output)."""


def _short_json(value: object) -> str:
    import json

    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 40 else text[:39] + "…"
