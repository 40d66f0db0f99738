"""Read a GGUF file's header (architecture, quantisation, context length, chat template, tensor
sizes) without loading its weights, and estimate the memory a model needs at a given context.

Pure Python on purpose: ``llmlocal models``/``info`` must stay fast and must not need llama.cpp.
The format is the one llama.cpp's ``gguf.cpp`` reads: little-endian, versions 2 and 3.
"""

from __future__ import annotations

import bisect
import os
import re
import struct
from collections import Counter
from dataclasses import dataclass, field
from math import prod
from pathlib import Path
from typing import Any, BinaryIO

from llmlocal.errors import GGUFError, InvalidParameterError, UsageError, option

__all__ = ["DEFAULT_KV_TYPE", "KV_TYPES", "GGUFInfo", "MemoryEstimate", "check_kv_type", "estimate_memory",
           "quant_name", "read_gguf"]

_CHUNK = 1 << 20
_DEFAULT_ALIGNMENT = 32
_MAX_DIMS = 4  # GGML_MAX_DIMS
# Arrays this short are kept as lists (tags, rope sections, per-layer head counts, which have
# up to LLAMA_MAX_LAYERS items); longer ones (vocabularies, merges, scores) are skipped and
# recorded only by length.
_SMALL_ARRAY = 512
# Limits llama.cpp enforces with GGML_ASSERT, which aborts the whole process instead of raising:
# a header past them must be refused here, before llama.cpp sees it (llama-hparams.h, ggml.h).
LLAMA_MAX_LAYERS = 512
LLAMA_MAX_EXPERTS = 1024
_MAX_NAME = 64  # GGML_MAX_NAME: gguf.cpp refuses a tensor name this long or longer
_ROPE_SCALING = ("none", "linear", "yarn", "longrope")  # llama-model.cpp LLAMA_ROPE_SCALING_TYPES
# Architectures whose token embedding is not (embedding_length, vocabulary): wavtokenizer reads
# its width from another key; the speculative draft models borrow their target's vocabulary.
_OWN_EMBEDDING_SHAPE = ("wavtokenizer-dec", "eagle3", "dflash")
_INT64_MAX = (1 << 63) - 1
# The KV cache types llmlocal offers, with ggml's bytes per element: q8_0 stores 32 values as
# 32 int8 + one f16 scale (34 bytes), q4_0 as 16 bytes of nibbles + the scale (18 bytes). The
# names are ggml's own (runtime.py maps them to GGML_TYPE_*), so each is said once, here.
KV_TYPES: dict[str, float] = {"f16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}
DEFAULT_KV_TYPE = "f16"  # llama.cpp's default
# No tensor of a real model comes near a pebibyte; a size past it is a corrupt shape, not a
# file that was cut short.
_ABSURD_TENSOR = 1 << 50
# No header item of a real model comes near 4 GiB. A length past that is garbage (corruption);
# a smaller one running off the end of the file means the file was cut short.
_ABSURD = 1 << 32

# ggml_type id -> (name, elements per block, bytes per block). Ids from ggml.h `enum ggml_type`;
# sizes as ggml.c `type_traits` reports them (ggml_blck_size / ggml_type_size). Ids 4, 5, 31-33
# and 36-38 were removed from ggml and cannot appear in a file llama.cpp would load.
_GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22), 7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 36),
    10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110), 12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292), 16: ("IQ2_XXS", 256, 66),
    17: ("IQ2_XS", 256, 74), 18: ("IQ3_XXS", 256, 98), 19: ("IQ1_S", 256, 50),
    20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110), 22: ("IQ2_S", 256, 82),
    23: ("IQ4_XS", 256, 136), 24: ("I8", 1, 1), 25: ("I16", 1, 2), 26: ("I32", 1, 4),
    27: ("I64", 1, 8), 28: ("F64", 1, 8), 29: ("IQ1_M", 256, 56), 30: ("BF16", 1, 2),
    34: ("TQ1_0", 256, 54), 35: ("TQ2_0", 256, 66), 39: ("MXFP4", 32, 17), 40: ("NVFP4", 64, 36),
    41: ("Q1_0", 128, 18), 42: ("Q2_0", 64, 18),
}

