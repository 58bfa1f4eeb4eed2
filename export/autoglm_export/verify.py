"""Verify the re-authored model against transformers (the "PyTorch original") on one prompt.

The prompt holds text and an image, built by the runtime's own prompt and preprocessing code,
so the check covers tokens, placeholder expansion, M-RoPE positions, the vision tower, the
splice of image embeddings and the decoder. Audio has no transformers counterpart inside
Glm4v, so the audio tower is compared with ``GlmAsr``'s encoder + projector directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from autoglm_runtime.preprocess import preprocess_audio, preprocess_image
from autoglm_runtime.prompt import Message, encode_chat
from autoglm_runtime.tokenizer import Tokenizer

from .errors import ExportError
from .source import ModelSource

# fp32 re-implementation vs fp32 original: differences are summation order only.
MAX_REL_ERROR = 1e-4


@dataclass
class Comparison:
    name: str
    max_abs: float
    scale: float
    cosine: float
    top1_agreement: float | None = None

    @property
    def rel(self) -> float:
        return self.max_abs / max(self.scale, 1e-6)

    @property
    def passed(self) -> bool:
        return self.rel <= MAX_REL_ERROR

    def line(self) -> str:
        top1 = f", top-1 {self.top1_agreement:.1%}" if self.top1_agreement is not None else ""
        mark = "ok" if self.passed else "FAIL"
        return (f"{mark:4s} {self.name}: max abs {self.max_abs:.2e} (x{self.rel:.1e} of scale {self.scale:.2f}), "
                f"cosine {self.cosine:.7f}{top1}")


@dataclass
class VerifyReport:
    comparisons: list[Comparison] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.comparisons)

    def lines(self) -> list[str]:
        return [c.line() for c in self.comparisons]


def compare(name: str, ours: torch.Tensor, ref: torch.Tensor, logits: bool = False) -> Comparison:
    ours, ref = ours.double().flatten(0, -2), ref.double().flatten(0, -2)
    cos = torch.nn.functional.cosine_similarity(ours.flatten(), ref.flatten(), dim=0).item()
    top1 = (ours.argmax(-1) == ref.argmax(-1)).double().mean().item() if logits else None
    return Comparison(name, (ours - ref).abs().max().item(), ref.abs().max().item(), cos, top1)


def synthetic_screenshot(height: int = 1200, width: int = 540, seed: int = 0):
    """A phone-screen-like picture (status bar, list rows, a button) drawn with PIL."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (width, height), (245, 245, 245))
    draw = ImageDraw.Draw(img)
    draw.rectangle([0, 0, width, 40], fill=(30, 30, 30))
    for row in range(8):
        y = 80 + row * 120
        color = tuple(int(c) for c in rng.integers(60, 220, 3))
        draw.ellipse([20, y, 100, y + 80], fill=color)
        draw.text((120, y + 20), f"Contact {row}  消息 {row}", fill=(20, 20, 20))
    draw.rounded_rectangle([width // 4, height - 140, 3 * width // 4, height - 60], 20, fill=(7, 193, 96))
    return img


def _load_reference(src: ModelSource):
    try:
        from transformers import AutoConfig, Glm4vForConditionalGeneration, Glm4vMoeForConditionalGeneration
    except ImportError:
        raise ExportError("verification needs transformers: pip install 'autoglm-export[reference]'") from None
    if src.checkpoint is None:
        raise ExportError(f"{src.label} has no checkpoint directory to compare against")
    cls = Glm4vMoeForConditionalGeneration if src.config.model_type == "glm4v_moe" else Glm4vForConditionalGeneration
    config = AutoConfig.from_pretrained(src.checkpoint)
    config._attn_implementation = "eager"
    return cls.from_pretrained(src.checkpoint, config=config, dtype=torch.float32).eval()


@torch.no_grad()
def verify_against_transformers(src: ModelSource, prompt: str = "打开微信，给张三发消息：明天见。Open WeChat.") -> VerifyReport:
    """Image + text logits (and audio embeddings when present) vs transformers at fp32."""
    if src.tokenizer_path is None:
        raise ExportError(f"{src.checkpoint}: no tokenizer.json, cannot build a verification prompt")
    report = VerifyReport()
    hf = _load_reference(src)
    ours, spec = src.model, src.spec
    tok = Tokenizer(src.tokenizer_path)
    messages = [Message("user", [{"type": "image"}, {"type": "text", "text": prompt}])]
    inputs = encode_chat(tok, messages, image_grids=spec.image.grid_thw, spatial_merge_size=spec.image.merge_size)
    pixels = torch.from_numpy(preprocess_image(synthetic_screenshot(), spec.image))
    ids = torch.from_numpy(inputs.input_ids)[None]

    ref = hf(
        input_ids=ids,
        pixel_values=pixels,
        image_grid_thw=torch.tensor([spec.image.grid_thw]),
        mm_token_type_ids=torch.from_numpy(inputs.mm_token_types.astype(np.int64))[None],
    ).logits
    ours.reset_cache()
    embeds = ours.token_embedding(ids)
    embeds[0, ids[0] == spec.image_token_id] = ours.vision_encoder(pixels)
    got = ours.text_decoder(embeds, torch.arange(ids.shape[1]), torch.from_numpy(inputs.position_ids))
    ours.reset_cache()
    report.comparisons.append(compare("image+text logits vs transformers", got, ref, logits=True))
    report.comparisons.append(
        compare("vision embeddings vs transformers", ours.vision_encoder(pixels),
                torch.cat(hf.get_image_features(pixels, torch.tensor([spec.image.grid_thw])).pooler_output))
    )
    if ours.audio is not None and src.audio_checkpoint is not None:
        report.comparisons.append(_verify_audio(src))
    return report


def _verify_audio(src: ModelSource) -> Comparison:
    from transformers import GlmAsrForConditionalGeneration

    hf = GlmAsrForConditionalGeneration.from_pretrained(src.audio_checkpoint, dtype=torch.float32).eval()
    rate = src.spec.audio.sampling_rate
    t = np.arange(int(1.5 * rate)) / rate
    wave = (0.3 * np.sin(2 * np.pi * 220 * t * (1 + t)) + 0.05 * np.random.default_rng(0).standard_normal(t.size))
    feats = torch.from_numpy(preprocess_audio(wave.astype(np.float32), src.spec.audio))
    mask = torch.ones(feats.shape[0], feats.shape[-1], dtype=torch.long)
    ref = hf.get_audio_features(feats, mask).pooler_output
    got = src.model.audio_encoder(feats)
    n = min(len(ref), len(got))  # transformers drops trailing frames that don't fill a merge group
    return compare("audio embeddings vs transformers", got[:n], ref[:n])


def verify_checkpoint(checkpoint: Path, **kwargs) -> VerifyReport:
    from .source import open_source

    return verify_against_transformers(open_source(checkpoint, **kwargs))
