"""The GGUF header reader against the two real models, llama.cpp's own type tables, and broken
files cut from the real bytes or fabricated byte by byte."""

from __future__ import annotations

import ctypes
import re
import struct
import subprocess
import sys
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path

import pytest

from llmlocal import gguf
from llmlocal.errors import GGUFError, UsageError
from llmlocal.gguf import estimate_memory, quant_name, read_gguf
from tests import ggufedit
from tests.models import gemma_base_path

SMOLLM2_PARAMS = 134_515_008
GEMMA_PARAMS = 268_098_176


@pytest.fixture
def gemma(installed: Path) -> Path:
    return gemma_base_path(installed)


def test_smollm2_header(smollm2: Path) -> None:
    info = read_gguf(smollm2)
    assert (info.version, info.architecture, info.file_type, info.quantisation) == (3, "llama", 3, "Q4_1")
    assert info.parameter_count == SMOLLM2_PARAMS and 130e6 < info.parameter_count < 140e6
    assert info.tensor_count == 272
    assert info.context_length == 8192
    assert (info.block_count, info.embedding_length, info.head_count, info.head_count_kv) == (30, 576, 9, 3)
    assert (info.key_length, info.value_length) == (64, 64)  # not stored: 576 / 9
    assert info.sliding_window is None
    assert (info.vocab_size, info.bos_token_id, info.eos_token_id) == (49152, 1, 2)
    assert info.has_chat_template and "<|im_start|>" in info.chat_template
    # Sizes from the ggml type table account for every byte after the header.
    assert info.data_offset + info.tensor_data_size == info.file_size == smollm2.stat().st_size
    assert info.metadata["tokenizer.ggml.tokens"] == "<array of 49152>"
    assert info.metadata["tokenizer.ggml.merges"] == "<array of 48900>"
    assert info.metadata["general.languages"] == ["en"]
    assert info.metadata["llama.rope.freq_base"] == 100000.0


def test_gemma_base_header(gemma: Path) -> None:
    info = read_gguf(gemma)
    assert (info.architecture, info.file_type, info.quantisation) == ("gemma3", 15, "Q4_K_M")
    assert info.name == "Gemma 3 270m"
    assert info.parameter_count == GEMMA_PARAMS
    assert info.context_length == 32768
    assert (info.block_count, info.embedding_length, info.head_count, info.head_count_kv) == (18, 640, 4, 1)
    assert (info.key_length, info.value_length) == (256, 256)  # stored: not 640 / 4
    assert info.sliding_window == 512
    assert info.chat_template is None and not info.has_chat_template
    assert info.vocab_size == 262144
    assert info.data_offset + info.tensor_data_size == info.file_size


def test_memory_estimate_matches_llama_cpp_kv_cache(smollm2: Path, gemma: Path) -> None:
    # llama.cpp's load log at n_ctx=4096 (F16 cache): SmolLM2 "KV buffer size = 90.00 MiB";
    # Gemma 3 12.00 MiB (3 global layers) + 60.00 MiB (15 full-size SWA layers).
    small = estimate_memory(read_gguf(smollm2), 4096)
    assert small.kv_cache_bytes == 90 * 2**20
    assert small.weights_bytes == read_gguf(smollm2).tensor_data_size
    assert small.total_bytes == small.weights_bytes + small.kv_cache_bytes + small.compute_bytes
    # Its compute buffer log says 99.38 MiB; the allowance may be generous, not short.
    assert 99.4 * 2**20 < small.compute_bytes < 1.1 * 99.4 * 2**20
    assert estimate_memory(read_gguf(gemma), 4096).kv_cache_bytes == 72 * 2**20
    # Quantised caches: 34 and 18 bytes per block of 32 values (checked against llama.cpp in
    # test_kv_types.py).
    assert estimate_memory(read_gguf(smollm2), 4096, kv_type="q8_0").kv_cache_bytes == 90 * 2**20 * 17 // 32
    assert estimate_memory(read_gguf(smollm2), 4096, kv_type="q4_0").kv_cache_bytes == 90 * 2**20 * 9 // 32
    with pytest.raises(UsageError, match="'kv_type' must be one of f16, q8_0, q4_0, got 'q5_1'"):
        estimate_memory(read_gguf(smollm2), 4096, kv_type="q5_1")
    with pytest.raises(UsageError):
        estimate_memory(read_gguf(smollm2), 0)


