"""What the server needs from the runtime: prefix reuse in Session, OpenAI penalties in Sampler,
and the streaming text filters (stop strings, reasoning split)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from autoglm_export.calibration import synthetic_screenshot
from autoglm_export.source import open_source
from autoglm_runtime.backends.torch_backend import TorchBackend
from autoglm_runtime.prompt import Message
from autoglm_runtime.sampling import Sampler, SamplingConfig
from autoglm_runtime.server.textstream import ReasoningSplitter, StopMatcher
from autoglm_runtime.session import Session


@pytest.fixture(scope="module")
def tiny():
    return open_source(preset="tiny")


class RowCounter:
    """Counts the rows the decoder is asked to compute."""

    def __init__(self, inner):
        self.inner, self.rows, self.resets = inner, 0, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def text_decoder(self, embeds, cache_position, position_ids):
        self.rows += embeds.shape[1]
        return self.inner.text_decoder(embeds, cache_position, position_ids)

    def reset(self):
        self.resets += 1
        self.inner.reset()


SYSTEM = "You are a phone agent. Answer with <think>...</think><answer>do(...)</answer>."


def agent_turns(reply: str):
    """Two requests as the phone agent sends them: the first screenshot is dropped from history."""
    first = [
        Message("system", SYSTEM),
        Message("user", [{"type": "image"}, {"type": "text", "text": "打开微信"}]),
    ]
    second = [
        Message("system", SYSTEM),
        Message("user", [{"type": "text", "text": "打开微信"}]),
        Message("assistant", reply),
        Message("user", [{"type": "image"}, {"type": "text", "text": "** Screen Info **"}]),
    ]
    return first, second


def screenshot(shade: int) -> Image.Image:
    img = synthetic_screenshot()
    img.paste((shade, 40, 90), (0, 0, 40, 40))
    return img


def run_turns(tiny, reuse: bool):
    backend = RowCounter(TorchBackend(tiny.model))
    session = Session(backend, tiny.tokenizer_path, tiny.spec, prefill_chunk=16, reuse_prefix=reuse)
    first, _ = agent_turns("")
    a = session.generate(first, image=screenshot(10), max_new_tokens=6, keep_logits=True)
    _, second = agent_turns(a.text)
    rows_before = backend.rows
    b = session.generate(second, image=screenshot(200), max_new_tokens=6, keep_logits=True)
    return a, b, backend.rows - rows_before, session


def test_prefix_reuse_is_exact_and_prefills_only_the_rest(tiny):
    a0, b0, rows0, _ = run_turns(tiny, reuse=False)
    a1, b1, rows1, session = run_turns(tiny, reuse=True)
    assert (a1.token_ids, b1.token_ids) == (a0.token_ids, b0.token_ids)
    for ref, got in zip(b0.logits, b1.logits):
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-4)
    # the kept prefix: everything before the first turn's screenshot (system prompt, "<|user|>\n")
    first_ids = session.encode(agent_turns("")[0]).input_ids
    image_start = int(np.flatnonzero(first_ids == tiny.spec.image_token_id)[0]) - 1  # <|begin_of_image|>
    assert a1.reused_tokens == 0 and b1.reused_tokens == image_start > 20
    assert b0.reused_tokens == 0
    assert rows1 == rows0 - b1.reused_tokens  # only the rest of the prompt was prefilled


def test_prefix_reuse_sees_a_different_image(tiny):
    backend = RowCounter(TorchBackend(tiny.model))
    session = Session(backend, tiny.tokenizer_path, tiny.spec, reuse_prefix=True)
    first, _ = agent_turns("")
    session.generate(first, image=screenshot(10), max_new_tokens=2)
    same = session.generate(first, image=screenshot(10), max_new_tokens=2)
    other = session.generate(first, image=screenshot(250), max_new_tokens=2)
    n = len(session.encode(first).input_ids)
    image_rows = np.flatnonzero(session.encode(first).input_ids == tiny.spec.image_token_id)
    assert same.reused_tokens == n - 1  # everything but the last prompt row (its logits are needed)
    assert other.reused_tokens == image_rows[0]  # up to the first row of the changed image
    fresh = Session(TorchBackend(tiny.model), tiny.tokenizer_path, tiny.spec)
    assert fresh.generate(first, image=screenshot(250), max_new_tokens=2).token_ids == other.token_ids


def test_prefix_reuse_after_a_longer_generation_and_a_failure(tiny):
    session = Session(TorchBackend(tiny.model), tiny.tokenizer_path, tiny.spec, reuse_prefix=True)
    prompt = [Message("user", "search Taobao for a phone case")]
    long = session.generate(prompt, max_new_tokens=12)
    # a shorter prompt that is a prefix of what the cache holds (prompt + generated tokens)
    again = session.generate(prompt, max_new_tokens=12)
    assert again.token_ids == long.token_ids and again.reused_tokens == long.prompt_tokens - 1
    session.forget_cache()
    assert session.generate(prompt, max_new_tokens=3).reused_tokens == 0


def test_penalties_follow_openai_definition():
    logits = np.array([3.0, 2.9, 0.0, -1.0])
    greedy = Sampler(SamplingConfig(frequency_penalty=0.2))
    assert [greedy(logits) for _ in range(3)] == [
        0,
        1,
        0,
    ]  # 3.0-0.2 < 2.9; then 2.8 > 2.9-0.2
    s = Sampler(SamplingConfig(frequency_penalty=0.5, presence_penalty=0.25))
    s.counts = np.array([2.0, 0.0, 1.0, 0.0])  # token 0 generated twice, token 2 once
    counts = np.array([2, 0, 1, 0])
    expected = logits - 0.5 * counts - 0.25 * (counts > 0)
    np.testing.assert_allclose(s.penalized(logits), expected)
    assert np.array_equal(Sampler(SamplingConfig()).penalized(logits), logits)  # no penalties: untouched
    with pytest.raises(ValueError, match="frequency_penalty must be in"):
        SamplingConfig(frequency_penalty=2.5)


def test_presence_penalty_discourages_repeats_in_generation(tiny):
    session = Session(TorchBackend(tiny.model), tiny.tokenizer_path, tiny.spec)
    plain = session.generate("我们的时候", max_new_tokens=24)
    penalized = session.generate("我们的时候", max_new_tokens=24, sampling=SamplingConfig(presence_penalty=2.0))
    assert len(set(penalized.token_ids)) > len(set(plain.token_ids))


@pytest.mark.parametrize("seed", range(20))
def test_text_filters_do_not_depend_on_how_text_is_split(seed):
    rng = np.random.default_rng(seed)
    text = "".join(
        rng.choice(
            [
                "<think>",
                "</think>",
                "<th",
                "ink>",
                "abc",
                "中文",
                "STOP",
                "ST",
                "<",
                "/",
            ],
            12,
        )
    )
    cuts = sorted(rng.choice(len(text) + 1, size=rng.integers(0, 8), replace=False))
    pieces = [text[i:j] for i, j in zip([0, *cuts], [*cuts, len(text)])]

    stop = StopMatcher(["STOP", "</answer>"])
    streamed = "".join(stop.push(p) for p in pieces) + stop.flush()
    whole = text.split("STOP")[0] if "STOP" in text else text
    assert streamed == whole and stop.stopped == ("STOP" in text)

    splitter = ReasoningSplitter()
    outs = [splitter.push(p) for p in pieces] + [splitter.flush()]
    reasoning, content = "".join(r for r, _ in outs), "".join(c for _, c in outs)
    ref_r, ref_c, inside, rest = [], [], False, text
    while True:  # the reference: split the whole string at once
        marker = "</think>" if inside else "<think>"
        head, found, rest = rest.partition(marker)
        (ref_r if inside else ref_c).append(head)
        if not found:
            break
        inside = not inside
    assert (reasoning, content) == ("".join(ref_r), "".join(ref_c))
