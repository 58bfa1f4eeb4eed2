"""Steps every export target shares: load, reference outputs, quantize, manifest."""

from __future__ import annotations

import json
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from autoglm_runtime.backends.torch_backend import TorchBackend
from autoglm_runtime.parity import ParityReport
from autoglm_runtime.prompt import AUDIO_PLACEHOLDER, IMAGE_PLACEHOLDER, THINK_OFF_PREFILL

from . import __version__
from .errors import ExportError
from .quantize import QuantRecipe, QuantReport, apply_recipe
from .source import ModelSource, open_source
from .validate import COMPONENTS, Probe, build_probes, run_components

log = logging.getLogger(__name__)


@dataclass
class ModelRequest:
    """What to load and at which static shapes (shared by android / ios / onnx / validate)."""

    checkpoint: Path | None = None
    audio_checkpoint: Path | None = None
    preset: str = "tiny"
    max_context: int | None = None
    image_hw: tuple[int, int] | None = None
    audio_frames: int | None = None
    quantized_checkpoint: Path | None = None  # from `calibrate` / `qat`: its integer weights replace round-to-nearest

    def open(self) -> ModelSource:
        return open_source(self.checkpoint, self.audio_checkpoint, self.preset, max_context=self.max_context,
                           image_hw=self.image_hw, audio_frames=self.audio_frames)

    def to_dict(self) -> dict:
        return {"checkpoint": str(self.checkpoint) if self.checkpoint else None,
                "audio_checkpoint": str(self.audio_checkpoint) if self.audio_checkpoint else None,
                "preset": self.preset, "max_context": self.max_context,
                "image_hw": list(self.image_hw) if self.image_hw else None, "audio_frames": self.audio_frames,
                "quantized_checkpoint": str(self.quantized_checkpoint) if self.quantized_checkpoint else None}

    @classmethod
    def from_dict(cls, d: dict) -> "ModelRequest":
        return cls(Path(d["checkpoint"]) if d.get("checkpoint") else None,
                   Path(d["audio_checkpoint"]) if d.get("audio_checkpoint") else None,
                   d.get("preset", "tiny"), d.get("max_context"),
                   tuple(d["image_hw"]) if d.get("image_hw") else None, d.get("audio_frames"),
                   Path(d["quantized_checkpoint"]) if d.get("quantized_checkpoint") else None)

    def open_quantized(self, src: ModelSource):
        """The --quantized-checkpoint, checked against the opened model (None when not given)."""
        if self.quantized_checkpoint is None:
            return None
        from .quantize import qcheckpoint

        qc = qcheckpoint.load(self.quantized_checkpoint)
        qcheckpoint.check_matches(qc, src)
        log.info("quantized checkpoint %s: %s, %d quantized linears", self.quantized_checkpoint, qc.method, len(qc.linears))
        return qc


@dataclass
class Stages:
    """Stage timings, logged as they finish and recorded in the manifest."""

    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str):
        log.info("» %s", name)
        t0 = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - t0, 3)
        log.info("  %s done in %.1f s", name, self.seconds[name])


@dataclass
class References:
    probes: list[Probe]
    outputs: dict[str, dict[str, np.ndarray]]  # "fp32" / "quantized_eager" -> component -> array
    quant_report: QuantReport
    quantized_checkpoint: dict | None = None  # what a --quantized-checkpoint contributed, for the manifest


def fp32_references(src: ModelSource, max_seq_len: int, stages: Stages) -> tuple[list[Probe], dict[str, dict]]:
    """Probes from the calibration prompts and the unquantized model's outputs on them (every target's first step)."""
    if src.tokenizer_path is None:
        raise ExportError(f"{src.label}: no tokenizer.json next to the weights; validation needs it (or pass --no-validate)")
    with stages.stage("fp32 reference outputs"):
        backend = TorchBackend(src.model)
        probes = build_probes(src.spec, src.tokenizer_path, backend)
        return probes, {"fp32": run_components(backend, probes, max_seq_len)}


