"""``autoglm-export ios``: Core ML packages for iPhone + tokenizer + manifest + parity report.

checkpoint -> (transformers check) -> convert each component from the fp32 weights (coremltools
casts them to fp16 and compresses them: int4 per-block / int8 per-channel) into a temp bundle ->
fp32 reference outputs -> the same weight rounding applied to the eager model in place ->
quantized-eager reference outputs -> run the saved packages (our MIL interpreter on Linux,
``MLModel.predict`` on macOS 15+) -> parity gate -> publish.

Packages: ``VisionEncoder.mlpackage``, ``AudioEncoder.mlpackage`` (when the model has audio),
``TokenEmbedding.mlpackage``, ``TextDecoder.mlpackage`` (see ``targets/coreml.py`` for their
inputs, outputs, states and functions; ``manifest.json["coreml"]`` lists them per package).

Parity kinds: the packages compute in fp16, so a faithful package is compared with its fp32
quantized-eager twin at fp16-activation precision: kind ``weight_only_fp16`` (int4/int8 weights)
or ``fp16`` (``--quant fp16``), whose thresholds are in ``autoglm_runtime.parity``.

``--quantized-checkpoint DIR`` (from ``calibrate`` / ``qat``): fp32 references from the original
weights first, then the checkpoint's parameters are loaded and the packages converted from them;
every linear the checkpoint quantized holds its integers exactly (``targets.coreml.apply_checkpoint_codes``:
int4 blocks or int8 per-channel, fp16 scales), every linear it left fp32 stays fp16, and no linear is
re-rounded. ``--quant`` then only decides the token embedding table. The eager twin carries the
same codes times the fp16 scales. int4 layers need iOS 18: with ``--min-ios 17`` they are refused
before the model is loaded; ``--block-size`` defaults to the checkpoint's int4 group size.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from autoglm_runtime.backends.torch_backend import TorchBackend
from autoglm_runtime.parity import ParityReport

from .bundle import BundleWriter, check_destination
from .errors import ExportError
from .onnx_export import checkpoint_block_size, component_of
from .quantize.qcheckpoint import read_layers
from .pipeline import (ModelRequest, References, Stages, base_manifest, bundle_checkpoint, check_against_transformers, fp32_references,
                       gate_on_parity, parity_failed_path, quantized_checkpoint_info)
from .source import ModelSource
from .targets.coreml import (COMPUTE_UNITS, CONVERTERS, PACKAGES, CoreMLRecipe, PackageInfo, apply_coreml_quantization,
                             convert_text_decoder)
from . import validate as validation
from .validate import COMPONENTS, run_components

log = logging.getLogger(__name__)

@dataclass
class IOSOptions:
    out: Path = Path("dist/ios")
    recipe: CoreMLRecipe = CoreMLRecipe()
    prefill_chunk: int = 64
    compute_units: str = "all"
    validate: bool = True
    force: bool = False
    engine: str | None = None  # None: MLModel on macOS 15+, our MIL interpreter elsewhere

    def check(self) -> None:
        if self.compute_units not in COMPUTE_UNITS:
            raise ExportError(f"--compute-units {self.compute_units}: expected one of {', '.join(COMPUTE_UNITS)}")
        if self.prefill_chunk < 1:
            raise ExportError(f"--prefill-chunk {self.prefill_chunk} must be at least 1")



def quant_kinds(recipe: CoreMLRecipe, fixed: dict | None = None) -> dict[str, str]:
    """Parity kind per component; with a quantized checkpoint's linears (``fixed``), a tower is
    ``weight_only_fp16`` when the checkpoint quantized any of its linears, else ``fp16``."""
    if fixed is None:
        return {c: recipe.kind(c) for c in COMPONENTS}
    quantized = {component_of(fqn) for fqn in fixed}
    return {c: recipe.kind(c) if c == "token_embedding" else ("weight_only_fp16" if c in quantized else "fp16")
            for c in COMPONENTS}


def checkpoint_recipe(recipe: CoreMLRecipe, layers: dict[str, dict], path) -> CoreMLRecipe:
    """``recipe`` for a quantized checkpoint with these layers (``{fqn: {"bits", "group_size"}}``):
    int4 layers need iOS 18, and ``--block-size`` is the checkpoint's int4 group size."""
    int4 = sorted(f for f, layer in layers.items() if int(layer["bits"]) == 4)
    if int4 and recipe.min_ios < 18:
        raise ExportError(f"--min-ios {recipe.min_ios}: the quantized checkpoint {path} has {len(int4)} int4 layers "
                          f"({int4[0]}, ...); int4 per-block weights (constexpr_blockwise_shift_scale) need iOS 18. "
                          "Export it with --min-ios 18, or make an int8 checkpoint (calibrate/qat --quant 8da8w) for iOS 17")
    return replace(recipe, block_size=checkpoint_block_size(layers, recipe.block_size, path))


