"""Batch jobs: many prompts from a file, decoded in parallel, results to a resumable JSONL file.

Input is JSON Lines (``{"id": ..., "prompt": ...}`` or ``{"id": ..., "messages": [...]}``, with
optional per-line ``max_tokens``, ``temperature``, ``stop``, ``system``, ``raw``, ``seed``) or
plain text, one prompt per line (the id is the line number). A line that cannot run (bad JSON,
a prompt too long for the context) gets an output line with an ``error``; the job goes on.

Output is one JSON line per input line, appended and flushed as each finishes, plus a sidecar
``OUTPUT.meta.json`` naming the model (and its SHA-256) and the job's default parameters.
Running the same command again skips the ids already in the output, after checking that the
model and parameters are the same; a last line torn by a crash is cut off and redone.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

from . import __version__, atomic, catalog, gguf, loader, runtime, sampling, store, structured, tabular
from .engine import Engine, Request, check_parallel
from .errors import (
    BatchFailedError,
    ContextOverflowError,
    ForeignOutputError,
    LlmlocalError,
    ResumeMismatchError,
    UsageError,
    quoted,
)
from .generate import Completion, prompt_tokens
from .progress import ItemProgress
from .runtime import Model
from .sampling import Constraint, SamplingParams

_log = logging.getLogger(__name__)

FORMAT = "llmlocal-batch/1"
DEFAULT_PARALLEL = 8  # benchmarks/batch_bench.py on a 2-core machine: see the README
LINE_SAMPLING = ("max_tokens", "temperature", "stop", "seed")  # what a line may set for itself
_FSYNC_SECONDS = 2.0  # a crash loses at most this much finished work to the page cache
# The job-level settings a resume must share with the run that wrote the output.
_COMPARED = ("temperature", "top_p", "top_k", "min_p", "repeat_penalty", "repeat_last_n", "seed",
             "max_tokens", "stop", "constraint", "system", "raw", "ctx", "kv_type")


class BatchInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) stopped the job cleanly; ``summary`` says what is saved."""

    def __init__(self, summary: BatchSummary) -> None:
        super().__init__()
        self.summary = summary


# ---------------------------------------------------------------- input


@dataclass
class BatchItem:
    """One input line: what to ask and any per-line overrides; ``error`` if it cannot run."""

    line: int
    id: Any
    prompt: str | None = None
    messages: list[dict] | None = None
    system: str | None = None
    raw: bool | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    stop: tuple[str, ...] | None = None
    seed: int | None = None
    constraint: Constraint | None = None  # the line's own schema or response_format
    error: str | None = None

    @property
    def key(self) -> str:
        """The id as resume compares it (so 1 and "1" stay different ids)."""
        return _id_key(self.id)