def quantize_with_references(src: ModelSource, recipe: QuantRecipe, max_seq_len: int, stages: Stages,
                             validate: bool = True, qc=None) -> References:
    """fp32 reference outputs, then quantize in place, then the quantized-eager reference outputs.

    ``qc`` (a ``qcheckpoint.QuantizedCheckpoint``): its parameters replace the model's after the fp32
    references, and its integers replace round-to-nearest's. Only one copy of the model exists at
    any time: the references are small arrays.
    """
    probes, outputs = fp32_references(src, max_seq_len, stages) if validate else ([], {})
    if qc is not None:
        from .quantize import qcheckpoint

        qcheckpoint.recipe_matches(qc, recipe.linear, recipe.encoder, recipe.group_size)
        with stages.stage(f"load {qc.method} weights from {qc.path}"):
            qcheckpoint.load_into_model(qc, src.model)
    with stages.stage("quantize " + ", ".join(f"{k}={v}" for k, v in recipe.to_dict().items())):
        report = apply_recipe(src.model, recipe, fixed=qc.linears if qc is not None else None)
    if validate:
        with stages.stage("quantized eager reference outputs"):
            outputs["quantized_eager"] = run_components(TorchBackend(src.model), probes, max_seq_len)
    return References(probes, outputs, report, quantized_checkpoint_info(qc))


def bundle_checkpoint(manifest: dict, src: ModelSource, request: ModelRequest):
    """The quantized checkpoint a bundle was exported with (``source.quantized_checkpoint``), opened
    for ``validate``; refused when its weights are no longer the ones the bundle recorded."""
    qc = request.open_quantized(src)
    recorded = (manifest.get("quantization", {}).get("quantized_checkpoint") or {}).get("sha256")
    if qc is not None and recorded and qc.config.get("files") != recorded:
        raise ExportError(f"{qc.path}: the quantized checkpoint changed since this bundle was exported (sha256 of its "
                          "weights differs from the manifest's quantization.quantized_checkpoint); re-export the bundle")
    return qc


def quantized_checkpoint_info(qc) -> dict | None:
    if qc is None:
        return None
    return {"path": str(qc.path), "method": qc.method, "layers": len(qc.linears),
            "sha256": qc.config.get("files", {}), "calibration": qc.config.get("calibration")}


# Holding transformers' copy next to ours doubles memory: only done for models below this size.
REFERENCE_CHECK_MAX_PARAMS = 2_000_000_000


def check_against_transformers(src: ModelSource, stages: Stages) -> dict | None:
    """Our fp32 model vs transformers on an image+text prompt, before anything is quantized.

    Closes the chain: exported program ~ quantized eager ~(quantization cost) fp32 eager ~ transformers.
    """
    from .verify import verify_against_transformers

    params = sum(p.numel() for p in src.model.parameters())
    if src.checkpoint is None or src.tokenizer_path is None:
        log.info("reference check skipped: %s has no checkpoint/tokenizer for transformers to load", src.label)
        return None
    if params > REFERENCE_CHECK_MAX_PARAMS:
        log.info("reference check skipped for %.1fB params (memory); run `autoglm-export verify` separately", params / 1e9)
        return None
    try:
        import transformers  # noqa: F401
    except ImportError:
        log.info("reference check skipped: transformers is not installed")
        return None
    with stages.stage("check fp32 model against transformers"):
        report = verify_against_transformers(src)
    for line in report.lines():
        log.info("  %s", line)
    if not report.passed:
        raise ExportError("our fp32 model does not match transformers on this checkpoint; nothing exported")
    return {"passed": True, "comparisons": [c.line() for c in report.comparisons]}


def parity_failed_path(out: Path) -> Path:
    """Where a failed export leaves its numbers (next to the bundle it did not publish)."""
    return out.parent / f"{out.name}.parity-failed.json"