def coreml_references(src: ModelSource, recipe: CoreMLRecipe, chunk: int, stages: Stages, validate: bool = True,
                      qc=None, convert=None) -> References:
    """fp32 reference outputs, then the packages' weight rounding applied to the eager model in place,
    then the quantized-eager outputs. Without ``qc``, call it after converting: the converters read
    the fp32 weights. With ``qc`` (a quantized checkpoint), the fp32 outputs come from the original
    weights, then the checkpoint is loaded, then ``convert()`` runs (the packages are built from the
    checkpoint's weights), then the twin gets the checkpoint's codes (no rounding of its own)."""
    probes, outputs = fp32_references(src, chunk, stages) if validate else ([], {})
    fixed = None
    if qc is not None:
        from .quantize import qcheckpoint

        with stages.stage(f"load {qc.method} weights from {qc.path}"):
            qcheckpoint.load_into_model(qc, src.model)
        fixed = qc.linears
    if convert is not None:
        convert()
    info = quantized_checkpoint_info(qc)
    if not validate:
        return References(probes, outputs, apply_coreml_quantization(src.model, recipe, dry_run=True, fixed=fixed), info)
    what = "quantized-checkpoint" if fixed is not None else recipe.weights
    with stages.stage(f"{what} weights in the eager model (as the packages hold them)"):
        report = apply_coreml_quantization(src.model, recipe, fixed=fixed)
    with stages.stage("quantized eager reference outputs"):
        outputs["quantized_eager"] = run_components(TorchBackend(src.model), probes, chunk)
    return References(probes, outputs, report, info)


def _params(src: ModelSource) -> dict[str, int]:
    m = src.model
    emb = m.text.embed_tokens.weight.numel()
    out = {"vision_encoder": sum(p.numel() for p in m.vision.parameters()), "token_embedding": emb,
           "text_decoder": sum(p.numel() for p in m.text.parameters()) - emb}
    if m.audio is not None:
        out["audio_encoder"] = sum(p.numel() for p in m.audio.parameters())
    return out


