"""Train the tiny preset's tokenizer: GLM-style byte-level BPE, exactly 4096 ids.

    .venv/bin/python tools/train_tokenizer.py            # writes export/autoglm_export/presets/tiny/tokenizer.json
    .venv/bin/python tools/train_tokenizer.py --check    # exit 1 unless a fresh build equals the committed file

Layout: ids 0..4072 are the BPE vocabulary (the 256-symbol byte alphabet, then merges); ids 4073..4095 are
`autoglm_runtime.tokenizer.GLM_ADDED_TOKENS` in order, i.e. the same relative order as GLM-4.1V's ids
151329.. (<|endoftext|>=4073, [gMASK]=4075, <sop>=4077, <|user|>=4080, <|assistant|>=4081,
<|begin_of_image|>=4083, <|image|>=4087, <think>=4089, </answer>=4092, <|audio|>=4095).
Pre-tokenizer: GLM-4's tiktoken split regex + ByteLevel, decoder ByteLevel, no normalizer and no
post-processor (the chat template writes [gMASK]<sop> itself).

Training is deterministic: the corpus is the committed files below, read in sorted order, and
`tokenizers`' BPE trainer breaks count ties deterministically; `--check` (and tests) verify it.

Corpus, tools/tokenizer_corpus/ (about 0.5 MB):
- zh_phone_agent.txt, en_phone_agent.txt: phone-agent instructions, screen descriptions and replies
  written for this project; Apache-2.0 like the rest of the repository.
- en_stdlib_docstrings.txt: docstrings of CPython 3.11 standard-library modules (Python Software
  Foundation License v2). Regenerate: `tools/train_tokenizer.py --refresh-en`.
- zh_jieba_words.tsv: the most frequent words with counts from jieba 0.42.1's dict.txt (MIT License,
  https://pypi.org/project/jieba/). Regenerate: `pip download jieba==0.42.1 --no-deps --no-binary :all:`,
  unpack, then `tools/train_tokenizer.py --refresh-zh path/to/jieba/dict.txt`.
"""

from __future__ import annotations

import argparse
import ast
import math
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from autoglm_runtime.tokenizer import GLM_ADDED_TOKENS

ROOT = Path(__file__).resolve().parents[1]
CORPUS_DIR = ROOT / "tools" / "tokenizer_corpus"
OUT_PATH = ROOT / "export" / "autoglm_export" / "presets" / "tiny" / "tokenizer.json"
VOCAB_SIZE = 4096
BPE_SIZE = VOCAB_SIZE - len(GLM_ADDED_TOKENS)

# GLM-4's pre-tokenization regex (its tiktoken pat_str, also in GLM-4.1V's tokenizer.json Split step).
GLM_SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Stdlib modules whose docstrings make up the English prose (fixed list keeps the file stable).
STDLIB_MODULES = (
    "argparse",
    "asyncio/base_events",
    "asyncio/events",
    "asyncio/locks",
    "asyncio/queues",
    "asyncio/streams",
    "asyncio/tasks",
    "base64",
    "bisect",
    "calendar",
    "collections/__init__",
    "concurrent/futures/_base",
    "configparser",
    "contextlib",
    "copy",
    "csv",
    "dataclasses",
    "datetime",
    "decimal",
    "difflib",
    "email/message",
    "enum",
    "fileinput",
    "fnmatch",
    "fractions",
    "ftplib",
    "functools",
    "getpass",
    "gettext",
    "glob",
    "gzip",
    "hashlib",
    "heapq",
    "hmac",
    "http/client",
    "http/cookies",
    "http/server",
    "imaplib",
    "inspect",
    "ipaddress",
    "json/decoder",
    "json/encoder",
    "json/__init__",
    "locale",
    "logging/__init__",
    "logging/handlers",
    "mailbox",
    "mimetypes",
    "ntpath",
    "numbers",
    "operator",
    "optparse",
    "os",
    "pathlib",
    "pdb",
    "pickle",
    "platform",
    "plistlib",
    "posixpath",
    "pprint",
    "queue",
    "quopri",
    "random",
    "re/__init__",
    "sched",
    "secrets",
    "selectors",
    "shlex",
    "shutil",
    "smtplib",
    "socket",
    "socketserver",
    "statistics",
    "string",
    "subprocess",
    "tarfile",
    "tempfile",
    "textwrap",
    "threading",
    "timeit",
    "tokenize",
    "traceback",
    "turtle",
    "typing",
    "unittest/case",
    "urllib/parse",
    "urllib/request",
    "uuid",
    "warnings",
    "wave",
    "weakref",
    "webbrowser",
    "zipfile",
)
EN_STDLIB_MAX_BYTES = 450_000
ZH_WORDS = 6000