def gate_on_parity(report: ParityReport, bundle, out: Path) -> None:
    """The publish gate every target shares: log the rows; on failure save them beside ``out`` and
    raise (the BundleWriter then discards the temp bundle); on success put parity.json in the bundle."""
    for line in report.lines():
        log.info("  %s", line)
    if not report.passed:
        failed = parity_failed_path(out)
        failed.write_text(json.dumps(report.to_json(), indent=2))
        raise ExportError(f"parity failed ({sum(not r['passed'] for r in report.rows)} checks); nothing published "
                          f"to {out}; numbers in {failed}")
    bundle.write_json("parity.json", report.to_json())


def quant_kinds(recipe: QuantRecipe) -> dict[str, str]:
    return {c: recipe.kind(c) for c in COMPONENTS}


def model_summary(src: ModelSource) -> dict:
    cfg, model = src.config, src.model
    params = {name: sum(p.numel() for p in m.parameters()) for name, m in
              (("text", model.text), ("vision", model.vision), ("audio", model.audio)) if m is not None}
    t = cfg.text
    return {
        "model_type": cfg.model_type,
        "parameters": params,
        "text": {"hidden_size": t.hidden_size, "layers": t.num_hidden_layers, "heads": t.num_attention_heads,
                 "kv_heads": t.num_key_value_heads, "head_dim": t.head_dim, "intermediate_size": t.intermediate_size,
                 "vocab_size": t.vocab_size, "rotary_dim": t.rotary_dim, "mrope_section": list(t.mrope_section),
                 "moe": {"experts": t.n_routed_experts, "top_k": t.num_experts_per_tok, "shared": t.n_shared_experts,
                         "first_k_dense_replace": t.first_k_dense_replace} if t.is_moe else None},
        "vision": {"depth": cfg.vision.depth, "hidden_size": cfg.vision.hidden_size, "heads": cfg.vision.num_heads,
                   "patch_size": cfg.vision.patch_size, "spatial_merge_size": cfg.vision.spatial_merge_size},
        "audio": ({"hidden_size": cfg.audio.hidden_size, "layers": cfg.audio.num_hidden_layers,
                   "mel_bins": cfg.audio.num_mel_bins} if cfg.audio else None),
    }


def chat_template() -> dict:
    """The GLM-4.1V chat format as data, for apps that build prompts themselves."""
    return {
        "name": "glm-4.1v",
        "prefix": "[gMASK]<sop>",
        "turn": "<|{role}|>\n{content}",
        "generation_prompt": "<|assistant|>\n",
        "image_placeholder": IMAGE_PLACEHOLDER,
        "audio_placeholder": AUDIO_PLACEHOLDER,
        "thinking_off_suffix": THINK_OFF_PREFILL,
        "placeholder_expansion": "each <|image|> becomes runtime.image_tokens copies, each <|audio|> runtime.audio_tokens copies",
    }


def special_tokens(src: ModelSource) -> dict[str, int]:
    if src.tokenizer_path is None:
        return {}
    from autoglm_runtime.tokenizer import Tokenizer

    return Tokenizer(src.tokenizer_path).special_ids()


def base_manifest(target: str, src: ModelSource, request: ModelRequest, recipe: QuantRecipe, refs: References,
                  stages: Stages) -> dict:
    from .bundle import toolchain_versions

    return {
        "target": target,
        "created_by": f"autoglm-export {__version__}",
        "source": {"label": src.label, **request.to_dict()},
        "model": model_summary(src),
        "export_shape": src.model.shape.to_dict(),
        "quantization": {"recipe": recipe.to_dict(), "per_component": refs.quant_report.summary(),
                         "fallbacks": refs.quant_report.fallbacks, "kinds": quant_kinds(recipe),
                         "quantized_checkpoint": refs.quantized_checkpoint},
        "runtime": src.spec.to_dict(),
        "special_tokens": special_tokens(src),
        "chat_template": chat_template(),
        "stage_seconds": stages.seconds,
        "toolchain": toolchain_versions(),
    }
