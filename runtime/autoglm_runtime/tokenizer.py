"""Thin wrapper over a `tokenizers` tokenizer.json, plus a UTF-8-safe streaming detokenizer.

GLM-4.1V's tokenizer is byte-level BPE (GPT-2 style byte alphabet, ByteLevel decoder), so a token can
end in the middle of a multi-byte character; Chinese characters are 3 UTF-8 bytes and routinely span
two tokens. `StreamDecoder` therefore works on bytes and only emits complete characters.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterable, Iterator
from functools import lru_cache
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer as _HFTokenizer

from autoglm_runtime.errors import InputError

# GLM added tokens, in id order, as (content, special). GLM-4.1V-9B-Thinking puts them after its BPE
# ranks: <|endoftext|>=151329 ... <|image|>=151343, <|video|>=151344 (transformers Glm4vConfig defaults,
# tests/models/glm4v/test_modeling_glm4v.py expected ids [151331, 151333, 151336, 198, 151339, 151343],
# GLM-4 tokenizer's special_tokens map). Its eos ids are [151329, 151336, 151338, 151348] with
# 151348 = "</answer>" (generation_config.json), so 151345..151347 are taken to be <think>, </think>,
# <answer> (not independently confirmed). <think>/<answer> are added but NOT special: transformers'
# GLM-4.1V integration test decodes with skip_special_tokens=True and still sees "<think>".
# GLM-4.1V has no audio tokens; the three audio tokens are this project's, for the GLM-ASR tower.
GLM_ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("[MASK]", True),
    ("[gMASK]", True),
    ("[sMASK]", True),
    ("<sop>", True),
    ("<eop>", True),
    ("<|system|>", True),
    ("<|user|>", True),
    ("<|assistant|>", True),
    ("<|observation|>", True),
    ("<|begin_of_image|>", True),
    ("<|end_of_image|>", True),
    ("<|begin_of_video|>", True),
    ("<|end_of_video|>", True),
    ("<|image|>", True),
    ("<|video|>", True),
    ("<think>", False),
    ("</think>", False),
    ("<answer>", False),
    ("</answer>", False),
    ("<|begin_of_audio|>", True),
    ("<|end_of_audio|>", True),
    ("<|audio|>", True),
)
GLM_SPECIAL_TOKENS: tuple[str, ...] = tuple(tok for tok, _ in GLM_ADDED_TOKENS)


@lru_cache(maxsize=1)
def _byte_level_decode_table() -> dict[str, int]:
    """Inverse of GPT-2's bytes_to_unicode: the printable char ByteLevel uses for each byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars)}


class Tokenizer:
    """A tokenizer.json loaded with `tokenizers`; never adds special tokens on its own."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self._tk = _HFTokenizer.from_file(str(self.path))
        except Exception as exc:  # tokenizers raises plain Exception for missing/corrupt files
            raise InputError(f"cannot load tokenizer {self.path}: {exc}") from exc
        self._added = self._tk.get_added_tokens_decoder()  # id -> AddedToken
        decoder = json.loads(self._tk.to_str()).get("decoder") or {}
        self._byte_level = decoder.get("type") == "ByteLevel"
        self._bytes_cache: dict[int, bytes] = {}
        self._known: np.ndarray | None = None

    @classmethod
    def from_file(cls, path: str | Path) -> Tokenizer:
        return cls(path)

    @property
    def vocab_size(self) -> int:
        return self._tk.get_vocab_size(with_added_tokens=True)

    def known_ids(self) -> np.ndarray:
        """Boolean mask over 0..max id: True where the tokenizer has a token (ids may have holes)."""
        if self._known is None:
            ids = np.fromiter(self._tk.get_vocab(with_added_tokens=True).values(), dtype=np.int64)
            self._known = np.zeros(int(ids.max()) + 1 if ids.size else 0, dtype=bool)
            self._known[ids] = True
        return self._known

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`. Special-token strings inside it (e.g. "<|user|>") become their ids."""
        return self._tk.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        return self._tk.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int:
        tid = self._tk.token_to_id(token)
        if tid is None:
            raise InputError(f"tokenizer {self.path} has no token {token!r}")
        return tid

    def id_to_token(self, token_id: int) -> str:
        tok = self._tk.id_to_token(token_id)
        if tok is None:
            raise InputError(f"token id {token_id} is outside tokenizer {self.path} (size {self.vocab_size})")
        return tok

    def special_ids(self) -> dict[str, int]:
        """The GLM special/added tokens this tokenizer has, name -> id."""
        found = {tok: self._tk.token_to_id(tok) for tok in GLM_SPECIAL_TOKENS}
        return {tok: tid for tok, tid in found.items() if tid is not None}

    def is_special(self, token_id: int) -> bool:
        added = self._added.get(token_id)
        return added is not None and added.special

    def token_bytes(self, token_id: int) -> bytes:
        """The raw UTF-8 bytes a token stands for (added tokens: their text)."""
        cached = self._bytes_cache.get(token_id)
        if cached is not None:
            return cached
        added = self._added.get(token_id)
        if added is not None:
            out = added.content.encode("utf-8")
        else:
            if not self._byte_level:
                raise InputError(f"tokenizer {self.path} is not byte-level; streaming decode needs ByteLevel")
            table = _byte_level_decode_table()
            out = bytes(table[c] for c in self.id_to_token(token_id))
        self._bytes_cache[token_id] = out
        return out


class StreamDecoder:
    """Turns token ids into text deltas as they arrive, never splitting a UTF-8 character.

    A token that ends inside a character yields "" until the character completes; invalid bytes
    become U+FFFD. Call `finish()` at the end to flush a dangling partial character.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = False) -> None:
        self._tok = tokenizer
        self._skip_special = skip_special_tokens
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        if self._skip_special and self._tok.is_special(token_id):
            return ""
        return self._utf8.decode(self._tok.token_bytes(token_id))

    def finish(self) -> str:
        return self._utf8.decode(b"", final=True)

    def stream(self, ids: Iterable[int]) -> Iterator[str]:
        """Non-empty deltas for `ids`, then whatever `finish()` flushes."""
        for tid in ids:
            delta = self.push(tid)
            if delta:
                yield delta
        tail = self.finish()
        if tail:
            yield tail