def convert_all(src: ModelSource, recipe: CoreMLRecipe, prefill_chunk: int, bundle: BundleWriter, stages: Stages,
                fixed: dict | None = None) -> dict[str, PackageInfo]:
    """Every component into its package inside the bundle's temp folder (``fixed``: a quantized
    checkpoint's linears, whose integers the packages take instead of coremltools' rounding)."""
    model = src.model
    packages: dict[str, PackageInfo] = {}
    for comp, convert in CONVERTERS.items():  # the encoders and the embedding; the decoder below
        if comp == "audio_encoder" and model.audio is None:
            continue
        with stages.stage(f"convert {comp} -> {PACKAGES[comp]}"):
            packages[comp] = convert(model, recipe, bundle.path(PACKAGES[comp]), fixed=fixed)
    functions = "prefill + decode, state" if recipe.min_ios >= 18 else "main, cache in/out"
    with stages.stage(f"convert text_decoder -> {PACKAGES['text_decoder']} ({functions})"), \
            tempfile.TemporaryDirectory(prefix="autoglm-coreml-") as work:
        packages["text_decoder"] = convert_text_decoder(model, recipe, bundle.path(PACKAGES["text_decoder"]),
                                                        prefill_chunk, Path(work), fixed=fixed)
    params = _params(src)
    for comp, info in packages.items():
        weights = Path(bundle.path(info.file)) / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"
        wbytes = weights.stat().st_size if weights.exists() else 0
        info.extra.update({"parameters": params[comp], "weight_bytes": wbytes,
                           "bits_per_weight": round(8 * wbytes / params[comp], 3) if params[comp] else None})
        log.info("  %s: %.2f MB, %.2f bits/weight", info.file, info.bytes / 1e6, info.extra["bits_per_weight"] or 0)
    return packages


def _usage(recipe: CoreMLRecipe) -> dict:
    mask = ("causal_mask [1, 1, S, end] fp16: 0 where query i (cache slot end-S+i) may attend to slot j (j <= end-S+i), "
            "-inf elsewhere; the call writes its S tokens to cache slots end-S..end-1 and attends over slots 0..end-1")
    common = {"position_ids": "[3, S] int32 M-RoPE ids (temporal, height, width), as autoglm_runtime.positions computes them",
              "causal_mask": mask, "inputs_embeds": "[1, S, hidden] fp16: TokenEmbedding output with image/audio embeddings spliced in"}
    if recipe.min_ios >= 18:
        return {**common, "functions": {
            "prefill": "exactly prefill_chunk tokens; pad a shorter last chunk with zero embeddings (its padded rows' logits are "
                       "garbage and their cache slots are overwritten by the next call before anything attends to them)",
            "decode": "one token"},
            "state": "model.makeState() once per conversation, passed to both functions (MLModelConfiguration.functionName "
                     "selects the function); a new state is an empty cache"}
    return {**common, "functions": {"main": "1..prefill_chunk tokens"},
            "kv_cache": "pass key_cache/value_cache [layers, 1, kv_heads, max_context, head_dim] fp16 (zeros to start); "
                        "write the returned key_update/value_update [layers, 1, kv_heads, S, head_dim] at slots end-S..end-1"}


def coreml_backend(root: Path, coreml: dict, engine: str | None = None):
    from autoglm_runtime.backends.coreml_backend import CoreMLBackend

    return CoreMLBackend(root, coreml, engine=engine)


def validate_packages(backend, refs: References, recipe: CoreMLRecipe, chunk: int, fixed: dict | None = None) -> ParityReport:
    got = run_components(backend, refs.probes, chunk)
    report = validation.compare("coreml", got, refs.outputs, quant_kinds(recipe, fixed))
    report.info = {"engine": backend.engine_name, "quantization": recipe.to_dict(), "prefill_chunk": chunk,
                   "compute_units": backend.compute_units}
    return report


