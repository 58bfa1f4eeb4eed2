"""Runs the four components on an eager torch module (our AutoGLM, or anything with its methods).

The runtime does not import the export package: the caller hands in the module.
"""

from __future__ import annotations

import numpy as np


class TorchBackend:
    name = "torch"

    def __init__(self, module):
        import torch  # optional dependency of the runtime

        self._torch = torch
        self.module = module

    def _run(self, fn, *arrays):
        torch = self._torch
        with torch.no_grad():
            out = fn(*(torch.from_numpy(np.ascontiguousarray(a)) for a in arrays))
        return out.float().numpy()

    def vision_encoder(self, pixel_values: np.ndarray, size: tuple[int, int] | None = None) -> np.ndarray:
        return self._run(lambda x: self.module.vision_encoder(x, size), pixel_values.astype(np.float32))

    def audio_encoder(self, input_features: np.ndarray) -> np.ndarray:
        return self._run(self.module.audio_encoder, input_features.astype(np.float32))

    def token_embedding(self, token_ids: np.ndarray) -> np.ndarray:
        return self._run(self.module.token_embedding, token_ids.astype(np.int64))

    def text_decoder(self, embeds: np.ndarray, cache_position: np.ndarray, position_ids: np.ndarray) -> np.ndarray:
        return self._run(
            self.module.text_decoder,
            embeds.astype(np.float32),
            cache_position.astype(np.int64),
            position_ids.astype(np.int64),
        )

    def reset(self) -> None:
        self.module.reset_cache()
