"""Rewrite the key/value section of a real GGUF, keeping its tensor table and weights.

Tests use it to make the corrupt or hostile headers llama.cpp trips over, on a file that is
otherwise a real model (so llama.cpp would get as far as the bad value). Written independently
of llmlocal.gguf, so a bug there cannot hide itself here.
"""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

_FIXED = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
U32, I32, F32, BOOL, STRING, ARRAY, U64 = 4, 5, 6, 7, 8, 9, 10


def _value_end(raw: bytes, pos: int, vtype: int) -> int:
    if vtype in _FIXED:
        return pos + _FIXED[vtype]
    if vtype == STRING:
        return pos + 8 + struct.unpack_from("<Q", raw, pos)[0]
    itype, count = struct.unpack_from("<IQ", raw, pos)
    pos += 12
    if itype in _FIXED:
        return pos + count * _FIXED[itype]
    for _ in range(count):
        pos += 8 + struct.unpack_from("<Q", raw, pos)[0]
    return pos


def encode(vtype: int, value) -> bytes:
    """The GGUF bytes of a value: a scalar, a string, or (item type, list) for an array."""
    if vtype == STRING:
        raw = value.encode()
        return struct.pack("<Q", len(raw)) + raw
    if vtype == ARRAY:
        itype, items = value
        return struct.pack("<IQ", itype, len(items)) + b"".join(encode(itype, v) for v in items)
    fmt = {U32: "<I", I32: "<i", F32: "<f", BOOL: "<?", U64: "<Q"}[vtype]
    return struct.pack(fmt, value)


_HEADER_BYTES = 16 << 20  # the test models' headers (vocabularies included) are smaller


def read_kv(path: Path) -> tuple[bytes, dict[str, tuple[int, bytes]], bytes, int]:
    """(version bytes, {key: (type, value bytes)}, tensor table bytes, where the data starts)."""
    with path.open("rb") as fh:
        raw = fh.read(_HEADER_BYTES)
    version = raw[4:8]
    n_tensors, n_kv = struct.unpack_from("<QQ", raw, 8)
    pos, kv = 24, {}
    for _ in range(n_kv):
        klen = struct.unpack_from("<Q", raw, pos)[0]
        key = raw[pos + 8 : pos + 8 + klen].decode()
        vtype = struct.unpack_from("<I", raw, pos + 8 + klen)[0]
        start = pos + 12 + klen
        pos = _value_end(raw, start, vtype)
        kv[key] = (vtype, raw[start:pos])
    table_start = pos
    for _ in range(n_tensors):
        pos += 8 + struct.unpack_from("<Q", raw, pos)[0]
        n_dims = struct.unpack_from("<I", raw, pos)[0]
        pos += 4 + 8 * n_dims + 4 + 8
    alignment = 32
    if "general.alignment" in kv:
        alignment = struct.unpack("<I", kv["general.alignment"][1])[0]
    data_start = -(-pos // alignment) * alignment
    return version, kv, struct.pack("<Q", n_tensors) + raw[table_start:pos], data_start


def rewrite(src: Path, dst: Path, edits: dict[str, tuple[int, object] | None], *,
            weights: bool = True) -> Path:
    """Copy ``src`` to ``dst`` with keys set to (type, value), or removed where None.

    ``weights=False`` leaves the tensor data a hole of zeros (a sparse file: fast to make), for
    tests that read only the header.
    """
    version, kv, table, data_start = read_kv(src)
    for key, edit in edits.items():
        if edit is None:
            kv.pop(key, None)
        else:
            kv[key] = (edit[0], encode(*edit))
    n_tensors, table = table[:8], table[8:]
    out = b"GGUF" + version + n_tensors + struct.pack("<Q", len(kv))
    for key, (vtype, value) in kv.items():
        out += encode(STRING, key) + struct.pack("<I", vtype) + value
    out += table
    out += b"\0" * (-len(out) % 32)
    data_size = src.stat().st_size - data_start
    with src.open("rb") as fh_in, dst.open("wb") as fh_out:
        fh_out.write(out)
        if weights:
            fh_in.seek(data_start)
            shutil.copyfileobj(fh_in, fh_out, 1 << 20)
        else:
            fh_out.truncate(len(out) + data_size)
    return dst


def tokens(src: Path) -> list[str]:
    """The vocabulary of ``src``."""
    raw = read_kv(src)[1]["tokenizer.ggml.tokens"][1]
    count, pos, out = struct.unpack_from("<Q", raw, 4)[0], 12, []
    for _ in range(count):
        n = struct.unpack_from("<Q", raw, pos)[0]
        out.append(raw[pos + 8 : pos + 8 + n].decode())
        pos += 8 + n
    return out
