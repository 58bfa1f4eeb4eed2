"""``OnnxBackend`` keeps the KV cache in IO-bound buffers; that must not change a single bit.

One tiny int4 export (no validation: only the backend is under test), then the same prefill
chunks and decode steps through the bound path and through ``InferenceSession.run`` with the
cache as numpy feeds, including switching between the two in mid-conversation.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from autoglm_export.pipeline import export_bundle
from autoglm_export.request import ModelRequest
from autoglm_export.targets.onnx.export import OnnxOptions
from autoglm_runtime.backends.onnx_backend import OnnxBackend
from autoglm_runtime.bundle import open_bundle
from autoglm_runtime.errors import BundleError


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("iobinding") / "onnx"
    path, _ = export_bundle("onnx", ModelRequest(), OnnxOptions(out=out, validate=False))
    return open_bundle(path)


def _conversation(
    backend: OnnxBackend, hidden: int, modes: list[bool]
) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
    """A 9-token prefill in two chunks, then one decode step per entry of ``modes`` (io_binding on/off)
    with greedy tokens; returns every call's logits and a copy of the final cache."""
    rng = np.random.default_rng(0)
    embeds = rng.standard_normal((1, 9, hidden)).astype(np.float32)
    backend.io_binding = modes[0]
    backend.reset()
    logits = []
    for start, stop in ((0, 5), (5, 9)):
        pos = np.arange(start, stop)
        logits.append(backend.text_decoder(embeds[:, start:stop], pos, np.stack([pos, pos // 2, pos % 3])))
    token = np.array([[int(logits[-1][0, -1].argmax())]])
    for step, mode in enumerate(modes):
        backend.io_binding = mode
        pos = np.array([9 + step])
        logits.append(backend.text_decoder(backend.token_embedding(token), pos, np.stack([pos] * 3)))
        token = np.array([[int(logits[-1][0, -1].argmax())]])
    return logits, {k: v.copy() for k, v in backend.cache.items()}


def test_bound_decode_equals_unbound_bit_for_bit(bundle):
    backend = OnnxBackend.from_bundle(bundle)
    assert backend.io_binding  # the default
    # the exporter's decoder (GroupQueryAttention) says its cache may be updated in place: one buffer set
    assert backend.cache_in_place and len(backend._bound.sides) == 1
    hidden = bundle.spec.hidden_size
    unbound, unbound_cache = _conversation(backend, hidden, [False] * 6)
    bound, bound_cache = _conversation(backend, hidden, [True] * 6)
    mixed, mixed_cache = _conversation(backend, hidden, [True, True, False, True, False, False])
    for got in (bound, mixed):
        assert len(got) == len(unbound)
        for a, b in zip(got, unbound):
            assert a.shape == b.shape and a.dtype == b.dtype
            np.testing.assert_array_equal(a, b)
    for cache in (bound_cache, mixed_cache):
        assert cache.keys() == unbound_cache.keys()
        for name in cache:
            np.testing.assert_array_equal(cache[name], unbound_cache[name])
    assert not any(c[0, :, 15:].any() for c in unbound_cache.values())  # 15 positions written, no more


def test_bound_logits_are_fresh_arrays_and_reset_clears_the_bound_cache(bundle):
    backend = OnnxBackend.from_bundle(bundle)
    hidden = bundle.spec.hidden_size
    x = np.ones((1, 1, hidden), np.float32)
    first = backend.text_decoder(x, np.array([0]), np.zeros((3, 1), np.int64))
    kept = first.copy()
    second = backend.text_decoder(x, np.array([1]), np.ones((3, 1), np.int64))
    assert second is not first
    np.testing.assert_array_equal(first, kept)  # the next call did not write into the caller's logits
    assert any(c.any() for c in backend.cache.values())
    backend.reset()
    assert not any(c.any() for c in backend.cache.values())
    np.testing.assert_array_equal(backend.text_decoder(x, np.array([0]), np.zeros((3, 1), np.int64)), kept)


def test_new_tokens_must_fill_consecutive_slots(bundle):
    """GroupQueryAttention writes a call's tokens at the slots ending at its last position: a gap is refused."""
    backend = OnnxBackend.from_bundle(bundle)
    x = np.ones((1, 2, bundle.spec.hidden_size), np.float32)
    with pytest.raises(BundleError, match="not consecutive"):
        backend.text_decoder(x, np.array([0, 2]), np.zeros((3, 2), np.int64))


def test_a_decoder_without_the_in_place_key_gets_two_buffer_sets(bundle, tmp_path):
    """Bundles exported before the key existed: each call reads one set and writes the other; same logits."""
    import onnx

    files = {c: bundle.path(m["file"]) for c, m in bundle.manifest["models"].items()}
    proto = onnx.load(str(files["text_decoder"]))
    del proto.metadata_props[:]
    files["text_decoder"] = tmp_path / "text_decoder.onnx"
    onnx.save(proto, str(files["text_decoder"]))
    old = OnnxBackend(files)
    assert not old.cache_in_place and len(old._bound.sides) == 2
    hidden = bundle.spec.hidden_size
    want, _ = _conversation(OnnxBackend.from_bundle(bundle), hidden, [True] * 4)
    got, _ = _conversation(old, hidden, [True] * 4)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)