# general.file_type, llama.h `enum llama_ftype` without the LLAMA_FTYPE_(MOSTLY_) prefix.
# 4 and 33-35 are retired but still name what old files contain.
_FTYPE_NAMES: dict[int, str] = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 4: "Q4_1_SOME_F16", 7: "Q8_0", 8: "Q5_0",
    9: "Q5_1", 10: "Q2_K", 11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M",
    16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S",
    22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M",
    28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 33: "Q4_0_4_4",
    34: "Q4_0_4_8", 35: "Q4_0_8_8", 36: "TQ1_0", 37: "TQ2_0", 38: "MXFP4_MOE", 39: "NVFP4",
    40: "Q1_0", 41: "Q2_0",
}

# GGUF value type id -> struct for the fixed-size ones; 8 is a string, 9 an array.
_SCALARS: dict[int, struct.Struct] = {
    t: struct.Struct("<" + c)
    for t, c in {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?",
                 10: "Q", 11: "q", 12: "d"}.items()
}
_STRING, _ARRAY = 8, 9
_U32, _U64 = _SCALARS[4], _SCALARS[10]
_DIMS = [struct.Struct(f"<{n}Q") for n in range(_MAX_DIMS + 1)]


def quant_name(file_type: int) -> str | None:
    """The llama.cpp name for a ``general.file_type`` id (15 -> "Q4_K_M"); None if unknown."""
    return _FTYPE_NAMES.get(file_type)


@dataclass(frozen=True)
class GGUFInfo:
    """What a GGUF header says about a model. Counts are None when the file does not say."""

    path: Path
    version: int
    architecture: str
    name: str | None
    file_type: int | None
    quantisation: str
    parameter_count: int
    tensor_count: int
    context_length: int | None
    block_count: int | None
    embedding_length: int | None
    head_count: int | None
    head_count_kv: int | None
    key_length: int | None
    value_length: int | None
    sliding_window: int | None
    vocab_size: int | None
    chat_template: str | None
    bos_token_id: int | None
    eos_token_id: int | None
    file_size: int
    data_offset: int
    tensor_data_size: int
    metadata: dict[str, Any]

    @property
    def has_chat_template(self) -> bool:
        return bool(self.chat_template)


class _Skipped:
    """A long array passed over without building its items; only its length is kept."""

    def __init__(self, count: int) -> None:
        self.count = count

    def __repr__(self) -> str:
        return f"<array of {self.count}>"


class _Reader:
    """Sequential reads over one unbuffered file through a 1 MiB window of our own.

    Every length is checked against the bytes left in the file before anything is allocated,
    so a corrupt length becomes a GGUFError, never a MemoryError.
    """

    def __init__(self, fh: BinaryIO, path: str, size: int) -> None:
        self._fh, self.path, self.size = fh, path, size
        self._buf, self._off, self._base = b"", 0, 0  # _base: file offset of _buf[0]

    @property
    def pos(self) -> int:
        return self._base + self._off

    def fail(self, problem: str) -> GGUFError:
        return GGUFError(self.path, problem)

    def _fill(self, n: int) -> None:
        if self._off + n <= len(self._buf):
            return
        if self.pos + n > self.size:
            raise self.fail(f"truncated: header ends at byte {self.size}")
        rest = self._buf[self._off:]
        self._base = self.pos
        self._fh.seek(self._base + len(rest))
        self._buf = rest + self._fh.read(max(n - len(rest), _CHUNK))
        self._off = 0
        if len(self._buf) < n:  # the file shrank while we read it
            raise self.fail(f"truncated: header ends at byte {self._base + len(self._buf)}")

    def unpack(self, st: struct.Struct) -> tuple[Any, ...]:
        self._fill(st.size)
        value = st.unpack_from(self._buf, self._off)
        self._off += st.size
        return value

    def u32(self) -> int:
        return self.unpack(_U32)[0]

    def u64(self) -> int:
        return self.unpack(_U64)[0]

    def claim(self, n: int, what: str) -> None:
        """Refuse, before allocating anything, a length the rest of the file cannot hold."""
        left = self.size - self.pos
        if n <= left:
            return
        if n < _ABSURD:
            raise self.fail(f"truncated: header ends at byte {self.size}")
        raise self.fail(f"corrupt: {what} at byte {self.pos} claims {n} bytes, {left} remain")

    def skip(self, n: int) -> None:
        self.claim(n, "skipped data")
        if self._off + n <= len(self._buf):
            self._off += n
        else:
            self._base, self._buf, self._off = self.pos + n, b"", 0

    def string(self) -> str:
        n = self.u64()
        self.claim(n, "string")
        self._fill(n)
        raw = self._buf[self._off : self._off + n]
        self._off += n
        return raw.decode("utf-8", errors="replace")

    def skip_strings(self, count: int, *, distinct: bool = False) -> int | None:
        """Pass over ``count`` strings; with ``distinct``, return how many are repeats.

        A 150k-token vocabulary: walk the length prefixes inside the window with locals, build
        no str objects, and fall back to the checked path only at the window's edge.
        """
        unpack, buf, off = _U64.unpack_from, self._buf, self._off
        seen: set[bytes] = set()
        add = seen.add
        for _ in range(count):
            if off + 8 <= len(buf):
                end = off + 8 + unpack(buf, off)[0]
                if end <= len(buf):
                    if distinct:
                        add(buf[off + 8 : end])
                    off = end
                    continue
            self._off = off
            n = self.u64()
            self.claim(n, "string")
            if distinct:
                self._fill(n)
                add(self._buf[self._off : self._off + n])
            self.skip(n)
            buf, off = self._buf, self._off
        self._off = off
        if not distinct or b"" in seen:  # llama.cpp names each empty token apart: not repeats
            return 0
        return count - len(seen)


