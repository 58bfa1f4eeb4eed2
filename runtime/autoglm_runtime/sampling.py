"""Next-token selection: greedy, or temperature + nucleus (top-p) sampling, after optional
frequency / presence penalties.

Penalties follow OpenAI's definition, as vLLM implements it: with c[j] the number of times token j
was already generated in this completion (prompt tokens do not count),
``logit[j] -= c[j] * frequency_penalty + (c[j] > 0) * presence_penalty``, applied to the raw
logits before temperature, top-p or greedy selection.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InputError

PENALTY_RANGE = (-2.0, 2.0)  # OpenAI's documented range


class SamplingError(InputError, ValueError):
    """Sampling settings out of range (an InputError for the CLI, a ValueError for older callers)."""


@dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0
    seed: int | None = 0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0

    def __post_init__(self):
        if self.temperature < 0:
            raise SamplingError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise SamplingError(f"top_p must be in (0, 1], got {self.top_p}")
        lo, hi = PENALTY_RANGE
        for name in ("frequency_penalty", "presence_penalty"):
            value = getattr(self, name)
            if not lo <= value <= hi:
                raise SamplingError(f"{name} must be in [{lo:g}, {hi:g}], got {value}")


class Sampler:
    """One completion's sampler: it remembers the tokens it picked, for the penalties.

    ``allowed``: which ids may be produced (True per id), usually the tokenizer's ids. A model's
    embedding is often padded past its tokenizer (GLM-4.1V: 151552 rows, 151352 tokens); those rows
    get logits like any other but name no token, so they are masked out before choosing."""

    def __init__(self, config: SamplingConfig, allowed: np.ndarray | None = None):
        self.config = config
        self.rng = np.random.default_rng(config.seed)
        self.allowed = None if allowed is None else np.asarray(allowed, dtype=bool)
        self._masks: dict[int, np.ndarray] = {}
        self.counts: np.ndarray | None = None  # per-token count of generated tokens, sized on first use

    def _mask(self, n: int) -> np.ndarray:
        """allowed cut or padded (with False) to ``n`` logits."""
        mask = self._masks.get(n)
        if mask is None:
            mask = np.zeros(n, dtype=bool)
            m = min(n, len(self.allowed))
            mask[:m] = self.allowed[:m]
            if not mask.any():
                raise ValueError(f"none of the {n} logits is an allowed token id")
            self._masks[n] = mask
        return mask

    def penalized(self, logits: np.ndarray) -> np.ndarray:
        """The logits after frequency / presence penalties (float64, a copy when penalties apply)."""
        logits = np.asarray(logits, dtype=np.float64)
        cfg = self.config
        if self.counts is None or not (cfg.frequency_penalty or cfg.presence_penalty):
            return logits
        return logits - cfg.frequency_penalty * self.counts - cfg.presence_penalty * (self.counts > 0)

    def __call__(self, logits: np.ndarray) -> int:
        """logits [vocab] -> token id."""
        scores = self.penalized(logits)
        if self.allowed is not None:
            scores = np.where(self._mask(len(scores)), scores, -np.inf)
        token = self._select(scores)
        if self.counts is None:
            self.counts = np.zeros(np.shape(logits)[-1], dtype=np.float64)
        self.counts[token] += 1
        return token

    def _select(self, logits: np.ndarray) -> int:
        if self.config.temperature == 0:
            return int(np.argmax(logits))
        z = logits / self.config.temperature
        probs = np.exp(z - z.max())
        probs /= probs.sum()
        if self.config.top_p < 1.0:
            order = np.argsort(-probs, kind="stable")
            cumulative = np.cumsum(probs[order])
            # keep the smallest prefix whose mass reaches top_p (always at least one token)
            keep = order[: int(np.searchsorted(cumulative, self.config.top_p) + 1)]
            mask = np.zeros_like(probs)
            mask[keep] = probs[keep]
            probs = mask / mask.sum()
        return int(self.rng.choice(len(probs), p=probs))
