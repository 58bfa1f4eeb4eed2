"""The one export pipeline every target shares, and ``validate BUNDLE`` built from the same steps.

``export_bundle(target, request, options)``, in this order for every target, with or without a
quantized checkpoint:

 1. check the destination; ``Target.resolve`` the options (conflicts with a quantized checkpoint
    fail here, before anything is loaded); check the disk has room for the bundle's estimated size
    (``disk.py``, from the config and the recipe, before any weight is read);
 2. load the model (a target that ``keeps_stored`` gets the big weights as stored, bf16 and
    memory-mapped, made fp32 one module at a time: ``stored.py``); ``Target.check`` the options;
 3. open the quantized checkpoint (``--quantized-checkpoint``) and check it belongs to the model;
 4. our fp32 model vs transformers, when it fits (validation only);
 5. fp32 reference outputs on the parity probes (validation only);
 6. the quantized checkpoint's weights loaded into the model;
 7. build: ``Target.convert`` writes the artifacts into a temp bundle and ``Target.twin`` makes the
    eager model their quantized twin, in the order ``Target.converts`` names (a converter that
    rounds the original weights itself runs first; a backend that lowers the twin runs after it);
 8. quantized-eager reference outputs (validation only);
 9. the artifacts run with the target's runtime backend, compared with both references, and gated
    (``gate_on_parity``: nothing is published on failure);
10. manifest, hashes, atomic publish.

``validate_bundle`` repeats 2-6, 7's twin and 8-9 against a published bundle.
"""

from __future__ import annotations

import json
import logging
import tempfile
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from autoglm_runtime.backends.torch_backend import TorchBackend
from autoglm_runtime.bundle import open_bundle
from autoglm_runtime.parity import ParityReport

from .bundle import BundleWriter, check_destination
from .checks import layerwise
from .checks.against_references import compare
from .checks.against_transformers import check_against_transformers
from .checks.floor import jittered, needs_floor
from .checks.probes import build_probes, probe_budget, reference_traces, run_components
from .components import COMPONENTS
from .disk import check_free_space, estimate_bundle_bytes
from .errors import ExportError
from .quantize import qcheckpoint
from .quantize.recipes import in_row_slices
from .request import ModelRequest
from .scratch import Scratch
from .sizes import human_bytes
from .stages import Stages, memory
from .stored import fp32_while_running
from .summary import base_manifest
from .targets import Job, Target, get_target

log = logging.getLogger(__name__)


def open_quantized(request: ModelRequest, src):
    """The --quantized-checkpoint, checked against the opened model (None when not given)."""
    if request.quantized_checkpoint is None:
        return None
    qc = qcheckpoint.load(request.quantized_checkpoint)
    qcheckpoint.check_matches(qc, src)
    log.info(
        "quantized checkpoint %s: %s, %d quantized linears", request.quantized_checkpoint, qc.method, len(qc.linears)
    )
    return qc


def bundle_checkpoint(manifest: dict, src, request: ModelRequest):
    """The quantized checkpoint a bundle was exported with (``source.quantized_checkpoint``), opened
    for ``validate``; refused when its weights are no longer the ones the bundle recorded."""
    qc = open_quantized(request, src)
    recorded = (manifest.get("quantization", {}).get("quantized_checkpoint") or {}).get("sha256")
    if qc is not None and recorded and qc.config.get("files") != recorded:
        raise ExportError(
            f"{qc.path}: the quantized checkpoint changed since this bundle was exported (sha256 of its "
            "weights differs from the manifest's quantization.quantized_checkpoint); re-export the bundle"
        )
    return qc


@dataclass
class References:
    """The parity probes and what the references answered on them (step 5 and 8)."""

    probes: list
    outputs: dict[str, dict[str, np.ndarray]]  # reference -> component -> outputs
    blocks: list | None = None  # the fp32 run's block inputs/outputs, when the cost is gated per block
    block_rows: list[dict] = field(default_factory=list)  # the per-block cost rows (``layerwise.replay``)


def fp32_references(src, chunk: int, stages: Stages) -> References:
    """Probes from the calibration prompts and the unquantized model's outputs on them (with every
    block's inputs and outputs for a model whose cost is gated per block: ``checks/layerwise.py``)."""
    if src.tokenizer_path is None:
        raise ExportError(
            f"{src.label}: no tokenizer.json next to the weights; validation needs it (or pass --no-validate)"
        )
    params = sum(p.numel() for p in src.model.parameters())
    cases, steps = probe_budget(params)
    with (
        stages.stage("fp32 reference outputs"),
        fp32_while_running(src.model),
        layerwise.capture(src.model) if layerwise.per_layer(params) else nullcontext() as blocks,
    ):
        backend = TorchBackend(src.model)
        probes = build_probes(src.spec, src.tokenizer_path, backend, cases, steps, chunk)  # runs the decoder
        outputs = run_components(backend, probes, chunk, tuple(c for c in COMPONENTS if c != "text_decoder"))
        outputs["text_decoder"] = reference_traces(probes)
        return References(probes, {"fp32": outputs}, blocks)