def _read_value(r: _Reader, vtype: int, key: str) -> Any:
    if vtype in _SCALARS:
        return r.unpack(_SCALARS[vtype])[0]
    if vtype == _STRING:
        return r.string()
    if vtype != _ARRAY:
        raise r.fail(f"corrupt: unknown value type {vtype} for key '{key}' at byte {r.pos - 4}")
    itype, count = r.u32(), r.u64()
    if itype in _SCALARS:
        size = _SCALARS[itype].size
        r.claim(count * size, f"array '{key}'")
        if count > _SMALL_ARRAY:
            r.skip(count * size)
            return _Skipped(count)
        return list(r.unpack(struct.Struct(f"<{count}{_SCALARS[itype].format[1:]}")))
    if itype == _STRING:
        r.claim(count * 8, f"array '{key}'")  # at least a length prefix per item
        if count > _SMALL_ARRAY:
            # llama.cpp aborts (GGML_ASSERT) on a vocabulary that holds a token twice.
            repeats = r.skip_strings(count, distinct=key == "tokenizer.ggml.tokens")
            if repeats:
                raise r.fail(f"corrupt: the vocabulary '{key}' holds {repeats} repeated token(s)")
            return _Skipped(count)
        return [r.string() for _ in range(count)]
    # llama.cpp's gguf.cpp refuses nested arrays too.
    raise r.fail(f"corrupt: array '{key}' has unsupported item type {itype}")


def _version(r: _Reader) -> int:
    magic = r.unpack(struct.Struct("4s"))[0]
    if magic != b"GGUF":
        raise r.fail(f"not a GGUF file (starts with {magic!r})")
    version = r.u32()
    if version not in (2, 3):
        hint = " (a big-endian GGUF?)" if version > 0xFFFF else ""
        raise r.fail(f"unsupported GGUF version {version}{hint}; llmlocal reads versions 2 and 3")
    return version


