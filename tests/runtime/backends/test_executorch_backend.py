"""ExecuTorchBackend on a toy multi-method .pte with a KV-cache-like mutable buffer (seconds to export)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("executorch")
# Expected: the cache's initial value is not serialized (reset_cache zeroes it before use).
pytestmark = pytest.mark.filterwarnings("ignore:Mutation on a buffer")

from autoglm_runtime.backends.executorch_backend import ExecuTorchBackend
from autoglm_runtime.errors import BundleError

HIDDEN, VOCAB, CONTEXT, MAX_SEQ = 8, 16, 12, 4


class Toy(nn.Module):
    """Shaped like AutoGLM's components; the decoder 'attends' to cache slots 0..cache_position."""

    def __init__(self):
        super().__init__()
        self.patch = nn.Linear(6, HIDDEN)
        self.embed = nn.Embedding(VOCAB, HIDDEN)
        self.head = nn.Linear(HIDDEN, VOCAB)
        self.register_buffer("cache", torch.zeros(CONTEXT, HIDDEN), persistent=False)
        self.register_buffer("slots", torch.arange(CONTEXT), persistent=False)

    def vision_encoder(self, pixel_values):
        return self.patch(pixel_values)

    def token_embedding(self, token_ids):
        return self.embed(token_ids)

    def text_decoder(self, inputs_embeds, cache_position, position_ids):
        self.cache.index_copy_(0, cache_position, inputs_embeds[0])
        mask = (self.slots[None, :] <= cache_position[:, None]).float()  # [S, CONTEXT]
        context = mask @ self.cache  # sum of the visible slots
        return self.head(inputs_embeds + context[None] + 0.01 * position_ids[0, :, None].float())

    def reset_cache(self):
        self.cache.zero_()
        return torch.zeros(1)


class Vision(nn.Module):
    """torch.export exports forward(): one wrapper per component. All hold the same Toy, so buffer FQNs match."""

    def __init__(self, toy):
        super().__init__()
        self.toy = toy

    def forward(self, pixel_values):
        return self.toy.vision_encoder(pixel_values)


class Embedding(Vision):
    def forward(self, token_ids):
        return self.toy.token_embedding(token_ids)


class Decoder(Vision):
    def forward(self, inputs_embeds, cache_position, position_ids):
        return self.toy.text_decoder(inputs_embeds, cache_position, position_ids)


class Reset(Vision):
    def forward(self):
        return self.toy.reset_cache()


def _export(path, toy, with_reset=True, with_step=False):
    from executorch.exir import ExecutorchBackendConfig, to_edge_transform_and_lower
    from executorch.exir.passes import MemoryPlanningPass

    seq = torch.export.Dim("seq", min=1, max=MAX_SEQ)
    e = torch.export.export
    programs = {
        "vision_encoder": e(Vision(toy), (torch.randn(5, 6),)),
        "token_embedding": e(Embedding(toy), (torch.zeros(1, 3, dtype=torch.long),), dynamic_shapes=({1: seq},)),
        "text_decoder": e(
            Decoder(toy),
            (torch.randn(1, 3, HIDDEN), torch.arange(3), torch.zeros(3, 3, dtype=torch.long)),
            dynamic_shapes=({1: seq}, {0: seq}, {1: seq}),
        ),
    }
    if with_reset:
        programs["reset_cache"] = e(Reset(toy), ())
    if with_step:  # the decoder at one token, static shapes, the same cache buffer
        step_inputs = (torch.randn(1, 1, HIDDEN), torch.zeros(1, dtype=torch.long), torch.zeros(3, 1, dtype=torch.long))
        programs["text_decoder_step"] = e(Decoder(toy), step_inputs)
    meta = {
        "get_max_seq_len": MAX_SEQ,
        "get_max_context_len": CONTEXT,
        "get_eos_ids": [3],
        "get_vocab_size": VOCAB,
        "use_kv_cache": True,
        "enable_dynamic_shape": True,
    }
    edge = to_edge_transform_and_lower(programs, constant_methods=meta)
    # share_mutable_buffers: the cache gets its own arena, so other methods cannot overwrite it.
    config = ExecutorchBackendConfig(
        memory_planning_pass=MemoryPlanningPass(alloc_graph_input=False, share_mutable_buffers=True)
    )
    path.write_bytes(edge.to_executorch(config).buffer)
    return path


@pytest.fixture(scope="module")
def toy_pte(tmp_path_factory):
    torch.manual_seed(0)
    toy = Toy().eval()
    return toy, _export(tmp_path_factory.mktemp("et") / "toy.pte", toy)


def _eager(toy, embeds, start):
    n = embeds.shape[1]
    with torch.no_grad():
        return toy.text_decoder(
            torch.from_numpy(embeds), torch.arange(start, start + n), torch.arange(start, start + n).expand(3, n)
        ).numpy()


def _decode(backend, ids, start):
    n = len(ids)
    embeds = backend.token_embedding(np.array([ids]))
    pos = np.arange(start, start + n)
    return embeds, backend.text_decoder(embeds, pos, np.broadcast_to(pos, (3, n)).copy())


