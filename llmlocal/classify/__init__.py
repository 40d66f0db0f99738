"""Few-shot classification: ``llmlocal classify``, ``eval`` and ``embed``.

- ``types``: Example, Item, Prediction (shared by the others, so none imports another for them).
- ``job``: read texts and examples, build the classifier, predict, evaluate, write with a manifest.
- ``auto``: ``--method auto``'s cross-validated choice, and the combined method.
- ``fewshot``: the prompt method (labels scored by log-probability after a cached prefix).
- ``embedding``: the embedding method (pooled embeddings + logistic regression).
- ``metrics``: accuracy, macro-F1, confusion, calibration.
- ``report_html``: an evaluation as one self-contained HTML page (charts as inline SVG).
"""

from .auto import Choice, CombinedClassifier, auto_summary
from .embedding import Embeddings
from .job import (
    METHODS,
    ClassifyResult,
    Contexts,
    Job,
    Outcome,
    Settings,
    build_classifier,
    check_output,
    describe,
    embed_items,
    embed_manifest,
    evaluation_report,
    execute,
    holdout_split,
    item_name,
    load_options,
    manifest,
    open_contexts,
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
    "METHODS", "Choice", "ClassifyResult", "CombinedClassifier", "Contexts", "Embeddings", "Example", "Item", "Job",
    "Outcome", "Prediction", "Settings", "auto_summary", "build_classifier", "check_output", "describe", "embed_items",
    "embed_manifest", "open_contexts", "evaluation_report", "execute", "holdout_split", "item_name",
    "load_options", "manifest", "output_format", "parse_labels", "predict", "prepare", "preview", "read_examples",
    "read_texts", "resolve_labels", "run", "select_examples", "sha256_text_source", "show_prompt", "stratified_folds",
    "write_embeddings", "write_outputs",
]
