"""Document indexing, search and answers, with the real SmolLM2 embeddings and chat model.

Readers and chunking are pure logic and run on small files written here (a real PDF too, made
byte by byte, and one encrypted by pypdf). The index tests embed with the real model through the
real CLI; the kill -9 test kills a real `llmlocal index` process mid-run.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

import llmlocal
from llmlocal import documents
from llmlocal.cli import cli
from llmlocal.documents.chunks import chunk_blocks
from llmlocal.documents.readers import Block, ReadError, read_blocks
from tests.test_complete import assert_clean_error

GUIDE = """# Acme Router Guide

## Installation

Plug the router into power. Connect the WAN port to your modem with the blue cable.
The status light turns green after about 90 seconds.

## Resetting the password

Hold the reset button for 10 seconds. The default password is printed on the label: acme-4242.

```
reset --hard
# not a heading: inside a fence

still the fence
```

## Warranty

The warranty lasts 24 months from the date of purchase. Keep the receipt.
"""

FAQ = """FAQ
===

Refunds
-------

Refunds are accepted within 30 days if the router is unused.

Shipping
--------

Orders ship from Rotterdam within two working days.
"""

HTML = ("<html><head><script>var secret = 1;</script></head><body><h1>Support hours</h1>"
        "<p>Our support desk is open Monday to Friday, 9:00 to 17:00.</p>\n<h2>Phone</h2>\n"
        "<p>Call +31 20 555 0199 for the helpdesk.</p></body></html>")


def invoke(*args: str, input: str | None = None):
    return CliRunner().invoke(cli, list(args), input=input)


def make_pdf(path: Path, lines: list[str]) -> None:
    """A one-page PDF with real text objects (Helvetica), written byte by byte with its xref."""
    text = "BT /F1 12 Tf 72 720 Td 14 TL " + " ".join(f"({s}) Tj T*" for s in lines) + " ET"
    objects = [
        "<< /Type /Catalog /Pages 2 0 R >>",
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        "/Resources << /Font << /F1 5 0 R >> >> >>",
        f"<< /Length {len(text)} >>\nstream\n{text}\nendstream",
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n{body}\nendobj\n".encode("latin-1")
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{o:010d} 00000 n \n".encode() for o in offsets)
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    path.write_bytes(bytes(out))


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    root = tmp_path / "docs"
    (root / "sub").mkdir(parents=True)
    (root / "guide.md").write_text(GUIDE)
    (root / "sub" / "faq.rst").write_text(FAQ)
    (root / "page.html").write_text(HTML)
    make_pdf(root / "manual.pdf", ["The reactor core limit is 640 kelvin.", "Vent the coolant slowly."])
    (root / ".hidden").mkdir()
    (root / ".hidden" / "skip.md").write_text("# never indexed\n")
    return root


# ---------------------------------------------------------------- readers and chunks (pure logic)


def test_markdown_headings_lines_and_fences(docs: Path) -> None:
    blocks = read_blocks(docs / "guide.md")
    by_text = {b.text.split("\n")[0]: b for b in blocks}
    reset = by_text["Hold the reset button for 10 seconds. The default password is printed on the label: acme-4242."]
    assert reset.heading == ("Acme Router Guide", "Resetting the password") and reset.start_line == 10
    fence = next(b for b in blocks if b.text.startswith("```"))
    assert "# not a heading" in fence.text and "still the fence" in fence.text  # one block, blank line inside
    assert fence.heading == ("Acme Router Guide", "Resetting the password")
    install = next(b for b in blocks if b.text.startswith("Plug"))
    assert (install.start_line, install.end_line) == (5, 6)


def test_rst_html_table_and_pdf(docs: Path, tmp_path: Path) -> None:
    faq = read_blocks(docs / "sub" / "faq.rst")
    assert [b.heading for b in faq] == [("FAQ", "Refunds"), ("FAQ", "Shipping")]
    html = read_blocks(docs / "page.html")
    assert [b.text for b in html][0].startswith("Our support desk") and all("secret" not in b.text for b in html)
    assert html[1].heading == ("Support hours", "Phone")
    pdf = read_blocks(docs / "manual.pdf")
    assert pdf and pdf[0].page == 1 and "640 kelvin" in " ".join(b.text for b in pdf)
    table = tmp_path / "rows.csv"
    table.write_text("id,body\n1,First row text\n2,Second row text\n")
    rows = read_blocks(table, text_column="body")
    assert [(b.text, b.start_line) for b in rows] == [("First row text", 2), ("Second row text", 3)]
    with pytest.raises(ReadError, match="no text column"):
        read_blocks(table, text_column="nope")


def test_corrupt_and_encrypted_pdfs_are_read_errors(tmp_path: Path, docs: Path) -> None:
    import pypdf

    broken = tmp_path / "broken.pdf"
    broken.write_bytes(b"%PDF-1.4\n" + os.urandom(300))
    with pytest.raises(ReadError, match="not a readable PDF|no extractable text"):
        read_blocks(broken)
    writer = pypdf.PdfWriter(clone_from=str(docs / "manual.pdf"))
    writer.encrypt("secret")
    locked = tmp_path / "locked.pdf"
    with locked.open("wb") as f:
        writer.write(f)
    with pytest.raises(ReadError, match="encrypted"):
        read_blocks(locked)


def test_chunks_respect_sections_size_and_overlap() -> None:
    long = " ".join(f"Sentence number {i} says something about topic {i % 7}." for i in range(80))
    blocks = [Block("Short intro.", 1, 1, ("A",)), Block("Another short one.", 3, 3, ("A",)),
              Block(long, 5, 20, ("B",))]
    chunks = chunk_blocks(blocks, max_chars=300, overlap=80)
    assert chunks[0].text == "Short intro.\n\nAnother short one." and chunks[0].heading == ("A",)
    body = [c for c in chunks if c.heading == ("B",)]
    assert len(body) > 5 and all(len(c.text) <= 300 for c in body)
    for a, b in zip(body, body[1:]):
        last_sentence = a.text.rsplit(". ", 1)[-1]
        assert b.text.startswith(last_sentence.rstrip(".")) or last_sentence in b.text  # carried over
        assert a.start_line <= b.start_line <= b.end_line <= 20


# ---------------------------------------------------------------- the index, the CLI, the API


@pytest.mark.slow
def test_index_search_ask_and_incremental_updates(installed, docs: Path) -> None:
    first = invoke("index", "acme", str(docs), "--json", "-q")
    assert first.exit_code == 0, first.output
    summary = json.loads(first.stdout)
    assert summary["indexed"] == 4 and summary["unchanged"] == 0 and summary["chunks"] >= 6
    again = json.loads(invoke("index", "acme", str(docs), "--json", "-q").stdout)
    assert again["indexed"] == 0 and again["unchanged"] == 4  # nothing changed: nothing embedded

    hits = json.loads(invoke("search", "acme", "default password acme-4242", "--json").stdout)["hits"]
    assert hits[0]["heading"] == ["Acme Router Guide", "Resetting the password"]
    assert hits[0]["where"].endswith("guide.md:10-17") and hits[0]["bm25"] is not None
    pdf_hit = json.loads(invoke("search", "acme", "reactor core kelvin", "--json", "-k", "1").stdout)["hits"][0]
    assert pdf_hit["where"].endswith("manual.pdf#page=1") and pdf_hit["page_start"] == 1
    text = invoke("search", "acme", "refunds within 30 days")
    assert text.exit_code == 0 and "faq.rst:7" in text.stdout

    # change one file, delete another: only the changed one is embedded, the deleted one leaves
    (docs / "sub" / "faq.rst").write_text(FAQ.replace("30 days", "45 days"))
    (docs / "page.html").unlink()
    third = json.loads(invoke("index", "acme", str(docs), "--json", "-q").stdout)
    assert (third["indexed"], third["unchanged"], third["removed"]) == (1, 2, 1)
    hit = json.loads(invoke("search", "acme", "refunds", "--json", "-k", "1", "--mode", "keyword").stdout)["hits"][0]
    assert "45 days" in hit["text"]
    assert not json.loads(invoke("search", "acme", "helpdesk phone", "--json", "--mode", "keyword").stdout)["hits"]

    info = json.loads(invoke("index", "info", "acme", "--json").stdout)
    assert info["files"] == 3 and info["model"] == "smollm2-135m" and len(info["sha256"]) == 64
    assert info["settings"]["pooling"] == "mean"  # a chat model's pooled states: see index.FUSION
    listed = invoke("index", "ls")
    assert "acme" in listed.stdout

    answer = invoke("ask", "acme", "What is the default password?", "--json", "-n", "40")
    assert answer.exit_code == 0, answer.output
    out = json.loads(answer.stdout)
    assert out["found"] and out["sources"] and out["answer"]
    assert any("guide.md" in s["where"] for s in out["sources"]) and out["sha256"]
    streamed = invoke("ask", "acme", "What is the default password?", "-n", "40", "--show-context")
    assert "Sources:\n[1] " in streamed.stdout and "Question: What is the default password?" in streamed.stderr

    nothing = invoke("ask", "acme", "Who won the football world cup in 1998?")
    assert nothing.exit_code == 0 and "Nothing in index acme matches the question" in nothing.stdout
    assert json.loads(invoke("ask", "acme", "Who won the football world cup in 1998?", "--json").stdout)[
        "found"] is False

    removed = invoke("index", "rm", "acme")
    assert removed.exit_code == 0 and not documents.index_path("acme").exists()


def _fusion_index(name: str, pooling: str):
    """An index of three one-chunk files with hand-made 2-d vectors. Made-up vectors are enough
    here: what is under test is how ranks are fused, not what a model embeds."""
    import numpy as np

    from llmlocal.documents.chunks import Chunk
    from llmlocal.documents.index import Index

    idx = Index.open(name, create=True)
    idx.bind_model("m", "0" * 64, 2, {"pooling": pooling})
    texts = {"/a.md": "the router password is acme", "/b.md": "router setup and cables",
             "/c.md": "holiday pictures from the coast"}
    vectors = {"/a.md": [1.0, 0.0], "/b.md": [0.0, 1.0], "/c.md": [0.6, 0.8]}
    for path, text in texts.items():
        idx.replace_file(path, path, 1, "text", [Chunk(text, 1, 1)], np.asarray([vectors[path]], np.float32))
    return idx


@pytest.mark.parametrize(("pooling", "kind"), [("mean", "pooled"), ("model", "dedicated")])
def test_hybrid_fusion_weighs_the_embedding_by_what_made_it(home, pooling: str, kind: str) -> None:
    import numpy as np

    with _fusion_index(f"fusion-{pooling}", pooling) as idx:
        assert idx.embedding_kind == kind
        # BM25 ranks a (both words) over b (one word); the query vector points at b, then c.
        query = np.asarray([0.0, 1.0], np.float32)
        order = [h.path for h in idx.search("router password", query, k=3)]
        if kind == "pooled":  # a chat model's pooled states only break BM25's near-ties
            assert order[:2] == ["/a.md", "/b.md"]
        else:  # a dedicated model's vote counts as much as BM25's: b is first in one, second in the other
            assert order[0] == "/b.md"
        # No keyword matches at all: the embedding alone ranks, whatever its weight.
        assert [h.path for h in idx.search("zzz qqq", query, k=2)] == ["/b.md", "/c.md"]


@pytest.mark.slow
def test_an_unreadable_file_is_a_warning_not_a_failure(installed, docs: Path) -> None:
    (docs / "broken.pdf").write_bytes(b"not a pdf at all")
    result = invoke("index", "acme", str(docs), "-q")
    assert result.exit_code == 0, result.output
    assert "warning: " in result.stderr and "broken.pdf: not a readable PDF" in result.stderr
    only_bad = invoke("index", "bad", str(docs / "broken.pdf"), "-q")
    assert only_bad.exit_code == 2 and "none of the 1 file(s) could be read" in only_bad.output


@pytest.mark.slow
def test_another_models_bytes_are_refused(installed, docs: Path) -> None:
    assert invoke("index", "acme", str(docs / "guide.md"), "-q").exit_code == 0
    other = invoke("index", "acme", str(docs / "sub"), "-m", "gemma3-270m-base", "-q")
    assert other.exit_code == 1
    assert "was built with smollm2-135m" in other.output and "cannot be compared" in other.output
    assert "use -m smollm2-135m" in other.output


def test_bad_names_and_paths(installed, tmp_path: Path) -> None:
    assert invoke("index", "ls", "x").exit_code == 2
    reserved = invoke("index", "info", "ls")
    assert reserved.exit_code == 2 and "is a command" in reserved.output
    missing = invoke("index", "acme", str(tmp_path / "nope"))
    assert missing.exit_code == 2 and "no such file or directory" in missing.output
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no files to index" in invoke("index", "acme", str(empty)).output
    unknown = invoke("search", "nothing-here", "query")
    assert unknown.exit_code == 1 and "no index named 'nothing-here'" in unknown.output
    bad = invoke("index", "bad name!", str(tmp_path))
    assert bad.exit_code == 2 and "is not an index name" in bad.output


@pytest.mark.slow
def test_kill_9_while_indexing_then_a_clean_rerun(installed, tmp_path: Path) -> None:
    """SIGKILL mid-run: every file is in the index whole or not at all, and the re-run finishes."""
    root = tmp_path / "many"
    root.mkdir()
    for i in range(24):
        (root / f"note{i:02d}.md").write_text(f"# Note {i}\n\n" + "\n\n".join(
            f"Paragraph {j} of note {i} talks about subject {i * 7 + j} in some detail." for j in range(4)))
    db = documents.index_path("bulk")
    proc = subprocess.Popen([sys.executable, "-m", "llmlocal", "index", "bulk", str(root), "-q"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=os.environ.copy())
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if db.exists():
            try:
                with sqlite3.connect(db, timeout=1) as conn:
                    if conn.execute("SELECT count(*) FROM files").fetchone()[0] >= 3:
                        break
            except sqlite3.Error:
                pass
        time.sleep(0.05)
    assert proc.poll() is None, "the index run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        done = conn.execute("SELECT count(*) FROM files").fetchone()[0]
        # every file row has exactly the chunks it claims: no half-written file
        for file_id, claimed in conn.execute("SELECT id, chunks FROM files"):
            assert conn.execute("SELECT count(*) FROM chunks WHERE file_id = ?", (file_id,)).fetchone()[0] == claimed
    assert 3 <= done < 24
    rerun = invoke("index", "bulk", str(root), "--json", "-q")
    assert rerun.exit_code == 0, rerun.output
    summary = json.loads(rerun.stdout)
    assert summary["unchanged"] == done and summary["indexed"] == 24 - done
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM files").fetchone()[0] == 24
        fts = conn.execute("SELECT count(*) FROM fts").fetchone()[0]
        assert fts == conn.execute("SELECT count(*) FROM chunks").fetchone()[0]


@pytest.mark.slow
def test_python_api_and_chat_with_an_index(installed, docs: Path) -> None:
    with llmlocal.index("acme", docs) as idx:
        assert idx.last_update.indexed == 4
        hits = idx.search("warranty months", k=2)
        assert hits[0]["heading"][-1] == "Warranty"
        with llmlocal.load("smollm2-135m") as m:
            answer = m.ask(idx, "How long does the warranty last?", max_tokens=40)
            assert answer["found"] and answer["answer"] and answer["sources"][0]["where"]
            assert m.ask(idx, "Who won the football world cup in 1998?")["found"] is False
            assert m.complete("Say hi.", temperature=0, max_tokens=4)  # the generator is still consistent
    chat = invoke("chat", "--index", "acme", "--temperature", "0", "-n", "30",
                  input="What is the default password?\n/index off\nSay hi.\n")
    assert chat.exit_code == 0, chat.output
    assert "Sources: [1] " in chat.stdout and "no index" in chat.stdout


def test_ask_needs_an_index(installed) -> None:
    result = subprocess.run([sys.executable, "-m", "llmlocal", "ask", "missing", "why?"], capture_output=True,
                            text=True, env=os.environ.copy())
    assert result.returncode == 1
    assert_clean_error(result.stderr, "no index named 'missing'")


@pytest.mark.slow
def test_serve_search_endpoint(installed, docs: Path) -> None:
    """POST /v1/search over `serve --index NAME`, and its errors in the API's shape."""
    import urllib.error
    import urllib.request

    from tests.test_serve import ServerProcess

    assert invoke("index", "acme", str(docs), "-q").exit_code == 0
    server = ServerProcess(installed, "-m", "smollm2-135m", "--ctx", "512", "--index", "acme")
    try:
        assert "search over acme" in "".join(server.lines)

        def post(body: dict) -> tuple[int, dict]:
            req = urllib.request.Request(f"{server.url}/search", data=json.dumps(body).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req) as reply:
                    return reply.status, json.load(reply)
            except urllib.error.HTTPError as err:
                return err.code, json.load(err)

        status, out = post({"query": "default password", "k": 3})
        assert status == 200 and out["index"] == "acme" and out["model"] == "smollm2-135m"
        assert len(out["data"]) == 3 and out["data"][0]["heading"][-1] == "Resetting the password"
        keyword = post({"index": "acme", "query": "Rotterdam", "mode": "keyword"})[1]
        assert keyword["data"][0]["text"].startswith("Orders ship from Rotterdam")
        status, err = post({"index": "other", "query": "x"})
        assert status == 404 and err["error"]["param"] == "index"
        status, err = post({"query": ""})
        assert status == 400 and err["error"]["param"] == "query"
        status, err = post({"query": "x", "k": 0})
        assert status == 400 and err["error"]["param"] == "k"
    finally:
        assert server.stop() == 0


