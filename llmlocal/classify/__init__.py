"""Few-shot classification: ``llmlocal classify``, ``eval`` and ``embed``.

- ``types``: Example, Item, Prediction (shared by the others, so none imports another for them).
- ``job``: read texts and examples, choose the method, predict, evaluate, write with a manifest.
- ``fewshot``: the prompt method (labels scored by log-probability after a cached prefix).
- ``embedding``: the embedding method (pooled embeddings + logistic regression).
- ``metrics``: accuracy, macro-F1, confusion, calibration.
- ``report_html``: an evaluation as one self-contained HTML page (charts as inline SVG).
"""

from .job import (
    METHODS,
    ClassifyResult,
    Job,
    Outcome,
    Settings,
    build_classifier,
    check_output,
    embed_items,
    embed_manifest,
    evaluation_report,
    execute,
    holdout_split,
    item_name,
    load_options,
    manifest,
    output_format,
    parse_labels,
    predict,
    prepare,
    preview,
    read_examples,
    read_texts,
    resolve_labels,
    run,
    select_examples,
    sha256_text_source,
    show_prompt,
    stratified_folds,
    write_embeddings,
    write_outputs,
)
from .types import Example, Item, Prediction

__all__ = [
    "METHODS", "ClassifyResult", "Example", "Item", "Job", "Outcome", "Prediction", "Settings", "build_classifier",
    "check_output", "embed_items", "embed_manifest", "evaluation_report", "execute", "holdout_split", "item_name",
    "load_options", "manifest", "output_format", "parse_labels", "predict", "prepare", "preview", "read_examples",
    "read_texts", "resolve_labels", "run", "select_examples", "sha256_text_source", "show_prompt", "stratified_folds",
    "write_embeddings", "write_outputs",
]