def _id_key(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def read_items(source: str | os.PathLike[str], *, format: str = "auto") -> list[BatchItem]:
    """Parse a batch input file (``-`` for stdin); per-line problems land in ``item.error``.

    Read through :func:`llmlocal.tabular.read_lines`, by the rules classify's readers follow:
    ``format`` is ``jsonl``, ``text`` (or ``lines``, tabular's name) or ``auto`` (by extension:
    .jsonl/.ndjson/.json are JSONL, .txt is text; otherwise JSONL if the first non-blank line
    starts with ``{``). A line that is not UTF-8 or not a JSON object is that line's error.

    Raises:
        InputFormatError: the file cannot be read at all.
        UsageError: an unknown ``format``, or an input that is CSV or TSV by its extension.
    """
    formats = {"auto": None, "jsonl": "jsonl", "text": "lines", "lines": "lines"}
    if format not in formats:
        raise UsageError(f"unknown input format '{format}' (expected jsonl, text (or lines) or auto)")
    chosen = tabular.format_for(str(source), formats[format])
    if chosen not in (None, "jsonl", "lines"):
        raise UsageError(f"{source} is {chosen.upper()} by its extension; batch reads JSONL or plain text",
                         hint="pass --format text (input_format=\"text\" in Python) to take each line as a prompt")
    table, records = tabular.read_lines(str(source), format=chosen)
    items: list[BatchItem] = []
    seen: dict[str, int] = {}
    for record in records:
        number = record.line
        if isinstance(record, tabular.BadLine):
            items.append(BatchItem(line=number, id=number, error=f"line {number}: {record.problem}"))
            continue
        if table.format == "jsonl":
            item = _item_from_object(number, record.values)
        else:
            item = BatchItem(line=number, id=number, prompt=record.values["text"])
        first = seen.setdefault(item.key, number)
        if first != number and item.error is None:
            item.error = f"duplicate id {item.key} (first used on line {first})"
        items.append(item)
    return items


def _item_from_object(number: int, obj: dict) -> BatchItem:
    item = BatchItem(line=number, id=number)
    try:
        ident = obj.get("id")
        if ident is not None:
            if isinstance(ident, bool) or not isinstance(ident, (str, int)):
                raise ValueError("'id' must be a string or an integer")
            item.id = ident
        _fill_item(item, obj)
    except ValueError as exc:
        item.error = f"line {number}: {exc}"
    return item


def _check_unicode(text: str, field: str) -> None:
    """Refuse text that cannot be encoded (a lone surrogate from a JSON escape such as "\\ud800")."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{field} holds a lone surrogate escape, which is not text") from None


def _fill_item(item: BatchItem, obj: dict) -> None:
    """Check one JSONL object's fields (unknown keys are kept by the caller and ignored here)."""
    prompt, messages = obj.get("prompt"), obj.get("messages")
    if (prompt is None) == (messages is None):
        raise ValueError("needs exactly one of 'prompt' (a string) or 'messages' (a list)")
    if prompt is not None:
        if not isinstance(prompt, str):
            raise ValueError("'prompt' must be a string")
        _check_unicode(prompt, "'prompt'")
        item.prompt = prompt
    else:
        if not isinstance(messages, list) or not messages or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in messages):
            raise ValueError("'messages' must be a non-empty list of {\"role\": ..., \"content\": ...} objects")
        for m in messages:
            _check_unicode(m["role"] + m["content"], "'messages'")
        item.messages = messages
    if obj.get("system") is not None:
        if not isinstance(obj["system"], str):
            raise ValueError("'system' must be a string")
        _check_unicode(obj["system"], "'system'")
        item.system = obj["system"]
    if obj.get("raw") is not None:
        if not isinstance(obj["raw"], bool):
            raise ValueError("'raw' must be true or false")
        item.raw = obj["raw"]
    # The shared sampling rules (an InvalidParameterError is a ValueError: the line's error).
    for key, value in sampling.check({k: obj.get(k) for k in LINE_SAMPLING}, name=quoted).items():
        setattr(item, key, value)
    if item.stop:
        _check_unicode("".join(item.stop), "'stop'")
    if item.raw and item.messages is not None:
        raise ValueError("'raw' cannot be used with 'messages' (they need the chat template)")
    given = [k for k in ("schema", "response_format") if obj.get(k) is not None]
    if len(given) > 1:
        raise ValueError("give 'schema' or 'response_format', not both")
    # An InvalidSchemaError is a ValueError too: that line's error, before anything runs.
    if given == ["schema"]:
        item.constraint = structured.from_value(obj["schema"], what="'schema'")
    elif given == ["response_format"]:
        item.constraint = structured.from_response_format(obj["response_format"])


# ---------------------------------------------------------------- settings and resume


@dataclass(frozen=True)
class JobSettings:
    """The job's defaults (a line may override some). Recorded in the sidecar, compared on resume."""

    params: SamplingParams  # with a concrete seed
    system: str | None = None
    raw: bool = False
    ctx: int = 4096  # tokens per sequence
    kv_type: str = gguf.DEFAULT_KV_TYPE  # the KV cache's element type: it changes the outputs a little

    def compared(self) -> dict[str, Any]:
        p = self.params.as_dict()
        return {**{k: p[k] for k in _COMPARED if k in p}, "system": self.system, "raw": self.raw,
                "ctx": self.ctx, "kv_type": self.kv_type}


def meta_path(output: str | os.PathLike[str]) -> Path:
    return Path(f"{output}.meta.json")


@dataclass
class OutputState:
    """What an existing output file holds: finished ids, and a torn last line to cut."""

    done: set[str] = field(default_factory=set)
    lines: int = 0
    keep_bytes: int = 0  # the file is valid up to here
    torn_bytes: int = 0  # bytes after it: a line a crash cut short
    meta: dict | None = None


