"""Our re-authored fp32 model against transformers (the "PyTorch original") on one prompt.

The prompt holds text and an image, built by the runtime's own prompt and preprocessing code,
so the check covers tokens, placeholder expansion, M-RoPE positions, the vision tower, the
splice of image embeddings and the decoder. With aspect buckets the prompt runs once per bucket,
on a screenshot of the screen that bucket is made for, against transformers' own image processor
given the same ``max_pixels``: the same size, the same pixel values, the same logits. Audio has no transformers counterpart inside
Glm4v, so the audio tower is compared with ``GlmAsr``'s encoder + projector directly.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

from autoglm_runtime.parity import FAITHFUL_FP32, Metrics, compare_arrays
from autoglm_runtime.preprocess import prepare_image, preprocess_audio, preprocess_image
from autoglm_runtime.preprocess.buckets import SCREENS
from autoglm_runtime.prompt import Message, encode_chat
from autoglm_runtime.splice import splice
from autoglm_runtime.tokenizer import Tokenizer

from ..calibration import synthetic_screenshot
from ..checkpoint import SafetensorsCheckpoint
from ..errors import ExportError
from ..sizes import LARGE_MODEL_PARAMS
from ..source import ModelSource
from ..stored import big_weights_only, fp32_while_running, remaining

log = logging.getLogger(__name__)

# fp32 re-implementation vs fp32 original: differences are summation order only.
TRANSFORMERS_MATCH = FAITHFUL_FP32


@dataclass
class Comparison:
    name: str
    metrics: Metrics
    failures: list[str]

    @property
    def passed(self) -> bool:
        return not self.failures

    def line(self) -> str:
        return f"{'ok' if self.passed else 'FAIL':4s} {self.name}: {self.metrics.summary()}" + (
            f" ({'; '.join(self.failures)})" if self.failures else ""
        )


@dataclass
class TransformersReport:
    comparisons: list[Comparison] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.comparisons)

    def lines(self) -> list[str]:
        return [c.line() for c in self.comparisons]


def compare(name: str, ours: torch.Tensor, ref: torch.Tensor, logits: bool = False) -> Comparison:
    metrics = compare_arrays(name, ours.detach().double().numpy(), ref.detach().double().numpy(), logits=logits)
    limits = TRANSFORMERS_MATCH if logits else TRANSFORMERS_MATCH.features_only()
    return Comparison(name, metrics, metrics.check(limits))


def _load_reference(src: ModelSource, stored_dtype: torch.dtype | None = None):
    """transformers' model in fp32; with ``stored_dtype`` (the checkpoint's, when ours keeps its weights
    as stored) its linear and embedding weights stay in that dtype and run through
    ``fp32_while_running`` (exact: they are the stored values), so the check holds no fp32 copy of all
    weights either."""
    try:
        from transformers import AutoConfig, Glm4vForConditionalGeneration, Glm4vMoeForConditionalGeneration
    except ImportError:
        raise ExportError("verification needs transformers: pip install 'autoglm-export[reference]'") from None
    if src.checkpoint is None:
        raise ExportError(f"{src.label} has no checkpoint directory to compare against")
    cls = Glm4vMoeForConditionalGeneration if src.config.model_type == "glm4v_moe" else Glm4vForConditionalGeneration
    config = AutoConfig.from_pretrained(src.checkpoint)
    config._attn_implementation = "eager"
    if stored_dtype is None:
        return cls.from_pretrained(src.checkpoint, config=config, dtype=torch.float32).eval()
    hf = _on_stored_weights(cls, config, stored_dtype, src.checkpoint)
    if hf is None:  # checkpoint names transformers maps on load (legacy layouts): its own loader
        hf = cls.from_pretrained(src.checkpoint, config=config, dtype=stored_dtype)
    return big_weights_only(hf, hf.get_input_embeddings()).eval()


@contextmanager
def _parameters_on_meta():
    """Modules built inside get their parameters on the meta device (no memory, no init), their
    buffers (rotary tables) computed as usual on the CPU."""
    register = torch.nn.Module.register_parameter

    def on_meta(module, name, param):
        register(module, name, param)
        if param is not None:
            module._parameters[name] = torch.nn.Parameter(param.to("meta"), requires_grad=False)

    torch.nn.Module.register_parameter = on_meta
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = register


def _on_stored_weights(cls, config, dtype: torch.dtype, directory):
    """transformers' model whose parameters ARE the checkpoint's tensors, memory-mapped as stored (zero
    copy: at 9B, a second 20 GB copy would not fit beside ours); None when some parameter is not in the
    checkpoint under transformers' own name."""
    with _parameters_on_meta():
        hf = cls._from_config(config, dtype=dtype)
    ckpt = SafetensorsCheckpoint.open(directory)
    wanted = {name for name, _ in hf.named_parameters(remove_duplicate=False)}
    tied = hf.lm_head.weight is hf.get_input_embeddings().weight
    keys = set(ckpt.keys())
    if not wanted - {"lm_head.weight"} <= keys or (not tied and "lm_head.weight" not in keys):
        return None
    for key, tensor in ckpt.tensors(sorted(wanted & keys), dtype=None):
        owner, _, name = key.rpartition(".")
        module = hf.get_submodule(owner)
        if tuple(module._parameters[name].shape) != tuple(tensor.shape):
            return None
        module._parameters[name] = torch.nn.Parameter(tensor, requires_grad=False)
    if tied:
        hf.lm_head.weight = hf.get_input_embeddings().weight
    return hf


