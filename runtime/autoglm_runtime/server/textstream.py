"""Streaming text filters: stop strings, and the <think>...</think> reasoning split.

Both see text in arbitrary pieces (one token's worth at a time) and must act as if they saw the
whole string, so each holds back a tail that could be the start of what it looks for.
"""

from __future__ import annotations

from collections.abc import Sequence

THINK_START, THINK_END = "<think>", "</think>"


def _partial_tail(text: str, needles: Sequence[str]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of one of ``needles``."""
    best = 0
    for needle in needles:
        for k in range(min(len(needle) - 1, len(text)), best, -1):
            if text.endswith(needle[:k]):
                best = k
                break
    return best


class StopMatcher:
    """Ends the text before the first occurrence of any stop string (OpenAI's ``stop``)."""

    def __init__(self, stops: Sequence[str]):
        self.stops = [s for s in stops if s]
        self.buffer = ""
        self.stopped = False

    def push(self, text: str) -> str:
        """The text that is now certain to be output; sets ``stopped`` when a stop string appeared."""
        if self.stopped:
            return ""
        if not self.stops:
            return text
        self.buffer += text
        hits = [i for i in (self.buffer.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self.buffer, self.stopped = self.buffer[: min(hits)], "", True
            return out
        keep = _partial_tail(self.buffer, self.stops)
        out, self.buffer = (
            self.buffer[: len(self.buffer) - keep],
            self.buffer[len(self.buffer) - keep :],
        )
        return out

    def flush(self) -> str:
        out, self.buffer = ("" if self.stopped else self.buffer), ""
        return out


class ReasoningSplitter:
    """Routes text inside ``<think>...</think>`` to reasoning and the rest to content, dropping the
    two markers, as vLLM's GLM reasoning parser does. A reply cut off before ``</think>`` keeps
    what it had as reasoning."""

    def __init__(self):
        self.in_think = False
        self.buffer = ""

    def push(self, text: str) -> tuple[str, str]:
        """(reasoning, content) that is now certain."""
        self.buffer += text
        reasoning, content = [], []
        while True:
            marker = THINK_END if self.in_think else THINK_START
            i = self.buffer.find(marker)
            if i < 0:
                break
            (reasoning if self.in_think else content).append(self.buffer[:i])
            self.buffer = self.buffer[i + len(marker) :]
            self.in_think = not self.in_think
        keep = _partial_tail(self.buffer, [THINK_END if self.in_think else THINK_START])
        (reasoning if self.in_think else content).append(self.buffer[: len(self.buffer) - keep])
        self.buffer = self.buffer[len(self.buffer) - keep :]
        return "".join(reasoning), "".join(content)

    def flush(self) -> tuple[str, str]:
        out, self.buffer = self.buffer, ""
        return (out, "") if self.in_think else ("", out)