def export_ios(request: ModelRequest, opts: IOSOptions) -> tuple[Path, ParityReport | None]:
    check_destination(opts.out, opts.force)
    opts.check()
    recipe = opts.recipe
    if request.quantized_checkpoint is not None:  # option conflicts fail before the model is loaded
        recipe = checkpoint_recipe(recipe, read_layers(request.quantized_checkpoint), request.quantized_checkpoint)
    elif recipe.block_size is None:
        recipe = replace(recipe, block_size=32)
    from autoglm_runtime.backends.coreml_backend import default_engine

    engine = opts.engine or default_engine()
    stages = Stages()
    with stages.stage("load model"):
        src = request.open()
    if not 1 <= opts.prefill_chunk <= src.spec.max_context:
        raise ExportError(f"--prefill-chunk {opts.prefill_chunk} must be between 1 and the context length {src.spec.max_context}")
    qc = request.open_quantized(src)
    fixed = None
    if qc is not None:
        fixed = qc.linears
        recipe = checkpoint_recipe(recipe, {f: {"bits": q.bits, "group_size": q.group_size} for f, q in fixed.items()}, qc.path)
    reference_check = check_against_transformers(src, stages) if opts.validate else None
    report = None
    with BundleWriter(opts.out, force=opts.force) as bundle:
        if qc is None:
            packages = convert_all(src, recipe, opts.prefill_chunk, bundle, stages)
            refs = coreml_references(src, recipe, opts.prefill_chunk, stages, validate=opts.validate)
        else:
            packages = {}
            refs = coreml_references(src, recipe, opts.prefill_chunk, stages, validate=opts.validate, qc=qc,
                                     convert=lambda: packages.update(convert_all(src, recipe, opts.prefill_chunk, bundle,
                                                                                 stages, fixed)))
        if refs.quant_report.fallbacks:
            log.warning("int8 per-channel instead of int4 (input width not a multiple of %d): %s", recipe.block_size,
                        ", ".join(refs.quant_report.fallbacks))
        if src.tokenizer_path is not None:
            bundle.copy("tokenizer.json", src.tokenizer_path)
        coreml = {
            "min_ios": recipe.min_ios,
            "deployment_target": f"iOS{recipe.min_ios}",
            "compute_precision": "float16",
            "compute_units": opts.compute_units,
            "prefill_chunk": opts.prefill_chunk,
            "packages": {c: p.to_dict() for c, p in packages.items()},
            "usage": _usage(recipe),
        }
        if opts.validate:
            assert bundle.tmp_dir is not None
            what = "our MIL interpreter" if engine == "mil" else "Core ML (MLModel.predict)"
            with stages.stage(f"validate the packages with {what}"):
                backend = coreml_backend(bundle.tmp_dir, coreml, engine)
                backend.compute_units = opts.compute_units
                report = validate_packages(backend, refs, recipe, opts.prefill_chunk, fixed)
            gate_on_parity(report, bundle, opts.out)
        manifest = base_manifest("coreml", src, request, recipe, refs, stages)
        manifest["quantization"].update({"kinds": quant_kinds(recipe, fixed), "layers": refs.quant_report.layers})
        manifest.update({
            "max_seq_len": opts.prefill_chunk,
            "coreml": coreml,
            "validated": opts.validate,
            "validated_with": engine if opts.validate else None,
            "reference_check": reference_check,
        })
        bundle.finish(manifest)
    parity_failed_path(opts.out).unlink(missing_ok=True)
    log.info("published %s", opts.out)
    return opts.out, report


def validate_ios_bundle(bundle, checkpoint: Path | None = None, audio_checkpoint: Path | None = None,
                        engine: str | None = None) -> ParityReport:
    """``autoglm-export validate`` for a Core ML bundle: fresh references, the packages re-run, compared again."""
    manifest = bundle.manifest
    shape = manifest["export_shape"]
    request = replace(ModelRequest.from_dict(manifest["source"]), max_context=shape["max_context"],
                      image_hw=tuple(shape["image_hw"]), audio_frames=shape["audio_frames"])
    if checkpoint is not None:
        request = replace(request, checkpoint=Path(checkpoint), audio_checkpoint=audio_checkpoint)
    recipe = CoreMLRecipe.from_dict(manifest["quantization"]["recipe"])
    chunk = int(manifest["coreml"]["prefill_chunk"])
    src = request.open()
    qc = bundle_checkpoint(manifest, src, request)  # the bundle's --quantized-checkpoint (source.quantized_checkpoint)
    refs = coreml_references(src, recipe, chunk, Stages(), qc=qc)
    from autoglm_runtime.backends.coreml_backend import CoreMLBackend

    return validate_packages(CoreMLBackend.from_bundle(bundle, engine=engine), refs, recipe, chunk,
                             qc.linears if qc is not None else None)
