"""``autoglm-export ios``: Core ML packages for iPhone + tokenizer + manifest + parity report.

The Core ML target of ``pipeline.export_bundle``: each component is converted from the model's
weights as they are (``convert.py``: coremltools casts them to fp16 and compresses them, int4
per-block / int8 per-channel), then ``twin.py`` applies the same rounding to the eager model. The
saved packages run through our MIL interpreter on Linux, ``MLModel.predict`` on macOS 15+.

Packages: ``VisionEncoder.mlpackage``, ``AudioEncoder.mlpackage`` (when the model has audio),
``TokenEmbedding.mlpackage``, ``TextDecoder.mlpackage`` (``convert.py`` describes their inputs,
outputs, states and functions; ``manifest.json["coreml"]`` lists them per package).

Parity kinds: the packages compute in fp16, so a faithful package is compared with its fp32
quantized-eager twin at fp16-activation precision: kind ``weight_only_fp16`` (int4/int8 weights)
or ``fp16`` (``--quant fp16``), whose thresholds are in ``autoglm_runtime.parity``.

``--quantized-checkpoint DIR`` (from ``calibrate`` / ``qat``): the packages are converted from the
checkpoint's weights; every linear it quantized holds its integers exactly
(``convert.apply_checkpoint_codes``: int4 blocks or int8 per-channel, fp16 scales), every linear it
left fp32 stays fp16, and no linear is re-rounded. ``--quant`` then only decides the token embedding
table. int4 layers need iOS 18: with ``--min-ios 17`` they are refused before the model is loaded;
``--block-size`` defaults to the checkpoint's int4 group size.
"""

from __future__ import annotations

import gc
import logging
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

from ...components import COMPONENTS, component_of
from ...errors import ExportError
from ...quantize import QuantRecipe
from ...quantize.qcheckpoint import block_size_for, read_layers
from ...quantize.recipes import int_scheme
from ...sizes import count
from ...stages import memory
from .. import ExportOptions, Job, Target, register_target
from .convert import CONVERTERS, PACKAGES, PackageInfo, convert_text_decoder, plan_chunks, weight_bytes
from .recipe import COMPUTE_UNITS, CoreMLRecipe
from .twin import apply_coreml_quantization

log = logging.getLogger(__name__)

# A decoder above this many parameters becomes a chain of packages of at most this many (4 layers of
# AutoGLM-Phone-9B each, about 0.46 GB of int4; the lm_head on its own): coremltools' conversion memory
# follows the largest package (BENCHMARKS.md), and a phone loads and compiles each package separately.
DECODER_PACKAGE_PARAMS = 1_000_000_000


@dataclass
class CoreMLOptions(ExportOptions):
    out: Path = Path("dist/ios")
    recipe: CoreMLRecipe = field(default_factory=CoreMLRecipe)
    prefill_chunk: int = 64
    compute_units: str = "all"
    engine: str | None = None  # None: MLModel on macOS 15+, our MIL interpreter elsewhere
    # Largest decoder package, in parameters (``convert.plan_chunks``; None: always one package).
    decoder_package_params: int | None = DECODER_PACKAGE_PARAMS


def quant_kinds(recipe: CoreMLRecipe, fixed: dict | None = None) -> dict[str, str]:
    """Parity kind per component; with a quantized checkpoint's linears (``fixed``), a tower is
    ``weight_only_fp16`` when the checkpoint quantized any of its linears, else ``fp16``."""
    if fixed is None:
        return {c: recipe.kind(c) for c in COMPONENTS}
    quantized = {component_of(fqn) for fqn in fixed}
    return {
        c: recipe.kind(c) if c == "token_embedding" else ("weight_only_fp16" if c in quantized else "fp16")
        for c in COMPONENTS
    }


def checkpoint_recipe(recipe: CoreMLRecipe, layers: dict[str, dict], path) -> CoreMLRecipe:
    """``recipe`` for a quantized checkpoint with these layers (``{fqn: {"bits", "group_size"}}``):
    int4 layers need iOS 18, and ``--block-size`` is the checkpoint's int4 group size."""
    int4 = sorted(f for f, layer in layers.items() if int(layer["bits"]) == 4)
    if int4 and recipe.min_ios < 18:
        raise ExportError(
            f"--min-ios {recipe.min_ios}: the quantized checkpoint {path} has {len(int4)} int4 layers "
            f"({int4[0]}, ...); int4 per-block weights (constexpr_blockwise_shift_scale) need iOS 18. "
            "Export it with --min-ios 18, or make an int8 checkpoint (calibrate/qat --quant 8da8w) for iOS 17"
        )
    return replace(recipe, block_size=block_size_for(layers, recipe.block_size, path))


def tower_parameters(model) -> dict[str, int]:
    """Parameters each package holds (the decoder package without the token embedding table)."""
    emb = count(model.text.embed_tokens)
    out = {"vision_encoder": count(model.vision), "token_embedding": emb, "text_decoder": count(model.text) - emb}
    if model.audio is not None:
        out["audio_encoder"] = count(model.audio)
    return out