def quantized_references(src, refs: References, chunk: int, kinds: dict[str, str], stages: Stages) -> None:
    """Step 8: the quantized twin on the probes, and its cost block by block when that is what is gated."""
    with stages.stage("quantized eager reference outputs"), in_row_slices(src.model):
        refs.outputs["quantized_eager"] = run_components(TorchBackend(src.model), refs.probes, chunk)
    if refs.blocks is not None:
        with stages.stage("quantization cost block by block"), in_row_slices(src.model):
            refs.block_rows = layerwise.replay(refs.blocks, kinds)
        refs.blocks = None  # the captured activations (hundreds of MB at 9B) are no longer needed


def load_quantized_weights(qc, src, target: Target, stages: Stages) -> None:
    if qc is not None:
        with stages.stage(f"load {qc.method} weights from {qc.path}"):
            qcheckpoint.load_into_model(qc, src.model, linears=not target.twin_from_codes)


def build(target: Target, job: Job) -> None:
    """Step 7: artifacts and quantized twin, in the order the target's converter needs."""
    if target.converts == "twin":
        job.quant_report = target.twin(job)
        target.convert(job)
    else:
        target.convert(job)
        job.quant_report = target.twin(job)


def parity_failed_path(out: Path) -> Path:
    """Where a failed export leaves its numbers (next to the bundle it did not publish)."""
    return out.parent / f"{out.name}.parity-failed.json"


def gate_on_parity(report: ParityReport, bundle: BundleWriter, out: Path) -> None:
    """The publish gate: log the rows; on failure save them beside ``out`` and raise (the
    BundleWriter then discards the temp bundle); on success put parity.json in the bundle."""
    for line in report.lines():  # the CLI prints the table once on success; on failure it is the why
        log.log(logging.DEBUG if report.passed else logging.INFO, "  %s", line)
    if not report.passed:
        failed = parity_failed_path(out)
        failed.write_text(json.dumps(report.to_json(), indent=2))
        raise ExportError(
            f"parity failed ({len(report.failures)} checks); nothing published to {out}; numbers in {failed}"
        )
    bundle.write_json("parity.json", report.to_json())


def check_artifacts(target: Target, job: Job, root: Path, fields: dict, refs: References) -> ParityReport:
    """Step 9: the artifacts under ``root`` run by the target's runtime backend, compared with the
    references; a faithfulness miss of a run-time-rounded kind is re-judged against the twin's
    rounding floor (``checks/floor.py``)."""
    options, chunk = job.options, target.chunk(job.options)
    kinds = target.quant_kinds(options, job.fixed)
    informative = tuple(r["component"] for r in refs.block_rows)
    backend = target.backend(root, fields, options)
    got = run_components(backend, refs.probes, chunk)
    info = target.parity_info(options, backend)
    del backend  # its memory (the program's weights) before the floor's twin run
    log.info("  ran the bundle on %d probes%s", len(refs.probes), memory())
    report = compare(target.name, got, refs.outputs, kinds, informative=informative)
    missed = needs_floor(report)
    if missed:
        model, what = job.src.model, ", ".join(missed)
        with job.stages.stage(f"rounding floor of the quantized eager {what}"), jittered(model), in_row_slices(model):
            floors = run_components(TorchBackend(model), refs.probes, chunk, missed)
        report = compare(target.name, got, refs.outputs, kinds, floors=floors, informative=informative)
    report.rows += refs.block_rows
    report.info = info
    return report


def check_disk(target: Target, request: ModelRequest, options) -> None:
    """Step 1's disk check: the bundle's estimated size (from the config and the recipe, the model on
    the meta device) must fit beside ``--out`` before anything is loaded."""
    meta = request.open(weights=False)
    estimate = estimate_bundle_bytes(meta.config, meta.model.shape, target.size_recipe(options))
    scratch = target.scratch_bytes(meta.config, meta.model.shape, options, estimate.total)
    log.info("bundle estimate: %s; scratch during export %s", estimate.describe(), human_bytes(scratch))
    what = f"the {target.command} bundle" + (f" and its export's scratch ({human_bytes(scratch)})" if scratch else "")
    check_free_space(options.out, estimate.total + scratch, what=what)


