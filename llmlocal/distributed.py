"""Batch and classify jobs on a Ray cluster (``--ray``): the local engines, run by Ray Data actors.

The driver (this process) checks the job exactly as the local command does: the same readers,
ids, resume state and sidecar (batch.plan_job, classify.prepare). The items go to Ray Data,
``map_batches`` runs them through a pool of actors (``ActorPoolStrategy``, ``--workers`` of them,
``num_cpus`` = ``--threads`` each), and the records come back to the driver, which writes the one
output file as the local command does, so resume and ``--ordered`` behave the same. Each actor
loads the verified model once and reuses batch's parallel-decoding engine or classify's
classifier for every batch it is given: no scheduler, queue or RPC of ours.

Ray retries a batch whose actor died (Ray Data creates actors with unlimited restarts and task
retries); a batch's records reach the driver only when the whole batch has finished, so a
retried batch is never written twice.

This is the only module that imports ray, and only when ``--ray`` is used.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

import numpy as np

from . import atomic, catalog, classify, loader, runtime, store
from . import batch as batch_mod
from .errors import ChecksumMismatchError, LlmlocalError, NotInstalledError, UsageError
from .sampling import Constraint

INSTALL_HINT = "pip install 'llmlocal[ray]'"


def _ray():
    try:
        import ray
        import ray.data  # noqa: F401  (the extra brings it; a bare `pip install ray` does not)
    except ImportError:
        raise UsageError("--ray needs Ray Data, which is not installed", hint=INSTALL_HINT) from None
    return ray


def check_address(address: str) -> str:
    """``--ray`` takes nothing (a local instance), ``auto``, ``HOST:PORT`` or ``ray://HOST:PORT``.
    Also checks that Ray is installed, before the job writes anything."""
    _ray()
    if address in ("", "local", "auto") or address.startswith("ray://") or ":" in address:
        return address
    raise UsageError(f"--ray {address!r} is not a Ray address",
                     hint="use --ray alone (a local Ray instance), --ray auto, or --ray ray://HOST:10001; "
                     "put --ray after the input file")


def connect(address: str, *, cpus: int) -> None:
    """Join the cluster at ``address``, or start a local Ray instance with ``cpus`` CPUs."""
    # Ray reports usage statistics to its makers unless told not to; llmlocal never phones home.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray = _ray()
    if ray.is_initialized():
        return
    # Workers' own log lines (and a failing worker's traceback) stay in Ray's session logs unless
    # --debug: the driver reports a failure once, as the local command does (see _unwrap).
    debug = os.environ.get("LLMLOCAL_DEBUG", "").strip().lower() in {"1", "true", "yes", "on"}
    quiet = {"logging_level": logging.INFO if debug else logging.ERROR, "log_to_driver": debug}
    if address in ("", "local"):
        ray.init(num_cpus=max(cpus, os.cpu_count() or 1), include_dashboard=False, **quiet)
    else:
        ray.init(address=address, **quiet)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the driver prints the local command's progress line
    if not debug:
        # Ray Data logs a failed job's stack trace before raising; _collect reports it in one line.
        logging.getLogger("ray.data").setLevel(logging.CRITICAL)


def _preflight(ray: Any, model: str, sha256: str | None, model_dir: str | None) -> None:
    """Every node with CPUs pulls the model if it lacks it and checks its SHA-256 before any
    actor starts, so a node with other bytes stops the job here, reported once as itself.

    The actors check again when they start (one may land on a node that joined since), but a
    failure there reaches the user wrapped in Ray's report of a dead actor.
    """
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    check = ray.remote(num_cpus=0, max_retries=0)(_verified)
    nodes = [n["NodeID"] for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0]
    refs = [check.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False))
            .remote(model, sha256, model_dir) for node in nodes]
    with _as_ours():
        ray.get(refs)


@contextlib.contextmanager
def _as_ours() -> Iterator[None]:
    """Raise a worker's llmlocal error as itself, not inside Ray's wrappers (one line, not a traceback)."""
    try:
        yield
    except Exception as exc:
        inner = _unwrap(exc)
        if inner is exc:
            raise
        raise inner from None


def _unwrap(exc: BaseException) -> BaseException:
    """The llmlocal error inside Ray's wrappers (task error, dead actor), else ``exc`` itself."""
    seen: set[int] = set()
    todo: list[Any] = [exc]
    while todo:
        e = todo.pop(0)
        if not isinstance(e, BaseException) or id(e) in seen:
            continue
        seen.add(id(e))
        # Ray's RayTaskError(X) is also an X, with Ray's traceback as its message: take its cause.
        if isinstance(e, LlmlocalError) and type(e).__module__ == LlmlocalError.__module__:
            return e
        todo += [getattr(e, "cause", None), e.__cause__, e.__context__, *e.args]
    return exc


