"""The model as a chain of blocks, for calibrating one block at a time on activations carried forward.

Each tower is a list of ``Step``s in data-flow order: the block's name (a module path, the unit
``calibrate`` quantizes together: a vision block, a text decoder layer, ``text.lm_head``) and the
function from one sample's state at the block's input to its state at the next block's input. Run
in order, the steps compute exactly what the tower's ``forward`` computes (the same calls on the
same tensors), so activations can be kept at a block boundary and carried one block further,
instead of re-running every sample from the model's input for every block.

- vision: pixels -> patch embedding -> each block -> downsample -> merger (the image embeddings);
- audio: features -> the whole tower (its layers are one block, as ``calibrate`` groups them) ->
  projector;
- text: spliced token embeddings -> each decoder layer (one sample's full sequence, that layer's KV
  cache reset first) -> lm_head (of the final norm).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..model.autoglm import AutoGLM
from .samples import Sample


@dataclass(frozen=True)
class Step:
    name: str  # the block: a module path (its linears are quantized together)
    run: Callable[[torch.Tensor, Sample], torch.Tensor]  # state at the block's input -> at the next block's


def block_of(fqn: str) -> str:
    """The block a linear is calibrated with: text.layers.3.mlp.down_proj -> text.layers.3;
    vision.merger.proj -> vision.merger; audio.encoder.layers.0.fc1 -> audio.encoder; text.lm_head -> itself."""
    parts = fqn.split(".")
    if len(parts) > 2 and parts[2].isdigit():
        return ".".join(parts[:3])
    if len(parts) > 2:
        return ".".join(parts[:2])
    return fqn


def vision_steps(model: AutoGLM) -> list[Step]:
    """Input state: ``sample.pixels`` as a tensor; output: the image embeddings."""
    v = model.vision
    consts = v.constants()  # calibration images come at the default size
    steps = [Step("vision.patch_embed", lambda x, s: v.embed_patches(x, consts))]
    steps += [
        Step(f"vision.blocks.{i}", lambda x, s, b=block: b(x, consts.rope_cos, consts.rope_sin))
        for i, block in enumerate(v.blocks)
    ]
    return steps + [
        Step("vision.downsample", lambda x, s: v.downsampled(x)),
        Step("vision.merger", lambda x, s: v.merger(x)),
    ]


def audio_steps(model: AutoGLM) -> list[Step]:
    """Input state: ``sample.features`` as a tensor; output: the audio embeddings."""
    a = model.audio
    if a is None:
        return []
    return [
        Step("audio.encoder", lambda x, s: a.merged_frames(x)),
        Step("audio.projector", lambda x, s: a.projector(x)),
    ]


def text_steps(model: AutoGLM) -> list[Step]:
    """Input state: the sample's spliced token embeddings [1, S, D]; output: the logits."""
    text = model.text

    def layer_step(layer: nn.Module):
        def run(x: torch.Tensor, sample: Sample) -> torch.Tensor:
            cache_position = torch.arange(x.shape[1])
            cos, sin, mask = text.layer_inputs(cache_position, torch.from_numpy(sample.position_ids))
            layer.self_attn.kv_cache.reset()
            return layer(x, cos, sin, cache_position, mask)

        return run

    steps = [Step(f"text.layers.{i}", layer_step(layer)) for i, layer in enumerate(text.layers)]
    return steps + [Step("text.lm_head", lambda x, s: text.head(x))]