def convert_all(job: Job) -> dict[str, PackageInfo]:
    """Every component into its package inside the bundle's temp folder (with a quantized checkpoint,
    its integers instead of coremltools' rounding)."""
    model, recipe, chunk, bundle, stages = (
        job.src.model,
        job.options.recipe,
        job.options.prefill_chunk,
        job.bundle,
        job.stages,
    )
    packages: dict[str, PackageInfo] = {}
    for comp, convert in CONVERTERS.items():  # the encoders and the embedding; the decoder below
        if comp == "audio_encoder" and model.audio is None:
            continue
        with stages.stage(f"convert {comp} -> {PACKAGES[comp]}"):
            packages[comp] = convert(model, recipe, bundle.path(PACKAGES[comp]), fixed=job.fixed)
            gc.collect()  # its MIL programs' reference cycles (``convert.discard``), before the next package
    functions = "prefill + decode, state" if recipe.min_ios >= 18 else "main, cache in/out"
    chunks = plan_chunks(model, job.options.decoder_package_params)
    what = PACKAGES["text_decoder"] if len(chunks) == 1 else f"{len(chunks)} TextDecoder-*.mlpackage"
    with (
        stages.stage(f"convert text_decoder -> {what} ({functions})"),
        tempfile.TemporaryDirectory(prefix="autoglm-coreml-") as work,
    ):
        packages["text_decoder"] = convert_text_decoder(
            model,
            recipe,
            Path(bundle.path(PACKAGES["text_decoder"])).parent,
            chunk,
            Path(work),
            fixed=job.fixed,
            max_params=job.options.decoder_package_params,
            progress=lambda msg: log.info("  %s%s", msg, memory()),
        )
    params = tower_parameters(model)
    for comp, info in packages.items():
        wbytes = info.extra.get("weight_bytes", weight_bytes(bundle.path(info.file)))
        info.extra.update(
            {
                "parameters": params[comp],
                "weight_bytes": wbytes,
                "bits_per_weight": round(8 * wbytes / params[comp], 3) if params[comp] else None,
            }
        )
        chain = info.extra.get("chunks", [])
        name = info.file if len(chain) < 2 else f"{info.file} .. {chain[-1]['file']} ({len(chain)} packages)"
        log.info("  %s: %.2f MB, %.2f bits/weight", name, info.bytes / 1e6, info.extra["bits_per_weight"] or 0)
    return packages


def usage(recipe: CoreMLRecipe) -> dict:
    """How an app calls the decoder package, for the manifest."""
    mask = (
        "causal_mask [1, 1, S, end] fp16: 0 where query i (cache slot end-S+i) may attend to slot j (j <= end-S+i), "
        "-inf elsewhere; the call writes its S tokens to cache slots end-S..end-1 and attends over slots 0..end-1"
    )
    common = {
        "position_ids": "[3, S] int32 M-RoPE ids (temporal, height, width), as autoglm_runtime.positions computes them",
        "causal_mask": mask,
        "inputs_embeds": "[1, S, hidden] fp16: TokenEmbedding output with image/audio embeddings spliced in",
    }
    common["chunks"] = (
        "the decoder is the packages of text_decoder.chunks, run in order on each call: the first takes "
        "inputs_embeds, each next one takes the previous one's hidden_states [1, S, hidden] fp16 as its "
        "inputs_embeds, all with the same position_ids and causal_mask; the last returns logits. Each "
        "package holds the KV cache of its own layers (its own state, or its own cache inputs/outputs)"
    )
    if recipe.min_ios >= 18:
        return {
            **common,
            "functions": {
                "prefill": "exactly prefill_chunk tokens; pad a shorter last chunk with zero embeddings (its padded rows' logits are "
                "garbage and their cache slots are overwritten by the next call before anything attends to them)",
                "decode": "one token",
            },
            "state": "model.makeState() once per conversation and package, passed to both functions "
            "(MLModelConfiguration.functionName selects the function); a new state is an empty cache",
        }
    return {
        **common,
        "functions": {"main": "1..prefill_chunk tokens"},
        "kv_cache": "pass key_cache/value_cache [layers, 1, kv_heads, max_context, head_dim] fp16 (zeros to start); "
        "write the returned key_update/value_update [layers, 1, kv_heads, S, head_dim] at slots end-S..end-1",
    }