@torch.no_grad()
def verify_against_transformers(
    src: ModelSource, prompt: str = "打开微信，给张三发消息：明天见。Open WeChat."
) -> TransformersReport:
    """Image + text logits (and audio embeddings when present) vs transformers at fp32."""
    if src.tokenizer_path is None:
        raise ExportError(f"{src.checkpoint}: no tokenizer.json, cannot build a verification prompt")
    report = TransformersReport()
    stored = remaining(src.model)  # our weights kept as stored (bf16): keep transformers' so too
    hf = _load_reference(src, src.model.get_parameter(stored[0]).dtype if stored else None)
    with fp32_while_running(hf):
        _compare_image_text(src, hf, prompt, report)
    if src.model.audio is not None and src.audio_checkpoint is not None:
        report.comparisons.append(_verify_audio(src))
    return report


def hf_image_processor(spec):
    """transformers' PIL image processor with the export's preprocessing and pixel budget."""
    from transformers.models.glm4v.image_processing_pil_glm4v import Glm4vImageProcessorPil

    return Glm4vImageProcessorPil(
        patch_size=spec.patch_size,
        temporal_patch_size=spec.temporal_patch_size,
        merge_size=spec.merge_size,
        image_mean=list(spec.image_mean),
        image_std=list(spec.image_std),
        rescale_factor=spec.rescale_factor,
        size={"shortest_edge": spec.min_pixels, "longest_edge": spec.max_pixels},
    )


# Above LARGE_MODEL_PARAMS one prompt takes minutes (a 9B forward in fp32 on each side): the check then
# runs the default portrait screen and its landscape transpose, the two most different patch grids.
LARGE_MODEL_SCREENS = ("phone 20:9 (1080x2400)", "landscape 20:9 (2400x1080)")


def _compare_image_text(src: ModelSource, hf, prompt: str, report: TransformersReport) -> None:
    """One image + text prompt per common screen (one with the fixed size when there are no buckets)."""
    if not src.spec.image.buckets:
        pixels = preprocess_image(synthetic_screenshot(), src.spec.image)
        _compare_prompt(src, hf, prompt, report, pixels, None, "")
        return
    processor = hf_image_processor(src.spec.image)
    params = sum(p.numel() for p in src.model.parameters())
    for seed, (name, height, width) in enumerate(SCREENS):
        if params > LARGE_MODEL_PARAMS and name not in LARGE_MODEL_SCREENS:
            continue
        compare_bucket(src, hf, prompt, report, processor, synthetic_screenshot(height, width, seed))


def compare_bucket(src: ModelSource, hf, prompt: str, report: TransformersReport, processor, image) -> None:
    """Our bucket choice and pixels for ``image`` against transformers' processor, then the prompt's logits."""
    ours = prepare_image(image, src.spec.image)
    ref = processor(images=image, return_tensors="np")
    label = f" {image.width}x{image.height}"
    grid = tuple(int(v) for v in ref["image_grid_thw"][0])
    if grid != ours.spec.grid_thw:
        raise ExportError(
            f"image{label}: transformers' processor makes a {grid} patch grid, our bucket {ours.spec.grid_thw}"
        )
    report.comparisons.append(
        compare(
            f"pixel values{label} vs processor", torch.from_numpy(ours.pixels), torch.from_numpy(ref["pixel_values"])
        )
    )
    _compare_prompt(src, hf, prompt, report, ours.pixels, ours.size, label)


