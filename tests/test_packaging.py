"""What the package imports is what it declares, and the declared minimums are what the code needs.

Pure inspection of the source and the installed metadata: no model needed.
"""

from __future__ import annotations

import ast
import sys
from importlib import metadata
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "llmlocal"


def _requirement_name(spec: str) -> str:
    for sep in "<>=!~;[ ":
        spec = spec.split(sep)[0]
    return spec.strip().lower().replace("_", "-")


def _declared() -> tuple[set[str], set[str]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    required = {_requirement_name(r) for r in project["dependencies"]}
    extras = {_requirement_name(r) for name, reqs in project["optional-dependencies"].items()
              if name != "test" for r in reqs}
    return required, extras


def _imported_top_level() -> dict[str, set[str]]:
    """Third-party top-level modules imported anywhere in the package -> the files importing them."""
    found: dict[str, set[str]] = {}
    stdlib = set(sys.stdlib_module_names)
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in stdlib and top not in ("llmlocal", "__future__"):
                    found.setdefault(top, set()).add(path.name)
    return found


def test_every_imported_package_is_declared() -> None:
    required, extras = _declared()
    distributions = metadata.packages_distributions()
    missing = {}
    for module, files in _imported_top_level().items():
        names = {d.lower().replace("_", "-") for d in distributions.get(module, [module])}
        if module == "tomli":  # only below Python 3.11, declared with a marker
            names = {"tomli"}
        if not names & (required | extras):
            missing[module] = sorted(files)
    assert not missing, f"imported but not declared in pyproject: {missing}"


def test_the_installed_hub_client_meets_the_declared_minimum_and_its_errors_map() -> None:
    from packaging.version import Version

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (spec,) = [r for r in project["dependencies"] if _requirement_name(r) == "huggingface-hub"]
    minimum = Version(spec.split(">=")[1].split(",")[0])
    assert Version(metadata.version("huggingface-hub")) >= minimum
    # The store maps the Hub's transport errors by their httpx2 types; the declared range must
    # be one whose huggingface_hub raises those.
    requires = metadata.requires("huggingface-hub") or []
    assert any(_requirement_name(r) == "httpx2" for r in requires), requires
    import httpx2

    from llmlocal import catalog, store
    from llmlocal.errors import NetworkError

    spec = catalog.resolve("smollm2-135m")
    mapped = store._hub_error(spec, httpx2.ConnectError("refused"))
    assert isinstance(mapped, NetworkError) and "cannot reach the Hub" in str(mapped)


@pytest.mark.parametrize("module", ["llmlocal.sampling", "llmlocal.serve.openai_format", "llmlocal.catalog"])
def test_pure_modules_do_not_load_llama_cpp(module) -> None:
    import subprocess

    code = f"import sys, {module}; print('llama_cpp' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