def _collect(ds: Any) -> Iterator[dict[str, np.ndarray]]:
    """The dataset's output batches as they finish; a worker's llmlocal error raised as itself."""
    with _as_ours():
        yield from ds.iter_batches(batch_size=None, batch_format="numpy")


def _model_ref(spec: Any) -> str:
    """How a worker names the model: its catalogue name, or the path a reference points to."""
    return spec.name if spec.source else str(spec.path or spec.name)


def _blocks(n: int, workers: int, per_block: int) -> int:
    return max(1, min(n, max(2 * workers, math.ceil(n / per_block))))


def _verified(model: str, sha256: str | None, model_dir: str | None) -> None:
    """In a worker: the model's bytes in this worker's llmlocal home (pulled if need be), checked
    against the driver's SHA-256 before anything loads them."""
    if model_dir:
        os.environ["LLMLOCAL_HOME"] = model_dir
    spec = catalog.resolve(model, sha256=sha256)
    try:
        path = store.model_file(spec)
    except NotInstalledError:
        path = store.pull(spec, progress=False).installed.path
    if sha256:
        actual = atomic.sha256_file(path)
        if actual != sha256:
            raise ChecksumMismatchError(spec.name, str(path), sha256, actual, deleted=False)


class BatchWorker:
    """A Ray Data actor: one model, one parallel-decoding engine, many batches of prompts."""

    def __init__(self, model: str, sha256: str | None, model_dir: str | None, settings: batch_mod.JobSettings,
                 parallel: int, threads: int) -> None:
        _verified(model, sha256, model_dir)
        self.loaded = loader.load(model, sha256=sha256, ctx=settings.ctx, sequences=parallel, threads=threads,
                                  kv_type=settings.kv_type)
        self.settings, self.parallel = settings, parallel

    def __call__(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        items = [_batch_item(json.loads(text)) for text in rows["item"]]
        records: list[str] = [""] * len(items)
        for i, record in batch_mod.complete_items(self.loaded.model, items, self.settings, self.parallel):
            records[i] = json.dumps(record, ensure_ascii=False)
        return {"index": rows["index"], "record": np.array(records, dtype=object)}


def _batch_item(fields: dict) -> batch_mod.BatchItem:
    if fields.get("stop") is not None:
        fields["stop"] = tuple(fields["stop"])
    if fields.get("constraint") is not None:  # a line's own schema, shipped as asdict() made it
        fields["constraint"] = Constraint(**fields["constraint"])
    return batch_mod.BatchItem(**fields)


def run_batch(plan: batch_mod.JobPlan, *, address: str, workers: int, threads: int, model_dir: str | None,
              ordered: bool = True, progress: bool = True) -> batch_mod.BatchSummary:
    """Run a planned batch job on Ray, appending to its output as the local command does."""
    spec = plan.spec
    digest = spec.sha256 or atomic.sha256_file(store.model_file(spec))
    plan.check_model(digest)
    todo = plan.todo
    model = _model_ref(spec)
    if todo:  # join the cluster and check every node's bytes before the output is touched
        ray = _ray()
        connect(address, cpus=workers * threads)
        _preflight(ray, model, digest, model_dir)
    plan.start(model_name=spec.name, digest=digest, threads=threads,
               extra={"ray": {"address": address or "local", "workers": workers}})
    if not todo:
        return batch_mod.write_results(len(plan.items), todo, [], plan.output, parallel=plan.parallel,
                                       ordered=ordered, progress=progress)
    rows = [{"index": i, "item": json.dumps(asdict(item), ensure_ascii=False)} for i, item in enumerate(todo)]
    per_call = plan.parallel * 8  # enough prompts per call to keep the engine's slots busy
    ds = ray.data.from_items(rows, override_num_blocks=_blocks(len(rows), workers, per_call))
    ds = ds.map_batches(
        BatchWorker, batch_size=per_call, batch_format="numpy",
        fn_constructor_kwargs={"model": model, "sha256": digest, "model_dir": model_dir, "settings": plan.settings,
                               "parallel": plan.parallel, "threads": threads},
        compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=threads)

    def results() -> Iterator[tuple[int, dict]]:
        for out in _collect(ds):
            for index, record in zip(out["index"], out["record"], strict=True):
                yield int(index), json.loads(record)

    return batch_mod.write_results(len(plan.items), todo, results(), plan.output, parallel=plan.parallel,
                                   ordered=ordered, progress=progress)


class ClassifyWorker:
    """A Ray Data actor: one model and one classifier (its prompt prefix cached), many batches of texts."""

    def __init__(self, model: str, sha256: str | None, model_dir: str | None, labels: list[str],
                 examples: list[classify.Example], settings: classify.Settings, threads: int,
                 source: str | None = None) -> None:
        _verified(model, sha256, model_dir)
        runtime.prefer_batch_invariant_kernels()  # this process's first evaluation is still to come
        # Each worker resolves --method auto itself: the same examples and model bytes give every
        # worker the same choice (batch-invariant kernels), at the cost of one choice per worker.
        self.contexts = classify.open_contexts(model, sha256=sha256, threads=threads)
        self.settings, self.source = settings, source
        self.classifier = classify.build_classifier(self.contexts, labels, examples, settings)
        self.described = json.dumps(classify.describe(self.classifier))

    def __call__(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # The user's id and input line travel with the text, so an error about an item names it.
        items = [classify.Item(id=json.loads(i), text=str(t), line=int(n) if n >= 0 else None)
                 for i, t, n in zip(rows["id"], rows["text"], rows["line"], strict=True)]
        predictions = classify.predict(self.classifier, items, self.settings, source=self.source)
        return {"index": rows["index"],
                "prediction": np.array([json.dumps(asdict(p)) for p in predictions], dtype=object),
                "classifier": np.array([self.described] * len(items), dtype=object)}


def run_classify(job: classify.Job, *, model: str | None, sha256: str | None, address: str, workers: int,
                 threads: int, model_dir: str | None, batch_size: int = 64) -> tuple[classify.ClassifyResult, str, str]:
    """Classify (and evaluate) ``job`` on Ray; returns the result, the model's name and its SHA-256."""
    if job.k_fold is not None or job.holdout is not None:
        raise UsageError("--k-fold and --holdout run on one machine; drop --ray (or evaluate with --evaluate FILE)")
    spec = catalog.resolve(model or loader.default_model(), sha256=sha256)
    digest = spec.sha256 or atomic.sha256_file(store.model_file(spec))
    settings = job.settings
    chosen = classify.select_examples(job.examples, job.labels, max_examples=settings.max_examples, seed=settings.seed)
    result = classify.ClassifyResult(labels=list(job.labels), predictions=[], items=list(job.items),
                          examples_used=[[e.line for e in chosen]])
    if job.items:
        ray = _ray()
        connect(address, cpus=workers * threads)
        _preflight(ray, _model_ref(spec), digest, model_dir)
        rows = [{"index": i, "text": item.text, "id": json.dumps(item.id, ensure_ascii=False, default=str),
                 "line": item.line if item.line is not None else -1} for i, item in enumerate(job.items)]
        ds = ray.data.from_items(rows, override_num_blocks=_blocks(len(rows), workers, batch_size))
        ds = ds.map_batches(
            ClassifyWorker, batch_size=batch_size, batch_format="numpy",
            fn_constructor_kwargs={"model": _model_ref(spec), "sha256": digest, "model_dir": model_dir,
                                   "labels": list(job.labels), "examples": chosen, "settings": settings,
                                   "threads": threads, "source": job.input_path or "<stdin>"},
            compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=threads)
        found: dict[int, classify.Prediction] = {}
        described: Any = None
        for out in _collect(ds):
            for index, text, about in zip(out["index"], out["prediction"], out["classifier"], strict=True):
                fields = json.loads(text)
                fields["id"] = job.items[int(index)].id
                found[int(index)] = classify.Prediction(**fields)
                described = described or json.loads(about)
        result.predictions = [found[i] for i in range(len(job.items))]
        result.classifiers = [described]
    if job.evaluate:
        result.report = classify.evaluation_report(job, result)
    return result, spec.name, digest
