"""The four component entry points as standalone modules, with example inputs and dynamic shapes.

Every target recipe exports these; nothing target-specific lives here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from autoglm_runtime.preprocess.buckets import method_name
from autoglm_runtime.spec import COMPONENTS  # noqa: F401  (re-exported: the export side names components from here)

from .model.autoglm import AutoGLM

TOWER_COMPONENTS = {"vision": "vision_encoder", "audio": "audio_encoder", "text": "text_decoder"}


def component_of(fqn: str) -> str:
    """The component whose program / graph / package runs a module, by the module's fqn."""
    return TOWER_COMPONENTS[fqn.split(".", 1)[0]]


class _Entry(nn.Module):
    """Binds one method of the shared model as ``forward`` (weights are not copied).

    Explicit signatures (not *args) so torch.export sees named, individually dynamic inputs.
    """

    def __init__(self, model: AutoGLM):
        super().__init__()
        self.model = model


class VisionEntry(_Entry):
    """The vision tower at one image size (a bucket; None: the default size)."""

    def __init__(self, model: AutoGLM, size: tuple[int, int] | None = None):
        super().__init__(model)
        self.size = size

    def forward(self, pixel_values):
        return self.model.vision_encoder(pixel_values, self.size)


def vision_components(model: AutoGLM) -> list[Component]:
    """One vision entry per image size the model has (every aspect bucket; else the one fixed size), each
    named by the runtime's rule: ``vision_encoder`` for the default size, ``vision_encoder_HxW`` for the others."""
    v = model.vision
    p = v.cfg.patch_size
    return [
        Component(
            method_name((h, w), v.image_hw),
            VisionEntry(model, None if (h, w) == v.image_hw else (h, w)),
            (torch.zeros(h // p * (w // p), v.patch_dim),),
            ("pixel_values",),
            ("image_embeds",),
        )
        for h, w in v.sizes
    ]


class AudioEntry(_Entry):
    def forward(self, input_features):
        return self.model.audio_encoder(input_features)


class EmbeddingEntry(_Entry):
    def forward(self, token_ids):
        return self.model.token_embedding(token_ids)


class DecoderEntry(_Entry):
    def forward(self, inputs_embeds, cache_position, position_ids):
        return self.model.text_decoder(inputs_embeds, cache_position, position_ids)


class ResetCacheEntry(_Entry):
    """Zeroes the KV cache. Same attribute path as DecoderEntry, so runtimes that share mutable
    buffers by name (ExecuTorch with share_mutable_buffers) clear the decoder's cache."""

    def forward(self):
        self.model.reset_cache()
        return torch.zeros(1)


@dataclass
class Component:
    name: str
    module: nn.Module
    example_inputs: tuple[torch.Tensor, ...]
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    dynamic_shapes: tuple | None = None  # torch.export dynamic_shapes, matching example_inputs


def components(model: AutoGLM, max_seq_len: int) -> list[Component]:
    """vision_encoder (one per image bucket), audio_encoder (if any), token_embedding, text_decoder.

    ``max_seq_len`` is the longest chunk one ``text_decoder`` call takes (prefill in chunks of it);
    the KV cache holds ``model.shape.max_context`` tokens.
    """
    from torch.export import Dim

    if not 2 <= max_seq_len <= model.shape.max_context:
        raise ValueError(f"max_seq_len {max_seq_len} must be in [2, max_context {model.shape.max_context}]")
    hidden = model.cfg.text.hidden_size
    out = vision_components(model)
    if model.audio is not None:
        mel = model.cfg.audio.num_mel_bins
        out.append(
            Component(
                "audio_encoder",
                AudioEntry(model),
                (torch.zeros(1, mel, model.shape.audio_frames),),
                ("input_features",),
                ("audio_embeds",),
            )
        )
    # Example length >= 2 so torch.export doesn't specialise the dynamic dim to 0/1.
    seq = Dim("seq", min=1, max=max_seq_len)
    n = min(4, max_seq_len)
    out.append(
        Component(
            "token_embedding",
            EmbeddingEntry(model),
            (torch.zeros(1, n, dtype=torch.long),),
            ("token_ids",),
            ("embeds",),
            ({1: seq},),
        )
    )
    out.append(
        Component(
            "text_decoder",
            DecoderEntry(model),
            (torch.zeros(1, n, hidden), torch.arange(n), torch.arange(n).expand(3, n).contiguous()),
            ("inputs_embeds", "cache_position", "position_ids"),
            ("logits",),
            ({1: seq}, {0: seq}, {1: seq}),
        )
    )
    out.append(Component("reset_cache", ResetCacheEntry(model), (), (), ("done",)))
    return out
