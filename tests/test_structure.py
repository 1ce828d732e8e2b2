"""The package's shape: the core never imports the toy plug-in, no two modules import each other (directly or
round a loop, counting imports inside functions), and the toy registers itself through its entry point."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "trce_ray"
PLUGIN_FILES = {PACKAGE / "cli" / "toy.py"}  # the toy's own CLI; everything under trce_ray/toy/ too


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imported(path: Path) -> set[str]:
    """Absolute names of everything `path` imports, anywhere in the file (relative imports resolved by hand)."""
    name = _module(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names if f"{mod}.{a.name}" in MODULES)  # `from pkg import mod`
    return out


def _owning_module(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def test_relative_imports_are_resolved_by_hand():
    # the helper's own known answer: trce_ray/toy/rows.py's `from ..models.erased import load_erased`
    assert "trce_ray.models.erased" in _imported(PACKAGE / "toy" / "rows.py")
    assert "trce_ray.toy.world" in _imported(PACKAGE / "toy" / "packs.py")  # `from .world import ...`


def test_core_never_imports_the_toy():
    offenders = []
    for name, path in MODULES.items():
        if name == "trce_ray.toy" or name.startswith("trce_ray.toy.") or path in PLUGIN_FILES:
            continue
        bad = sorted(m for m in _imported(path) if m == "trce_ray.toy" or m.startswith("trce_ray.toy."))
        if bad:
            offenders.append(f"{path.relative_to(ROOT)} imports {', '.join(bad)}")
    assert not offenders, "\n".join(offenders)


def test_no_import_cycles():
    graph = {
        name: {m for m in map(_owning_module, _imported(path)) if m and m not in (name, "trce_ray")}
        for name, path in MODULES.items()
    }
    cycles, done = [], set()

    def visit(node: str, trail: list[str]) -> None:
        if node in trail:
            cycles.append(trail[trail.index(node) :] + [node])
            return
        if node in done:
            return
        for nxt in sorted(graph[node]):
            visit(nxt, trail + [node])
        done.add(node)

    for name in sorted(graph):
        visit(name, [])
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_toy_is_registered_by_entry_point_on_first_lookup():
    code = (
        "import sys\n"
        "from trce_ray.models.loading import resolve_model_path\n"
        "assert 'trce_ray.toy' not in sys.modules\n"
        "path = resolve_model_path('toy')\n"
        "assert 'trce_ray.toy.plugin' in sys.modules\n"
        "from trce_ray.evaluation.registry import suites\n"
        "print(path, sorted(suites()))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert out.split() == [str(PACKAGE / "toy" / "weights" / "pipeline"), "['toy']"]