@pytest.mark.slow
def test_the_readme_documents_example_runs(installed, docs: Path, monkeypatch, capsys) -> None:
    """The README's Documents Python example, verbatim, in a directory with ./notes."""
    monkeypatch.chdir(docs.parent)
    docs.rename(docs.parent / "notes")
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Documents: index, search, ask", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    exec(compile(code, "README.md", "exec"), {})
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and "guide.md" in lines[0]
    assert lines[-1].startswith("True ")


@pytest.mark.slow
def test_an_installed_embedding_model_is_the_default(installed, docs: Path, smollm2: Path) -> None:
    """The code path of a dedicated embedding model, with SmolLM2's file standing in for one (the
    only GGUFs here are chat models): registered with purpose "embedding", it is what a new index
    embeds with, without the note that suggests one; its GGUF declares no pooling, so mean."""
    from llmlocal import paths

    assert invoke("import", str(smollm2), "--name", "standin-embed").exit_code == 0
    catalog_file = paths.user_catalog_path()
    text = catalog_file.read_text()
    assert "purpose" not in text  # "chat", the default, is not written
    catalog_file.write_text(text.replace('name = "standin-embed"', 'name = "standin-embed"\npurpose = "embedding"'))
    result = invoke("index", "acme", str(docs / "guide.md"), "-q")
    assert result.exit_code == 0, result.output
    assert "dedicated embedding model" not in result.stderr
    assert json.loads(invoke("index", "info", "acme", "--json").stdout)["model"] == "standin-embed"
    from llmlocal.documents.job import pooling_for

    assert pooling_for("standin-embed") == "mean"