def inspect_output(output: str | os.PathLike[str]) -> OutputState:
    """Read an output file (without changing it) for resuming.

    Only a file this job format wrote is ever added to or cut: its sidecar names the format and
    every line is a result record. The one exception is the tail a crash leaves, which is cut
    and redone: bytes after the last newline (each line is written with one write, newline
    included) or a last line of NUL bytes (a filesystem's zero fill after a power cut).

    Raises:
        ForeignOutputError: the sidecar is not a batch sidecar, the file has lines but no
            sidecar, or a line is not a result record: the file is someone else's (or damaged).
    """
    state = OutputState()
    path = Path(output)
    sidecar = meta_path(path)
    try:
        meta = tabular.loads_json(sidecar.read_text(encoding="utf-8"))
    except FileNotFoundError:
        meta = None
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "is not valid JSON"
        raise ForeignOutputError(str(sidecar), f"cannot be read as a batch sidecar ({reason})") from None
    if meta is not None and not (isinstance(meta, dict) and meta.get("format") == FORMAT):
        raise ForeignOutputError(str(sidecar), f"is not an llmlocal batch sidecar (no \"format\": \"{FORMAT}\")")
    state.meta = meta
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return state
    if data and meta is None:
        raise ForeignOutputError(str(path), f"has content but no {sidecar.name}, so llmlocal batch did not write it")
    end = data.rfind(b"\n") + 1  # a tail without a newline was being written when it stopped
    raw_lines = data[:end].split(b"\n")[:-1]
    offset = 0
    for i, raw in enumerate(raw_lines):
        key = _record_key(raw)
        if key is None:
            if i == len(raw_lines) - 1 and raw.strip(b"\0") == b"":
                break
            raise ForeignOutputError(f"{path}:{i + 1}", "is not a batch result line (the file is not a batch "
                                     "output, or is damaged)")
        state.done.add(key)
        state.lines += 1
        offset += len(raw) + 1
    state.keep_bytes = offset
    state.torn_bytes = len(data) - offset
    return state


def _record_key(raw: bytes) -> str | None:
    """The id key of an output line, or None if it is not a result record."""
    try:
        rec = tabular.loads_json(raw)
    except ValueError:
        return None
    if not isinstance(rec, dict) or "id" not in rec or "text" not in rec:
        return None
    return _id_key(rec["id"])


def _differences(old: dict, settings: JobSettings, sha256: str | None) -> list[str]:
    diffs = []
    if sha256 is not None and old.get("sha256") not in (None, sha256):
        diffs.append(f"model {old.get('model')} sha256 {str(old.get('sha256'))[:12]}…, now {sha256[:12]}…")
    before = old.get("params", {})
    for key, now in settings.compared().items():
        if key in before and before[key] != now:
            diffs.append(f"{key} was {json.dumps(before[key])}, now {json.dumps(now)}")
    return diffs


# ---------------------------------------------------------------- running


@dataclass
class BatchSummary:
    output: str
    total: int  # input lines
    skipped: int = 0  # already in the output from an earlier run
    completed: int = 0  # finished in this run (errors included)
    written: int = 0  # of those, lines in the output (--ordered holds some back until earlier ones finish)
    failed: int = 0  # of those, lines with an error
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    parallel: int = 1
    first_error: dict | None = None  # the first error record written in this run

    @property
    def done(self) -> int:
        return self.skipped + self.completed

    @property
    def succeeded(self) -> int:
        return self.completed - self.failed

    @property
    def items_per_second(self) -> float:
        return self.completed / self.seconds if self.seconds > 0 else 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.completion_tokens / self.seconds if self.seconds > 0 else 0.0


