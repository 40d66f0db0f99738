"""The architecture, checked: imports point down the layers, and each heavy library has one owner.

Read from the source with ``ast`` (lazy imports inside functions count too), so a change that
breaks a rule fails here instead of being noticed in review. No model needed.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "llmlocal"

# Lower numbers are lower layers; a module may import its own layer and those below.
LAYERS = {
    0: {"errors", "paths", "config", "atomic", "hardware", "progress", "sampling", "tabular"},  # plumbing
    1: {"catalog", "gguf", "store"},  # model files
    2: {"runtime", "loader", "generate", "decoding", "engine", "structured", "lookup"},  # inference
    3: {"chat", "batch", "bench", "classify", "cluster", "distributed", "documents", "tools"},  # tasks
    4: {"serve"},  # serving
    5: {"api", "cli", "repl", "__init__", "__main__"},  # front ends
}
# Each library with one owning module (by dotted name inside the package).
OWNERS = {
    "llama_cpp": {"runtime"},
    "huggingface_hub": {"store"}, "httpx2": {"store"},
    "starlette": {"serve.app"}, "uvicorn": {"serve.app"}, "anyio": {"serve.app"},
    "ray": {"distributed"},
    "click": {"cli"},
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _layer(module: str) -> int:
    top = module.split(".")[0]
    return next(n for n, names in LAYERS.items() if top in names)


def _imports(module: str, path: Path) -> tuple[set[str], set[str]]:
    """(llmlocal modules imported, as dotted names; third-party top-level names)."""
    package = module.split(".")[:-1] if path.name != "__init__.py" else module.split(".")
    if module == "__init__":
        package = []
    inner, outer = set(), set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - (node.level - 1)]
            if node.module:
                inner.add(".".join([*base, node.module]))
            else:
                inner.update(".".join([*base, a.name]) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.startswith("llmlocal"):
                inner.add(node.module.removeprefix("llmlocal").lstrip(".") or "__init__")
            else:
                outer.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            outer.update(a.name.split(".")[0] for a in node.names)
    inner.discard("")
    return {m if m.split(".")[0] != "__version__" else "__init__" for m in inner}, outer


def test_every_module_has_a_layer() -> None:
    missing = [m for m in _modules() if not any(m.split(".")[0] in names for names in LAYERS.values())]
    assert not missing, f"put these in LAYERS: {missing}"


def test_imports_point_down_the_layers() -> None:
    wrong = []
    for module, path in _modules().items():
        for dep, _ in [(d, None) for d in _imports(module, path)[0]]:
            if dep == "__init__":  # __version__ lives there; the package itself is the top
                continue
            if _layer(dep) > _layer(module):
                wrong.append(f"{module} (layer {_layer(module)}) imports {dep} (layer {_layer(dep)})")
    assert not wrong, "\n".join(wrong)


def test_nothing_imports_the_cli() -> None:
    offenders = [m for m, p in _modules().items() if m not in ("cli", "__main__") and "cli" in _imports(m, p)[0]]
    assert not offenders


def test_each_library_is_imported_by_its_owner_only() -> None:
    wrong = []
    for module, path in _modules().items():
        for lib in _imports(module, path)[1] & set(OWNERS):
            if module not in OWNERS[lib]:
                wrong.append(f"{module} imports {lib} (owned by {', '.join(sorted(OWNERS[lib]))})")
    assert not wrong, "\n".join(wrong)
