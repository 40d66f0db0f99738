"""The llmlocal command line. Each command validates options, calls one core function, prints.

Errors from the core reach the user here, once: one ``Error: ...`` line on stderr with the next
step, exit 1 (2 for usage errors), and a traceback only with ``--debug`` / ``LLMLOCAL_DEBUG=1``.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import logging
import os
import sys
import traceback
from dataclasses import asdict

import click

from . import __version__
from .errors import ClassifyFailedError, LlmlocalError, UsageError, VerificationFailedError, error_lines, option_style
from .gguf import DEFAULT_KV_TYPE, KV_TYPES


def _debug_enabled() -> bool:
    return os.environ.get("LLMLOCAL_DEBUG", "").strip().lower() in {"1", "true", "yes", "on"}


class _Group(click.Group):
    """Turns core errors into one clean line, in one place."""

    def invoke(self, ctx: click.Context):
        try:
            with option_style(_flag_name):  # the core's messages name --top-p, not top_p
                return super().invoke(ctx)
        except UsageError as exc:
            _report(exc)
            ctx.exit(2)
        except LlmlocalError as exc:
            _report(exc)
            ctx.exit(1)
        except KeyboardInterrupt:
            click.echo("\nInterrupted.", err=True)
            ctx.exit(130)
        except BrokenPipeError:  # `llmlocal models | head`: the reader left, nothing to report
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            ctx.exit(0)
        except OSError as exc:  # a disk or permission problem the core did not foresee
            _report(exc)
            ctx.exit(1)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as exc:  # a bug: still one line, unless --debug
            _report(exc, internal=True)
            ctx.exit(1)


class _NoteHandler(logging.Handler):
    """Shows the core's log records as a person reads them: ``note:`` and ``warning:`` lines.

    It looks up stderr when it writes (not when it is made), so Click's test runner sees them.
    """

    def emit(self, record: logging.LogRecord) -> None:
        prefix = "note" if record.levelno < logging.WARNING else "warning"
        try:
            if record.name == "llmlocal.llama_cpp":  # --verbose: llama.cpp's lines as it wrote them
                click.echo(record.getMessage(), err=True)
            else:
                click.echo(f"{prefix}: {record.getMessage()}", err=True)
        except Exception:  # a log line must never be what fails a command
            self.handleError(record)


def _show_notes() -> None:
    logger = logging.getLogger("llmlocal")
    if not any(isinstance(h, _NoteHandler) for h in logger.handlers):
        logger.addHandler(_NoteHandler())
    logger.setLevel(logging.INFO)
    logger.propagate = False


def _report(exc: BaseException, *, internal: bool = False) -> None:
    if _debug_enabled():
        traceback.print_exception(exc)
    if internal:
        lines = error_lines(f"internal error: {exc.__class__.__name__}: {exc}",
                            "run again with --debug for the traceback, and please report it")
    else:
        lines = error_lines(exc)
    for line in lines:
        click.echo(line, err=True)


def _json_out(obj) -> None:
    click.echo(json.dumps(obj, indent=2, default=str))


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="llmlocal")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.option("--offline", is_flag=True, help="Refuse any network access (also LLMLOCAL_OFFLINE=1).")
def cli(debug: bool, offline: bool) -> None:
    """Run quantised GGUF language models on your CPU: verified downloads, offline use.

    \b
    Examples:
      llmlocal complete "Write a haiku about autumn"
      llmlocal pull qwen2.5-1.5b
      llmlocal models
    """
    _show_notes()
    # Environment, not globals: the core reads these at call time, as it does for users who set them.
    if debug:
        os.environ["LLMLOCAL_DEBUG"] = "1"
    if offline:
        os.environ["LLMLOCAL_OFFLINE"] = "1"


def _resolve(ref: str, sha256: str | None = None):
    from . import catalog

    return catalog.resolve(ref, sha256=sha256)


# ---------------------------------------------------------------- catalogue and store


@cli.command("models")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def models_cmd(as_json: bool) -> None:
    """List the catalogue: size, quantisation, licence, and whether installed.

    \b
    Examples:
      llmlocal models
      llmlocal models --json | jq '.[] | select(.installed)'
    """
    from . import catalog, store
    from .progress import human_bytes

    specs = catalog.load_catalog()
    installed = {m.name for m in store.installed_models()}
    rows = [dict(asdict(s), quant=s.quant, installed=s.name in installed) for s in specs.values()]
    if as_json:
        _json_out(rows)
        return
    table = [("NAME", "SIZE", "QUANT", "PURPOSE", "LICENSE", "INSTALLED")]
    table += [(r["name"], human_bytes(r["size"] or 0), r["quant"], r["purpose"], r["license"],
               "yes" if r["installed"] else "") for r in rows]
    _print_table(table)


def _print_table(rows: list[tuple], *, err: bool = False) -> None:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip(), err=err)


@cli.command("pull")
@click.argument("models", nargs=-1, required=True)
@click.option("--sha256", help="Pin an hf: reference to this SHA-256.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def pull_cmd(models: tuple[str, ...], sha256: str | None, quiet: bool) -> None:
    """Download models, verify their SHA-256, and only then make them visible.

    An interrupted pull resumes where it stopped when run again.

    \b
    Examples:
      llmlocal pull smollm2-135m
      llmlocal pull hf:Qwen/Qwen2.5-0.5B-Instruct-GGUF/qwen2.5-0.5b-instruct-q4_k_m.gguf
    """
    from . import store
    from .progress import human_bytes

    if sha256 and len(models) > 1:
        raise UsageError("--sha256 pins one model; pull one model at a time with it")
    for ref in models:
        result = store.pull(_resolve(ref, sha256), progress=not quiet)
        inst = result.installed
        if result.already:
            click.echo(f"{inst.name}: already installed ({human_bytes(inst.size)}, sha256 {inst.sha256[:12]}…)",
                       err=True)
        else:
            how = f"resumed at {human_bytes(result.resumed_from)}, " if result.resumed_from else ""
            click.echo(f"{inst.name}: installed and verified ({how}{human_bytes(inst.size)} from {inst.source}, "
                       f"sha256 {inst.sha256[:12]}…)", err=True)


@cli.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def ls_cmd(as_json: bool) -> None:
    """List installed models and the disk they use."""
    from . import store
    from .progress import human_bytes

    models = store.installed_models()
    blobs = {m.sha256: m.size for m in models}
    total = sum(blobs.values())  # two names for the same bytes take the space once
    if as_json:
        _json_out({"models": [dict(asdict(m), path=str(m.path)) for m in models], "total_bytes": total})
        return
    if not models:
        click.echo("No models installed. Try: llmlocal pull smollm2-135m", err=True)
        return
    rows = [("NAME", "SIZE", "SOURCE", "SHA256", "PULLED")]
    rows += [(m.name, human_bytes(m.size), m.source, m.sha256[:12], m.pulled_at) for m in models]
    _print_table(rows)
    click.echo(f"total: {human_bytes(total)} in {len(blobs)} file(s)")


@cli.command("rm")
@click.argument("models", nargs=-1, required=True)
def rm_cmd(models: tuple[str, ...]) -> None:
    """Remove installed models' bytes."""
    from . import store
    from .catalog import ModelSpec

    for ref in models:
        # An installed hf: or imported name may no longer resolve through the catalogue.
        inst = store.remove(ModelSpec(name=ref, file="", sha256=None))
        click.echo(f"removed {inst.name}", err=True)


