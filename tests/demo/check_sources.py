"""Static checks of the demo apps that need no Android SDK, Xcode or Swift toolchain.

    python tests/demo/check_sources.py --android BUNDLE --ios BUNDLE [--ios BUNDLE ...]

1. Every .java, .kt, .kts and .swift file under android_demo/ and ios_demo/ parses with its
   tree-sitter grammar without an error or missing node.
2. Every name the apps use to talk to the model files (the constants of ModelNames.java and
   ModelNames.swift) exists in freshly exported bundles' manifest.json: ExecuTorch METHOD_ / INPUT_ /
   OUTPUT_ names in dist/android's methods; Core ML component / function / input / output / state
   names in the Core ML package table of at least one of the dist/ios bundles given (iOS 18 and 17).
3. Every snake_case key that BundleManifest.java / BundleManifest.swift reads exists in those
   manifests (as a key or a value): a renamed manifest field breaks the apps.
4. No other string literal in the app sources is a near miss (edit distance 1-2) of a manifest
   name: a typo that bypasses ModelNames.

Exit status 1 with one line per problem.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import tree_sitter_java
import tree_sitter_kotlin
import tree_sitter_swift
from tree_sitter import Language, Node, Parser

ROOT = Path(__file__).resolve().parents[2]
APPS = (ROOT / "android_demo", ROOT / "ios_demo")
GRAMMARS = {
    ".java": Language(tree_sitter_java.language()),
    ".kt": Language(tree_sitter_kotlin.language()),
    ".kts": Language(tree_sitter_kotlin.language()),
    ".swift": Language(tree_sitter_swift.language()),
}
STRING_NODES = {
    "string_literal",
    "line_string_literal",
    "multi_line_string_literal",
    "string_content",
}


def walk(node: Node):
    yield node
    for child in node.children:
        yield from walk(child)


def sources() -> list[Path]:
    out = []
    for app in APPS:
        out += [p for p in app.rglob("*") if p.suffix in GRAMMARS and p.is_file() and "build" not in p.parts]
    return sorted(out)


def parse(path: Path) -> Node:
    return Parser(GRAMMARS[path.suffix]).parse(path.read_bytes()).root_node


def syntax_errors(path: Path, root: Node) -> list[str]:
    bad = [n for n in walk(root) if n.type == "ERROR" or n.is_missing]
    return [
        f"{path.relative_to(ROOT)}:{n.start_point[0] + 1}:{n.start_point[1] + 1}: syntax error"
        + (f" (missing {n.type})" if n.is_missing else "")
        for n in bad[:5]
    ]


def literal(node: Node) -> str:
    return node.text.decode("utf-8")[1:-1]  # both grammars keep the quotes in the node text


def constants(path: Path, root: Node) -> dict[str, str]:
    """name -> string value of every `NAME = "..."` constant (Java fields, Swift static lets)."""
    out = {}
    for n in walk(root):
        if n.type in ("variable_declarator", "property_declaration"):
            name, value = n.child_by_field_name("name"), n.child_by_field_name("value")
            if name is not None and value is not None and value.type in ("string_literal", "line_string_literal"):
                out[name.text.decode()] = literal(value)
    return out


def string_literals(root: Node) -> list[tuple[str, int]]:
    return [
        (literal(n), n.start_point[0] + 1) for n in walk(root) if n.type in ("string_literal", "line_string_literal")
    ]


def executorch_names(manifest: dict) -> dict[str, set[str]]:
    methods = manifest["methods"]
    return {
        "method": set(methods),
        "input": {i["name"] for m in methods.values() for i in m["inputs"]},
        "output": {o["name"] for m in methods.values() for o in m["outputs"]},
    }


def coreml_names(manifest: dict) -> dict[str, set[str]]:
    packages = manifest["coreml"]["packages"]
    names: dict[str, set[str]] = {
        "component": set(packages),
        "function": set(),
        "input": set(),
        "output": set(),
        "state": set(),
    }
    for pkg in packages.values():
        for fname, fn in pkg["functions"].items():
            names["function"].add(fname)
            for kind in ("input", "output", "state"):
                names[kind] |= {x["name"] for x in fn[kind + "s"]}
    return names


def category(constant: str) -> str:
    """METHOD_TEXT_DECODER -> method; inputKeyCache -> input."""
    if constant.isupper():
        return constant.split("_", 1)[0].lower()
    return re.split(r"(?=[A-Z])", constant, maxsplit=1)[0]


def json_strings(value) -> set[str]:
    """Every key and string value of a JSON document."""
    if isinstance(value, dict):
        return set(value) | set().union(*(json_strings(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(json_strings(v) for v in value)) if value else set()
    return {value} if isinstance(value, str) else set()


def json_keys(value) -> set[str]:
    if isinstance(value, dict):
        return set(value) | set().union(*(json_keys(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(json_keys(v) for v in value)) if value else set()
    return set()


# Keys of tokenizer.json the apps read; like manifest keys, they are not model names.
TOKENIZER_KEYS = {"decoder", "model", "vocab", "added_tokens", "content", "special"}


def edit_distance(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def check_names(path: Path, consts: dict[str, str], manifests: list[tuple[str, dict[str, set[str]]]]) -> list[str]:
    problems = []
    for const, value in consts.items():
        kind = category(const)
        found = [label for label, names in manifests if value in names.get(kind, set())]
        if kind not in manifests[0][1]:
            problems.append(f"{path.relative_to(ROOT)}: {const} has no known prefix ({', '.join(manifests[0][1])})")
        elif not found:
            problems.append(
                f"{path.relative_to(ROOT)}: {const} = {value!r} is not a {kind} name in "
                + " or ".join(label for label, _ in manifests)
            )
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--android", type=Path, required=True, help="a fresh dist/android bundle")
    ap.add_argument(
        "--ios",
        type=Path,
        action="append",
        required=True,
        help="fresh dist/ios bundles (iOS 18, iOS 17)",
    )
    args = ap.parse_args(argv)

    def load(p: Path) -> dict:
        return json.loads((p / "manifest.json").read_text(encoding="utf-8"))

    android = [(f"{args.android}/manifest.json", executorch_names(load(args.android)))]
    ios = [(f"{p}/manifest.json", coreml_names(load(p))) for p in args.ios]
    every_name = set().union(*(n for _, names in android + ios for n in names.values()))
    not_names = TOKENIZER_KEYS | set().union(*(json_keys(load(p)) for p in [args.android, *args.ios])) - every_name

    problems: list[str] = []
    counts: dict[str, int] = {}
    checked = 0
    keys_checked = 0
    for path in sources():
        counts[path.suffix] = counts.get(path.suffix, 0) + 1
        root = parse(path)
        problems += syntax_errors(path, root)
        if path.stem == "BundleManifest":
            vocab = set().union(
                *(json_strings(load(p)) for p in ([args.android] if path.suffix == ".java" else args.ios))
            )
            for text, line in string_literals(root):
                if not re.fullmatch(r"[a-z][a-z0-9]*_[a-z0-9_]*|[a-z]+", text):
                    continue
                keys_checked += 1
                if text not in vocab:
                    problems.append(
                        f"{path.relative_to(ROOT)}:{line}: reads {text!r}, which the fresh manifests do not have"
                    )
        if path.stem == "ModelNames":
            consts = constants(path, root)
            checked += len(consts)
            problems += check_names(path, consts, android if path.suffix == ".java" else ios)
            continue
        for text, line in string_literals(root):
            if text in every_name or text in not_names or len(text) < 5 or not re.fullmatch(r"[A-Za-z_]+", text):
                continue
            near = [n for n in every_name if len(n) >= 5 and edit_distance(text, n) <= 2]
            if near:
                problems.append(
                    f"{path.relative_to(ROOT)}:{line}: {text!r} looks like the model name {near[0]!r}; use ModelNames"
                )
    if "ModelNames" not in " ".join(p.stem for p in sources()):
        problems.append("no ModelNames.java / ModelNames.swift found")
    for p in problems:
        print(p)
    summary = ", ".join(f"{n} {ext}" for ext, n in sorted(counts.items()))
    print(
        f"parsed {summary} file(s); {checked} model names checked against "
        f"{len(android) + len(ios)} manifests, {keys_checked} manifest keys read: {'FAILED' if problems else 'ok'}"
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