def refresh_en(dest: Path) -> None:
    """Write docstrings of STDLIB_MODULES (from this interpreter's stdlib source) to `dest`."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    chunks: list[str] = []
    size = 0
    for name in STDLIB_MODULES:
        tree = ast.parse((stdlib / f"{name}.py").read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) > 40 and doc.isascii():
                    chunks.append(doc.strip() + "\n\n")
                    size += len(chunks[-1])
        if size > EN_STDLIB_MAX_BYTES:
            break
    dest.write_text("".join(chunks), encoding="utf-8")


def refresh_zh(jieba_dict: Path, dest: Path) -> None:
    """Keep the ZH_WORDS most frequent all-CJK words of jieba's dict.txt ("word count tag" lines)."""
    rows = []
    for line in jieba_dict.read_text(encoding="utf-8").splitlines():
        word, count, *_ = line.split(" ")
        if all("\u4e00" <= ch <= "\u9fff" for ch in word):
            rows.append((-int(count), word))
    rows.sort()
    dest.write_text("".join(f"{w}\t{-c}\n" for c, w in rows[:ZH_WORDS]), encoding="utf-8")


def corpus() -> Iterator[str]:
    """Training texts: every .txt file line by line; .tsv word lists repeated ~log(count) times."""
    for path in sorted(CORPUS_DIR.iterdir()):
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".txt":
            yield from text.splitlines(keepends=True)
        elif path.suffix == ".tsv":
            for line in text.splitlines():
                word, count = line.split("\t")
                # Log weighting: frequent words merge first without drowning out the prose.
                yield from [word] * max(1, round(math.log(int(count), 4)))


def build() -> Tokenizer:
    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(GLM_SPLIT_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_SIZE,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    if tok.get_vocab_size() != BPE_SIZE:
        raise SystemExit(f"corpus too small: BPE vocab {tok.get_vocab_size()} != {BPE_SIZE}")
    # Add one at a time so ids follow GLM_ADDED_TOKENS order whatever the special flag.
    for content, special in GLM_ADDED_TOKENS:
        added = AddedToken(content, special=special, normalized=False)
        (tok.add_special_tokens if special else tok.add_tokens)([added])
    for i, (content, _) in enumerate(GLM_ADDED_TOKENS):
        assert tok.token_to_id(content) == BPE_SIZE + i, content
    assert tok.get_vocab_size(with_added_tokens=True) == VOCAB_SIZE
    return tok


def serialize(tok: Tokenizer) -> str:
    return tok.to_str(pretty=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT_PATH)
    ap.add_argument("--check", action="store_true", help="compare a fresh build with --out, write nothing")
    ap.add_argument("--refresh-en", action="store_true", help="re-extract en_stdlib_docstrings.txt first")
    ap.add_argument("--refresh-zh", type=Path, metavar="JIEBA_DICT", help="rebuild zh_jieba_words.tsv first")
    args = ap.parse_args(argv)
    if args.refresh_en:
        refresh_en(CORPUS_DIR / "en_stdlib_docstrings.txt")
    if args.refresh_zh:
        refresh_zh(args.refresh_zh, CORPUS_DIR / "zh_jieba_words.tsv")
    text = serialize(build())
    if args.check:
        same = args.out.exists() and args.out.read_text(encoding="utf-8") == text
        print(f"{args.out}: {'up to date' if same else 'DIFFERS from a fresh build'}")
        return 0 if same else 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out} ({VOCAB_SIZE} ids, {len(text)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
