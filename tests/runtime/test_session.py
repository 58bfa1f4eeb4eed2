"""The reference runtime's generation loop on the torch backend (embedded tiny model)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from autoglm_export.calibration import synthetic_screenshot
from autoglm_export.source import open_source
from autoglm_runtime.backends.torch_backend import TorchBackend
from autoglm_runtime.errors import InputError
from autoglm_runtime.sampling import Sampler, SamplingConfig
from autoglm_runtime.session import Session


@pytest.fixture(scope="module")
def tiny():
    return open_source(preset="tiny")


@pytest.fixture
def session(tiny):
    return Session(TorchBackend(tiny.model), tiny.tokenizer_path, tiny.spec)


def _clip(rate=16000, seconds=1.0):
    t = np.arange(int(rate * seconds)) / rate
    return (0.4 * np.sin(2 * np.pi * 330 * t)).astype(np.float32)


def test_greedy_generation_equals_full_forward_argmax(session, tiny):
    """Each generated token is the argmax of a fresh, cache-free forward over prompt + tokens so far."""
    result = session.generate("打开设置", image=synthetic_screenshot(), audio=_clip(), max_new_tokens=6)
    prepared = session.prepare(
        session.messages_for("打开设置", image=1, audio=1, system=None), [synthetic_screenshot()], [_clip()]
    )
    _ids, pos, delta = prepared.inputs.input_ids, prepared.inputs.position_ids, prepared.inputs.rope_delta
    model = tiny.model
    embeds = torch.from_numpy(prepared.embeds)
    for i, token in enumerate(result.token_ids):
        model.reset_cache()
        n = embeds.shape[1]
        with torch.no_grad():
            logits = model.text_decoder(embeds, torch.arange(n), torch.from_numpy(pos))
        assert int(logits[0, -1].argmax()) == token, f"step {i}"
        tok_embed = model.token_embedding(torch.tensor([[token]]))
        embeds = torch.cat([embeds, tok_embed], dim=1)
        step_pos = torch.full((3, 1), n + delta)
        pos = np.concatenate([pos, step_pos.numpy()], axis=1)


def test_streamed_text_equals_result(session):
    pieces = []
    result = session.generate("search Taobao for a phone case", max_new_tokens=12, on_text=pieces.append)
    assert "".join(pieces) == result.text
    assert result.prompt_tokens > 5 and result.token_ids
    # the trained model may end early with an EOS (then the EOS is the last token and the only one);
    # otherwise it generated exactly max_new_tokens, none of them an EOS
    eos = set(session.spec.eos_token_ids)
    ended = [i for i, tok in enumerate(result.token_ids) if tok in eos]
    if result.stop_reason == "eos":
        assert ended == [len(result.token_ids) - 1] and len(result.token_ids) <= 12
    else:
        assert result.stop_reason == "max_new_tokens" and len(result.token_ids) == 12 and not ended


class ForceEos:
    """Backend wrapper whose decoder emits ``eos_id`` from the 3rd generated token on, and no other
    EOS id before (the trained tiny model ends sentences with <|endoftext|> by itself)."""

    def __init__(self, inner, eos_id, other_eos=()):
        self.inner, self.eos_id, self.other_eos, self.calls = inner, eos_id, list(other_eos), 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def text_decoder(self, embeds, cache_position, position_ids):
        logits = self.inner.text_decoder(embeds, cache_position, position_ids)
        self.calls += 1
        logits[..., self.other_eos] = -1e9
        if self.calls >= 3:
            logits[..., self.eos_id] = 1e9
        return logits


def test_stops_on_any_eos(tiny):
    eos = tiny.spec.eos_token_ids[-1]
    session = Session(
        ForceEos(TorchBackend(tiny.model), eos, tiny.spec.eos_token_ids[:-1]), tiny.tokenizer_path, tiny.spec
    )
    result = session.generate("hi", max_new_tokens=20)
    assert result.stop_reason == "eos" and result.token_ids[-1] == eos and len(result.token_ids) == 3


def test_prompt_too_long_fails_before_any_work(tiny):
    class Untouchable:
        def __getattr__(self, name):
            raise AssertionError(f"backend.{name} called")

    session = Session(Untouchable(), tiny.tokenizer_path, tiny.spec)
    with pytest.raises(InputError, match="exceeds the context limit of 512"):
        session.generate("hello " * 300, max_new_tokens=8)
    with pytest.raises(InputError, match="exceeds the context limit"):
        session.generate("hello", max_new_tokens=600)


def test_chunked_prefill_matches_whole(tiny):
    whole = Session(TorchBackend(tiny.model), tiny.tokenizer_path, tiny.spec)
    chunked = Session(TorchBackend(tiny.model), tiny.tokenizer_path, tiny.spec, prefill_chunk=7)
    messages = whole.messages_for("describe the screen", image=1, audio=None, system="You are a phone agent.")
    prepared = whole.prepare(messages, [synthetic_screenshot()])
    np.testing.assert_allclose(chunked.prefill(prepared), whole.prefill(prepared), rtol=0, atol=1e-5)


def test_sampling_is_seeded_and_top_p_narrows(session):
    a = session.generate("hi", max_new_tokens=8, sampling=SamplingConfig(temperature=1.0, top_p=0.9, seed=7))
    b = session.generate("hi", max_new_tokens=8, sampling=SamplingConfig(temperature=1.0, top_p=0.9, seed=7))
    assert a.token_ids == b.token_ids
    greedy = session.generate("hi", max_new_tokens=8)
    nucleus_of_one = session.generate(
        "hi", max_new_tokens=8, sampling=SamplingConfig(temperature=1.0, top_p=1e-9, seed=3)
    )
    assert nucleus_of_one.token_ids == greedy.token_ids


def test_sampler_distribution():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    sampler = Sampler(SamplingConfig(temperature=1.0, top_p=0.75, seed=0))
    draws = np.bincount([sampler(logits) for _ in range(4000)], minlength=4) / 4000
    assert draws[2] == 0 and draws[3] == 0  # outside the 0.75 nucleus (0.5 + 0.3 reaches it)
    assert abs(draws[0] - 0.5 / 0.8) < 0.03
    assert Sampler(SamplingConfig())(logits) == 0


def test_audio_without_audio_tower_is_rejected():
    src = open_source(preset="tiny", with_audio=False)
    session = Session(TorchBackend(src.model), src.tokenizer_path, src.spec)
    with pytest.raises(InputError, match="no audio tower"):
        session.generate("hi", audio=_clip())