class _Writer:
    """Appends whole lines with one write each; fsyncs every few seconds and at the end."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.synced = time.monotonic()

    def write(self, record: dict) -> None:
        try:
            text = json.dumps(record, ensure_ascii=False)
            data = (text + "\n").encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate in an input id: keep it as an escape
            data = (json.dumps(record) + "\n").encode("ascii")
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]
        if time.monotonic() - self.synced >= _FSYNC_SECONDS:
            self.sync()

    def sync(self) -> None:
        os.fsync(self.fd)
        self.synced = time.monotonic()

    def close(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                self.sync()
            os.close(self.fd)
            self.fd = -1


class _BatchProgress(ItemProgress):
    def show(self, summary: BatchSummary, *, force: bool = False) -> None:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        self.update(summary.done, counted=summary.completed, force=force,
                    extra=(f"{summary.completion_tokens / elapsed:.1f} tok/s",),
                    tail=(f"{summary.failed} failed",) if summary.failed else ())


def _item_tokens(model: Model, item: BatchItem, settings: JobSettings) -> list[int]:
    system = item.system if item.system is not None else settings.system
    raw = item.raw if item.raw is not None else settings.raw
    prompt = item.messages if item.messages is not None else item.prompt
    assert prompt is not None  # _fill_item requires one of them
    return prompt_tokens(model, prompt, raw=raw and item.messages is None, system=system)[0]


def _item_params(item: BatchItem, settings: JobSettings) -> SamplingParams:
    # Checked when the line was read; what the line does not set is the job's.
    own = {k: v for k in (*LINE_SAMPLING, "constraint") if (v := getattr(item, k)) is not None}
    return replace(settings.params, **own)


def _result_record(item: BatchItem, result: Completion) -> dict:
    record = {"id": item.id, "text": result.text, "finish_reason": result.finish_reason}
    if result.checked is not None:
        # A value that is not valid (cut by max_tokens, or breaking a rule the grammar cannot
        # hold) is this line's error: counted as failed, never passed off as a result.
        record.update(result.checked.fields())
        if not result.checked.valid:
            record.update(error_type="InvalidOutput", line=item.line)
    return {**record, "usage": result.usage(), "timing": result.timings()}


def _error_record(item: BatchItem, error: str | BaseException) -> dict:
    if isinstance(error, BaseException):
        kind = type(error).__name__
        error = str(error) if isinstance(error, LlmlocalError) else f"{kind}: {error}"
    else:
        kind = "InputError"
    return {"id": item.id, "text": None, "finish_reason": "error", "error": error, "error_type": kind,
            "line": item.line}


def complete_items(model: Model, items: Sequence[BatchItem], settings: JobSettings,
                   parallel: int) -> Iterator[tuple[int, dict]]:
    """(index into ``items``, output record) for every item, in completion order.

    A line that cannot run (bad input, a template that rejects its messages, a failed decode)
    gets an error record; it never ends the job. Used by the local job and by each Ray worker.
    """
    refused: deque[tuple[int, dict]] = deque()

    def requests() -> Iterator[Request]:
        for index, item in enumerate(items):
            if item.error is not None:
                refused.append((index, _error_record(item, item.error)))
                continue
            try:
                tokens = _item_tokens(model, item, settings)
                params = _item_params(item, settings)
            except Exception as exc:
                refused.append((index, _error_record(item, exc)))
                continue
            yield Request(tokens, params, tag=index)

    # closing(): when this generator is closed early (the writer failed, Ctrl-C), the engine's
    # slots are freed now, while the model is certainly still open.
    with contextlib.closing(Engine(model, parallel).run(requests())) as results:
        for request, result in results:
            while refused:
                yield refused.popleft()
            item = items[request.tag]
            yield request.tag, (_result_record(item, result) if isinstance(result, Completion)
                                else _error_record(item, result))
    while refused:
        yield refused.popleft()


def run_batch(model: Model, items: Sequence[BatchItem], output: str | os.PathLike[str], *,
              settings: JobSettings, parallel: int, done: set[str] | frozenset[str] = frozenset(),
              ordered: bool = True, progress: bool = True, progress_file: IO[str] | None = None) -> BatchSummary:
    """Run ``items`` not in ``done`` on ``model`` (loaded with n_seq_max >= parallel), appending to ``output``.

    Raises:
        BatchInterrupted: on Ctrl-C, after every finished line is on disk.
    """
    todo = [item for item in items if item.key not in done]
    return write_results(len(items), todo, complete_items(model, todo, settings, parallel), output,
                         parallel=parallel, ordered=ordered, progress=progress, progress_file=progress_file)


def write_results(total: int, todo: Sequence[BatchItem], results: Iterable[tuple[int, dict]],
                  output: str | os.PathLike[str], *, parallel: int, ordered: bool = True, progress: bool = True,
                  progress_file: IO[str] | None = None) -> BatchSummary:
    """Append ``results`` ((index into ``todo``, record) pairs, any order) to ``output`` as they come:
    in input order with ``ordered`` (a record waits for the earlier ones), else at once.

    ``results`` is closed before this returns or raises, so a generator over a model (see
    :func:`complete_items`) has freed its engine before the caller closes the model.

    Raises:
        BatchInterrupted: on Ctrl-C, after every finished line is on disk.
        DiskSpaceError, OutputWriteError: the output could not be written; the lines before are kept.
    """
    try:
        return _write_results(total, todo, results, output, parallel=parallel, ordered=ordered,
                              progress=progress, progress_file=progress_file)
    finally:
        close = getattr(results, "close", None)
        if close is not None:
            close()


_RESUME_STEP = "run the same job again with the same output: the finished lines are kept and it goes on from there"


def _write_results(total: int, todo: Sequence[BatchItem], results: Iterable[tuple[int, dict]],
                   output: str | os.PathLike[str], *, parallel: int, ordered: bool, progress: bool,
                   progress_file: IO[str] | None) -> BatchSummary:
    summary = BatchSummary(output=str(output), total=total, skipped=total - len(todo), parallel=parallel)
    bar = _BatchProgress("batch", total, enabled=progress and bool(todo), file=progress_file)
    try:
        writer = _Writer(Path(output))
    except OSError as exc:
        raise atomic.write_failure(output, exc, next_step=_RESUME_STEP) from None
    waiting: dict[int, dict] = {}  # finished, not yet written (--ordered: waiting for earlier lines)
    next_out = 0
    started = time.perf_counter()

    def emit(index: int, record: dict) -> None:
        nonlocal next_out
        summary.completed += 1
        if "error" in record:
            summary.failed += 1
            if summary.first_error is None:
                summary.first_error = record
        if "usage" in record:  # a constrained line whose value is not valid did generate
            summary.prompt_tokens += record["usage"]["prompt_tokens"]
            summary.completion_tokens += record["usage"]["completion_tokens"]
        waiting[index] = record
        ready = [index] if not ordered else []
        while ordered and next_out in waiting:
            ready.append(next_out)
            next_out += 1
        for i in ready:
            try:
                writer.write(waiting[i])
            except OSError as exc:
                # Part of the line may be on disk: a resume finds it torn and redoes it.
                raise atomic.write_failure(output, exc, next_step=_RESUME_STEP) from None
            del waiting[i]  # only once it is on disk: an interrupted write is redone on resume
            summary.written += 1
        summary.seconds = time.perf_counter() - started
        bar.show(summary)

    try:
        for index, record in results:
            emit(index, record)
    except KeyboardInterrupt:
        summary.seconds = time.perf_counter() - started
        writer.close()
        bar.show(summary, force=True)
        bar.close()
        raise BatchInterrupted(summary) from None
    except BaseException:
        bar.close()  # end the status line, so the error that follows starts a line of its own
        raise
    finally:
        writer.close()
    summary.seconds = time.perf_counter() - started
    bar.show(summary, force=True)
    bar.close()
    return summary


def check_succeeded(summary: BatchSummary) -> None:
    """Refuse to call a run a success when it had lines to do and every one of them failed.

    Raises:
        BatchFailedError: with the first error; the error records stay in the output.
    """
    if not summary.completed or summary.succeeded:
        return
    first = summary.first_error or {}
    if first.get("error_type") == "InputError":
        what = ("batch input is JSON Lines ({\"prompt\": ...} or {\"messages\": [...]} per line) or plain "
                "UTF-8 text, one prompt per line; ")
    else:
        what = ""
    raise BatchFailedError(summary, summary.first_error, hint=(
        f"{what}each line's reason is in the \"error\" field of {summary.output}; ids already there (failed "
        "ones too) are skipped when resuming, so run the fixed job with a new output file"))


def complete_all(model: Model, prompts: Sequence[str | list[dict]], *, params: SamplingParams,
                 raw: bool = False, system: str | None = None,
                 parallel: int = DEFAULT_PARALLEL) -> Iterator[Completion]:
    """Complete every prompt (a string, or a list of chat messages), ``parallel`` at a time.

    Returns an iterator of Completions in prompt order, each yielded as soon as it and every
    earlier one are done. Prompts are tokenized and checked now, before anything runs; decoding
    runs in a second context on the same weights (memory-mapped, so they are not loaded twice),
    sized for the longest prompt plus ``params.max_tokens``, and freed when the iterator ends.

    Raises:
        ContextOverflowError: a prompt does not fit ``model``'s context (before anything runs).
    """
    params.validate()
    token_lists = []
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str) and (not isinstance(prompt, list) or not prompt or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in prompt)):
            raise UsageError(f"prompts[{i}]: a prompt is a string or a non-empty list of "
                             "{'role': ..., 'content': ...} dicts")
        try:
            tokens, _ = prompt_tokens(model, prompt, raw=raw and isinstance(prompt, str), system=system)
        except ContextOverflowError as exc:
            raise exc.about(f"prompts[{i}]", hint="shorten that prompt, or load the model with a larger "
                            "context (llmlocal.load(..., ctx=N))") from None
        except UsageError as exc:
            raise UsageError(f"prompts[{i}]: {exc}", hint=exc.hint) from None
        token_lists.append(tokens)
    return _decode_in_order(model, token_lists, params, parallel)


def _decode_in_order(model: Model, token_lists: list[list[int]], params: SamplingParams,
                     parallel: int) -> Iterator[Completion]:
    if not token_lists:
        return
    parallel = max(1, min(parallel, len(token_lists)))
    longest = max(len(t) for t in token_lists) + params.max_tokens + 1
    per_seq = min(model.n_ctx, -(-longest // 256) * 256)
    options = runtime.LoadOptions(n_ctx=per_seq * parallel, n_threads=model.options.n_threads,
                                  n_batch=model.options.n_batch, n_seq_max=parallel, kv_unified=False,
                                  kv_type=model.options.kv_type)
    finished: dict[int, Completion] = {}
    next_out = 0
    with Model(model.path, options) as decoder:
        engine = Engine(decoder, parallel)
        # closing(): the engine lets go of the decoder's cache before the decoder is freed, even
        # when the caller stops iterating early.
        with contextlib.closing(engine.run(Request(t, params, tag=i) for i, t in enumerate(token_lists))) as results:
            for request, result in results:
                if isinstance(result, BaseException):
                    raise result
                finished[request.tag] = result
                while next_out in finished:
                    yield finished.pop(next_out)
                    next_out += 1


@dataclass
class JobPlan:
    """A batch job checked against its output before any model loads: what to run, and how."""

    input: str
    output: str
    items: list[BatchItem]
    state: OutputState
    settings: JobSettings
    spec: catalog.ModelSpec
    resuming: bool
    parallel: int
    force: bool = False

    @property
    def todo(self) -> list[BatchItem]:
        return [item for item in self.items if item.key not in self.state.done]

    def check_model(self, digest: str) -> None:
        """Refuse to add to an output made with other bytes or settings (unless --force)."""
        if self.resuming and not self.force:
            diffs = _differences(self.state.meta or {}, self.settings, digest)
            if diffs:
                raise ResumeMismatchError(self.output, diffs)

    def start(self, *, model_name: str, digest: str, threads: int, extra: dict | None = None) -> None:
        """Write the sidecar and cut off a torn last line: the output is ready to append to."""
        old = dict(self.state.meta or {})
        now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        meta = {
            "format": FORMAT, "model": model_name, "sha256": digest, "params": self.settings.compared(),
            "parallel": self.parallel, "threads": threads, "input": str(self.input),
            "llmlocal": __version__, "llama_cpp_python": runtime.llama_cpp_version(),
            "started": old.get("started", now) if self.resuming else now, "updated": now, **(extra or {}),
        }
        if self.state.lines and old:
            earlier = old.pop("earlier", [])
            if _differences(old, self.settings, digest):  # --force mixed them: keep what made the old lines
                earlier.append(old)
            if earlier:
                meta["earlier"] = earlier
        sidecar = meta_path(self.output)
        try:
            atomic.write_text(sidecar, json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
        except OSError as exc:
            raise atomic.write_failure(sidecar, exc, next_step=_RESUME_STEP) from None
        if self.state.torn_bytes:
            try:
                os.truncate(self.output, self.state.keep_bytes)
            except OSError as exc:
                raise atomic.write_failure(self.output, exc, next_step=_RESUME_STEP) from None
            # Logged, not printed: without logging configured (the CLI) Python shows it on stderr.
            _log.warning("note: cut off an incomplete last line (%d bytes) left by an interrupted run; it will be "
                         "redone", self.state.torn_bytes)


def plan_job(input: str, output: str, *, model: str | None = None, sha256: str | None = None,
             ctx: int | None = None, parallel: int = DEFAULT_PARALLEL, sampling: dict[str, Any] | None = None,
             system: str | None = None, raw: bool = False, force: bool = False, input_format: str = "auto",
             local_file: bool = True, kv_type: str | None = None) -> JobPlan:
    """Check everything a batch job needs before the (slow) model load, so bad input fails fast.

    ``sampling`` holds the options the user gave (None values: not given, so a resumed job keeps
    the seed and context of the run that wrote ``output``; so does ``kv_type`` None). Without ``local_file`` (a cluster
    job whose bytes are on the workers) the default context is the catalogue's, not sized to
    this machine's RAM from the file's header.

    Raises:
        OutputNotWritableError, ResumeMismatchError, InputFormatError, UsageError, UnknownModelError.
    """
    check_parallel(parallel)
    if str(output) == "-":
        raise UsageError("batch writes to a file it can resume from; give -o FILE")
    loader.check_context(ctx)
    if kv_type is not None:
        gguf.check_kv_type(kv_type)
    atomic.check_writable(output)
    atomic.check_not_an_input(output, [input])
    state = inspect_output(output)
    resuming = bool(state.lines)
    old = state.meta or {}
    items = read_items(input, format=input_format)

    chosen = {k: v for k, v in (sampling or {}).items() if v is not None}
    if resuming and "seed" not in chosen and isinstance(old.get("params", {}).get("seed"), int):
        chosen["seed"] = old["params"]["seed"]  # the seed the job began with
    params = SamplingParams.from_mapping(chosen).resolved()
    spec = catalog.resolve(model or loader.default_model(), sha256=sha256)
    if ctx is None and resuming and isinstance(old.get("params", {}).get("ctx"), int):
        ctx = old["params"]["ctx"]
    if kv_type is None and resuming and old.get("params", {}).get("kv_type") in gguf.KV_TYPES:
        kv_type = old["params"]["kv_type"]
    kv_type = kv_type or gguf.DEFAULT_KV_TYPE
    if ctx is None:
        if local_file:
            ctx = loader.choose_context(spec, gguf.read_gguf(store.model_file(spec)), None, sequences=parallel,
                                        kv_type=kv_type)
        else:
            ctx = spec.context if spec.source else 4096
    plan = JobPlan(input=str(input), output=str(output), items=items, state=state,
                   settings=JobSettings(params=params, system=system, raw=raw, ctx=ctx, kv_type=kv_type), spec=spec,
                   resuming=resuming, parallel=parallel, force=force)
    if resuming and not force:
        diffs = _differences(old, plan.settings, None)
        if diffs:
            raise ResumeMismatchError(str(output), diffs)
    return plan


def run_job(input: str, output: str, *, model: str | None = None, sha256: str | None = None,
            ctx: int | None = None, threads: int | None = None, verbose: bool = False,
            parallel: int = DEFAULT_PARALLEL, sampling: dict[str, Any] | None = None,
            system: str | None = None, raw: bool = False, ordered: bool = True, force: bool = False,
            progress: bool = True, input_format: str = "auto", kv_type: str | None = None) -> BatchSummary:
    """The ``llmlocal batch`` command: check, resume, load, run.

    Raises:
        OutputNotWritableError, ResumeMismatchError, InputFormatError, UsageError, model errors,
        BatchInterrupted.
    """
    plan = plan_job(input, output, model=model, sha256=sha256, ctx=ctx, parallel=parallel, sampling=sampling,
                    system=system, raw=raw, force=force, input_format=input_format, kv_type=kv_type)
    loaded = loader.load(model, sha256=sha256, ctx=plan.settings.ctx, sequences=parallel, threads=threads,
                         verbose=verbose, kv_type=plan.settings.kv_type)
    try:
        digest = loaded.sha256 or atomic.sha256_file(loaded.path)
        plan.check_model(digest)
        plan.start(model_name=loaded.name, digest=digest, threads=loaded.model.options.threads())
        return run_batch(loaded.model, plan.items, output, settings=plan.settings, parallel=parallel,
                         done=plan.state.done, ordered=ordered, progress=progress)
    finally:
        loaded.close()
