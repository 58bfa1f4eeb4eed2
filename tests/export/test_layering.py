"""Imports flow one way: model -> quantize -> targets / checks -> pipeline -> cli, no cycles, and the
runtime never imports the export package. Read from the source (every import, also inside functions)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXPORT = ROOT / "export" / "autoglm_export"
RUNTIME = ROOT / "runtime" / "autoglm_runtime"

# Lowest first; a module may import its own layer or lower ones, never a higher one.
LAYERS = [
    (
        "errors",
        "config",
        "checkpoint",
        "stored",
        "scratch",
        "loader",
        "presets",
        "model",
        "source",
        "request",
        "stages",
        "summary",
        "calibration",
        "components",
        "bundle",
        "bundle_summary",
        "sizes",
        "describe",
        "__init__",
    ),
    ("quantize",),
    ("targets", "checks", "disk"),
    ("pipeline",),
    ("cli", "options", "help_format", "quiet", "native_stderr"),
]


def module_name(path: Path, package_root: Path) -> str:
    parts = list(path.relative_to(package_root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([package_root.name, *parts])


def imported_modules(path: Path, package_root: Path) -> set[str]:
    """Fully qualified modules a file imports (relative imports resolved; names imported from a
    package count as that package's submodule when the file exists)."""
    own = module_name(path, package_root).split(".")
    package = own if path.name == "__init__.py" else own[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join(base + (node.module.split(".") if node.module else []))
            out.add(target)
            for alias in node.names:  # `from . import qcheckpoint` imports a module
                candidate = package_root.parent.joinpath(*f"{target}.{alias.name}".split("."))
                if candidate.with_suffix(".py").exists() or (candidate / "__init__.py").exists():
                    out.add(f"{target}.{alias.name}")
    return out


def graph(package_root: Path) -> dict[str, set[str]]:
    prefix = package_root.name + "."
    return {
        module_name(p, package_root): {
            m for m in imported_modules(p, package_root) if m.startswith(prefix) or m == package_root.name
        }
        for p in sorted(package_root.rglob("*.py"))
    }


def layer_of(module: str) -> int:
    top = module.split(".")[1] if "." in module else "__init__"
    for rank, names in enumerate(LAYERS):
        if top in names:
            return rank
    raise AssertionError(f"{module}: not in any layer; add it to LAYERS")


def test_export_imports_flow_one_way():
    wrong = [
        f"{src} (layer {layer_of(src)}) imports {dst} (layer {layer_of(dst)})"
        for src, deps in graph(EXPORT).items()
        for dst in deps
        if layer_of(dst) > layer_of(src)
    ]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("root", [EXPORT, RUNTIME], ids=["export", "runtime"])
def test_no_import_cycles(root):
    edges = graph(root)
    for start in edges:  # package __init__ files are entry points, not cycle members
        edges[start] = {d for d in edges[start] if d in edges and not d == root.name}
    state: dict[str, int] = {}

    def visit(node, stack):
        state[node] = 1
        for dep in sorted(edges.get(node, ())):
            if state.get(dep) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(dep) :] + [dep]))
            if dep not in state:
                visit(dep, stack + [dep])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])


def test_runtime_never_imports_export():
    offenders = [
        str(p.relative_to(ROOT))
        for p in RUNTIME.rglob("*.py")
        if any(m.split(".")[0] == "autoglm_export" for m in imported_modules(p, RUNTIME))
    ]
    assert not offenders, offenders
