"""The demo apps' static checker (tests/demo/check_sources.py) must be able to fail."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("tree_sitter_java")
pytest.importorskip("tree_sitter_swift")

SPEC = importlib.util.spec_from_file_location("check_sources", Path(__file__).parent / "check_sources.py")
check_sources = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(check_sources)

ANDROID = {"method": {"text_decoder"}, "input": {"inputs_embeds"}, "output": {"logits"}}


def _parsed(tmp_path, name, text):
    path = check_sources.ROOT / "android_demo" / name  # only for relative names in messages
    f = tmp_path / name
    f.write_text(text, encoding="utf-8")
    return path, check_sources.Parser(check_sources.GRAMMARS[f.suffix]).parse(f.read_bytes()).root_node


def test_syntax_errors_are_reported(tmp_path):
    path, root = _parsed(tmp_path, "Broken.java", "class A { void f() { int x = ; } }")
    assert check_sources.syntax_errors(path, root)
    path, root = _parsed(tmp_path, "Fine.swift", "let a = 1\nfunc f() -> Int { a }\n")
    assert not check_sources.syntax_errors(path, root)


def test_model_names_must_be_in_the_manifest(tmp_path):
    path, root = _parsed(
        tmp_path,
        "ModelNames.java",
        'class ModelNames { static final String METHOD_TEXT_DECODER = "text_decoder";'
        ' static final String INPUT_EMBEDS = "input_embeds"; }',
    )
    consts = check_sources.constants(path, root)
    assert consts == {
        "METHOD_TEXT_DECODER": "text_decoder",
        "INPUT_EMBEDS": "input_embeds",
    }
    problems = check_sources.check_names(path, consts, [("manifest.json", ANDROID)])
    assert len(problems) == 1 and "INPUT_EMBEDS = 'input_embeds' is not a input name" in problems[0]


def test_swift_constants_and_categories(tmp_path):
    path, root = _parsed(
        tmp_path,
        "ModelNames.swift",
        'enum ModelNames {\n    static let functionPrefill = "prefill"\n}\n',
    )
    assert check_sources.constants(path, root) == {"functionPrefill": "prefill"}
    assert check_sources.category("functionPrefill") == "function"
    assert check_sources.category("METHOD_RESET_CACHE") == "method"


def test_manifest_vocabulary_holds_keys_and_string_values():
    assert check_sources.json_strings({"coreml": {"kv_cache": "state", "shape": [1, "x"]}}) == {
        "coreml",
        "kv_cache",
        "state",
        "shape",
        "x",
    }
