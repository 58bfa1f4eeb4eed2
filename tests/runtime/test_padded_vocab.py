"""A model whose embedding is padded past its tokenizer (GLM-4.1V: 151552 rows, 151352 tokens) never
produces an id the tokenizer lacks, whatever the logits of the padding rows."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from autoglm_export.source import open_source
from autoglm_runtime.backends.torch_backend import TorchBackend
from autoglm_runtime.sampling import Sampler, SamplingConfig
from autoglm_runtime.session import Session
from autoglm_runtime.tokenizer import Tokenizer

PAD = 200


class PaddedLogits:
    """The tiny model with PAD extra vocabulary rows whose logits beat every real token."""

    def __init__(self, backend):
        self.inner = backend

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def text_decoder(self, embeds, cache_position, position_ids):
        logits = self.inner.text_decoder(embeds, cache_position, position_ids)
        pad = np.full(logits.shape[:-1] + (PAD,), logits.max() + 10.0, dtype=logits.dtype)
        return np.concatenate([logits, pad], axis=-1)


@pytest.fixture(scope="module")
def tiny():
    return open_source(preset="tiny", with_audio=False)


@pytest.mark.parametrize(
    "sampling",
    [SamplingConfig(), SamplingConfig(temperature=1.0, top_p=0.9, seed=1), SamplingConfig(temperature=2.0, seed=2)],
)
def test_generation_never_samples_padding(tiny, sampling):
    spec = dataclasses.replace(tiny.spec, vocab_size=tiny.spec.vocab_size + PAD)
    session = Session(PaddedLogits(TorchBackend(tiny.model)), tiny.tokenizer_path, spec)
    result = session.generate("打开设置", max_new_tokens=8, sampling=sampling)
    n = Tokenizer(tiny.tokenizer_path).vocab_size
    assert result.token_ids and max(result.token_ids) < n
    # with the padding rows masked, greedy is exactly the unpadded model's greedy
    if sampling.temperature == 0:
        plain = Session(TorchBackend(tiny.model), tiny.tokenizer_path, tiny.spec).generate("打开设置", max_new_tokens=8)
        assert result.token_ids == plain.token_ids


def test_sampler_masks_ids_past_allowed():
    logits = np.array([0.0, 1.0, 2.0, 50.0, 60.0])  # ids 3 and 4 are padding
    allowed = np.array([True, True, True])
    assert Sampler(SamplingConfig(), allowed)(logits) == 2
    hot = Sampler(SamplingConfig(temperature=5.0, seed=0), allowed)
    assert max(hot(logits) for _ in range(500)) <= 2
    assert Sampler(SamplingConfig())(logits) == 4  # unmasked, for contrast


def test_sampler_masks_holes():
    logits = np.array([0.0, 9.0, 1.0])
    assert Sampler(SamplingConfig(), np.array([True, False, True]))(logits) == 2
    with pytest.raises(ValueError):
        Sampler(SamplingConfig(), np.array([False, False, False]))(logits)