@register_target
class CoreMLTarget(Target):
    name = "coreml"
    command = "ios"
    converts = "original"  # coremltools rounds the weights itself; the twin copies that rounding
    keeps_stored = True  # each package is converted from fp32 copies of its own weights only (convert.py)

    def resolve(self, options: CoreMLOptions, quantized_checkpoint):
        if options.compute_units not in COMPUTE_UNITS:
            raise ExportError(f"--compute-units {options.compute_units}: expected one of {', '.join(COMPUTE_UNITS)}")
        if options.prefill_chunk < 1:
            raise ExportError(f"--prefill-chunk {options.prefill_chunk} must be at least 1")
        recipe = options.recipe
        if quantized_checkpoint is not None:
            recipe = checkpoint_recipe(recipe, read_layers(quantized_checkpoint), quantized_checkpoint)
        elif recipe.block_size is None:
            recipe = replace(recipe, block_size=32)
        from autoglm_runtime.backends.coreml_backend import default_engine

        return replace(options, recipe=recipe, engine=options.engine or default_engine())

    def check(self, src, options: CoreMLOptions) -> None:
        if not 1 <= options.prefill_chunk <= src.spec.max_context:
            raise ExportError(
                f"--prefill-chunk {options.prefill_chunk} must be between 1 and the context length "
                f"{src.spec.max_context}"
            )
        buckets = len(src.spec.image.sizes)
        if buckets > 1 and options.recipe.min_ios < 18:
            raise ExportError(
                f"--min-ios {options.recipe.min_ios}: {buckets} image buckets need a multifunction VisionEncoder "
                "(iOS 18); pass --min-ios 18, or --image-size HxW for one fixed size"
            )

    def chunk(self, options: CoreMLOptions) -> int:
        return options.prefill_chunk

    def scratch_bytes(self, cfg, shape, options: CoreMLOptions, bundle_bytes: int) -> int:
        # The quantized eager twin of a model loaded as stored keeps its weights in fp16 on disk (twin.py).
        if not options.validate:
            return 0
        from ...loader import meta_model

        return 2 * count(meta_model(cfg, shape))

    def size_recipe(self, options: CoreMLOptions) -> QuantRecipe:
        r = options.recipe
        embedding = {"int4": "4", "int8": "8"}.get(r.embedding_scheme, "none")
        return QuantRecipe(
            linear=int_scheme(r.weights, r.block_size),
            encoder=int_scheme(r.weights, r.block_size),
            embedding=embedding,
            group_size=max(r.block_size or 32, 32),
        )

    def recipe(self, options: CoreMLOptions) -> CoreMLRecipe:
        return options.recipe

    def twin(self, job: Job):
        model, recipe = job.src.model, job.options.recipe
        if not job.options.validate:
            report = apply_coreml_quantization(model, recipe, dry_run=True, fixed=job.fixed)
        else:
            what = "quantized-checkpoint" if job.fixed is not None else recipe.weights
            with job.stages.stage(f"{what} weights in the eager model (as the packages hold them)"):
                report = apply_coreml_quantization(model, recipe, fixed=job.fixed, keep=job.scratch.keep)
        if report.fallbacks:
            log.warning(
                "int8 per-channel instead of int4 (input width not a multiple of %d): %s",
                recipe.block_size,
                ", ".join(report.fallbacks),
            )
        return report

    def convert(self, job: Job) -> None:
        job.artifacts["packages"] = convert_all(job)

    def quant_kinds(self, options: CoreMLOptions, fixed) -> dict[str, str]:
        return quant_kinds(options.recipe, fixed)

    def runtime_name(self, options: CoreMLOptions) -> str:
        return "our MIL interpreter" if options.engine == "mil" else "Core ML (MLModel.predict)"

    def backend(self, root: Path, fields: dict, options: CoreMLOptions):
        from autoglm_runtime.backends.coreml_backend import CoreMLBackend

        return CoreMLBackend(root, fields["coreml"], engine=options.engine, compute_units=options.compute_units)

    def parity_info(self, options: CoreMLOptions, backend) -> dict:
        return {
            "engine": backend.engine_name,
            "quantization": options.recipe.to_dict(),
            "prefill_chunk": options.prefill_chunk,
            "compute_units": backend.compute_units,
        }

    def manifest_fields(self, job: Job) -> dict:
        opts, recipe = job.options, job.options.recipe
        coreml = {
            "min_ios": recipe.min_ios,
            "deployment_target": f"iOS{recipe.min_ios}",
            "compute_precision": "float16",
            "compute_units": opts.compute_units,
            "prefill_chunk": opts.prefill_chunk,
            "packages": {c: p.to_dict() for c, p in job.artifacts["packages"].items()},
            "usage": usage(recipe),
        }
        return {
            "max_seq_len": opts.prefill_chunk,
            "coreml": coreml,
            "validated_with": opts.engine if opts.validate else None,
        }

    def options_from_manifest(self, manifest: dict) -> CoreMLOptions:
        coreml = manifest["coreml"]
        return self.resolve(
            CoreMLOptions(
                recipe=CoreMLRecipe.from_dict(manifest["quantization"]["recipe"]),
                prefill_chunk=int(coreml["prefill_chunk"]),
                compute_units=coreml.get("compute_units", "all"),
            ),
            None,
        )
