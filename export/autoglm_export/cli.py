"""The ``autoglm-export`` command line. Commands only parse options and call library functions."""

from __future__ import annotations

import errno
import functools
import logging
import sys
from pathlib import Path

import typer
from rich.console import Console

from autoglm_runtime.errors import AutoglmError, InputError

from . import (
    help_format,  # noqa: F401  (flags without a <bool> type in --help)
    quiet,
)
from . import options as opt
from .native_stderr import drop_native_log_lines
from .options import parse_hw
from .presets import preset_for
from .request import ModelRequest

app = typer.Typer(
    help="Export AutoGLM-Phone-9B-family models to phones (ExecuTorch, Core ML, ONNX), with parity checks.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console(stderr=True, soft_wrap=True)


OUT_OF_SPACE = (errno.ENOSPC, errno.EDQUOT)


def guarded(fn):
    """User errors become one line on stderr and exit code 1; nothing else is swallowed."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except AutoglmError as exc:
            console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except OSError as exc:
            if exc.errno not in OUT_OF_SPACE:  # a bug or an unexpected system error: keep its traceback
                raise
            # The disk check passed before any work; something else filled the disk since (nothing
            # was published: bundles are written to a temp folder and moved in at the end).
            where = f"{exc.filename}: " if exc.filename else ""
            console.print(f"[bold red]error:[/] {where}{exc.strerror}; nothing was published", highlight=False)
            raise typer.Exit(1) from None

    return wrapper


def linear_recipe(
    quant, group_size, quant_encoder, quant_embedding, quantized_checkpoint=None, preset=None, quant_merger=None
):
    """A torchao QuantRecipe; an option left unset comes from the quantized checkpoint when one is
    given, else from the preset's defaults, else from QuantRecipe's. An explicit --quant-encoder
    covers the merger too unless --quant-merger is also given."""
    from .presets import get_preset
    from .quantize import QuantRecipe
    from .quantize.qcheckpoint import read_recipe

    base = {**QuantRecipe().to_dict(), **(get_preset(preset).recipe if preset else {})}
    if quantized_checkpoint is not None:
        base.update(read_recipe(quantized_checkpoint))
    return QuantRecipe(
        linear=quant or base["linear"],
        group_size=group_size or int(base["group_size"]),
        encoder=quant_encoder or base["encoder"],
        embedding=quant_embedding or str(base["embedding"]),
        merger=quant_merger or (None if quant_encoder else base.get("merger")),
    )


def _export(target: str, request, options) -> None:
    from .pipeline import export_bundle

    path, report = export_bundle(target, request, options)
    if report is not None:
        console.print("\n".join(report.lines()), highlight=False)
        console.print(f"[green]bundle written to {path}[/]")
    else:
        console.print(
            f"[yellow]bundle written to {path}, NOT validated (--no-validate): its parity was never checked; "
            f"run `autoglm-export validate {path}`[/]",
            highlight=False,
        )


def _print_version(value: bool) -> None:
    if value:
        from . import __version__

        console.print(f"autoglm-export {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _main(
    verbose: bool = typer.Option(
        False, "--verbose", "-v", help="Debug logging, and third-party libraries' own output."
    ),
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
    ),
):
    if not verbose:
        quiet.third_party()
        drop_native_log_lines()  # before logging binds sys.stderr
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s", stream=sys.stderr)
    if not verbose:
        quiet.log_levels()


@app.command()
@guarded
def info(
    bundle: Path | None = typer.Argument(None, help="Bundle directory: print its manifest summary instead."),
    checkpoint: opt.Checkpoint = None,
    audio_checkpoint: opt.AudioCheckpoint = None,
    preset: opt.Preset = None,
):
    """Print the model configuration, component shapes, parameter counts and memory sizes (no weights are read);
    with BUNDLE: the bundle's methods, shapes, quantization, sizes and validation status."""
    from .describe import describe
    from .source import open_source

    if bundle is not None:
        from .bundle_summary import summarize_bundle

        _refuse_model_options(bundle, checkpoint=checkpoint, audio_checkpoint=audio_checkpoint, preset=preset)
        for line in summarize_bundle(bundle):
            console.print(line, highlight=False)
        return
    preset = preset_for(checkpoint, preset)
    src = open_source(checkpoint, audio_checkpoint, preset, weights=False)  # meta device: seconds at any size
    for line in describe(src, preset):
        console.print(line, highlight=False)


def _refuse_model_options(bundle: Path, **given) -> None:
    """Options that choose the eager model mean nothing with a bundle: refuse them rather than ignore them."""
    names = [f"--{k.replace('_', '-')}" for k, v in given.items() if v is not None]
    if names:
        raise InputError(
            f"{', '.join(names)}: only for the eager model; the bundle {bundle} runs the model and "
            "context it was exported with"
        )


def _warn_if_not_validated(manifest: dict, bundle: Path) -> None:
    if manifest.get("validated") is False:
        console.print(
            f"[yellow]warning:[/] {bundle} was exported with --no-validate: its parity was never checked "
            f"(`autoglm-export validate {bundle}` checks it)",
            highlight=False,
        )


def _read_prompt(prompt: str) -> str:
    """``-`` reads the prompt from standard input."""
    if prompt != "-":
        return prompt
    text = sys.stdin.read().strip()
    if not text:
        raise InputError("--prompt -: standard input is empty")
    return text


def _backend_label(backend) -> str:
    """The stats line's backend: on Linux a Core ML bundle runs through our MIL interpreter, not Core ML."""
    if getattr(backend, "engine_name", None) == "mil":
        return f"{backend.name} (our MIL interpreter; Core ML itself runs only on Apple devices)"
    return backend.name


def _open_backend(bundle: Path | None, checkpoint, audio_checkpoint, preset, max_context):
    """A bundle directory (its target's backend) or the eager model (torch backend)."""
    if bundle is not None:
        from autoglm_runtime.backends import backend_for_bundle
        from autoglm_runtime.bundle import open_bundle

        _refuse_model_options(
            bundle, checkpoint=checkpoint, audio_checkpoint=audio_checkpoint, preset=preset, max_context=max_context
        )
        b = open_bundle(bundle)
        _warn_if_not_validated(b.manifest, bundle)
        return backend_for_bundle(b), b.tokenizer_path, b.spec, b.manifest.get("max_seq_len")
    from autoglm_runtime.backends.torch_backend import TorchBackend

    from .source import open_source

    src = open_source(checkpoint, audio_checkpoint, preset_for(checkpoint, preset), max_context=max_context)
    return TorchBackend(src.model), src.tokenizer_path, src.spec, None


def export_request(
    checkpoint, audio_checkpoint, preset, max_context, image_size, audio_frames, quantized_checkpoint, max_pixels
) -> ModelRequest:
    """The export commands' shared model options as one request."""
    return ModelRequest(
        checkpoint,
        audio_checkpoint,
        preset,
        max_context,
        parse_hw(image_size),
        audio_frames,
        quantized_checkpoint,
        max_pixels,
    )


def preset_onnx_embedding(request: ModelRequest, quant: str) -> str:
    """--quant-embedding left unset for ONNX: int4 where the preset's embedding is int4 (the 9B budget) and the
    linears are int4 too, without a quantized checkpoint (its graphs keep the table fp32); else fp32."""
    from .presets import get_preset

    four = get_preset(request.preset).recipe.get("embedding") == "4"
    return "int4" if four and quant == "int4" and not request.quantized_checkpoint else "fp32"


@app.command()
@guarded
def run(
    bundle: Path | None = typer.Argument(
        None, help="Bundle directory (dist/android, ...). Without it: the eager PyTorch model."
    ),
    prompt: str = typer.Option(..., "--prompt", "-p", help="User message; - reads it from standard input."),
    image: list[Path] | None = typer.Option(
        None, "--image", help="Image file (PNG/JPEG/...); repeat it for several images, in prompt order."
    ),
    audio: Path | None = typer.Option(None, "--audio", help="WAV or MP3 file (resampled to 16 kHz mono)."),
    system: str | None = typer.Option(None, "--system", help="System message."),
    checkpoint: opt.Checkpoint = None,
    audio_checkpoint: opt.AudioCheckpoint = None,
    preset: opt.Preset = None,
    max_new_tokens: int = typer.Option(
        64, "--max-new-tokens", min=1, help="Most tokens to generate; generation stops earlier at an end-of-turn token."
    ),
    temperature: float = typer.Option(0.0, "--temperature", min=0.0, help="0 = greedy."),
    top_p: float = typer.Option(
        1.0,
        "--top-p",
        max=1.0,
        help="Nucleus sampling, in (0, 1]: sample among the most likely tokens whose probabilities sum to P "
        "(1 = all of them; used when --temperature > 0).",
    ),
    seed: int = typer.Option(0, "--seed", help="Random seed of sampling (same seed, same output; unused when greedy)."),
    thinking: bool | None = typer.Option(
        None, "--thinking/--no-thinking", help="GLM enable_thinking; default: template default."
    ),
    max_context: int | None = typer.Option(
        None, "--max-context", help="KV-cache length for the eager model (default: preset's)."
    ),
):
    """Generate with the reference runtime, streaming tokens: through a bundle, or the eager model."""
    from autoglm_runtime.sampling import SamplingConfig
    from autoglm_runtime.session import Session

    prompt = _read_prompt(prompt)
    sampling = SamplingConfig(temperature=temperature, top_p=top_p, seed=seed)  # checked before any loading
    backend, tokenizer, spec, chunk = _open_backend(bundle, checkpoint, audio_checkpoint, preset, max_context)
    session = Session(backend, tokenizer, spec, prefill_chunk=chunk)
    result = session.generate(
        prompt,
        images=image or [],
        audio=audio,
        system=system,
        max_new_tokens=max_new_tokens,
        sampling=sampling,
        enable_thinking=thinking,
        on_text=lambda text: (sys.stdout.write(text), sys.stdout.flush()),
    )
    sys.stdout.write("\n")
    console.print(
        f"[dim]{_backend_label(backend)}: {result.prompt_tokens} prompt tokens, {len(result.token_ids)} generated, "
        f"stop: {result.stop_reason}, prefill {result.prefill_s * 1e3:.0f} ms, "
        f"decode {result.decode_ms_per_token:.1f} ms/token[/]",
        highlight=False,
    )


@app.command()
@guarded
def android(
    checkpoint: opt.Checkpoint = None,
    audio_checkpoint: opt.AudioCheckpoint = None,
    preset: opt.Preset = None,
    out: opt.BundleOut = Path("dist/android"),
    quant: str | None = typer.Option(
        None, "--quant", help="Text decoder linears: 8da4w (default: int8 dynamic act, int4 weights), 8da8w, fp32."
    ),
    group_size: int | None = typer.Option(
        None, "--group-size", help=opt.GROUP_SIZE_HELP + " [default: 32, or the quantized checkpoint's]"
    ),
    quant_encoder: opt.QuantEncoder = None,
    quant_merger: opt.QuantMerger = None,
    quant_embedding: str | None = typer.Option(
        None, "--quant-embedding", help="Token embedding: 4, 8 or none. [default: 8, or the preset's]"
    ),
    quantized_checkpoint: opt.QuantizedCheckpoint = None,
    max_seq_len: int = typer.Option(128, "--max-seq-len", help="Longest text_decoder call (prefill chunk)."),
    max_context: opt.MaxContext = None,
    image_size: opt.ImageSize = None,
    max_pixels: opt.MaxPixels = None,
    audio_frames: opt.AudioFrames = None,
    backend: str = typer.Option("xnnpack", "--backend", help="xnnpack or qnn (needs QNN_SDK_ROOT)."),
    soc: str | None = typer.Option(None, "--soc", help="Snapdragon SoC for qnn, e.g. SM8650."),
    validate: opt.Validate = True,
    custom_ops: bool = typer.Option(
        True, "--custom-ops/--no-custom-ops", help="Use ExecuTorch's update_cache/custom_sdpa kernels in the decoder."
    ),
    external_weights: bool = typer.Option(
        False,
        "--external-weights",
        help="Weights in model.ptd beside a small model.pte (for runtimes that take a data file: ExecuTorch's "
        "C++ Module, LLM runner, Python runtime; the Android Java Module loads a single .pte).",
    ),
    decode_step: bool = typer.Option(
        False,
        "--decode-step/--no-decode-step",
        help="Add text_decoder_step (one token, static shapes) for decode; no faster than text_decoder here, and "
        "XNNPACK packs its weights again at load.",
    ),
    force: opt.Force = False,
):
    """Export an ExecuTorch bundle for Android: model.pte + tokenizer.json + manifest.json + parity.json."""
    from .targets.executorch.export import ExecuTorchOptions

    request = export_request(
        checkpoint, audio_checkpoint, preset, max_context, image_size, audio_frames, quantized_checkpoint, max_pixels
    )
    recipe = linear_recipe(
        quant, group_size, quant_encoder, quant_embedding, quantized_checkpoint, request.preset, quant_merger
    )
    _export(
        "executorch",
        request,
        ExecuTorchOptions(
            out=out,
            recipe=recipe,
            max_seq_len=max_seq_len,
            backend=backend,
            soc=soc,
            validate=validate,
            force=force,
            custom_ops=custom_ops,
            external_weights=external_weights,
            decode_step=decode_step,
        ),
    )


@app.command()
@guarded
def onnx(
    checkpoint: opt.Checkpoint = None,
    audio_checkpoint: opt.AudioCheckpoint = None,
    preset: opt.Preset = None,
    out: opt.BundleOut = Path("dist/onnx"),
    quant: str = typer.Option(
        "int4", "--quant", help="Linear layers of all towers, lm_head included: int4 (MatMulNBits) or fp32."
    ),
    block_size: opt.BlockSize = None,
    int8_activations: bool = typer.Option(
        False,
        "--int8-activations",
        help="MatMulNBits accuracy_level 4: activations quantized to int8 at run time (faster; its own parity limits).",
    ),
    quant_embedding: str | None = typer.Option(
        None,
        "--quant-embedding",
        help="Token embedding: fp32 (the table as stored) or int4 (GatherBlockQuantized). "
        "[default: int4 where the preset's embedding is int4 (autoglm-phone-9b) and --quant int4, else fp32]",
    ),
    quantized_checkpoint: opt.QuantizedCheckpoint = None,
    max_seq_len: int = typer.Option(
        128, "--max-seq-len", help="Prefill chunk for validation and `run` (the graph takes any length)."
    ),
    max_context: opt.MaxContext = None,
    image_size: opt.ImageSize = None,
    max_pixels: opt.MaxPixels = None,
    audio_frames: opt.AudioFrames = None,
    validate: opt.Validate = True,
    force: opt.Force = False,
):
    """Export an ONNX bundle: one .onnx per component + tokenizer.json + manifest.json + parity.json."""
    from .targets.onnx.export import OnnxOptions
    from .targets.onnx.recipe import OnnxQuant

    request = export_request(
        checkpoint, audio_checkpoint, preset, max_context, image_size, audio_frames, quantized_checkpoint, max_pixels
    )
    _export(
        "onnx",
        request,
        OnnxOptions(
            out=out,
            quant=OnnxQuant(
                quant,
                block_size,
                4 if int8_activations else 0,
                quant_embedding or preset_onnx_embedding(request, quant),
            ),
            max_seq_len=max_seq_len,
            validate=validate,
            force=force,
        ),
    )


@app.command()
@guarded
def ios(
    checkpoint: opt.Checkpoint = None,
    audio_checkpoint: opt.AudioCheckpoint = None,
    preset: opt.Preset = None,
    out: opt.BundleOut = Path("dist/ios"),
    min_ios: int = typer.Option(
        18,
        "--min-ios",
        help="18: KV cache as Core ML state, int4, prefill/decode functions. 17: cache as inputs/outputs, int8.",
    ),
    quant: str | None = typer.Option(
        None,
        "--quant",
        help="Weights: int4 (per-block, iOS 18; the default there), int8 (per-channel; the default for 17), fp16. With --quantized-checkpoint: the token embedding only.",
    ),
    block_size: opt.BlockSize = None,
    quantized_checkpoint: opt.QuantizedCheckpoint = None,
    max_context: opt.MaxContext = None,
    prefill_chunk: int = typer.Option(
        64, "--prefill-chunk", "--max-seq-len", help="Tokens per prefill call (the decoder's fixed prefill shape)."
    ),
    image_size: opt.ImageSize = None,
    max_pixels: opt.MaxPixels = None,
    audio_frames: opt.AudioFrames = None,
    decoder_package_params: int | None = typer.Option(
        None,
        "--decoder-package-params",
        min=1,
        help="Largest decoder package, in parameters: a bigger decoder becomes a chain of packages "
        "(TextDecoder-01ofNN.mlpackage ..., the manifest says how an app chains them). [default: 1e9]",
    ),
    compute_units: str = typer.Option(
        "all",
        "--compute-units",
        help="all, cpu_and_gpu, cpu_and_ne (recorded for the app; used by MLModel validation on macOS).",
    ),
    validate: opt.Validate = True,
    force: opt.Force = False,
):
    """Export Core ML packages for iPhone: *.mlpackage + tokenizer.json + manifest.json + parity.json."""
    from .targets.coreml.export import DECODER_PACKAGE_PARAMS, CoreMLOptions
    from .targets.coreml.recipe import CoreMLRecipe

    recipe = CoreMLRecipe(
        weights=quant or ("int4" if min_ios >= 18 else "int8"), block_size=block_size, min_ios=min_ios
    )
    request = export_request(
        checkpoint, audio_checkpoint, preset, max_context, image_size, audio_frames, quantized_checkpoint, max_pixels
    )
    _export(
        "coreml",
        request,
        CoreMLOptions(
            out=out,
            recipe=recipe,
            prefill_chunk=prefill_chunk,
            compute_units=compute_units,
            decoder_package_params=decoder_package_params or DECODER_PACKAGE_PARAMS,
            validate=validate,
            force=force,
        ),
    )


def _relaunch(nproc: int, opts, batch_size: int | None = None) -> None:
    """``--nproc N``: the same command line as N processes under torchrun (not when already under it);
    the options are checked first, so a bad one is one error line, not one per process."""
    from .quantize import distributed

    if nproc < 1:
        raise InputError(f"--nproc {nproc}: expected at least 1")
    if nproc > 1 and not distributed.under_torchrun():
        opts.check()
        if batch_size is not None:
            distributed.check_batch(batch_size, distributed.Ranks(0, nproc))
        raise typer.Exit(distributed.relaunch(nproc, sys.argv[1:]))


def _written(path: Path) -> None:
    from .quantize import distributed

    if distributed.is_rank_zero():
        console.print(f"[green]quantized checkpoint written to {path}[/]; export it with --quantized-checkpoint {path}")


@app.command()
@guarded
def calibrate(
    checkpoint: opt.Checkpoint = None,
    audio_checkpoint: opt.AudioCheckpoint = None,
    preset: opt.Preset = None,
    out: opt.QuantizedOut = Path("dist/quantized"),
    method: str = typer.Option(
        "gptq", "--method", help="gptq (activation-aware, block by block) or rtn (round-to-nearest, for comparison)."
    ),
    quant: opt.CalibrationQuant = None,
    group_size: opt.CalibrationGroupSize = None,
    quant_encoder: opt.QuantEncoder = None,
    quant_merger: opt.QuantMerger = None,
    data: opt.CalibrationData = None,
    max_prompts: opt.MaxPrompts = None,
    text_windows: opt.TextWindows = 32,
    seq_len: opt.SeqLen = 256,
    damp: float = typer.Option(0.01, "--damp", help="GPTQ dampening, a fraction of the mean Hessian diagonal."),
    max_context: opt.MaxContext = None,
    nproc: opt.Nproc = 1,
    force: opt.Force = False,
):
    """Post-training quantization with calibration (GPTQ) through the full multimodal path; writes a quantized checkpoint."""
    from .quantize.calibrate import CalibrateOptions, run_calibrate

    request = ModelRequest(checkpoint, audio_checkpoint, preset, max_context)
    recipe = linear_recipe(quant, group_size, quant_encoder, None, preset=request.preset, quant_merger=quant_merger)
    opts = CalibrateOptions(
        out=out,
        recipe=recipe,
        method=method,
        data=data,
        max_prompts=max_prompts,
        text_windows=text_windows,
        seq_len=seq_len,
        damp=damp,
        force=force,
    )
    _relaunch(nproc, opts)
    path = run_calibrate(request, opts)
    _written(path)


@app.command()
@guarded
def qat(
    checkpoint: opt.Checkpoint = None,
    audio_checkpoint: opt.AudioCheckpoint = None,
    preset: opt.Preset = None,
    out: opt.QuantizedOut = Path("dist/qat"),
    steps: int = typer.Option(200, "--steps", help="Training steps (one calibration sample each)."),
    lr: float = typer.Option(
        3e-5, "--lr", help="Peak AdamW learning rate (warmup then cosine; 3e-5 was best of 1e-5..2e-4 on tiny)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the sample order and of torch."),
    top_k: int = typer.Option(64, "--top-k", help="Teacher probabilities kept per position for the distillation loss."),
    save_every: int = typer.Option(50, "--save-every", help="Save resumable training state every N steps."),
    resume: bool = typer.Option(False, "--resume", help="Continue from <out>.qat-state/ (same options and seed)."),
    train_encoders: bool = typer.Option(
        False, "--train-encoders", help="Also update the vision/audio towers (default: frozen, still fake-quantized)."
    ),
    batch_size: int = typer.Option(
        1, "--batch-size", help="Samples per step, over all processes (a multiple of their number)."
    ),
    quant: opt.CalibrationQuant = None,
    group_size: opt.CalibrationGroupSize = None,
    quant_encoder: opt.QuantEncoder = None,
    quant_merger: opt.QuantMerger = None,
    data: opt.CalibrationData = None,
    max_prompts: opt.MaxPrompts = None,
    text_windows: opt.TextWindows = 32,
    seq_len: opt.SeqLen = 256,
    max_context: opt.MaxContext = None,
    nproc: opt.Nproc = 1,
    force: opt.Force = False,
):
    """Quantization-aware training (torchao QATConfig) distilled from the fp model; writes a quantized checkpoint."""
    from .quantize.qat import QATOptions, run_qat

    request = ModelRequest(checkpoint, audio_checkpoint, preset, max_context)
    recipe = linear_recipe(quant, group_size, quant_encoder, None, preset=request.preset, quant_merger=quant_merger)
    opts = QATOptions(
        out=out,
        recipe=recipe,
        steps=steps,
        lr=lr,
        seed=seed,
        top_k=top_k,
        save_every=save_every,
        resume=resume,
        train_encoders=train_encoders,
        batch_size=batch_size,
        data=data,
        max_prompts=max_prompts,
        text_windows=text_windows,
        seq_len=seq_len,
        force=force,
    )
    _relaunch(nproc, opts, batch_size)
    path = run_qat(request, opts)
    _written(path)


@app.command()
@guarded
def validate(
    bundle: Path = typer.Argument(..., help="Bundle directory to check."),
    checkpoint: opt.ReferenceCheckpoint = None,
    audio_checkpoint: opt.AudioCheckpoint = None,
    record: bool = typer.Option(
        True,
        "--record/--no-record",
        help="On a pass, write parity.json into the bundle and mark its manifest validated (as an export "
        "with the gate on would). --no-record leaves the bundle untouched.",
    ),
):
    """Re-run the parity checks of an existing bundle against freshly built references."""
    from autoglm_runtime.bundle import open_bundle

    from .bundle import record_validation
    from .pipeline import validate_bundle

    _warn_if_not_validated(open_bundle(bundle, verify_hashes=False).manifest, bundle)
    report = validate_bundle(bundle, checkpoint, audio_checkpoint)
    console.print("\n".join(report.lines()), highlight=False)
    if report.unchecked:
        failing = "" if report.checked_passed else "; checked components also fail parity"
        console.print(
            f"[bold red]error:[/] {bundle}: not validated: {', '.join(report.unchecked)} not checked "
            f"({'; '.join(report.unchecked.values())}){failing}",
            highlight=False,
        )
        raise typer.Exit(1)
    if not report.passed:
        console.print(f"[bold red]error:[/] {bundle} fails parity")
        raise typer.Exit(1)
    console.print(f"[green]{bundle}: parity passed[/]")
    if record:
        try:
            record_validation(bundle, report.to_json())
        except OSError as e:
            console.print(
                f"[yellow]warning:[/] {bundle}: the pass was not recorded in the bundle: {e}", highlight=False
            )
        else:
            console.print(f"recorded in {bundle}: parity.json, manifest validated", highlight=False)


@app.command()
@guarded
def verify(
    checkpoint: opt.Checkpoint = None,
    audio_checkpoint: opt.AudioCheckpoint = None,
    preset: opt.Preset = None,
):
    """Check our re-implementation against transformers on an image+text prompt (needs transformers)."""
    from .checks.against_transformers import verify_against_transformers
    from .source import open_source

    report = verify_against_transformers(open_source(checkpoint, audio_checkpoint, preset_for(checkpoint, preset)))
    for line in report.lines():
        console.print("  " + line, highlight=False)
    if not report.passed:
        console.print("[bold red]error:[/] the eager model does not match transformers")
        raise typer.Exit(1)


@app.command("parity-report")
@guarded
def parity_report(
    bundles: list[Path] = typer.Argument(..., help="Bundle directories, e.g. dist/android dist/ios dist/onnx."),
    out: Path = typer.Option(Path("parity-report.md"), "--out", help="Markdown report; the HTML page goes next to it."),
):
    """Combine the bundles' parity.json into parity-report.md + .html; exit 1 on any failing or missing bundle."""
    from .checks.report import write_report

    results = write_report(bundles, out)
    for r in results:
        status = "PASS" if r.passed else f"FAIL {r.problem or '; '.join(r.report.failures)}"
        console.print(f"  {r.target or '?':10s} {r.path}: {status}", highlight=False)
    console.print(f"wrote {out} and {out.with_suffix('.html')}")
    if not all(r.passed for r in results):
        raise typer.Exit(1)


@app.command()
@guarded
def trace(
    bundle: Path = typer.Argument(..., help="Bundle directory (dist/android, dist/ios, ...)."),
    prompt: str = typer.Option(..., "--prompt", "-p", help="User message."),
    out: Path = typer.Option(..., "--out", help="Trace file to write (JSON)."),
    image: Path | None = typer.Option(None, "--image", help="Image file (PNG/JPEG/...)."),
    audio: Path | None = typer.Option(None, "--audio", help="WAV file."),
    system: str | None = typer.Option(None, "--system", help="System message."),
    max_new_tokens: int = typer.Option(16, "--max-new-tokens", min=1),
    thinking: bool | None = typer.Option(
        None, "--thinking/--no-thinking", help="GLM enable_thinking; default: template default."
    ),
):
    """Record what the runtime does for one greedy request (prompt, ids, positions, tensors, model calls, top-k) as a golden trace."""
    from autoglm_runtime.backends import backend_for_bundle
    from autoglm_runtime.bundle import open_bundle
    from autoglm_runtime.trace import trace_request, write_trace

    b = open_bundle(bundle)
    result = trace_request(
        b,
        backend_for_bundle(b),
        prompt,
        image=image,
        audio=audio,
        system=system,
        max_new_tokens=max_new_tokens,
        enable_thinking=thinking,
    )
    write_trace(result, out)
    console.print(
        f"wrote {out}: {len(result['calls'])} model calls, {len(result['steps'])} tokens "
        f"({result['generated']['stop_reason']})",
        highlight=False,
    )


@app.command()
@guarded
def serve(
    bundle: Path | None = typer.Argument(
        None, help="Bundle directory (dist/android, dist/onnx, dist/ios). Without it: the eager PyTorch model."
    ),
    checkpoint: opt.Checkpoint = None,
    audio_checkpoint: opt.AudioCheckpoint = None,
    preset: opt.Preset = None,  # None: tiny for the eager model; refused with a bundle
    host: str = typer.Option(
        "127.0.0.1", "--host", help="Address to bind. Anything but loopback without --api-key prints a warning."
    ),
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="TCP port (0: a free one, printed at start)."),
    model_name: str = typer.Option(
        "autoglm-phone-9b", "--model-name", help="The model id clients send (GET /v1/models)."
    ),
    api_key: str | None = typer.Option(
        None, "--api-key", envvar="AUTOGLM_API_KEY", help="Require 'Authorization: Bearer KEY' on /v1/*."
    ),
    max_queue: int = typer.Option(
        16, "--max-queue", min=0, help="Requests that may wait behind the running one; more get 429."
    ),
    request_timeout: float = typer.Option(
        600.0, "--request-timeout", min=0.001, help="Seconds from arrival to the last token (504 after)."
    ),
    max_body_mb: float = typer.Option(64.0, "--max-body-mb", min=0.001, help="Largest request body (413 beyond)."),
    max_image_mb: float = typer.Option(
        20.0, "--max-image-mb", min=0.001, help="Largest image or audio file in a request (413 beyond)."
    ),
    allow_media_path: list[Path] = typer.Option(
        [],
        "--allow-media-path",
        help="Directory whose files requests may name as image_url (repeatable). Default: none.",
    ),
    allow_media_url: list[str] = typer.Option(
        [], "--allow-media-url", help="http(s) URL prefix requests may name as image_url (repeatable). Default: none."
    ),
    prefix_reuse: bool = typer.Option(
        True,
        "--prefix-reuse/--no-prefix-reuse",
        help="Keep the KV cache of the prefix shared with the previous request.",
    ),
    max_context: int | None = typer.Option(
        None, "--max-context", help="KV-cache length for the eager model (default: preset's)."
    ),
):
    """Serve a bundle (or the eager model) over an OpenAI-compatible HTTP API: /v1/chat/completions, /v1/models, /health, /docs."""
    try:
        from autoglm_runtime.server import ServerConfig
        from autoglm_runtime.server import serve as run_server
    except ImportError as e:
        raise typer.BadParameter(f"serving needs the serve extra ({e}): pip install 'autoglm-export[serve]'") from None

    mb = 1 << 20
    try:
        config = ServerConfig(
            model_name=model_name,
            api_key=api_key,
            max_queue=max_queue,
            request_timeout=request_timeout,
            max_body_bytes=int(max_body_mb * mb),
            max_image_bytes=int(max_image_mb * mb),
            max_audio_bytes=int(max_image_mb * mb),
            allowed_media_paths=tuple(allow_media_path),
            allowed_media_urls=tuple(allow_media_url),
            prefix_reuse=prefix_reuse,
        )
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    backend, tokenizer, spec, chunk = _open_backend(bundle, checkpoint, audio_checkpoint, preset, max_context)
    try:
        run_server(
            backend,
            tokenizer,
            spec,
            config,
            host=host,
            port=port,
            prefill_chunk=chunk,
            announce=lambda line: console.print(line, highlight=False),
        )
    except OSError as e:
        console.print(f"[bold red]error:[/] cannot listen on {host}:{port}: {e.strerror or e}", highlight=False)
        raise typer.Exit(1) from None


def main() -> None:
    app()


if __name__ == "__main__":
    main()