@cli.command("verify")
@click.argument("models", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def verify_cmd(models: tuple[str, ...], as_json: bool) -> None:
    """Re-hash installed models offline; exit 1 naming each mismatch."""
    from . import store

    results = store.verify(list(models) or None, progress=not as_json and sys.stderr.isatty())
    if as_json:
        _json_out([dict(asdict(r), path=str(r.path)) for r in results])
    else:
        for r in results:
            if r.ok:
                click.echo(f"ok        {r.name}")
            elif r.actual is None:
                click.echo(f"MISSING   {r.name}: {r.path}")
            else:
                click.echo(f"MISMATCH  {r.name}: expected {r.expected}, got {r.actual} ({r.path})")
    bad = [r.name for r in results if not r.ok]
    if bad:
        raise VerificationFailedError(bad, len(results))


@cli.command("info")
@click.argument("model")
@click.option("--ctx", type=int, help="Context size for the RAM estimate (default: the catalogue's).")
@click.option("--kv-type", type=click.Choice(list(KV_TYPES)), default=DEFAULT_KV_TYPE, show_default=True,
              help="KV cache type for the RAM estimate.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def info_cmd(model: str, ctx: int | None, kv_type: str, as_json: bool) -> None:
    """Read a model's GGUF header without loading its weights.

    \b
    Examples:
      llmlocal info smollm2-135m
      llmlocal info ./my-model.Q4_K_M.gguf --json
      llmlocal info gemma3-270m-base --ctx 32768 --kv-type q8_0
    """
    from . import gguf, store
    from .progress import human_bytes

    spec = _resolve(model)
    path = store.model_file(spec)
    info = gguf.read_gguf(path)
    n_ctx = ctx if ctx is not None else min(spec.context if spec.source else 4096, info.context_length or 4096)
    est = gguf.estimate_memory(info, n_ctx, kv_type=kv_type)
    data = {
        "name": spec.name, "path": str(path), "architecture": info.architecture,
        "parameters": info.parameter_count, "quantisation": info.quantisation,
        "context_length": info.context_length, "chat_template": info.has_chat_template,
        "layers": info.block_count, "embedding_length": info.embedding_length,
        "heads": info.head_count, "kv_heads": info.head_count_kv, "vocab_size": info.vocab_size,
        "sliding_window": info.sliding_window, "file_bytes": info.file_size,
        "memory": {"n_ctx": est.n_ctx, "kv_type": est.kv_type, "weights_bytes": est.weights_bytes,
                   "kv_cache_bytes": est.kv_cache_bytes,
                   "compute_bytes": est.compute_bytes, "total_bytes": est.total_bytes},
    }
    if as_json:
        _json_out(data)
        return
    rows = [
        ("model", spec.name), ("file", str(path)), ("architecture", info.architecture),
        ("parameters", f"{info.parameter_count / 1e6:.1f}M"), ("quantisation", info.quantisation),
        ("context length", f"{info.context_length} (trained)"),
        ("chat template", "embedded" if info.has_chat_template else "none"),
        ("layers / heads / kv heads", f"{info.block_count} / {info.head_count} / {info.head_count_kv}"),
        ("RAM estimate", f"{human_bytes(est.total_bytes)} at context {n_ctx} (weights {human_bytes(est.weights_bytes)}"
                         f" + {kv_type} KV cache {human_bytes(est.kv_cache_bytes)}"
                         f" + compute {human_bytes(est.compute_bytes)})"),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        click.echo(f"{k.ljust(width)}  {v}")


@cli.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--name", required=True, help="Catalogue name to register it under.")
@click.option("--template", default=None, help="Chat template family if the file has none (chatml, llama3, ...).")
@click.option("--force", is_flag=True, help="Replace an existing user-catalogue entry of that name.")
def import_cmd(path: str, name: str, template: str | None, force: bool) -> None:
    """Register a local GGUF in your catalogue (hash computed, metadata read) and install it.

    \b
    Example:
      llmlocal import ~/Downloads/model.Q4_K_M.gguf --name my-model
    """
    from . import store

    spec = store.import_file(path, name, template=template, force=force)
    click.echo(f"imported {spec.name}: {spec.file}, sha256 {spec.sha256}", err=True)


# ---------------------------------------------------------------- running models


def _group(cls: type, param: str, options: list):
    """Click ``options`` whose values reach the command as one ``cls`` instance, argument ``param``.

    Each option's destination is a field of ``cls``, so a command takes one typed object per
    group instead of popping a dozen keys out of ``**kw`` in the right order.
    """
    names = [f.name for f in dataclasses.fields(cls)]

    def decorate(command):
        @functools.wraps(command)
        def run(*args, **kw):
            kw[param] = cls(**{name: kw.pop(name) for name in names})
            return command(*args, **kw)

        for option in reversed(options):
            run = option(run)
        return run

    return decorate


KV_TYPE_HELP = ("KV cache type: q8_0 about halves its memory, q4_0 quarters it, at a small cost in accuracy "
                "[default: f16].")


@dataclasses.dataclass(frozen=True)
class ModelOptions:
    """-m/--sha256/--ctx/--threads/--kv-type/--verbose: which model, and how to load it."""

    model: str | None
    sha256: str | None
    ctx: int | None
    threads: int | None
    kv_type: str | None  # None: not given (f16, or what a resumed batch job used)
    verbose: bool

    @property
    def kv(self) -> str:
        return self.kv_type or DEFAULT_KV_TYPE

    def load(self, **extra):
        from . import loader

        extra.setdefault("ctx", self.ctx)
        return loader.load(self.model, sha256=self.sha256, threads=self.threads, verbose=self.verbose,
                           kv_type=self.kv, **extra)


model_options = _group(ModelOptions, "model_opts", [
    click.option("--model", "-m", help="Model: catalogue name, .gguf path or hf: reference "
                 "(default: $LLMLOCAL_MODEL, else smollm2-135m)."),
    click.option("--sha256", help="Pin an hf: reference to this SHA-256."),
    click.option("--ctx", type=int, help="Context size in tokens (default: the catalogue's, capped to RAM)."),
    click.option("--threads", "-t", type=int, help="CPU threads (default: physical cores)."),
    click.option("--kv-type", type=click.Choice(list(KV_TYPES)), help=KV_TYPE_HELP),
    click.option("--verbose", is_flag=True, help="Show llama.cpp's own log lines."),
])


@dataclasses.dataclass(frozen=True)
class RayOptions:
    """--ray/--workers/--model-dir: run the job on a Ray cluster (llmlocal[ray])."""

    ray_address: str | None
    workers: int
    model_dir: str | None

    def threads(self, threads: int | None) -> int:
        """Each actor's CPUs: --threads, default 1."""
        if self.workers < 1:
            raise UsageError("--workers must be at least 1")
        if threads is not None and threads < 1:
            raise UsageError("--threads must be at least 1")
        return threads or 1

    def check_local(self) -> None:
        """Without --ray, the Ray-only options must not be given."""
        if self.workers != 2 or self.model_dir is not None:
            raise UsageError("--workers and --model-dir apply with --ray")


ray_options = _group(RayOptions, "ray_opts", [
    click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None, metavar="[ADDRESS]",
                 help="Run on Ray: alone, a local Ray instance; or `auto` / ray://HOST:10001 for a "
                 "cluster. Put it after INPUT."),
    click.option("--workers", type=int, default=2, show_default=True,
                 help="With --ray: model-loading actors, each with --threads CPUs [default threads: 1]."),
    click.option("--model-dir", metavar="DIR",
                 help="With --ray: the llmlocal home each worker keeps models in (a shared path); "
                 "default: each worker's own."),
])


@dataclasses.dataclass(frozen=True)
class SamplingOptions:
    """The sampling knobs as given (None: not given, so the default, or a resumed job's, holds)."""

    temperature: float | None
    top_p: float | None
    top_k: int | None
    min_p: float | None
    repeat_penalty: float | None
    seed: int | None
    max_tokens: int | None
    stop: tuple[str, ...]

    def given(self, **defaults) -> dict:
        values = {**dataclasses.asdict(self), "stop": self.stop or None}
        return {k: (v if v is not None else defaults.get(k)) for k, v in values.items()}

    def params(self, **defaults):
        """Checked parameters with a concrete seed (the rules: llmlocal.sampling)."""
        from .sampling import SamplingParams

        return SamplingParams.from_mapping(self.given(**defaults)).resolved()


sampling_options = _group(SamplingOptions, "sampling_opts", [
    click.option("--temperature", "--temp", type=float, help="0 is greedy and deterministic [0.8]."),
    click.option("--top-p", type=float, help="Nucleus sampling [0.95]."),
    click.option("--top-k", type=int, help="Top-k sampling; 0 disables [40]."),
    click.option("--min-p", type=float, help="Min-p sampling [0.05]."),
    click.option("--repeat-penalty", type=float, help="Penalty for repeated tokens; 1.0 disables [1.1]."),
    click.option("--seed", type=int, help="Random seed; -1 picks one (the seed used is recorded in --json output)."),
    click.option("--max-tokens", "-n", type=int, help="Most tokens to generate [default: 512]."),
    click.option("--stop", multiple=True, help="Stop when this text appears (repeatable)."),
])


lookup_option = click.option(
    "--lookup", is_flag=True,
    help="Prompt lookup: draft tokens copied from the prompt, verified in one decode where that is "
    "measured to pay; the drafted and accepted counts are in the --json timings.")


@dataclasses.dataclass(frozen=True)
class StructuredOptions:
    """--schema/--grammar/--format: what the output must match (the rules: llmlocal.structured)."""

    schema: str | None
    grammar: str | None
    output_format: str | None

    def constraint(self):
        from . import structured

        if self.grammar is not None:
            if self.schema is not None or self.output_format is not None:
                other = "--schema" if self.schema is not None else "--format"
                raise UsageError(f"--grammar and {other} cannot be combined: give one constraint")
            return structured.read_grammar(self.grammar)
        return structured.resolve(schema=self.schema, format=self.output_format)


_SCHEMA_HELP = ("Hold the output to a JSON Schema: a .json file, inline JSON, or the concise form "
                "'name, age int, tags list of str'.")
structured_options = _group(StructuredOptions, "structured_opts", [
    click.option("--schema", metavar="SCHEMA", help=_SCHEMA_HELP),
    click.option("--grammar", metavar="FILE", help="Hold the output to a GBNF grammar (llama.cpp's format)."),
    click.option("--format", "output_format", type=click.Choice(["json"]),
                 help="json: the output is one JSON object (Ollama's --format json)."),
])


def _check_structured(result, *, flag: str = "--max-tokens") -> None:
    """Exit 1 after a constrained generation that did not produce a valid value (it was printed)."""
    from .errors import StructuredOutputError

    checked = result.checked
    if checked is None or checked.valid:
        return
    if result.finish_reason in ("length", "context"):
        hint = (f"raise {flag} (it was {result.params.get('max_tokens')})" if result.finish_reason == "length"
                else "raise --ctx, or shorten the prompt")
    else:
        hint = ("the grammar holds structure but not every keyword (numeric bounds, formats: see the README's "
                "'Structured output'); say the rule in the prompt, or relax the schema")
    raise StructuredOutputError(f"the output is not valid: {checked.error}", completion=result, hint=hint)


def _flag_name(field: str) -> str:
    if len(field) == 1:  # a one-letter parameter is a short option (cluster's -k)
        return "-" + field
    return "--" + field.replace("_", "-")


def _read_prompt(prompt: str | None) -> str:
    """The prompt argument, or stdin's text; an empty one is refused, as chat and the server do."""
    from . import tabular

    if prompt == "-" or (prompt is None and not sys.stdin.isatty()):
        text, where = tabular.read_text(sys.stdin.buffer), "on stdin"
    elif prompt is None:
        raise UsageError("give a prompt, or pipe one on stdin (`echo hi | llmlocal complete`)")
    else:
        text, where = tabular.check_text(prompt, "the prompt argument"), "given"
    if not text.strip():
        raise UsageError(f"the prompt {where} is empty: there is nothing to complete",
                         hint="give the prompt as an argument, or pipe some text on stdin")
    return text


@cli.command("complete")
@click.argument("prompt", required=False)
@model_options
@sampling_options
@click.option("--system", "-s", help="System prompt (chat template only).")
@click.option("--raw", is_flag=True, help="Send the text as-is, with no chat template (base models).")
@click.option("--truncate", is_flag=True, help="Drop the start of a prompt too long for the context.")
@structured_options
@click.option("--logprobs", type=int, metavar="N", help="With --json: each token's log-probability and the N "
              "likeliest alternatives (0-20).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object with text, usage, timings, params.")
@lookup_option
def complete_cmd(prompt: str | None, system: str | None, raw: bool, truncate: bool, logprobs: int | None,
                 as_json: bool, lookup: bool, model_opts: ModelOptions, sampling_opts: SamplingOptions,
                 structured_opts: StructuredOptions) -> None:
    """Complete one prompt, streaming tokens to stdout.

    With --schema, --grammar or --format json the output is held to it token by token, and the
    JSON is checked against the schema afterwards; an output that is not valid (cut by
    --max-tokens, or breaking a rule the grammar cannot hold) exits 1.

    \b
    Examples:
      llmlocal complete "Write a haiku about autumn"
      cat notes.txt | llmlocal complete -s "Summarise this" --temperature 0
      llmlocal complete -m gemma3-270m-base --raw "The capital of France is"
      llmlocal complete --schema 'name, age int' "Alice is 31." --temperature 0
    """
    from . import generate

    text = _read_prompt(prompt)
    if logprobs is not None and not as_json:
        raise UsageError("--logprobs shows in the --json output: add --json")
    params = sampling_opts.params().with_changes(constraint=structured_opts.constraint(), logprobs=logprobs)
    loaded = model_opts.load()
    try:
        tokens, dropped = generate.prompt_tokens(
            loaded.model, text, raw=raw, system=system, max_tokens=params.max_tokens, truncate=truncate,
            overflow_hint="shorten the prompt, raise --ctx, or pass --truncate to drop the start")
        if dropped:
            click.echo(f"note: prompt truncated: dropped the first {dropped} tokens to fit the "
                       f"{loaded.model.n_ctx}-token context", err=True)
        gen = generate.Generator(loaded.model, lookup=lookup)
        on_text = None if as_json else (lambda piece: click.echo(piece, nl=False))
        result = gen.complete(tokens, params, on_text=on_text)
        result.truncated_tokens = dropped
    finally:
        loaded.close()
    if as_json:
        record = {"model": loaded.name, "sha256": loaded.sha256, "text": result.text,
                  "finish_reason": result.finish_reason}
        if result.checked is not None:
            record.update(result.checked.fields())
        if result.logprobs is not None:
            record["logprobs"] = result.logprobs
        _json_out({
            **record, "usage": result.usage(),
            "timings": {"load_seconds": round(loaded.model.load_seconds, 4), **result.timings()},
            "params": {**result.params, "raw": raw, "system": system, "n_ctx": loaded.model.n_ctx,
                       "kv_type": loaded.model.options.kv_type, "threads": loaded.model.options.threads(),
                       "truncated_tokens": dropped},
        })
    else:
        click.echo()
        if result.finish_reason == "context":
            click.echo("note: generation stopped because the context window is full (raise --ctx)", err=True)
    _check_structured(result)


@cli.command("chat")
@model_options
@sampling_options
@click.option("--system", "-s", help="System prompt (also /system in the chat).")
@click.option("--template", metavar="NAME",
              help="Chat template family to use instead of the model's: chatml, llama3, gemma, phi3, mistral.")
@structured_options
@click.option("--index", "index_name", metavar="NAME", help="Answer from document index NAME (`llmlocal index`): "
              "each message retrieves sources, listed under the reply (also /index NAME).")
@lookup_option
def chat_cmd(system: str | None, template: str | None, index_name: str | None, lookup: bool,
             model_opts: ModelOptions, sampling_opts: SamplingOptions, structured_opts: StructuredOptions) -> None:
    """Chat with a model: streamed replies, line editing and history, /help for commands.

    Replies are at most 1024 tokens unless --max-tokens says otherwise. With stdin not a
    terminal, each line is one message and each reply is printed on its own line(s).

    \b
    Examples:
      llmlocal chat
      llmlocal chat -m qwen2.5-0.5b -s "Answer in French"
      printf 'Hi!\\nName a colour.\\n' | llmlocal chat --temperature 0
      llmlocal chat --format json      (also /set format json|SCHEMA|off)
    """
    from . import chat, repl

    params = sampling_opts.params(max_tokens=chat.DEFAULT_MAX_TOKENS)
    params = params.with_changes(constraint=structured_opts.constraint())
    loaded = model_opts.load()
    try:
        chosen = chat.choose_template(loaded.name, gguf_template=loaded.model.chat_template(),
                                      family=loaded.spec.template, override=template)
        session = chat.ChatSession(loaded.model, template=chosen, model_name=loaded.name, system=system,
                                   params=params, on_note=lambda text: click.echo(text, err=True))
        session.generator.lookup = lookup
        if index_name is not None:
            from .documents.job import Retriever

            session.retriever = Retriever(index_name, threads=model_opts.threads)  # closed by run_repl
        # Piped input is decoded leniently so that a bad byte is reported with its line number
        # (repl checks every line) instead of failing inside Python's reader.
        stdin = None if sys.stdin.isatty() else io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8",
                                                                errors="surrogateescape")
        repl.run_repl(session, stdin=stdin)
    finally:
        loaded.close()


@cli.command("bench")
@model_options
@click.option("--prompt-tokens", "-p", default=512, show_default=True, help="Prompt length for pp.")
@click.option("--gen-tokens", "-g", default=128, show_default=True, help="Tokens generated for tg.")
@click.option("--reps", "-r", default=3, show_default=True, help="Repetitions (after one warm-up).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def bench_cmd(prompt_tokens: int, gen_tokens: int, reps: int, as_json: bool, model_opts: ModelOptions) -> None:
    """Measure load time, prompt and generation tokens/s and peak RSS (like llama-bench pp512/tg128).

    \b
    Example:
      llmlocal bench -m smollm2-135m
    """
    from dataclasses import asdict

    from . import bench
    from .progress import human_bytes

    if reps < 1 or prompt_tokens < 1 or gen_tokens < 1:
        raise UsageError("--reps, --prompt-tokens and --gen-tokens must be positive")
    loaded = model_opts.load(ctx=model_opts.ctx or prompt_tokens + gen_tokens + 16, n_batch=prompt_tokens)
    try:
        result = bench.run(loaded, n_prompt=prompt_tokens, n_gen=gen_tokens, reps=reps)
    finally:
        loaded.close()
    if as_json:
        _json_out(asdict(result))
        return
    click.echo(f"model      {result.model} ({result.threads} threads: {result.threads_reason}; "
               f"{result.kv_type} KV cache)")
    click.echo(f"load       {result.load_seconds:.2f} s")
    click.echo(f"pp{prompt_tokens:<8} {result.pp_tps:8.1f} tok/s  (sd {result.pp_sd:.1f})")
    click.echo(f"tg{gen_tokens:<8} {result.tg_tps:8.1f} tok/s  (sd {result.tg_sd:.1f})")
    click.echo(f"peak RSS   {human_bytes(result.peak_rss_bytes)}")


@cli.command("batch")
@click.argument("input", metavar="INPUT")
@click.option("--output", "-o", required=True, metavar="FILE",
              help="JSONL results, one line per input line; re-run the same command to resume it.")
@model_options
@sampling_options
@click.option("--system", "-s", help="System prompt for every line without its own (chat template only).")
@click.option("--raw", is_flag=True, help="Send prompts as-is, with no chat template (base models).")
@click.option("--parallel", "-p", type=int, default=None,
              help="Sequences decoded together in one context [default: 8]. Each gets --ctx tokens, "
              "so memory grows with both.")
@click.option("--ordered/--unordered", default=True, show_default=True,
              help="Write results in input order, or as each finishes.")
@click.option("--format", "input_format", type=click.Choice(["auto", "jsonl", "text", "lines"]), default="auto",
              show_default=True, help="Input format; text and lines are the same (auto: by extension, else "
              "JSONL if it starts with '{').")
@click.option("--force", is_flag=True, help="Add to an OUTPUT made with another model or other options.")
@click.option("--quiet", "-q", is_flag=True, help="No progress line and no summary.")
@click.option("--schema", metavar="SCHEMA", help=_SCHEMA_HELP + " For every line without its own 'schema' "
              "or 'response_format'.")
@click.option("--grammar", metavar="FILE", help="Hold every line's output to a GBNF grammar.")
@ray_options
def batch_cmd(input: str, output: str, system: str | None, raw: bool, parallel: int | None, ordered: bool,
              input_format: str, force: bool, quiet: bool, schema: str | None, grammar: str | None,
              model_opts: ModelOptions, sampling_opts: SamplingOptions, ray_opts: RayOptions) -> None:
    """Run every prompt in INPUT (a file, or - for stdin), several at a time, into a JSONL file.

    INPUT is JSON Lines, {"id": ..., "prompt": "..."} or {"id": ..., "messages": [...]} with
    optional max_tokens, temperature, stop, system, raw, seed and schema (or OpenAI's
    response_format) per line; or plain text, one prompt per line (id = line number). Each
    output line has id, text, finish_reason, usage and timing, or an error (a bad line never
    stops the job); a constrained line adds json and valid (a value that is not valid is that
    line's error). OUTPUT.meta.json records the model, its SHA-256 and the default parameters.

    Re-running the same command resumes: ids already in OUTPUT are skipped, after checking the
    model and parameters match. Ctrl-C stops cleanly; finished lines are kept.

    --ctx is per sequence here: the context holds --parallel x --ctx tokens. By default it is the
    model's default context, halved until all sequences fit in available RAM.

    \b
    Examples:
      llmlocal batch prompts.jsonl -o results.jsonl --temperature 0 -n 128
      cat questions.txt | llmlocal batch - -o answers.jsonl -s "Answer in one sentence."
      llmlocal batch prompts.jsonl -o results.jsonl -p 16 --unordered
      llmlocal batch prompts.jsonl -o results.jsonl --ray auto --workers 16 --threads 4
      llmlocal batch reviews.txt -o fields.jsonl --schema 'product, stars int, summary'
    """
    import signal

    from . import batch

    sampling = sampling_opts.given()
    sampling["constraint"] = StructuredOptions(schema, grammar, None).constraint()
    m = model_opts
    # SIGTERM (kill, systemd, timeout) stops as cleanly as Ctrl-C: finished lines stay, resumable.
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        parallel = batch.DEFAULT_PARALLEL if parallel is None else parallel
        if ray_opts.ray_address is not None:
            from . import distributed

            address = distributed.check_address(ray_opts.ray_address)
            threads = ray_opts.threads(m.threads)
            plan = batch.plan_job(input, output, model=m.model, sha256=m.sha256, ctx=m.ctx, parallel=parallel,
                                  sampling=sampling, system=system, raw=raw, force=force,
                                  input_format=input_format, local_file=False, kv_type=m.kv_type)
            summary = distributed.run_batch(plan, address=address, workers=ray_opts.workers, threads=threads,
                                            model_dir=ray_opts.model_dir, ordered=ordered, progress=not quiet)
        else:
            ray_opts.check_local()
            summary = batch.run_job(
                input, output, model=m.model, sha256=m.sha256, ctx=m.ctx, threads=m.threads, verbose=m.verbose,
                parallel=parallel, sampling=sampling, system=system, raw=raw, ordered=ordered, force=force,
                progress=not quiet, input_format=input_format, kv_type=m.kv_type)
    except batch.BatchInterrupted as stop:
        s = stop.summary
        click.echo(f"Interrupted: {s.skipped + s.written} of {s.total} lines are saved in {s.output}.", err=True)
        click.echo("  hint: run the same command again to resume where it stopped", err=True)
        sys.exit(130)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if not quiet and not summary.completed:
        click.echo(f"nothing to do: all {summary.total} lines are already in {summary.output}", err=True)
    elif not quiet:
        click.echo(f"done: {summary.done} of {summary.total} lines in {summary.output}: {summary.succeeded} "
                   f"succeeded, {summary.failed} failed, {summary.skipped} skipped (from an earlier run); "
                   f"{summary.completion_tokens} tokens generated in {summary.seconds:.1f} s: "
                   f"{summary.items_per_second:.2f} items/s, {summary.tokens_per_second:.1f} tok/s at "
                   f"--parallel {summary.parallel}", err=True)
    batch.check_succeeded(summary)


# ---------------------------------------------------------------- classification


@dataclasses.dataclass(frozen=True)
class InputOptions:
    """How to read CSV/TSV/JSONL/plain-line input: format, header, columns."""

    input_format: str | None
    no_header: bool
    id_column: str | None
    text_column: str | None

    def read(self) -> dict:
        """The keyword arguments classify's readers take."""
        return {"format": self.input_format, "header": not self.no_header, "text_column": self.text_column,
                "id_column": self.id_column}


input_options = _group(InputOptions, "input_opts", [
    click.option("--input-format", type=click.Choice(["csv", "tsv", "jsonl", "lines"]),
                 help="Input format [default: by extension; stdin or another extension: JSONL if it starts "
                 "with '{', else lines]."),
    click.option("--no-header", is_flag=True, help="CSV/TSV without a header row: columns are named 1, 2, ..."),
    click.option("--id-column", help="Column with the item id [default: id, else the line number]."),
    click.option("--text-column", help="Column with the text [default: text, else the first column]."),
])


@dataclasses.dataclass(frozen=True)
class ClassifyOptions:
    """Everything classify and eval share (beyond the model and input options)."""

    labels: str | None
    examples_path: str | None
    label_column: str | None
    method: str | None  # None: auto, or prompt when --calibrate asks for the prompt method's calibration
    instructions: str | None
    template_path: str | None
    mode: str | None  # "chat", "raw" or None (the method's default)
    show_prompt: bool
    max_examples: int | None
    calibrate: bool
    abstain_below: float | None
    abstain_label: str
    output: str | None
    output_format: str | None
    json_header: bool
    k_fold: int | None
    holdout: float | None
    seed: int
    as_json: bool
    parallel: int
    quiet: bool
    truncate: bool

    def settings(self):
        from . import classify

        method = self.method or ("prompt" if self.calibrate else "auto")
        if method == "embed" and (self.mode is not None or self.show_prompt):
            raise UsageError("--chat, --raw and --show-prompt apply to the prompt method, not --method embed")
        return classify.Settings(
            method=method, instructions=self.instructions, truncate=self.truncate,
            chat=None if self.mode is None else self.mode == "chat", calibrate=self.calibrate,
            max_examples=self.max_examples, seed=self.seed, abstain_below=self.abstain_below,
            abstain_label=self.abstain_label, parallel=self.parallel)


# Listed as --help shows them (click shows the last-applied first, hence the reversal).
_classify_group = _group(ClassifyOptions, "classify_opts", list(reversed([
        click.option("--quiet", "-q", is_flag=True, help="No progress line or summary on stderr."),
        click.option("--truncate", is_flag=True, help="Prompt methods: score the start of an item too long for "
                     "the context (flagged in its row) instead of giving it an error row."),
        click.option("--parallel", type=int, default=8, show_default=True,
                     help="Items scored together in one decode (prompt method)."),
        click.option("--json", "as_json", is_flag=True, help="Evaluation: print the whole report as JSON."),
        click.option("--seed", type=int, default=0, show_default=True,
                     help="Seed for choosing examples and for --k-fold / --holdout splits."),
        click.option("--holdout", type=float, metavar="FRACTION",
                     help="Evaluation: hold out this fraction of the labelled file, draw examples from the rest."),
        click.option("--k-fold", type=int, metavar="K",
                     help="Evaluation: K folds of the labelled file, each classified with examples from the "
                     "others."),
        click.option("--json-header", is_flag=True, help="JSONL output: write the manifest as the first line."),
        click.option("--format", "output_format", type=click.Choice(["csv", "jsonl"]),
                     help="Output format [default: by -o extension; stdout: jsonl]."),
        click.option("--output", "-o", metavar="FILE",
                     help="Write predictions here (atomically), and the manifest to FILE.meta.json."),
        click.option("--abstain-label", default="unknown", show_default=True, help="Label used when abstaining."),
        click.option("--abstain-below", type=float, metavar="P",
                     help="Answer the abstain label when the top probability is below P."),
        click.option("--calibrate", is_flag=True,
                     help="Prompt method: divide by the probabilities the prompt gives to 'N/A' (contextual "
                     "calibration). Implies --method prompt."),
        click.option("--max-examples", type=int, metavar="N",
                     help="Use at most N examples, balanced across labels (chosen with --seed)."),
        click.option("--show-prompt", is_flag=True, help="Print the exact prompt (for the first item) and exit."),
        click.option("--chat", "mode", flag_value="chat", default=None,
                     help="Put the prompt in the model's chat template (the label starts the reply)."),
        click.option("--raw", "mode", flag_value="raw", help="Use the prompt as plain text (the default)."),
        click.option("--template", "template_path", type=click.Path(dir_okay=False), metavar="FILE",
                     help="Prompt template file (placeholders below)."),
        click.option("--instructions", help="The prompt's first line; {labels} becomes the label list "
                     "[Classify each text as one of: {labels}.]"),
        click.option("--method", type=click.Choice(["auto", "prompt", "embed", "combined"]),
                     help="auto: the best of the others by cross-validation over the examples; prompt: few-shot "
                     "prompt, labels scored by log-probability; embed: embeddings + logistic regression; combined: "
                     "the calibrated prompt and the embeddings together [default: auto; prompt with --calibrate]."),
        click.option("--label-column",
                     help="Column with the label in --examples and evaluation files [default: label]."),
        click.option("--examples", "-e", "examples_path", type=click.Path(dir_okay=False), metavar="FILE",
                     help="Labelled examples (CSV/TSV/JSONL with text and label columns)."),
        click.option("--labels", "-l",
                     help='Comma-separated labels, e.g. "spam,not spam" [default: the examples\' labels].'),
])))


def classify_options(f):
    """The classify/eval options, then the input options."""
    return input_options(_classify_group(f))


def _classify(input_path: str | None, *, evaluate: str | None, model_opts: ModelOptions, input_opts: InputOptions,
              classify_opts: ClassifyOptions, ray_opts: RayOptions | None = None, report: str | None = None,
              compare: bool = False, suggest: int | None = None, suggest_output: str | None = None) -> None:
    from . import classify
    from .classify import review

    o = classify_opts
    review.check_report_path(report)
    if report is not None and evaluate is None:
        raise UsageError("--report needs an evaluation: use --evaluate FILE (or `llmlocal eval FILE`)")
    if suggest_output is not None and suggest is None:
        raise UsageError("--suggest-output writes the --suggest N items: add --suggest N")
    if suggest is not None and suggest < 1:
        raise UsageError("--suggest must be at least 1")
    if suggest_output is not None:
        review.examples_format(suggest_output)  # a name it cannot write fails now, not after the job
    settings = o.settings()
    labels = classify.parse_labels(o.labels) if o.labels is not None else None
    output, quiet, as_json, show = o.output, o.quiet, o.as_json, o.show_prompt
    fmt = classify.output_format(output, o.output_format)
    json_header = o.json_header
    if json_header and fmt != "jsonl":
        raise UsageError("--json-header needs JSONL output; with CSV the manifest is in <output>.meta.json")
    inputs = [input_path, evaluate, o.examples_path, o.template_path]
    classify.check_output(output, inputs=inputs)
    for extra in (report, suggest_output):
        classify.check_output(extra, inputs=inputs + [output])
    job = classify.prepare(
        evaluate if evaluate is not None else input_path, labels=labels, examples_path=o.examples_path,
        template_path=o.template_path, settings=settings, evaluate=evaluate is not None, k_fold=o.k_fold,
        holdout=o.holdout, label_column=o.label_column, **input_opts.read())
    m = model_opts
    on_ray = ray_opts is not None and ray_opts.ray_address is not None
    if show:
        if on_ray:
            raise UsageError("--show-prompt runs locally; drop --ray")
        click.echo(classify.preview(job, model=m.model, sha256=m.sha256, ctx=m.ctx, threads=m.threads,
                                    verbose=m.verbose, kv_type=m.kv))
        return
    from .progress import ItemProgress

    if ray_opts is not None and on_ray:
        outcome = classify.execute(job, model=m.model, sha256=m.sha256, ctx=m.ctx, threads=ray_opts.threads(m.threads),
                                   ray_address=ray_opts.ray_address, workers=ray_opts.workers,
                                   model_dir=ray_opts.model_dir, kv_type=m.kv)
    else:
        if ray_opts is not None:
            ray_opts.check_local()
        bar = ItemProgress("classified", len(job.items), enabled=not quiet and sys.stderr.isatty())
        try:
            outcome = classify.execute(job, model=m.model, sha256=m.sha256, ctx=m.ctx, threads=m.threads,
                                       verbose=m.verbose, progress=bar.callback() if bar.enabled else None,
                                       compare=compare, kv_type=m.kv)
        finally:
            bar.close()
    result, meta, model_name, model_sha256 = outcome.result, outcome.meta, outcome.model_name, outcome.model_sha256
    seconds = outcome.seconds
    if not quiet and result.choices:
        click.echo(classify.auto_summary(result.choices), err=True)
    if result.report is None or output is not None:
        classify.write_outputs(job, result, meta, output=output, fmt=fmt, json_header=json_header)
    if result.report is not None:
        from .classify import metrics

        if as_json:
            _json_out({"model": model_name, "sha256": model_sha256, **result.report, "manifest": meta})
        else:
            click.echo(metrics.format_report(result.report))
            if outcome.compared is not None:
                click.echo("\nmethods compared on the same split (auto's choice marked):")
                click.echo(review.format_compare(outcome.compared, result.report["majority_baseline"]))
        if report is not None:
            from .classify import report_html

            report_html.write_report(report, review.html_report(result, meta, compared=outcome.compared))
            if not quiet:
                click.echo(f"report written to {report}", err=True)
    if suggest is not None:
        rows = review.least_sure(result.items, result.predictions, suggest)
        if suggest_output is not None:
            review.write_suggestions(rows, suggest_output)
            if not quiet:
                click.echo(f"{len(rows)} least-sure item(s) written to {suggest_output}: correct their labels "
                           "and add them to your examples", err=True)
        else:
            click.echo(review.format_suggestions(rows), err=True)
    counts = result.counts()
    n = len(result.predictions)
    if not quiet:
        choosing = sum(c.seconds for c in result.choices)
        notes = [f"{counts[k]} {k}" for k in ("failed", "truncated", "chunked") if counts[k]]
        click.echo(f"{n - counts['failed']} item(s) classified in {seconds:.1f} s "
                   f"({n / seconds if seconds else 0:.2f} items/s"
                   + (f"; choosing the method took {choosing:.1f} s" if result.choices else "") + f") with "
                   f"{model_name}" + (f" ({', '.join(notes)})" if notes else "")
                   + (f"; written to {output}" if output else ""), err=True)
    if n and counts["failed"] == n:
        first = result.predictions[0].error or {}
        raise ClassifyFailedError(f"every one of the {n} item(s) failed; the first: {first.get('message')}",
                                  hint=first.get("hint"))


@cli.command("classify")
@click.argument("input", required=False, metavar="[INPUT]")
@click.option("--evaluate", metavar="FILE", help="Classify this labelled file instead and report accuracy, "
              "macro-F1, per-label scores, the confusion matrix and calibration (like `llmlocal eval`).")
@click.option("--report", metavar="FILE.html", help="With --evaluate: also write the evaluation as one "
              "self-contained HTML page (metrics, confusion heat map, reliability diagram, confident mistakes).")
@click.option("--suggest", type=int, metavar="N", help="Show the N items the classifier is least sure of "
              "(smallest margin between its top two labels): the ones to label next.")
@click.option("--suggest-output", metavar="FILE", help="Write the --suggest items here instead (CSV/TSV/JSONL "
              "with text and the guessed label: correct the labels, then add the rows to your examples).")
@model_options
@classify_options
@ray_options
def classify_cmd(input: str | None, evaluate: str | None, **kw) -> None:
    """Classify each text in INPUT (CSV, TSV, JSONL, or one text per line; - or none: stdin).

    The answer is always one of the labels: each label's whole text is scored by its
    log-probability after the prompt, and a softmax over the labels gives the probabilities.
    The instructions and examples are evaluated once and reused for every item.

    Output: id, label, confidence and each label's probability (CSV: p_<label> columns; JSONL:
    "probabilities"), in input order. With -o, FILE.meta.json records the model and its SHA-256,
    the labels, the examples file's hash, the prompt template and the versions.

    A --template file: the lines before the first one containing {text} are written once
    ({instructions} and {labels} allowed); the rest is the example block, repeated for each
    example (a blank line between) and ending with {label}. For the item the block stops before
    {label}, and the whitespace before {label} starts each scored label. The default:

    \b
      {instructions}

    \b
      Text: {text}
      Label: {label}

    \b
    Examples:
      llmlocal classify --labels "spam,not spam" messages.txt
      llmlocal classify -e labelled.csv --max-examples 16 inbox.csv -o predictions.csv
      llmlocal classify -e labelled.csv --evaluate test.csv
      cat reviews.jsonl | llmlocal classify -l "positive,negative" --calibrate --abstain-below 0.7
    """
    if evaluate is not None and input is not None:
        raise UsageError("give INPUT or --evaluate FILE, not both")
    if evaluate is None and input in (None, "-") and sys.stdin.isatty():
        raise UsageError("give an INPUT file, or pipe texts on stdin (`cat texts.txt | llmlocal classify ...`)")
    _classify(input, evaluate=evaluate, **kw)


@cli.command("eval")
@click.argument("labelled", metavar="FILE")
@click.option("--compare", is_flag=True, help="Evaluate every method (prompt, calibrated, embed, combined) on the "
              "same split, then auto, and print one table.")
@click.option("--report", metavar="FILE.html", help="Also write the evaluation as one self-contained HTML page.")
@model_options
@classify_options
def eval_cmd(labelled: str, **kw) -> None:
    """Evaluate a classifier on a labelled FILE: accuracy, macro-F1, per-label precision/recall/F1,
    confusion matrix, majority baseline and expected calibration error.

    Examples come from --examples, or from FILE itself with --k-fold K or --holdout FRACTION (so
    50 labelled rows give an honest number). Same options as `llmlocal classify`.

    \b
    Examples:
      llmlocal eval labelled.csv --k-fold 5 --max-examples 16
      llmlocal eval test.tsv -e train.tsv --calibrate --json
      llmlocal eval labelled.csv --holdout 0.5 --method embed
      llmlocal eval labelled.csv --k-fold 5 --compare --report report.html
    """
    _classify(None, evaluate=labelled, **kw)


@cli.command("embed")
@click.argument("input", required=False, metavar="[INPUT]")
@click.option("--output", "-o", metavar="FILE", help="out.jsonl ({id, embedding} per line) or out.npy "
              "(float32 matrix, rows in input order), with FILE.meta.json (model, ids, SHA-256) "
              "[default: JSONL on stdout].")
@click.option("--no-normalize", is_flag=True, help="Keep the raw pooled vectors (default: L2-normalised).")
@model_options
@input_options
def embed_cmd(input: str | None, output: str | None, no_normalize: bool, model_opts: ModelOptions,
              input_opts: InputOptions) -> None:
    """Embed each text in INPUT (mean-pooled, L2-normalised): the vectors --method embed uses.

    \b
    Examples:
      llmlocal embed messages.csv -o vectors.npy
      llmlocal embed -m gemma3-270m-base notes.txt -o vectors.jsonl
    """
    from . import classify

    if output is not None and not output.endswith((".jsonl", ".npy", ".ndjson")):
        raise UsageError(f"cannot tell the output format of '{output}'", hint="name it .jsonl or .npy")
    classify.check_output(output, inputs=[input])
    if input in (None, "-") and sys.stdin.isatty():
        raise UsageError("give an INPUT file, or pipe texts on stdin")
    items, _ = classify.read_texts(input, **input_opts.read())
    loaded = model_opts.load(embeddings=True, n_seq_max=16)
    try:
        done = classify.embed_items(loaded.model, items, normalize=not no_normalize)
    finally:
        loaded.close()
    vectors = done.vectors
    meta = classify.embed_manifest(items, done, model_name=loaded.name, model_sha256=loaded.sha256,
                                   input_path=input, normalized=not no_normalize,
                                   pooling=loaded.model.options.pooling, kv_type=loaded.model.options.kv_type)
    classify.write_embeddings(items, vectors, output=output, meta=meta)
    pieces = f"; {done.chunked} text(s) longer than a batch embedded in pieces, averaged" if done.chunked else ""
    click.echo(f"{len(items)} embedding(s) of {vectors.shape[1]} dimensions with {loaded.name}"
               + (f" written to {output}" if output else "") + pieces, err=True)


@cli.command("cluster")
@click.argument("input", required=False, metavar="[INPUT]")
@click.option("-k", "k", default="auto", show_default=True, metavar="N|auto",
              help="Number of clusters; auto tries 2 to --max-k and keeps the best silhouette.")
@click.option("--max-k", type=int, default=10, show_default=True, help="The largest k auto tries (also at most "
              "half the texts).")
@click.option("--output", "-o", metavar="FILE", help="Write id, text, cluster, cluster_name, distance per text "
              "(CSV or JSONL by extension, atomically) and the manifest to FILE.meta.json [default: JSONL on stdout].")
@click.option("--format", "output_format", type=click.Choice(["csv", "jsonl"]),
              help="Output format [default: by -o extension; stdout: jsonl].")
@click.option("--examples-out", metavar="FILE", help="Write each cluster's representatives as labelled examples "
              "(text, label = the cluster's name; CSV/TSV/JSONL): correct the names, then `classify -e FILE`.")
@click.option("--embed-model", metavar="MODEL", help="Embed with this model (a catalogue embedding model, e.g. "
              "bge-small) [default: the chat model's pooled embeddings].")
@click.option("--no-names", is_flag=True, help="Do not ask the chat model for names: clusters are 'cluster 1', ...")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the k-means++ starts and the "
              "silhouette's sample (recorded in the manifest).")
@click.option("--quiet", "-q", is_flag=True, help="No progress line or summary on stderr.")
@model_options
@input_options
def cluster_cmd(input: str | None, k: str, max_k: int, output: str | None, output_format: str | None,
                examples_out: str | None, embed_model: str | None, no_names: bool, seed: int, quiet: bool,
                model_opts: ModelOptions, input_opts: InputOptions) -> None:
    """Group the texts of INPUT (read as `classify` reads it) by k-means over their embeddings,
    and name each group with the chat model (-m) from its most central members.

    Each text gets its cluster (index from 1, largest first, and name) and its distance to the
    cluster's centroid; stderr shows each cluster's size, name and most central text. With
    --examples-out the three most central texts of each cluster become a labelled-examples
    file: from no labels to a classifier in two commands.

    \b
    Examples:
      llmlocal cluster tickets.csv -o clusters.csv
      llmlocal cluster notes.txt -k 5 --embed-model bge-small --examples-out examples.csv
      llmlocal classify -e examples.csv new-tickets.csv      (after correcting the names)
    """
    from . import classify, cluster, tabular
    from .classify import review
    from .progress import ItemProgress

    fmt = cluster.output_format(output, output_format)
    if examples_out is not None:
        review.examples_format(examples_out)
    for path in (output, examples_out):
        classify.check_output(path, inputs=[input])
    if output is not None and examples_out is not None and os.path.abspath(output) == os.path.abspath(examples_out):
        raise UsageError("-o and --examples-out name the same file", hint="give --examples-out another file")
    if input in (None, "-") and sys.stdin.isatty():
        raise UsageError("give an INPUT file, or pipe texts on stdin (`cat notes.txt | llmlocal cluster`)")
    items = cluster.read_items(input, **input_opts.read())
    name = tabular.STDIN_NAME if input in (None, "-") else input
    bars: dict[str, ItemProgress] = {}

    def progress(stage: str, done: int, total: int) -> None:
        bar = bars.get(stage)
        if bar is None:
            for other in bars.values():
                other.close()
            bar = bars[stage] = ItemProgress(stage, total, enabled=not quiet and sys.stderr.isatty())
        bar.update(done, force=done == total)

    m = model_opts
    try:
        outcome = cluster.execute(items, k=cluster.parse_k(k), model=m.model, embed_model=embed_model,
                                  names=not no_names, seed=seed, max_k=max_k, sha256=m.sha256, ctx=m.ctx,
                                  threads=m.threads, verbose=m.verbose, name=name,
                                  input_path=None if input in (None, "-") else input, progress=progress,
                                  kv_type=m.kv)
    finally:
        for bar in bars.values():
            bar.close()
    cluster.write_outputs(outcome, cluster.manifest(outcome), output=output, fmt=fmt, examples_out=examples_out)
    if not quiet:
        result = outcome.clustering
        _print_table(cluster.format_summary(result, [i.text for i in items]), err=True)
        click.echo(f"{cluster.describe_choice(result)}; {len(items)} text(s) in {outcome.seconds:.1f} s, embedded "
                   f"with {outcome.embed_model['name']}"
                   + (f", named by {outcome.naming_model['name']}" if outcome.naming_model else "")
                   + (f"; written to {output}" if output else "")
                   + (f"; examples in {examples_out}" if examples_out else ""), err=True)


# ---------------------------------------------------------------- documents


@cli.command("index")
@click.argument("name", metavar="NAME")
@click.argument("paths", nargs=-1, metavar="PATH...")
@click.option("--glob", metavar="PATTERN", help="Under a directory, only files matching this (e.g. '**/*.md') "
              "[default: every file of a kind llmlocal reads].")
@click.option("--text-column", metavar="NAME", help="The text column of CSV/TSV/JSONL files [default: text].")
@click.option("--model", "-m", metavar="MODEL", help="Embedding model for a new index [default: an installed "
              "catalogue embedding model, else the default model].")
@click.option("--threads", "-t", type=int, help="CPU threads (default: physical cores).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary (or ls/info) as JSON.")
@click.option("--quiet", "-q", is_flag=True, help="No progress line.")
def index_cmd(name: str, paths: tuple[str, ...], glob: str | None, text_column: str | None, model: str | None,
              threads: int | None, as_json: bool, quiet: bool) -> None:
    """Index documents for `search` and `ask`: text, Markdown, reStructuredText, HTML, CSV/TSV/JSONL
    rows and PDF, chunked by headings and paragraphs, in <home>/indexes/NAME.sqlite.

    Re-running indexes only new and changed files (by SHA-256) and removes chunks of files gone
    from under PATH. An unreadable file (an encrypted PDF) is a warning, not a failure. Also:
    `llmlocal index ls`, `llmlocal index info NAME`, `llmlocal index rm NAME`.

    \b
    Examples:
      llmlocal index docs ~/notes --glob '**/*.md'
      llmlocal index manuals handbook.pdf faq.html
      llmlocal index ls
    """
    from . import documents

    if name == "ls":
        if paths:
            raise UsageError("`llmlocal index ls` takes no arguments")
        infos = []
        for known in documents.list_indexes():
            with documents.Index.open(known) as idx:
                infos.append(idx.info())
        if as_json:
            _json_out(infos)
        elif not infos:
            click.echo("no indexes yet; build one with `llmlocal index NAME PATH...`", err=True)
        else:
            _print_table([("NAME", "FILES", "CHUNKS", "MODEL", "SIZE")] + [
                (i["name"], i["files"], i["chunks"], i["model"] or "-", _human(i["disk_bytes"])) for i in infos])
        return
    if name in ("info", "rm"):
        if len(paths) != 1:
            raise UsageError(f"`llmlocal index {name}` takes one index NAME")
        if name == "rm":
            removed = documents.remove(paths[0])
            click.echo(f"removed index {paths[0]} ({removed})", err=True)
            return
        with documents.Index.open(paths[0]) as idx:
            info = idx.info()
        if as_json:
            _json_out(info)
        else:
            for key in ("name", "path", "model", "sha256", "dim", "files", "chunks", "kinds", "disk_bytes", "created"):
                click.echo(f"{key}: {info[key]}")
        return
    if not paths:
        raise UsageError("give the files or directories to index: `llmlocal index NAME PATH...`")
    documents.index.check_name(name)
    summary = documents.build(name, paths, model=model, glob=glob, text_column=text_column, progress=not quiet,
                              threads=threads)
    for warning in summary.warnings:
        click.echo(f"warning: {warning}", err=True)
    if as_json:
        _json_out({"index": name, **dataclasses.asdict(summary), "chunks_per_second": summary.chunks_per_second})
    else:
        click.echo(f"index {name}: {summary.indexed} file(s) indexed ({summary.chunks} chunks, "
                   f"{summary.chunks_per_second:.1f} chunks/s), {summary.unchanged} unchanged, "
                   f"{summary.removed} removed, {len(summary.warnings)} unreadable", err=True)
    if summary.seen and not summary.indexed and not summary.unchanged:
        raise UsageError(f"none of the {summary.seen} file(s) could be read (see the warnings above)")


def _human(n: int) -> str:
    from .progress import human_bytes

    return human_bytes(n)


@cli.command("search")
@click.argument("name")
@click.argument("query")
@click.option("-k", "k", type=int, default=5, show_default=True, help="How many chunks.")
@click.option("--mode", type=click.Choice(["hybrid", "embedding", "keyword"]), default="hybrid", show_default=True,
              help="hybrid fuses embedding similarity with BM25 keywords.")
@click.option("--threads", "-t", type=int, help="CPU threads (default: physical cores).")
@click.option("--json", "as_json", is_flag=True, help="Print the hits as JSON.")
def search_cmd(name: str, query: str, k: int, mode: str, threads: int | None, as_json: bool) -> None:
    """Search index NAME: the chunks that best match QUERY, with file:lines, heading and score.

    \b
    Examples:
      llmlocal search docs "how do I reset my password"
      llmlocal search docs "error E1234" --mode keyword --json
    """
    from . import documents

    hits = documents.search(name, tabular_text(query, "the query"), k=k, mode=mode, threads=threads)
    if as_json:
        _json_out({"index": name, "query": query, "mode": mode, "hits": [h.as_dict() for h in hits]})
        return
    if not hits:
        click.echo(f"nothing in index {name} matches", err=True)
    for h in hits:
        heading = f"  {' > '.join(h.heading)}" if h.heading else ""
        click.echo(f"{h.rank}. {h.where}{heading}  (score {h.score:.4f})")
        snippet = " ".join(h.text.split())
        click.echo("   " + (snippet[:240] + "…" if len(snippet) > 240 else snippet))


def tabular_text(text: str, what: str) -> str:
    from . import tabular

    return tabular.check_text(text, what)


@cli.command("ask")
@click.argument("name")
@click.argument("question")
@model_options
@sampling_options
@click.option("-k", "k", type=int, default=4, show_default=True, help="How many chunks to show the model.")
@click.option("--show-context", is_flag=True, help="Print what the model saw (on stderr) before the answer.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object: answer, sources, found, usage.")
def ask_cmd(name: str, question: str, k: int, show_context: bool, as_json: bool, model_opts: ModelOptions,
            sampling_opts: SamplingOptions) -> None:
    """Answer QUESTION from index NAME: a streamed answer citing its sources as [1], [2], then
    the list of sources (file:lines). When nothing in the index holds the question's key words it
    says so instead of answering from nowhere. Greedy (--temperature 0) and at most 256 tokens
    unless told otherwise.

    \b
    Examples:
      llmlocal ask docs "How do I rotate the API key?"
      llmlocal ask docs "What is the refund window?" --show-context
    """
    from . import documents

    question = tabular_text(question, "the question")
    params = sampling_opts.params(temperature=0, max_tokens=256)
    idx, embedder = documents.open_for_query(name, threads=model_opts.threads)
    try:
        ctx = documents.retrieve(idx, question, documents.job.question_vector(embedder, question), k=k)
    finally:
        embedder.close()
        idx.close()
    if show_context and ctx.found:
        click.echo(ctx.prompt() + "\n", err=True)
    if not ctx.found:
        message = (f"Nothing in index {name} matches the question (no chunk holds enough of its key words), "
                   "so there is no answer to give from it.")
        if as_json:
            _json_out({"index": name, "question": question, "found": False, "answer": None, "sources": [],
                       "hits": [h.as_dict() for h in ctx.hits]})
        else:
            click.echo(message)
        return
    loaded = model_opts.load()
    try:
        stream = documents.job.ask_stream(loaded.model, ctx, params=params)
        for piece in stream:
            if not as_json:
                click.echo(piece, nl=False)
        result = stream.result()
    finally:
        loaded.close()
    if as_json:
        _json_out({"index": name, "question": question, "found": True, "answer": result.text,
                   "sources": [s.as_dict() for s in ctx.sources], "model": loaded.name, "sha256": loaded.sha256,
                   "finish_reason": result.finish_reason, "usage": result.usage(), "params": result.params})
        return
    click.echo("\n\nSources:")
    for s in ctx.sources:
        heading = f"  {' > '.join(s.heading)}" if s.heading else ""
        click.echo(f"[{s.number}] {s.where}{heading}")


# ---------------------------------------------------------------- server


@cli.command("serve")
@click.option("--model", "-m", "models", multiple=True, metavar="MODEL",
              help="Load this model at start (repeatable); the first answers requests that name no model. "
              "Other installed models load on first request.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0 exposes it to your network: use --api-key).")
@click.option("--port", type=int, default=8080, show_default=True, help="Port; 0 picks a free one.")
@click.option("--api-key", envvar="LLMLOCAL_API_KEY", metavar="KEY",
              help="Require 'Authorization: Bearer KEY' (also LLMLOCAL_API_KEY).")
@click.option("--parallel", "-p", type=int, default=8, show_default=True,
              help="Requests decoded together per model; each gets --ctx tokens.")
@click.option("--ctx", type=int, help="Context per request in tokens [default: 4096, or the model's own if "
              "less, fitted to RAM].")
@click.option("--threads", "-t", type=int, help="CPU threads (default: physical cores).")
@click.option("--kv-type", type=click.Choice(list(KV_TYPES)), default=DEFAULT_KV_TYPE, help=KV_TYPE_HELP)
@click.option("--max-models", type=int, default=2, show_default=True,
              help="Models kept loaded; another evicts the least recently used idle one.")
@click.option("--max-body-mb", type=float, default=8, show_default=True, help="Largest request body accepted.")
@click.option("--log-requests", is_flag=True, help="Print a line per request.")
@click.option("--verbose", is_flag=True, help="Show llama.cpp's own log lines.")
@click.option("--index", "indexes", multiple=True, metavar="NAME",
              help="Serve POST /v1/search over this document index (repeatable); the chat page can answer from it.")
@click.option("--no-ui", is_flag=True, help="Do not serve the web page (/ and /classify): the API only.")
@click.option("--open", "open_page", is_flag=True, help="Open the web page in your browser once listening.")
@click.option("--cors", "cors", multiple=True, metavar="ORIGIN",
              help="Let pages from ORIGIN (like http://localhost:3000) call the API (repeatable); none by default.")
def serve_cmd(models: tuple[str, ...], host: str, port: int, api_key: str | None, parallel: int, ctx: int | None,
              threads: int | None, kv_type: str, max_models: int, max_body_mb: float, log_requests: bool, verbose: bool,
              indexes: tuple[str, ...], no_ui: bool, open_page: bool, cors: tuple[str, ...]) -> None:
    """Serve an OpenAI-compatible API at http://127.0.0.1:8080/v1, and a web page at / to chat and classify.

    \b
    Endpoints: GET /v1/models, POST /v1/chat/completions, /v1/completions,
    /v1/embeddings, /v1/classify (labels with probabilities), /v1/search (with
    --index NAME: ranked chunks of a document index), GET /v1/indexes,
    POST /v1/chat/tokens (a prompt's size), GET /health.
    Pages: / (chat) and /classify, unless --no-ui.

    \b
    Examples:
      llmlocal serve --open
      llmlocal serve -m smollm2-135m -m gemma3-270m-base --parallel 8
      LLMLOCAL_API_KEY=secret llmlocal serve --host 0.0.0.0
    """
    from . import hardware, loader
    from .serve import app as server
    from .serve.pool import PoolOptions

    if not 0 <= port <= 65535:
        raise UsageError(f"--port {port} is not a port number (0-65535)")
    if no_ui and open_page:
        raise UsageError("--open opens the web page, which --no-ui turns off")
    origins = [server.check_origin(origin) for origin in cors]
    if not 0 < max_body_mb <= server.MAX_BODY_MB:  # also false for NaN
        raise UsageError(f"--max-body-mb must be a number of megabytes above 0 and at most {server.MAX_BODY_MB}; "
                         f"got {max_body_mb}")
    loader.check_context(ctx)
    hardware.check_threads(threads)
    options = PoolOptions(parallel=parallel, ctx=ctx, threads=threads, max_models=max_models, verbose=verbose,
                          kv_type=kv_type)
    server.serve(list(models), host=host, port=port, api_key=api_key, options=options,
                 on_note=lambda text: click.echo(text, err=True),
                 max_body=int(max_body_mb * 1024 * 1024), debug=_debug_enabled(), log_requests=log_requests,
                 indexes=list(indexes), ui=not no_ui, cors=origins, open_page=open_page)


def main() -> None:
    cli(prog_name="llmlocal")


if __name__ == "__main__":  # pragma: no cover
    main()
