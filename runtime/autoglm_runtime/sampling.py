"""Next-token selection: greedy, or temperature + nucleus (top-p) sampling."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InputError


class SamplingError(InputError, ValueError):
    """Sampling settings out of range (an InputError for the CLI, a ValueError for older callers)."""


@dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0
    seed: int | None = 0

    def __post_init__(self):
        if self.temperature < 0:
            raise SamplingError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise SamplingError(f"top_p must be in (0, 1], got {self.top_p}")


class Sampler:
    """``allowed``: which ids may be produced (True per id), usually the tokenizer's ids. A model's
    embedding is often padded past its tokenizer (GLM-4.1V: 151552 rows, 151352 tokens); those rows
    get logits like any other but name no token, so they are masked out before choosing."""

    def __init__(self, config: SamplingConfig, allowed: np.ndarray | None = None):
        self.config = config
        self.rng = np.random.default_rng(config.seed)
        self.allowed = None if allowed is None else np.asarray(allowed, dtype=bool)
        self._masks: dict[int, np.ndarray] = {}

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

    def __call__(self, logits: np.ndarray) -> int:
        """logits [vocab] -> token id."""
        logits = np.asarray(logits, dtype=np.float64)
        if self.allowed is not None:
            logits = np.where(self._mask(len(logits)), logits, -np.inf)
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