def _compare_prompt(src: ModelSource, hf, prompt: str, report: TransformersReport, pixels, size, label: str) -> None:
    ours, spec = src.model, src.spec
    grid = spec.image.at(size).grid_thw if size else spec.image.grid_thw
    tok = Tokenizer(src.tokenizer_path)
    messages = [Message("user", [{"type": "image"}, {"type": "text", "text": prompt}])]
    inputs = encode_chat(tok, messages, image_grids=grid, spatial_merge_size=spec.image.merge_size)
    pixels = torch.from_numpy(pixels)
    ids = torch.from_numpy(inputs.input_ids)[None]

    ref = hf(
        input_ids=ids,
        pixel_values=pixels,
        image_grid_thw=torch.tensor([grid]),
        mm_token_type_ids=torch.from_numpy(inputs.mm_token_types.astype(np.int64))[None],
    ).logits
    ours.reset_cache()
    embeds = splice(ours.token_embedding(ids), ids[0], spec, ours.vision_encoder(pixels, size))
    got = ours.text_decoder(embeds, torch.arange(ids.shape[1]), torch.from_numpy(inputs.position_ids))
    ours.reset_cache()
    report.comparisons.append(compare(f"image+text logits{label} vs transformers", got, ref, logits=True))
    report.comparisons.append(
        compare(
            f"vision embeddings{label} vs transformers",
            ours.vision_encoder(pixels, size),
            torch.cat(hf.get_image_features(pixels, torch.tensor([grid])).pooler_output),
        )
    )


def _verify_audio(src: ModelSource) -> Comparison:
    from transformers import GlmAsrForConditionalGeneration

    hf = GlmAsrForConditionalGeneration.from_pretrained(src.audio_checkpoint, dtype=torch.float32).eval()
    rate = src.spec.audio.sampling_rate
    t = np.arange(int(1.5 * rate)) / rate
    wave = 0.3 * np.sin(2 * np.pi * 220 * t * (1 + t)) + 0.05 * np.random.default_rng(0).standard_normal(t.size)
    feats = torch.from_numpy(preprocess_audio(wave.astype(np.float32), src.spec.audio))
    mask = torch.ones(feats.shape[0], feats.shape[-1], dtype=torch.long)
    ref = hf.get_audio_features(feats, mask).pooler_output
    got = src.model.audio_encoder(feats)
    n = min(len(ref), len(got))  # transformers drops trailing frames that don't fill a merge group
    return compare("audio embeddings vs transformers", got[:n], ref[:n])


# Holding transformers' own fp32 copy next to ours doubles memory: above LARGE_MODEL_PARAMS the check
# runs only when both models read the checkpoint's weights as stored (``_on_stored_weights``).


def check_against_transformers(src: ModelSource, stages) -> dict | None:
    """The export's first check, before anything is quantized: our fp32 model vs transformers on an
    image+text prompt, when transformers and the checkpoint are there and both copies fit in memory.

    Closes the chain: exported program ~ quantized eager ~(quantization cost) fp32 eager ~ transformers.
    """
    params = sum(p.numel() for p in src.model.parameters())
    if src.checkpoint is None or src.tokenizer_path is None:
        log.info("reference check skipped: %s has no checkpoint/tokenizer for transformers to load", src.label)
        return None
    if params > LARGE_MODEL_PARAMS and not remaining(src.model):
        log.info(
            "reference check skipped for %.1fB params (memory); run `autoglm-export verify` separately", params / 1e9
        )
        return None
    try:
        import transformers  # noqa: F401
    except ImportError:
        log.info("reference check skipped: transformers is not installed")
        return None
    with stages.stage("check fp32 model against transformers"), fp32_while_running(src.model):
        report = verify_against_transformers(src)
    for line in report.lines():
        log.info("  %s", line)
    if not report.passed:
        raise ExportError("our fp32 model does not match transformers on this checkpoint; nothing exported")
    return {"passed": True, "comparisons": report.lines()}
