"""README's "How it is built" tree names every module of both packages (a new module needs a line)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def built_section() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.search(r"## How it is built\n(.*?)\n## ", text, re.S).group(1)


def test_every_module_is_in_the_readme_tree():
    section = built_section()
    missing = []
    for package in (ROOT / "export" / "autoglm_export", ROOT / "runtime" / "autoglm_runtime"):
        for path in sorted(package.rglob("*.py")):
            rel = path.relative_to(package)
            if rel.name == "__init__.py" and rel.parent != Path("."):
                rel = rel.parent  # a subpackage: its folder's line covers it
                names = [f"{rel.as_posix()}/"]
            elif rel.name == "__init__.py":
                continue
            else:  # the file by name, or its whole folder described on one line ("backends/", "mil/")
                names = [rel.name, rel.as_posix()] + ([f"{rel.parent.as_posix()}/"] if rel.parent != Path(".") else [])
            if not any(n in section for n in names):
                missing.append(f"{package.name}/{rel}")
    assert not missing, f"not in README's 'How it is built' tree: {missing}"