def _llama_cpp_file(match: Callable[[str], bool]) -> Path:
    # Found through the distribution's file list: this checks the build llama_cpp would load,
    # without importing llama_cpp.
    dist = metadata.distribution("llama-cpp-python")
    (found,) = [Path(str(dist.locate_file(f))) for f in dist.files or () if match(str(f))]
    return found


def test_type_table_matches_the_installed_ggml() -> None:
    lib = ctypes.CDLL(str(_llama_cpp_file(
        lambda f: re.fullmatch(r"llama_cpp/lib/(lib)?ggml-base\.(so|dylib|dll)", f) is not None)))
    lib.ggml_blck_size.restype, lib.ggml_type_size.restype = ctypes.c_int64, ctypes.c_size_t
    lib.ggml_type_name.restype = ctypes.c_char_p
    ggml_h = _llama_cpp_file(lambda f: f == "include/ggml.h").read_text()
    count = int(re.search(r"GGML_TYPE_COUNT\s*=\s*(\d+)", ggml_h)[1])
    live = {t for t in range(count) if lib.ggml_blck_size(t) > 0}
    assert live == set(gguf._GGML_TYPES)
    for t in live:
        name, block, size = gguf._GGML_TYPES[t]
        assert (lib.ggml_type_name(t).decode().upper(), lib.ggml_blck_size(t), lib.ggml_type_size(t)) == (
            name, block, size)


def test_file_type_names_match_llama_h() -> None:
    header = _llama_cpp_file(lambda f: f == "include/llama.h").read_text()
    enum = re.search(r"enum llama_ftype \{(.*?)\};", header, re.S)[1]
    live = re.findall(r"^\s*LLAMA_FTYPE_(?:MOSTLY_|ALL_)?(\w+?)\s*=\s*(\d+)", enum, re.M)
    assert live, "llama.h layout changed"
    for name, value in live:
        if name != "GUESSED":
            assert quant_name(int(value)) == name
    assert (quant_name(15), quant_name(3), quant_name(32), quant_name(999)) == ("Q4_K_M", "Q4_1", "BF16", None)


# --- Broken copies of the real file --------------------------------------------------------


def _cut(src: Path, dst: Path, n: int) -> Path:
    with src.open("rb") as fh:
        dst.write_bytes(fh.read(n))
    return dst


@pytest.mark.parametrize("keep", [100, 100_000, 1_000_000])  # inside the header / the vocabulary
def test_header_cut_short(smollm2: Path, tmp_path: Path, keep: int) -> None:
    bad = _cut(smollm2, tmp_path / "cut.gguf", keep)
    with pytest.raises(GGUFError) as err:
        read_gguf(bad)
    assert err.value.problem == f"truncated: header ends at byte {keep}"
    assert str(err.value) == f"{bad}: truncated: header ends at byte {keep}"


def test_tensor_data_cut_short(smollm2: Path, tmp_path: Path) -> None:
    info = read_gguf(smollm2)
    keep = int(info.file_size * 0.6)
    bad = _cut(smollm2, tmp_path / "partial.gguf", keep)
    with pytest.raises(GGUFError) as err:
        read_gguf(bad)
    assert err.value.problem == (
        f"truncated: tensor data needs {info.tensor_data_size} bytes, file has {keep - info.data_offset}")


def test_last_byte_missing(smollm2: Path, tmp_path: Path) -> None:
    bad = _cut(smollm2, tmp_path / "short.gguf", smollm2.stat().st_size - 1)
    with pytest.raises(GGUFError, match="truncated: tensor data"):
        read_gguf(bad)


def test_text_file_renamed(tmp_path: Path) -> None:
    bad = tmp_path / "notes.gguf"
    bad.write_text("hello, this is not a model\n")
    with pytest.raises(GGUFError) as err:
        read_gguf(bad)
    assert err.value.problem == "not a GGUF file (starts with b'hell')"


@pytest.mark.parametrize("content", [b"", b"GG"])
def test_empty_or_tiny_file(tmp_path: Path, content: bytes) -> None:
    bad = tmp_path / "tiny.gguf"
    bad.write_bytes(content)
    with pytest.raises(GGUFError, match="empty file" if not content else "not a GGUF file"):
        read_gguf(bad)


def test_directory_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(GGUFError, match="is a directory"):
        read_gguf(tmp_path)
    with pytest.raises(FileNotFoundError):
        read_gguf(tmp_path / "absent.gguf")


# --- Fabricated files: a fake is enough here, since we need exact bytes no real model has -----


