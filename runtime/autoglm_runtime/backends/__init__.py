"""Backends run the four components on one runtime. Each has the same numpy-in/numpy-out methods:

``vision_encoder(pixel_values, size=None)`` (``size``: the image's bucket (height, width); None: the default size;
each bucket is its own method: ``preprocess.buckets.method_among``), ``audio_encoder(input_features)``, ``token_embedding(token_ids)``,
``text_decoder(embeds, cache_position, position_ids) -> logits`` and ``reset()`` (clear the KV cache).
"""

from typing import Protocol

import numpy as np


class Backend(Protocol):
    name: str

    def vision_encoder(self, pixel_values: np.ndarray, size: tuple[int, int] | None = None) -> np.ndarray: ...
    def audio_encoder(self, input_features: np.ndarray) -> np.ndarray: ...
    def token_embedding(self, token_ids: np.ndarray) -> np.ndarray: ...
    def text_decoder(self, embeds: np.ndarray, cache_position: np.ndarray, position_ids: np.ndarray) -> np.ndarray: ...
    def reset(self) -> None: ...


def backend_for_bundle(bundle) -> Backend:
    """The backend that runs a bundle's target (``manifest["target"]``)."""
    from ..errors import BundleError

    target = bundle.target
    if target == "executorch":
        from .executorch_backend import ExecuTorchBackend

        return ExecuTorchBackend.from_bundle(bundle)
    if target == "onnx":
        from .onnx_backend import OnnxBackend

        return OnnxBackend.from_bundle(bundle)
    if target == "coreml":
        from .coreml_backend import CoreMLBackend

        return CoreMLBackend.from_bundle(bundle)
    raise BundleError(f"{bundle.root}: no runtime backend for target '{target}'")