def read_gguf(path: str | os.PathLike[str]) -> GGUFInfo:
    """Read the metadata and tensor table of a GGUF file, touching none of the weights.

    Raises:
        GGUFError: not a GGUF file, an unsupported version, corrupt or truncated.
        FileNotFoundError: ``path`` does not exist.
    """
    p = Path(path)
    if p.is_dir():
        raise GGUFError(str(p), "is a directory, not a GGUF file")
    with open(p, "rb", buffering=0) as fh:
        size = os.fstat(fh.fileno()).st_size
        if size == 0:
            raise GGUFError(str(p), "empty file (0 bytes), not a GGUF file")
        if size < 4:
            raise GGUFError(str(p), f"not a GGUF file (starts with {fh.read(4)!r})")
        r = _Reader(fh, str(p), size)
        version = _version(r)
        tensor_count, kv_count = r.u64(), r.u64()
        # Smallest possible entries: a KV pair is 13 bytes, a tensor info 24.
        r.claim(kv_count * 13 + tensor_count * 24,
                f"a table of {kv_count} key/value pairs and {tensor_count} tensors")
        kv: dict[str, Any] = {}
        for _ in range(kv_count):
            at = r.pos
            key = r.string()
            if not key or key in kv:  # gguf.cpp refuses both
                raise r.fail(f"corrupt: {'duplicate key ' + repr(key) if key else 'empty key'} at byte {at}")
            kv[key] = _read_value(r, r.u32(), key)
        raw_alignment = kv.get("general.alignment", _DEFAULT_ALIGNMENT)
        # A scalar only (gguf.cpp insists on a u32): _int would take a list's largest item.
        alignment = raw_alignment if isinstance(raw_alignment, int) and not isinstance(raw_alignment, bool) else 0
        if alignment <= 0 or alignment & (alignment - 1):
            raise r.fail(f"corrupt: general.alignment is {raw_alignment!r}, not a power of two")
        tensors = _tensor_infos(r, tensor_count, alignment)
    data_offset = -(-r.pos // alignment) * alignment
    have = max(size - data_offset, 0)
    data_end = max([tensors.data_end, *(offset for offset, _ in tensors.unknown)])
    if data_end > have:
        raise GGUFError(str(p), f"truncated: tensor data needs {data_end} bytes, file has {have}")
    by_type = tensors.by_type
    if tensors.unknown:
        # A tensor of an unknown type takes the bytes up to the next tensor, or to the end.
        starts = sorted({*tensors.offsets, have})
        for offset, ttype in tensors.unknown:
            by_type[ttype] += starts[bisect.bisect_right(starts, offset)] - offset if offset < have else 0
    info = _info(p, version, kv, tensors.params, tensor_count, size, data_offset, by_type)
    _check_model(info, kv, tensors.shapes, tensors.layers)
    return info


@dataclass
class _Tensors:
    """What the tensor table adds up to; ``shapes`` keeps the few tensors checked by name."""

    params: int = 0
    data_end: int = 0  # where the last tensor of a known type ends, from the data section's start
    by_type: Counter[int] = field(default_factory=Counter)  # bytes per ggml type id
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    unknown: list[tuple[int, int]] = field(default_factory=list)  # (offset, type id) of tensors of unknown types
    offsets: list[int] = field(default_factory=list)  # every tensor's, from the data section's start
    layers: int = 0  # 1 + the highest N of a blk.N.* tensor


_BLOCK = re.compile(r"blk\.(\d{1,6})\.")
_CHECKED_SHAPES = ("token_embd.weight", "blk.0.attn_q.weight", "blk.0.attn_k.weight", "blk.0.attn_qkv.weight")


def _tensor_infos(r: _Reader, count: int, alignment: int) -> _Tensors:
    """Walk the tensor table as llama.cpp's gguf.cpp does, refusing what it refuses.

    A type id this table does not know is not corruption: a newer ggml may have added it, and
    the file may load with a newer llama.cpp. Its size is taken from where the tensors lie.
    """
    t = _Tensors()
    names: set[str] = set()
    expected: int | None = 0  # offsets run on without gaps; unknowable after an unknown type
    for _ in range(count):
        name = r.string()
        if len(name.encode("utf-8", errors="surrogateescape")) >= _MAX_NAME or name in names:
            problem = "is a duplicate" if name in names else f"is {_MAX_NAME} bytes or longer"
            raise r.fail(f"corrupt: tensor name '{name[:80]}' {problem}")
        names.add(name)
        n_dims = r.u32()
        if n_dims > _MAX_DIMS:
            raise r.fail(f"corrupt: tensor '{name}' has {n_dims} dimensions (ggml allows {_MAX_DIMS})")
        dims = r.unpack(_DIMS[n_dims])
        ttype, offset = r.u32(), r.u64()
        n = prod(dims)
        if any(d > _INT64_MAX for d in dims) or n > _INT64_MAX:
            raise r.fail(f"corrupt: tensor '{name}' has shape {dims}, past what ggml can count")
        if offset % alignment:
            raise r.fail(f"corrupt: tensor '{name}' offset {offset} is not {alignment}-aligned")
        if expected is not None and offset != expected:
            raise r.fail(f"corrupt: tensor '{name}' has offset {offset}, expected {expected} "
                         "(each tensor's data follows the one before)")
        if name in _CHECKED_SHAPES:
            t.shapes[name] = dims
        t.params += n
        t.offsets.append(offset)
        layer = _BLOCK.match(name)
        if layer:
            t.layers = max(t.layers, int(layer[1]) + 1)
        if ttype not in _GGML_TYPES:
            t.unknown.append((offset, ttype))
            expected = None
            continue
        _, block, type_size = _GGML_TYPES[ttype]
        if dims and dims[0] % block:
            raise r.fail(f"corrupt: tensor '{name}' row of {dims[0]} is not a multiple of {block}")
        nbytes = n // block * type_size
        if nbytes >= _ABSURD_TENSOR:
            raise r.fail(f"corrupt: tensor '{name}' of shape {dims} would take {nbytes} bytes")
        t.by_type[ttype] += nbytes
        t.data_end = max(t.data_end, offset + nbytes)
        if expected is not None:
            expected += -(-nbytes // alignment) * alignment
    return t


def _int(value: Any) -> int | None:
    # Some architectures store per-layer lists (e.g. head_count_kv); the largest is a safe bound.
    if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
        return max(value)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _info(p: Path, version: int, kv: dict[str, Any], params: int, tensor_count: int,
          size: int, data_offset: int, by_type: Counter[int]) -> GGUFInfo:
    arch = kv.get("general.architecture")
    if not isinstance(arch, str) or not arch:
        raise GGUFError(str(p), "corrupt: no general.architecture in the header")

    def field(key: str) -> int | None:
        return _int(kv.get(f"{arch}.{key}"))

    file_type = _int(kv.get("general.file_type"))
    quant = quant_name(file_type) if file_type is not None else None
    if quant is None:  # no or unknown file_type: name the type holding most of the bytes
        quant = _GGML_TYPES.get(by_type.most_common(1)[0][0], ("unknown",))[0] if by_type else "unknown"
    embd, heads = field("embedding_length"), field("attention.head_count")
    head_dim = embd // heads if embd and heads else None
    tokens = kv.get("tokenizer.ggml.tokens")
    vocab = field("vocab_size") or (tokens.count if isinstance(tokens, _Skipped)
                                    else len(tokens) if isinstance(tokens, list) else None)
    template = kv.get("tokenizer.chat_template")
    name = kv.get("general.name")
    return GGUFInfo(
        path=p, version=version, architecture=arch,
        name=name if isinstance(name, str) else None,
        file_type=file_type, quantisation=quant, parameter_count=params,
        tensor_count=tensor_count, context_length=field("context_length"),
        block_count=field("block_count"), embedding_length=embd, head_count=heads,
        # llama.cpp defaults the KV head count to the head count (no grouped-query attention).
        head_count_kv=field("attention.head_count_kv") or heads,
        key_length=field("attention.key_length") or head_dim,
        value_length=field("attention.value_length") or head_dim,
        sliding_window=field("attention.sliding_window"), vocab_size=vocab,
        chat_template=template if isinstance(template, str) else None,
        bos_token_id=_int(kv.get("tokenizer.ggml.bos_token_id")),
        eos_token_id=_int(kv.get("tokenizer.ggml.eos_token_id")),
        file_size=size, data_offset=data_offset, tensor_data_size=sum(by_type.values()),
        metadata={k: repr(v) if isinstance(v, _Skipped) else v for k, v in kv.items()},
    )


def _check_model(info: GGUFInfo, kv: dict[str, Any], shapes: dict[str, tuple[int, ...]],
                 tensor_layers: int) -> None:
    """Refuse hyperparameters llama.cpp would abort the process on, or trip over, when loading.

    llama.cpp checks many of these with GGML_ASSERT, which kills the process (a hostile or
    corrupt header would take a server down with it); the others it reports as "unknown error".
    Only what the header says is checked: a key that is absent is llama.cpp's to default.
    """
    arch = info.architecture

    def fail(problem: str) -> GGUFError:
        return GGUFError(str(info.path), f"corrupt: {problem}")

    def per_layer(key: str, layers: int | None) -> list[int] | None:
        value = kv.get(f"{arch}.{key}")
        if value is None:
            return None
        values = value if isinstance(value, list) else [value]
        if not values or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
            raise fail(f"{arch}.{key} is {_short(value)}, not a count (or one per layer)")
        if isinstance(value, list):
            if layers is None or len(values) != layers:
                raise fail(f"{arch}.{key} has {len(values)} per-layer values for {layers} layers")
            return values
        return values * (layers or 1)

    def count(key: str, default: int | None = None) -> int | None:
        value = kv.get(f"{arch}.{key}", default)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise fail(f"{arch}.{key} is {_short(value)}, not a count")
        return value

    if arch == "clip":  # a vision projector: llama.cpp reads only its tensors
        return
    layers = count("block_count")
    if layers is not None and not 1 <= layers <= LLAMA_MAX_LAYERS:
        raise fail(f"{arch}.block_count is {layers}; llama.cpp loads 1 to {LLAMA_MAX_LAYERS} layers")
    if layers is not None and tensor_layers and tensor_layers != layers:
        raise fail(f"{arch}.block_count is {layers} but the tensors are for {tensor_layers} layers")
    if (count("nextn_predict_layers", 0) or 0) > (layers or 0):
        raise fail(f"{arch}.nextn_predict_layers is more than the {layers} layers")

    experts, groups = count("expert_count", 0) or 0, count("expert_group_count", 0) or 0
    group_used = count("expert_group_used_count", 0) or 0
    used = max(per_layer("expert_used_count", layers) or [0])
    if experts > LLAMA_MAX_EXPERTS:
        raise fail(f"{arch}.expert_count is {experts}; llama.cpp allows at most {LLAMA_MAX_EXPERTS}")
    if used > experts or (experts and not used):
        raise fail(f"{arch}.expert_used_count is {used} for {experts} experts")
    if groups and (groups >= experts or (groups > 1 and (experts % groups or not 0 < group_used < groups))):
        raise fail(f"expert groups ({groups}, {group_used} used) do not divide {experts} experts")

    per_layer("feed_forward_length", layers)
    heads = per_layer("attention.head_count", layers)
    kv_heads = per_layer("attention.head_count_kv", layers)
    embd = count("embedding_length")
    if embd == 0:
        raise fail(f"{arch}.embedding_length is 0")
    if kv.get(f"{arch}.attention.head_count_kv") == 0 and heads and max(heads):
        raise fail(f"{arch}.attention.head_count_kv is 0 for {max(heads)} attention heads")
    for il, h in enumerate(heads or []):
        k = kv_heads[il] if kv_heads else h
        if h and k and h % k:
            raise fail(f"layer {il} has {h} attention heads, not a multiple of its {k} KV heads")
    if not (heads and max(heads)) and any(name.startswith("blk.0.attn_") for name in shapes):
        raise fail(f"{arch}.attention.head_count is {'0' if heads else 'missing'} but the model has "
                   "attention weights")
    for key in ("attention.key_length", "attention.value_length"):
        if count(key) == 0:
            raise fail(f"{arch}.{key} is 0")
    if heads and embd and kv.get(f"{arch}.attention.key_length") is None:
        # Without a stored head size llama.cpp takes embedding_length / head_count.
        for h in set(heads) - {0}:
            if embd % h:
                raise fail(f"{arch}.embedding_length {embd} does not divide into {h} attention heads")

    scaling = kv.get(f"{arch}.rope.scaling.type")
    if scaling is not None and scaling not in _ROPE_SCALING:
        raise fail(f"{arch}.rope.scaling.type is {_short(scaling)}; llama.cpp knows {', '.join(_ROPE_SCALING)}")

    tokens = _length(kv.get("tokenizer.ggml.tokens"))
    if tokens is not None:
        declared = kv.get(f"{arch}.vocab_size")
        if declared is not None and declared != tokens:
            raise fail(f"{arch}.vocab_size is {_short(declared)} but the vocabulary has {tokens} tokens")
        for key in ("tokenizer.ggml.scores", "tokenizer.ggml.token_type"):
            got = _length(kv.get(key))
            if got is not None and got < tokens:
                raise fail(f"{key} has {got} entries for {tokens} tokens")
        listed = kv.get("tokenizer.ggml.tokens")
        if isinstance(listed, list):  # a long one was checked as it was read
            seen: set[str] = set()
            for token in listed:
                if token and token in seen:
                    raise fail(f"token {_short(token)} appears twice in the vocabulary")
                seen.add(token)
    embedding = shapes.get("token_embd.weight")
    if embedding and len(embedding) == 2 and arch not in _OWN_EMBEDDING_SHAPE:
        width, rows = embedding
        if embd is not None and width != embd:
            raise fail(f"token_embd.weight is {width} wide but {arch}.embedding_length is {embd}")
        if tokens is not None and rows != tokens:
            raise fail(f"token_embd.weight has {rows} rows but the vocabulary has {tokens} tokens")


def _length(value: Any) -> int | None:
    if isinstance(value, _Skipped):
        return value.count
    return len(value) if isinstance(value, list) else None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_kv_type(kv_type: str) -> str:
    """``kv_type`` if it is one of :data:`KV_TYPES`, else an InvalidParameterError naming the option."""
    if kv_type not in KV_TYPES:
        raise InvalidParameterError(f"{option('kv_type')} must be one of {', '.join(KV_TYPES)}, got {kv_type!r}",
                                    field="kv_type", hint="q8_0 about halves the KV cache, q4_0 quarters it")
    return kv_type


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes of RAM a model needs at ``n_ctx`` tokens of context, by what uses them."""

    n_ctx: int
    weights_bytes: int
    kv_cache_bytes: int
    compute_bytes: int
    total_bytes: int
    kv_type: str = DEFAULT_KV_TYPE


def estimate_memory(info: GGUFInfo, n_ctx: int, *, kv_type: str = DEFAULT_KV_TYPE) -> MemoryEstimate:
    """A deliberately generous estimate of the RAM llama.cpp uses for ``info`` at ``n_ctx``,
    with its K and V caches stored as ``kv_type`` (one of :data:`KV_TYPES`)."""
    if n_ctx <= 0:
        raise UsageError(f"context size must be positive, got {n_ctx}")
    per_elem = KV_TYPES[check_kv_type(kv_type)]
    layers, kv_heads, k_len, v_len = (info.block_count, info.head_count_kv, info.key_length,
                                      info.value_length)
    if not (layers and kv_heads and k_len and v_len):
        raise GGUFError(str(info.path), "header lacks the layer and head counts needed to "
                        "size the KV cache")
    # Weights are mmapped: they count against RAM once paged in, which they all are after the
    # first token. (CPU backends that repack weights, e.g. AMX, hold a second, anonymous copy
    # of the repacked tensors; the mapped originals then become reclaimable page cache.)
    weights = info.tensor_data_size
    # One K and one V row per layer per context cell. On sliding-window layers (gemma3)
    # llama.cpp may keep only window + batch cells, but llama-cpp-python asks for the full-size
    # SWA cache, so this is what it allocates; for any other setting it is an upper bound.
    kv = int(layers * n_ctx * kv_heads * (k_len + v_len) * per_elem)
    compute = _compute_allowance(info, n_ctx)
    return MemoryEstimate(n_ctx=n_ctx, weights_bytes=weights, kv_cache_bytes=kv,
                          compute_bytes=compute, total_bytes=weights + kv + compute, kv_type=kv_type)


def _compute_allowance(info: GGUFInfo, n_ctx: int) -> int:
    """Scratch memory for one forward pass: a rough bound, not a measurement.

    llama.cpp reserves its CPU compute buffer for a full micro-batch (up to 512 tokens) in
    float32, and its allocator reuses memory between steps, so the buffer is about the larger
    of two peaks: the logits of every token in the batch (vocab x batch) and the attention
    scores plus mask(s) (n_ctx x batch x (heads + masks), no flash attention). A few
    hidden-state-sized tensors and the one-row output buffer come on top. Checked against
    llama.cpp's logged "compute buffer size" for SmolLM2-135M and Gemma 3 270M from 512 to
    16384 tokens: this overestimates by 1-7%.
    """
    batch = min(n_ctx, 512)  # llama-cpp-python caps n_batch (default 512) at n_ctx
    embd, heads, vocab = info.embedding_length or 0, info.head_count or 1, info.vocab_size or 0
    masks = 2 if info.sliding_window else 1  # interleaved SWA builds a second mask
    attention = n_ctx * batch * (heads + masks) * 4
    logits = vocab * batch * 4
    return max(attention, logits) + 8 * batch * embd * 4 + vocab * 4