def _str(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


def _kv(key: str, vtype: int, payload: bytes) -> bytes:
    return _str(key) + struct.pack("<I", vtype) + payload


def _gguf(kvs: list[bytes], tensors: Sequence[tuple[str, tuple[int, ...], int, int]] = (), *,
          version: int = 3, alignment: int = 32) -> bytes:
    """A GGUF with the given KV pairs and (name, dims, ggml type, data bytes) tensors."""
    out = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(kvs)) + b"".join(kvs)
    offset = 0
    for name, dims, ttype, nbytes in tensors:
        out += _str(name) + struct.pack(f"<I{len(dims)}QIQ", len(dims), *dims, ttype, offset)
        offset += -(-nbytes // alignment) * alignment
    out += b"\0" * (-len(out) % alignment)
    return out + b"\0" * offset


ARCH = _kv("general.architecture", 8, _str("toy"))


def _read(tmp_path: Path, raw: bytes) -> gguf.GGUFInfo:
    path = tmp_path / "toy.gguf"
    path.write_bytes(raw)
    return read_gguf(path)


def test_fabricated_v2_with_custom_alignment_and_no_file_type(tmp_path: Path) -> None:
    kvs = [ARCH, _kv("general.alignment", 4, struct.pack("<I", 64)),
           _kv("toy.block_count", 4, struct.pack("<I", 2)),
           _kv("toy.attention.head_count_kv", 9, struct.pack("<IQ2I", 4, 2, 2, 4)),  # per layer
           _kv("toy.flag", 7, b"\x01"), _kv("toy.scale", 12, struct.pack("<d", 0.5)),
           # Distinct tokens: llama.cpp aborts on a vocabulary that holds one twice.
           _kv("tokenizer.ggml.tokens", 9, struct.pack("<IQ", 8, 600) + b"".join(_str(f"t{i}") for i in range(600))),
           _kv("tokenizer.ggml.scores", 9, struct.pack("<IQ", 6, 600) + b"\0" * 2400)]
    # 64x64 Q8_0 (4352 bytes) outweighs 64 F32 (256 bytes): the fallback names Q8_0.
    tensors = [("w", (64, 64), 8, 64 * 64 // 32 * 34), ("b", (64,), 0, 256)]
    info = _read(tmp_path, _gguf(kvs, tensors, version=2, alignment=64))
    assert (info.version, info.architecture, info.file_type, info.quantisation) == (2, "toy", None, "Q8_0")
    assert info.parameter_count == 64 * 64 + 64 and info.tensor_count == 2
    assert info.data_offset % 64 == 0 and info.tensor_data_size == 4352 + 256
    assert info.head_count_kv == 4  # the largest per-layer value: a safe bound for the KV cache
    assert info.metadata["toy.attention.head_count_kv"] == [2, 4]
    assert (info.metadata["toy.flag"], info.metadata["toy.scale"]) == (True, 0.5)
    assert info.metadata["tokenizer.ggml.tokens"] == "<array of 600>" and info.vocab_size == 600
    assert info.metadata["tokenizer.ggml.scores"] == "<array of 600>"
    assert info.chat_template is None and info.name is None


@pytest.mark.parametrize(("raw", "problem"), [
    (b"GGUF" + struct.pack("<I", 1) + b"\0" * 16, "unsupported GGUF version 1;"),
    (b"GGUF" + struct.pack(">I", 3) + b"\0" * 16, "unsupported GGUF version 50331648 (a big-endian"),
    (b"GGUF" + struct.pack("<IQQ", 3, 0, 2**63) + b"\0" * 64,
     "corrupt: a table of 9223372036854775808 key/value pairs and 0 tensors at byte 24 claims"),
    # A key whose length prefix says 4 EiB: refused before any allocation.
    (b"GGUF" + struct.pack("<IQQQ", 3, 0, 1, 2**62) + b"\0" * 64,
     "corrupt: string at byte 32 claims 4611686018427387904 bytes, 64 remain"),
    (_gguf([_kv("toy.big", 9, struct.pack("<IQ", 4, 2**60))]), "corrupt: array 'toy.big' at byte"),
    (_gguf([_kv("toy.big", 9, struct.pack("<IQ", 8, 2**60))]), "corrupt: array 'toy.big' at byte"),
    (_gguf([_kv("toy.nest", 9, struct.pack("<IQ", 9, 1))]), "corrupt: array 'toy.nest' has unsupported"),
    (_gguf([ARCH, _kv("toy.odd", 13, b"\0" * 8)]), "corrupt: unknown value type 13 for key 'toy.odd' at byte"),
    (_gguf([ARCH], [("w", (1, 1, 1, 1, 1), 0, 4)]), "corrupt: tensor 'w' has 5 dimensions"),
    (_gguf([ARCH], [("w", (33,), 2, 18)]), "corrupt: tensor 'w' row of 33 is not a multiple of 32"),
    (_gguf([ARCH, _kv("general.alignment", 4, struct.pack("<I", 48))]), "corrupt: general.alignment is 48"),
    (_gguf([ARCH, _kv("general.alignment", 9, struct.pack("<IQ2I", 4, 2, 32, 64))]),
     "corrupt: general.alignment is [32, 64]"),
    (_gguf([ARCH, ARCH]), "corrupt: duplicate key 'general.architecture' at byte"),
    (_gguf([ARCH], [("w", (32,), 0, 128), ("w", (32,), 0, 128)]), "corrupt: tensor name 'w' is a duplicate"),
    (_gguf([ARCH], [("w" * 64, (32,), 0, 128)]), f"corrupt: tensor name '{'w' * 64}' is 64 bytes or longer"),
    (_gguf([ARCH], [("w", (2**62, 4), 0, 0)]), "corrupt: tensor 'w' has shape (4611686018427387904, 4), past"),
    (_gguf([ARCH], [("w", (2**48,), 0, 0)]), "corrupt: tensor 'w' of shape (281474976710656,) would take"),
    (_gguf([_kv("toy.x", 4, b"\0" * 4)]), "corrupt: no general.architecture"),
])
def test_fabricated_corruption(tmp_path: Path, raw: bytes, problem: str) -> None:
    with pytest.raises(GGUFError) as err:
        _read(tmp_path, raw)
    assert err.value.problem.startswith(problem), err.value.problem


def test_string_array_with_a_huge_item_length(tmp_path: Path) -> None:
    # 300 items (past the small-array limit), the second claiming 2**40 bytes.
    items = _str("a") + struct.pack("<Q", 2**40) + b"\0" * 4000
    raw = _gguf([ARCH, _kv("tokenizer.ggml.tokens", 9, struct.pack("<IQ", 8, 300) + items)])
    with pytest.raises(GGUFError, match=r"corrupt: string at byte \d+ claims 1099511627776 bytes"):
        _read(tmp_path, raw)


def test_unknown_ggml_type_is_unknown_not_corrupt(tmp_path: Path) -> None:
    # A quantisation newer than this table (issue #13): llama.cpp from after it may load the
    # file, so it is read, named "unknown", and its bytes counted from where its tensors lie.
    tensors = [("w", (256, 4), 99, 640), ("b", (64,), 0, 256)]
    info = _read(tmp_path, _gguf([ARCH], tensors))
    assert info.quantisation == "unknown"
    assert info.parameter_count == 256 * 4 + 64
    assert info.tensor_data_size == 640 + 256  # "w" takes up to "b"; "b" is a known F32
    assert info.data_offset + info.tensor_data_size == info.file_size
    # With a known type holding most bytes, that one names the file.
    info = _read(tmp_path, _gguf([ARCH], [("w", (32,), 99, 32), ("b", (256,), 0, 1024)]))
    assert info.quantisation == "F32" and info.tensor_data_size == 32 + 1024


# --- Hostile headers on the real file: values llama.cpp aborts the process on (GGML_ASSERT) or
# fails to load with "unknown error"; each must be a GGUFError before llama.cpp sees it ---------

U32, STR, ARR, F32 = ggufedit.U32, ggufedit.STRING, ggufedit.ARRAY, ggufedit.F32


@pytest.fixture(scope="session")
def repeated_token_vocabulary(smollm2: Path) -> tuple[int, tuple[int, list[str]]]:
    tokens = ggufedit.tokens(smollm2)
    tokens[1000] = tokens[1001]
    return ARR, (STR, tokens)


@pytest.mark.parametrize(("edits", "problem"), [
    # The aborts (process killed by SIGABRT before this fix):
    ({"llama.block_count": (U32, 1000)}, "llama.block_count is 1000; llama.cpp loads 1 to 512 layers"),
    ({"llama.expert_count": (U32, 2000), "llama.expert_used_count": (U32, 2)},
     "llama.expert_count is 2000; llama.cpp allows at most 1024"),
    ({"llama.expert_used_count": (U32, 2)}, "llama.expert_used_count is 2 for 0 experts"),
    ({"llama.nextn_predict_layers": (U32, 31)}, "llama.nextn_predict_layers is more than the 30 layers"),
    ({"llama.rope.scaling.type": (STR, "bogus")},
     "llama.rope.scaling.type is 'bogus'; llama.cpp knows none, linear, yarn, longrope"),
    ("repeated tokens", "the vocabulary 'tokenizer.ggml.tokens' holds 1 repeated token(s)"),
    # Values llama.cpp refuses as an "unknown error", or that made absurd memory estimates:
    ({"llama.block_count": (U32, 0)}, "llama.block_count is 0; llama.cpp loads 1 to 512 layers"),
    ({"llama.block_count": (U32, 512)}, "llama.block_count is 512 but the tensors are for 30 layers"),
    ({"llama.attention.head_count": (U32, 0)},
     "llama.attention.head_count is 0 but the model has attention weights"),
    ({"llama.attention.head_count": (U32, 2**30)},
     "layer 0 has 1073741824 attention heads, not a multiple of its 3 KV heads"),
    ({"llama.attention.head_count": (U32, 7)}, "layer 0 has 7 attention heads, not a multiple of its 3 KV heads"),
    ({"llama.attention.head_count": (STR, "nine")},
     "llama.attention.head_count is 'nine', not a count (or one per layer)"),
    ({"llama.attention.head_count_kv": (U32, 0)}, "llama.attention.head_count_kv is 0 for 9 attention heads"),
    ({"llama.attention.head_count_kv": (U32, 2)}, "layer 0 has 9 attention heads, not a multiple of its 2 KV heads"),
    ({"llama.attention.head_count_kv": (U32, 2**30)},
     "layer 0 has 9 attention heads, not a multiple of its 1073741824 KV heads"),
    ({"llama.attention.head_count_kv": (ARR, (U32, [3] * 29))},
     "llama.attention.head_count_kv has 29 per-layer values for 30 layers"),
    ({"llama.embedding_length": (U32, 0)}, "llama.embedding_length is 0"),
    ({"llama.embedding_length": (U32, 575)}, "llama.embedding_length 575 does not divide into 9 attention heads"),
    ({"llama.embedding_length": (U32, 576 * 2)}, "token_embd.weight is 576 wide but llama.embedding_length is 1152"),
    ({"llama.vocab_size": (U32, 100)}, "llama.vocab_size is 100 but the vocabulary has 49152 tokens"),
    ({"llama.vocab_size": (U32, 2**31)}, "llama.vocab_size is 2147483648 but the vocabulary has 49152 tokens"),
    ({"tokenizer.ggml.scores": (ARR, (F32, [0.0] * 100))},
     "tokenizer.ggml.scores has 100 entries for 49152 tokens"),
])
def test_hostile_header_is_corrupt_before_llama_cpp_sees_it(smollm2: Path, tmp_path: Path, edits, problem: str,
                                                         repeated_token_vocabulary) -> None:
    if edits == "repeated tokens":
        edits = {"tokenizer.ggml.tokens": repeated_token_vocabulary}
    bad = ggufedit.rewrite(smollm2, tmp_path / "bad.gguf", edits, weights=False)
    with pytest.raises(GGUFError) as err:
        read_gguf(bad)
    assert err.value.problem == f"corrupt: {problem}"


def test_rewritten_header_without_edits_reads_as_the_real_file(smollm2: Path, tmp_path: Path) -> None:
    # The hostile-header cases above mean something only if the rewrite itself is faithful.
    same = read_gguf(ggufedit.rewrite(smollm2, tmp_path / "same.gguf", {}, weights=False))
    real = read_gguf(smollm2)
    assert (same.metadata, same.tensor_data_size, same.file_size) == (real.metadata, real.tensor_data_size,
                                                                       real.file_size)


def test_more_than_512_layers_is_one_clean_error_from_complete_and_info(smollm2: Path, tmp_path: Path) -> None:
    # The report (issue #12): llama.cpp's GGML_ASSERT killed the process with SIGABRT (exit 134
    # from a shell) and a backtrace, while `info` accepted the file. A child process, because
    # an abort would take pytest down with it.
    bad = ggufedit.rewrite(smollm2, tmp_path / "l.gguf", {"llama.block_count": (U32, 1000)})
    for args in (["complete", "-t", "1", "-m", str(bad), "hi"], ["info", str(bad)]):
        done = subprocess.run([sys.executable, "-m", "llmlocal", *args], capture_output=True, text=True)
        assert done.returncode == 1, (args, done.stderr)
        assert done.stderr.splitlines() == [
            f"Error: {bad}: corrupt: llama.block_count is 1000; llama.cpp loads 1 to 512 layers",
            "  hint: re-download it (`llmlocal pull`, or `llmlocal verify` to check the store)"]
        assert done.stdout == ""
