"""`llmlocal cluster`: k-means, the silhouette and auto's choice of k, names, the output files and
manifest, the two-command flow to a classifier, bad input.

The k-means, silhouette and naming-rule tests at the top are pure logic on synthetic NumPy data:
nothing in them touches a model, so made-up vectors test them fully. The rest cluster twelve
texts (food, weather, sport) with the real SmolLM2-135M-Instruct (and Gemma 3 270M base as the
embedding model) through the real llama.cpp build, and name the clusters with the real grammar
sampler at temperature 0.
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import llmlocal
from llmlocal import cluster
from llmlocal.cli import cli
from llmlocal.errors import InputFormatError, UsageError
from tests.test_complete import assert_clean_error

TOPICS = {
    "food": ["I baked a loaf of sourdough bread with a crunchy crust this morning.",
             "This pasta recipe needs garlic, olive oil and fresh basil.",
             "The chocolate cake was rich, moist and very sweet.",
             "Grilled salmon with lemon and rice makes a quick dinner."],
    "weather": ["Heavy rain and strong winds are expected tomorrow afternoon.",
                "The forecast says sunny skies and warm temperatures all week.",
                "A cold front will bring snow and freezing temperatures tonight.",
                "Thunderstorms rolled in and the humidity finally dropped."],
    "sport": ["The striker scored twice and the team won the cup final.",
              "She ran the marathon in under three hours and set a record.",
              "The tennis match went to five sets before he won the title.",
              "Our basketball team lost in overtime after a late three-pointer."],
}
TEXTS = [t for texts in TOPICS.values() for t in texts]
TOPIC_OF = {t: topic for topic, texts in TOPICS.items() for t in texts}
NEW = {"The soup needs more salt and pepper.": "food", "It will be windy and wet on Saturday.": "weather",
       "The goalkeeper saved a penalty in the last minute.": "sport"}
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def run(*args: str, input: str | None = None):
    return CliRunner().invoke(cli, list(args), input=input)


def blobs(centres: int, per: int, *, dim: int = 16, spread: float = 0.05, seed: int = 0) -> tuple[np.ndarray,
                                                                                                     np.ndarray]:
    """Points around ``centres`` random unit directions (what embeddings of distinct topics look like)."""
    rng = np.random.default_rng(seed)
    directions = rng.normal(size=(centres, dim))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    X = np.repeat(directions, per, axis=0) + spread * rng.normal(size=(centres * per, dim))
    return X, np.repeat(np.arange(centres), per)


def same_partition(a, b) -> bool:
    """Whether two labellings group the rows the same way (cluster numbers aside)."""
    pairs = set(zip(a, b))
    return len(pairs) == len(set(a)) == len(set(b))


# ---------------------------------------------------------------- pure logic (no model)


def test_kmeans_recovers_blobs_and_repeats_with_its_seed() -> None:
    X, truth = blobs(3, 20)
    result = cluster.kmeans(X, 3, seed=7)
    assert same_partition(result.labels, truth)
    again = cluster.kmeans(X, 3, seed=7)
    assert np.array_equal(again.labels, result.labels) and again.inertia == result.inertia
    assert cluster.kmeans(X, 2, seed=7).inertia > result.inertia
    # inertia is the sum of squared distances to the centroids, which are their members' means
    for j in range(3):
        assert np.allclose(result.centroids[j], X[result.labels == j].mean(axis=0))
    assert result.inertia == pytest.approx(float(((X - result.centroids[result.labels]) ** 2).sum()))


def test_kmeans_keeps_k_clusters_when_points_repeat() -> None:
    """Seven copies of one point and two others: k = 3 still gives three non-empty clusters."""
    X = np.array([[1.0, 0.0]] * 7 + [[0.0, 1.0], [-1.0, 0.0]])
    result = cluster.kmeans(X, 3, seed=0)
    assert sorted(np.bincount(result.labels, minlength=3)) == [1, 1, 7]


def test_silhouette_is_rousseeuws_definition() -> None:
    X, _ = blobs(3, 6, spread=0.3, seed=1)
    labels = np.array([0] * 7 + [1] * 5 + [2] * 5 + [3])  # a cluster of one has silhouette 0
    D = np.sqrt(((X[:, None, :] - X[None, :, :]) ** 2).sum(axis=2))
    expected = []
    for i in range(len(X)):
        own = labels == labels[i]
        if own.sum() == 1:
            expected.append(0.0)
            continue
        a = D[i, own].sum() / (own.sum() - 1)
        b = min(D[i, labels == j].mean() for j in set(labels) if j != labels[i])
        expected.append((b - a) / max(a, b))
    assert cluster.silhouette(X, labels) == pytest.approx(np.mean(expected))
    # above the sample size it is measured on a seeded sample: the same each time, and close
    big, truth = blobs(3, 400)
    assert cluster.silhouette(big, truth, sample=300) == cluster.silhouette(big, truth, sample=300)
    assert cluster.silhouette(big, truth, sample=300) == pytest.approx(cluster.silhouette(big, truth), abs=0.02)


def test_auto_chooses_the_number_of_blobs_and_orders_clusters_largest_first() -> None:
    X, truth = blobs(4, 10)
    X = np.vstack([X, X[truth == 2][:5] + 0.01])  # blob 2 is the largest (15)
    truth = np.concatenate([truth, [2] * 5])
    result = cluster.group(X, cluster.candidate_ks("auto", len(X), len(X)), seed=0, k_requested="auto")
    assert result.k == 4 and sorted(result.scores) == list(range(2, 11))
    assert max(result.scores, key=lambda k: result.scores[k]) == 4
    assert same_partition(result.assignments, truth)
    assert [c.index for c in result.clusters] == [1, 2, 3, 4] and result.clusters[0].size == 15
    assert all(result.assignments[i] == 1 for i in np.flatnonzero(truth == 2))
    for c in result.clusters:  # members come most central first
        assert [result.distances[i] for i in c.members] == sorted(result.distances[i] for i in c.members)
    assert result.clusters[0].name == "cluster 1"


def test_the_range_auto_tries_and_bad_k() -> None:
    assert cluster.candidate_ks("auto", 12, 12) == [2, 3, 4, 5, 6]  # at most half the texts
    assert cluster.candidate_ks("auto", 1000, 1000) == list(range(2, 11))
    assert cluster.candidate_ks("auto", 1000, 1000, max_k=4) == [2, 3, 4]
    assert cluster.candidate_ks("auto", 3, 3) == [2]
    assert cluster.candidate_ks(" 3 ", 5, 4) == [3]
    with pytest.raises(InputFormatError, match="no texts to cluster"):
        cluster.candidate_ks(3, 0, 0)
    with pytest.raises(InputFormatError, match="all 4 texts are the same"):
        cluster.candidate_ks(2, 4, 1)
    for k, message in ((1, "at least 2"), (0, "at least 2"), (5, "more clusters than there are texts"),
                       ("many", "a number of clusters or 'auto'")):
        with pytest.raises(UsageError, match=message):
            cluster.candidate_ks(k, 6, 4)
    with pytest.raises(UsageError, match="needs at least 3 different texts"):
        cluster.candidate_ks("auto", 2, 2)


def test_names_are_cleaned_and_made_unique() -> None:
    assert cluster.clean_name('  "Weather\n reports."  ') == "Weather reports"
    assert cluster.clean_name(None) == "" and cluster.clean_name(3) == ""
    assert len(cluster.clean_name("x" * 80)) == cluster.NAME_MAX_CHARS
    assert cluster.unique_names(["sport", "Sport", "food", "sport"]) == ["sport", "Sport 2", "food", "sport 3"]


# ---------------------------------------------------------------- with the real models


def write_texts(path: Path) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "text"])
        for n, text in enumerate(TEXTS, 1):
            w.writerow([f"t{n}", text])
    return path


def topics_by_cluster(rows: list[dict]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for r in rows:
        out.setdefault(str(r["cluster"]), set()).add(TOPIC_OF[r["text"]])
    return out


@pytest.mark.slow
def test_three_clusters_csv_rows_and_manifest(installed, tmp_path) -> None:
    source = write_texts(tmp_path / "texts.csv")
    out = tmp_path / "clusters.csv"
    result = run("cluster", str(source), "-k", "3", "-o", str(out))
    assert result.exit_code == 0, result.output
    with open(out, encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["id", "text", "cluster", "cluster_name", "distance"]
    assert [r["id"] for r in rows] == [f"t{n}" for n in range(1, 13)] and [r["text"] for r in rows] == TEXTS
    groups = topics_by_cluster(rows)
    assert sorted(groups) == ["1", "2", "3"] and all(len(t) == 1 for t in groups.values())  # one topic each
    names = {r["cluster"]: r["cluster_name"] for r in rows}
    assert len(set(names.values())) == 3 and all(0 < len(n) <= 40 for n in names.values())
    assert all(0 <= float(r["distance"]) <= 2 for r in rows)

    meta = json.loads((tmp_path / "clusters.csv.meta.json").read_text())
    assert meta["embedding_model"] == {"name": "smollm2-135m", "sha256": SMOLLM2_SHA256, "purpose": "chat",
                                       "pooling": "mean", "kv_type": "f16"}
    assert meta["naming_model"] == {"name": "smollm2-135m", "sha256": SMOLLM2_SHA256, "kv_type": "f16"}
    assert meta["k"] == 3 and meta["k_requested"] == 3 and meta["seed"] == 0
    assert list(meta["silhouette_by_k"]) == ["3"] and meta["silhouette"] > 0
    assert meta["llmlocal_version"] == llmlocal.__version__ and meta["llama_cpp_python_version"]
    assert meta["input"] == {"path": str(source), "sha256": hashlib.sha256(source.read_bytes()).hexdigest(),
                             "items": 12}
    assert meta["output"]["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert [c["size"] for c in meta["clusters"]] == [4, 4, 4]
    assert [c["name"] for c in meta["clusters"]] == [names[str(i)] for i in (1, 2, 3)]
    # representatives: the three members nearest the centroid
    by_id = {r["id"]: r for r in rows}
    for c in meta["clusters"]:
        members = sorted((float(r["distance"]), r["id"]) for r in rows if r["cluster"] == str(c["cluster"]))
        assert c["representative_ids"] == [ident for _, ident in members[:3]]
        assert all(by_id[i]["cluster_name"] == c["name"] for i in c["representative_ids"])

    lines = result.stderr.splitlines()
    assert any(line.startswith("note: clustering the pooled embeddings of smollm2-135m, a chat model; a dedicated "
                               "embedding model usually clusters better") for line in lines)
    header = next(i for i, line in enumerate(lines) if line.startswith("CLUSTER"))
    assert lines[header].split() == ["CLUSTER", "SIZE", "NAME", "REPRESENTATIVE"]
    assert [line.split()[:2] for line in lines[header + 1:header + 4]] == [["1", "4"], ["2", "4"], ["3", "4"]]
    assert lines[-1].startswith("k = 3, silhouette ") and f"written to {out}" in lines[-1]
    assert result.stdout == ""


@pytest.mark.slow
def test_auto_on_stdin_chooses_three(installed) -> None:
    """JSONL on stdin, JSONL on stdout; auto tries k = 2..6 (half of 12) and keeps the best silhouette."""
    lines = "".join(json.dumps({"id": n, "text": t}) + "\n" for n, t in enumerate(TEXTS))
    result = run("cluster", "-k", "auto", "--no-names", input=lines)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["id"] for r in rows] == list(range(12))
    assert set(rows[0]) == {"id", "text", "cluster", "cluster_name", "distance"}
    groups = topics_by_cluster(rows)
    assert len(groups) == 3 and all(len(t) == 1 for t in groups.values())
    assert {r["cluster_name"] for r in rows} == {"cluster 1", "cluster 2", "cluster 3"}
    assert "k = 3 chosen by silhouette over k = 2..6" in result.stderr


@pytest.mark.slow
def test_from_no_labels_to_a_classifier_in_two_commands(installed, tmp_path) -> None:
    """cluster --examples-out, the names corrected, then classify -e on that file."""
    source = write_texts(tmp_path / "texts.csv")
    examples = tmp_path / "examples.csv"
    result = run("cluster", str(source), "-k", "3", "--examples-out", str(examples), "-o", str(tmp_path / "c.jsonl"))
    assert result.exit_code == 0, result.output
    with open(examples, encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["text", "label", "cluster", "id", "distance"] and len(rows) == 9
    meta = json.loads((tmp_path / "c.jsonl.meta.json").read_text())
    assert meta["examples_out"]["sha256"] == hashlib.sha256(examples.read_bytes()).hexdigest()
    proposed = {c["name"] for c in meta["clusters"]}
    assert {r["label"] for r in rows} == proposed
    # classify takes the file as it is...
    new = tmp_path / "new.txt"
    new.write_text("".join(f"{t}\n" for t in NEW), encoding="utf-8")
    as_is = run("classify", "-e", str(examples), str(new))
    assert as_is.exit_code == 0, as_is.output
    assert {json.loads(line)["label"] for line in as_is.stdout.splitlines()} <= proposed
    # ...and once a person has corrected the names (here: to the true topics), it answers in them
    for r in rows:
        r["label"] = TOPIC_OF[r["text"]]
    with open(examples, "w", encoding="utf-8", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    corrected = run("classify", "-e", str(examples), str(new))
    assert corrected.exit_code == 0, corrected.output
    assert [json.loads(line)["label"] for line in corrected.stdout.splitlines()] == list(NEW.values())


@pytest.mark.slow
def test_embedding_model_option_and_no_names(installed, tmp_path) -> None:
    """--embed-model embeds with another model; with --no-names the chat model is never loaded."""
    source = write_texts(tmp_path / "texts.csv")
    out = tmp_path / "c.csv"
    result = run("cluster", str(source), "-k", "3", "--embed-model", "gemma3-270m-base", "--no-names", "-o", str(out),
                 "-m", "no-such-model")
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "c.csv.meta.json").read_text())
    assert meta["embedding_model"]["name"] == "gemma3-270m-base" and meta["embedding_model"]["purpose"] == "base"
    assert meta["naming_model"] is None and meta["names"] == "none"
    assert [c["name"] for c in meta["clusters"]] == ["cluster 1", "cluster 2", "cluster 3"]
    assert "gemma3-270m-base, a base model" in result.stderr


@pytest.mark.slow
def test_python_api(installed) -> None:
    with llmlocal.load("smollm2-135m") as m:
        result = m.cluster(TEXTS, k=3)
        assert result["k"] == 3 and result["silhouette"] == result["silhouette_by_k"][3]
        items = result["items"]
        assert [r["id"] for r in items] == list(range(12)) and [r["text"] for r in items] == TEXTS
        assert all(len(t) == 1 for t in topics_by_cluster(items).values())
        clusters = result["clusters"]
        assert [c["size"] for c in clusters] == [4, 4, 4] and all(len(c["representatives"]) == 3 for c in clusters)
        assert len({c["name"] for c in clusters}) == 3
        assert {r["cluster_name"] for r in items} == {c["name"] for c in clusters}
        # the model still completes afterwards (naming used its generator)
        assert m.complete("Say hi", temperature=0, max_tokens=4)
        with pytest.raises(UsageError, match="at least 2"):
            m.cluster(TEXTS, k=1)


@pytest.mark.parametrize("content, args, code, message", [
    ("", ["-k", "2"], 1, r"texts\.txt: no texts to cluster"),
    ("same\nsame\nsame\n", ["-k", "2"], 1, "all 3 texts are the same: there is nothing to cluster"),
    ("a\nb\nc\n", ["-k", "1"], 2, r"-k must be at least 2 \(one cluster groups nothing\); got 1"),
    ("a\nb\nc\n", ["-k", "4"], 2, "-k 4 asks for more clusters than there are texts: .*texts.txt has 3 texts"),
    ("a\nb\na\n", ["-k", "3"], 2, r"has 2 different texts \(of 3\)"),
    ("a\nb\n", ["-k", "auto"], 2, "auto chooses k by the silhouette, which needs at least 3 different texts"),
    ("a\nb\nc\n", ["-k", "three"], 2, "-k takes a number of clusters or 'auto', not 'three'"),
    ("a\nb\nc\n", ["--examples-out", "{dir}/ex.txt"], 2, "cannot tell the format of"),
    ("a\nb\nc\n", ["--seed", "-1"], 2, "--seed must be 0 or more"),
    ("a\nb\nc\n", ["-o", "{dir}/out.xlsx"], 2, "cannot tell the output format"),
    ("a\nb\nc\n", ["-o", "{dir}/out.csv", "--examples-out", "{dir}/out.csv"], 2, "name the same file"),
])
def test_bad_input_is_one_error_line_before_any_model_loads(tmp_path, content, args, code, message) -> None:
    """No model is installed in this home: each error is found before one would be loaded."""
    source = tmp_path / "texts.txt"
    source.write_text(content, encoding="utf-8")
    result = run("cluster", str(source), *[a.replace("{dir}", str(tmp_path)) for a in args])
    assert result.exit_code == code, result.output
    assert_clean_error(result.stderr, message)
    assert not list(tmp_path.glob("out*")) and not (tmp_path / "ex.txt").exists()