def export_bundle(target: Target | str, request: ModelRequest, options) -> tuple[Path, ParityReport | None]:
    """Export one bundle (steps in the module docstring); returns its path and the parity report."""
    target = get_target(target) if isinstance(target, str) else target
    check_destination(options.out, options.force)
    options = target.resolve(options, request.quantized_checkpoint)
    check_disk(target, request, options)
    with Scratch(Path(options.out).absolute().parent) as scratch:
        stages = Stages()
        with stages.stage("load model"):
            src = request.open(keep_stored=target.keeps_stored)
        target.check(src, options)
        qc = open_quantized(request, src)
        job = Job(src, options, stages, qc, scratch=scratch)
        reference_check = check_against_transformers(src, stages) if options.validate else None
        chunk = target.chunk(options)
        refs = fp32_references(src, chunk, stages) if options.validate else None
        load_quantized_weights(qc, src, target, stages)
        report = None
        with BundleWriter(options.out, force=options.force) as bundle:
            job.bundle = bundle
            build(target, job)
            if options.validate:
                quantized_references(src, refs, chunk, target.quant_kinds(options, job.fixed), stages)
            if src.tokenizer_path is not None:
                bundle.copy("tokenizer.json", src.tokenizer_path)
            fields = target.manifest_fields(job)
            if options.validate:
                with stages.stage(f"validate the bundle with {target.runtime_name(options)}"):
                    report = check_artifacts(target, job, Path(bundle.tmp_dir), fields, refs)
                gate_on_parity(report, bundle, options.out)
            manifest = base_manifest(
                target.name,
                src,
                request,
                target.recipe(options),
                job.quant_report,
                qc,
                target.quant_kinds(options, job.fixed),
                stages,
            )
            manifest.update(fields)
            manifest.update({"validated": options.validate, "reference_check": reference_check})
            bundle.finish(manifest)
    parity_failed_path(options.out).unlink(missing_ok=True)
    log.info("published %s", options.out)
    return options.out, report


@dataclass
class BundleValidation(ParityReport):
    """``validate``'s report: the parity rows, plus the bundle's components the references could not
    check (a reference checkpoint without the bundle's audio tower). Passes only when none are left out."""

    unchecked: dict[str, str] = field(default_factory=dict)  # component -> why

    @property
    def checked_passed(self) -> bool:
        return super().passed

    @property
    def passed(self) -> bool:
        return self.checked_passed and not self.unchecked

    def lines(self) -> list[str]:
        return super().lines() + [f"NOT CHECKED  {c:<16} {why}" for c, why in self.unchecked.items()]


def unchecked_components(bundle_spec, reference_spec, audio_checkpoint: Path | None) -> dict[str, str]:
    """Components the bundle has and the reference model cannot produce."""
    if bundle_spec.has_audio and not reference_spec.has_audio:
        hint = "" if audio_checkpoint else "; pass --audio-checkpoint DIR"
        return {"audio_encoder": f"the reference checkpoint has no audio tower{hint}"}
    return {}


def validate_bundle(
    bundle_dir: Path, checkpoint: Path | None = None, audio_checkpoint: Path | None = None
) -> BundleValidation:
    """``autoglm-export validate BUNDLE``: rebuild the references the bundle was gated on and compare again."""
    bundle = open_bundle(bundle_dir)  # checks every file's size and sha256 first
    manifest = bundle.manifest
    target = get_target(manifest["target"])
    options = target.options_from_manifest(manifest)
    shape = manifest["export_shape"]
    request = replace(
        ModelRequest.from_dict(manifest["source"]),
        max_context=shape["max_context"],
        image_hw=None if shape.get("image_buckets") else tuple(shape["image_hw"]),
        max_pixels=shape.get("max_pixels") if shape.get("image_buckets") else None,
        audio_frames=shape["audio_frames"],
    )
    if checkpoint is not None:
        request = replace(request, checkpoint=Path(checkpoint), audio_checkpoint=audio_checkpoint)
    stages = Stages()
    src = request.open(keep_stored=target.keeps_stored)
    qc = bundle_checkpoint(manifest, src, request)
    with Scratch(tempfile.gettempdir()) as scratch:
        job = Job(src, options, stages, qc, scratch=scratch)
        chunk = target.chunk(options)
        refs = fp32_references(src, chunk, stages)
        load_quantized_weights(qc, src, target, stages)
        job.quant_report = target.twin(job)
        quantized_references(src, refs, chunk, target.quant_kinds(options, job.fixed), stages)
        report = check_artifacts(target, job, bundle.root, manifest, refs)
    return BundleValidation(
        report.target, report.rows, report.info, unchecked=unchecked_components(bundle.spec, src.spec, audio_checkpoint)
    )