def test_metadata_and_components(toy_pte):
    toy, path = toy_pte
    b = ExecuTorchBackend(path)
    assert b.metadata() == {
        "get_max_seq_len": MAX_SEQ,
        "get_max_context_len": CONTEXT,
        "get_eos_ids": [3],
        "get_vocab_size": VOCAB,
        "use_kv_cache": True,
        "enable_dynamic_shape": True,
    }
    assert b.max_seq_len == MAX_SEQ and b.has_reset_method
    pix = np.random.default_rng(0).standard_normal((5, 6)).astype(np.float32)
    with torch.no_grad():
        np.testing.assert_allclose(b.vision_encoder(pix), toy.vision_encoder(torch.from_numpy(pix)).numpy(), atol=1e-6)
    with pytest.raises(BundleError, match="without an audio encoder"):
        b.audio_encoder(np.zeros((1, 128, 10), np.float32))


def test_cache_persists_across_methods_and_reset_clears_it(toy_pte):
    toy, path = toy_pte
    b = ExecuTorchBackend(path)
    toy.reset_cache()
    # prompt of 6 > max_seq_len 4: the backend runs it as two chunks
    embeds, prefill = _decode(b, [1, 2, 3, 4, 5, 6], 0)
    np.testing.assert_allclose(prefill, _eager(toy, embeds, 0), atol=1e-5)
    kept = prefill.copy()
    # token_embedding runs between decoder calls, as in generation: the cache must survive it
    embeds, step = _decode(b, [7], 6)
    np.testing.assert_allclose(step, _eager(toy, embeds, 6), atol=1e-5)
    np.testing.assert_array_equal(prefill, kept)  # outputs are ours, not views of the runtime's arena

    b.reset()
    toy.reset_cache()
    embeds, step = _decode(b, [7], 6)  # only slot 6 is filled now
    np.testing.assert_allclose(step, _eager(toy, embeds, 6), atol=1e-5)
    b2 = ExecuTorchBackend(path)  # a second backend on the same file is independent: the program's own arenas
    b2.reset()


def test_errors(tmp_path, toy_pte):
    with pytest.raises(BundleError, match="no such ExecuTorch program"):
        ExecuTorchBackend(tmp_path / "none.pte")
    (tmp_path / "junk.pte").write_bytes(b"not a program" * 10)
    with pytest.raises(BundleError, match="junk.pte: ExecuTorch cannot load"):
        ExecuTorchBackend(tmp_path / "junk.pte")
    b = ExecuTorchBackend(toy_pte[1])
    with pytest.raises(BundleError, match="vision_encoder"):
        b.vision_encoder(np.zeros((7, 6), np.float32))  # the tower has a fixed shape


def test_from_bundle_checks_metadata_against_the_manifest(tmp_path, toy_pte):
    from autoglm_export.bundle import BundleWriter
    from autoglm_runtime.bundle import open_bundle
    from autoglm_runtime.preprocess import ImageSpec
    from autoglm_runtime.spec import ModelSpec

    spec = ModelSpec(
        max_context=CONTEXT,
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        eos_token_ids=(3,),
        image_token_id=15,
        image=ImageSpec(height=28, width=28),
    )

    def make(name, vocab):
        with BundleWriter(tmp_path / name) as w:
            w.copy("model.pte", toy_pte[1])
            w.finish({"target": "executorch", "runtime": dict(spec.to_dict(), vocab_size=vocab)})
        return open_bundle(tmp_path / name)

    assert ExecuTorchBackend.from_bundle(make("good", VOCAB)).max_seq_len == MAX_SEQ
    with pytest.raises(BundleError, match="get_vocab_size is 16 but manifest.json says 4096"):
        ExecuTorchBackend.from_bundle(make("bad", 4096))


def test_missing_external_weights_file_is_named(toy_pte, tmp_path):
    with pytest.raises(BundleError, match=r"model\.ptd: no such ExecuTorch weights file"):
        ExecuTorchBackend(toy_pte[1], tmp_path / "model.ptd")


def test_single_token_calls_go_to_the_step_method_which_shares_the_cache(tmp_path):
    torch.manual_seed(1)
    toy = Toy().eval()
    b = ExecuTorchBackend(_export(tmp_path / "step.pte", toy, with_step=True))
    assert b.has_step_method
    calls = []
    run = b.program.run
    b.program.run = lambda name, *a: calls.append((name, a[0].shape[1] if a else 0)) or run(name, *a)
    b.reset()
    toy.reset_cache()
    # 5 tokens in chunks of 4: the trailing single-token chunk is a step too
    embeds, prefill = _decode(b, [1, 2, 3, 4, 5], 0)
    np.testing.assert_allclose(prefill, _eager(toy, embeds, 0), atol=1e-5)
    embeds, step = _decode(b, [7], 5)  # sees the 5 slots text_decoder and the step wrote
    np.testing.assert_allclose(step, _eager(toy, embeds, 5), atol=1e-5)
    decoder_calls = [c for c in calls if c[0].startswith("text_decoder")]
    assert decoder_calls == [("text_decoder", 4), ("text_decoder_step", 1), ("text_decoder_step", 1)]
