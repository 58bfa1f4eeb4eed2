"""The ``autoglm-export`` command line. Commands only parse options and call library functions."""

from __future__ import annotations

import functools
import logging
import sys
import warnings
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from autoglm_runtime.errors import AutoglmError

app = typer.Typer(
    help="Export AutoGLM-Phone-9B-family models to phones (ExecuTorch, Core ML, ONNX), with parity checks.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console(stderr=True, soft_wrap=True)

CheckpointOpt = typer.Option(None, "--checkpoint", help="Hugging Face checkpoint directory (glm4v / glm4v_moe, safetensors).")
AudioCheckpointOpt = typer.Option(None, "--audio-checkpoint", help="GlmAsr checkpoint directory whose encoder + projector become the audio tower.")
PresetOpt = typer.Option("tiny", "--preset", help="Model preset used when no --checkpoint is given: tiny, small, autoglm-phone-9b.")
QuantizedCheckpointOpt = typer.Option(None, "--quantized-checkpoint",
                                      help="Directory written by `calibrate` or `qat`: its integer weights are exported as they are (with the model it was made from).")
CalibrationDataOpt = typer.Option(None, "--calibration-data", help="Calibration set directory (default: the repository's calibration_data/).")
# calibrate and qat share their recipe and sample options.
CalQuantOpt = typer.Option("8da4w", "--quant", help="Text decoder linears: 8da4w or 8da8w.")
CalGroupSizeOpt = typer.Option(32, "--group-size", help="int4 weight group size: 32, 64, 128 (256).")
CalQuantEncoderOpt = typer.Option("8da8w", "--quant-encoder", help="Vision/audio tower linears: 8da4w, 8da8w, fp32.")
MaxPromptsOpt = typer.Option(None, "--max-prompts", help="Use at most this many calibration prompts.")
TextWindowsOpt = typer.Option(32, "--text-windows", help="Text-only samples of --seq-len tokens from the calibration text.")
SeqLenOpt = typer.Option(256, "--seq-len", help="Tokens per text-only sample.")


def guarded(fn):
    """User errors become one line on stderr and exit code 1; nothing else is swallowed."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except AutoglmError as exc:
            console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper


def parse_hw(value: Optional[str]) -> Optional[tuple[int, int]]:
    if value is None:
        return None
    try:
        h, w = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise typer.BadParameter(f"expected HxW such as 336x168, got '{value}'") from None
    return h, w


def linear_recipe(quant, group_size, quant_encoder, quant_embedding, quantized_checkpoint=None):
    """A torchao QuantRecipe; options left unset come from a quantized checkpoint when one is given."""
    from .quantize import QuantRecipe
    from .quantize.qcheckpoint import read_recipe

    base = read_recipe(quantized_checkpoint) if quantized_checkpoint is not None else {}
    return QuantRecipe(linear=quant or base.get("linear", "8da4w"), group_size=group_size or int(base.get("group_size", 32)),
                       encoder=quant_encoder or base.get("encoder", "8da8w"), embedding=quant_embedding)


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")):
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s", stream=sys.stderr)
    if not verbose:  # third-party chatter (torchao's optional CUDA kernels, pytree deprecations in torch.export)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        for name in ("torchao", "torch.utils._pytree", "transformers"):
            logging.getLogger(name).setLevel(logging.ERROR)


@app.command()
@guarded
def info(
    checkpoint: Optional[Path] = CheckpointOpt,
    audio_checkpoint: Optional[Path] = AudioCheckpointOpt,
    preset: str = PresetOpt,
):
    """Print the model configuration, component shapes and parameter counts."""
    from .source import open_source

    src = open_source(checkpoint, audio_checkpoint, preset)
    cfg, model = src.config, src.model
    console.print(f"[bold]{src.label}[/] ({cfg.model_type})")
    for name, module in (("text", model.text), ("vision", model.vision), ("audio", model.audio)):
        if module is not None:
            console.print(f"  {name:7s} {sum(p.numel() for p in module.parameters()) / 1e6:9.2f} M params")
    t = cfg.text
    console.print(
        f"  decoder: hidden {t.hidden_size}, layers {t.num_hidden_layers}, heads {t.num_attention_heads}/"
        f"{t.num_key_value_heads} kv, head_dim {t.head_dim}, rotary {t.rotary_dim} mrope {list(t.mrope_section)}"
        + (f", MoE {t.n_routed_experts} experts top-{t.num_experts_per_tok}" if t.is_moe else "")
    )
    s = src.spec
    console.print(f"  context {s.max_context}, image {s.image.height}x{s.image.width} -> {s.image_tokens} tokens"
                  + (f", audio {s.audio.num_frames} frames -> {s.audio_tokens} tokens" if s.audio else ""))


def _open_backend(bundle: Optional[Path], checkpoint, audio_checkpoint, preset, max_context):
    """A bundle directory (its target's backend) or the eager model (torch backend)."""
    if bundle is not None:
        from autoglm_runtime.bundle import open_bundle

        from autoglm_runtime.backends import backend_for_bundle

        b = open_bundle(bundle)
        return backend_for_bundle(b), b.tokenizer_path, b.spec, b.manifest.get("max_seq_len")
    from autoglm_runtime.backends.torch_backend import TorchBackend

    from .source import open_source

    src = open_source(checkpoint, audio_checkpoint, preset, max_context=max_context)
    return TorchBackend(src.model), src.tokenizer_path, src.spec, None


@app.command()
@guarded
def run(
    bundle: Optional[Path] = typer.Argument(None, help="Bundle directory (dist/android, ...). Without it: the eager PyTorch model."),
    prompt: str = typer.Option(..., "--prompt", "-p", help="User message."),
    image: Optional[Path] = typer.Option(None, "--image", help="Image file (PNG/JPEG/...)."),
    audio: Optional[Path] = typer.Option(None, "--audio", help="WAV file (resampled to 16 kHz mono)."),
    system: Optional[str] = typer.Option(None, "--system", help="System message."),
    checkpoint: Optional[Path] = CheckpointOpt,
    audio_checkpoint: Optional[Path] = AudioCheckpointOpt,
    preset: str = PresetOpt,
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", min=1),
    temperature: float = typer.Option(0.0, "--temperature", min=0.0, help="0 = greedy."),
    top_p: float = typer.Option(1.0, "--top-p", min=0.0, max=1.0),
    seed: int = typer.Option(0, "--seed"),
    thinking: Optional[bool] = typer.Option(None, "--thinking/--no-thinking", help="GLM enable_thinking; default: template default."),
    max_context: Optional[int] = typer.Option(None, "--max-context", help="KV-cache length for the eager model (default: preset's)."),
):
    """Generate with the reference runtime, streaming tokens: through a bundle, or the eager model."""
    from autoglm_runtime.sampling import SamplingConfig
    from autoglm_runtime.session import Session

    backend, tokenizer, spec, chunk = _open_backend(bundle, checkpoint, audio_checkpoint, preset, max_context)
    session = Session(backend, tokenizer, spec, prefill_chunk=chunk)
    result = session.generate(
        prompt,
        image=image,
        audio=audio,
        system=system,
        max_new_tokens=max_new_tokens,
        sampling=SamplingConfig(temperature=temperature, top_p=top_p, seed=seed),
        enable_thinking=thinking,
        on_text=lambda text: (sys.stdout.write(text), sys.stdout.flush()),
    )
    sys.stdout.write("\n")
    console.print(
        f"[dim]{backend.name}: {result.prompt_tokens} prompt tokens, {len(result.token_ids)} generated, "
        f"stop: {result.stop_reason}, prefill {result.prefill_s * 1e3:.0f} ms, "
        f"decode {result.decode_ms_per_token:.1f} ms/token[/]",
        highlight=False,
    )


@app.command()
@guarded
def android(
    checkpoint: Optional[Path] = CheckpointOpt,
    audio_checkpoint: Optional[Path] = AudioCheckpointOpt,
    preset: str = PresetOpt,
    out: Path = typer.Option(Path("dist/android"), "--out", help="Bundle directory (written atomically)."),
    quant: Optional[str] = typer.Option(None, "--quant", help="Text decoder linears: 8da4w (default: int8 dynamic act, int4 weights), 8da8w, fp32."),
    group_size: Optional[int] = typer.Option(None, "--group-size", help="int4 weight group size: 32 (default), 64, 128 (256)."),
    quant_encoder: Optional[str] = typer.Option(None, "--quant-encoder", help="Vision/audio tower linears: 8da4w, 8da8w (default), fp32."),
    quant_embedding: str = typer.Option("8", "--quant-embedding", help="Token embedding: 4, 8 or none."),
    quantized_checkpoint: Optional[Path] = QuantizedCheckpointOpt,
    max_seq_len: int = typer.Option(128, "--max-seq-len", help="Longest text_decoder call (prefill chunk)."),
    max_context: Optional[int] = typer.Option(None, "--max-context-len", help="KV-cache length (default: preset's)."),
    image_size: Optional[str] = typer.Option(None, "--image-size", help="Export image resolution HxW, multiples of 28."),
    audio_frames: Optional[int] = typer.Option(None, "--audio-frames", help="Mel frames per audio clip (100 per second)."),
    backend: str = typer.Option("xnnpack", "--backend", help="xnnpack or qnn (needs QNN_SDK_ROOT)."),
    soc: Optional[str] = typer.Option(None, "--soc", help="Snapdragon SoC for qnn, e.g. SM8650."),
    validate: bool = typer.Option(True, "--validate/--no-validate", help="Run the bundle with ExecuTorch and gate on parity."),
    custom_ops: bool = typer.Option(True, "--custom-ops/--no-custom-ops", help="Use ExecuTorch's update_cache/custom_sdpa kernels in the decoder."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing bundle."),
):
    """Export an ExecuTorch bundle for Android: model.pte + tokenizer.json + manifest.json + parity.json."""
    from .android import AndroidOptions, export_android
    from .pipeline import ModelRequest

    recipe = linear_recipe(quant, group_size, quant_encoder, quant_embedding, quantized_checkpoint)
    request = ModelRequest(checkpoint, audio_checkpoint, preset, max_context, parse_hw(image_size), audio_frames,
                           quantized_checkpoint)
    opts = AndroidOptions(out=out, recipe=recipe, max_seq_len=max_seq_len, backend=backend, soc=soc,
                          validate=validate, force=force, custom_ops=custom_ops)
    path, report = export_android(request, opts)
    if report is not None:
        console.print("\n".join(report.lines()), highlight=False)
    console.print(f"[green]bundle written to {path}[/]")


@app.command()
@guarded
def onnx(
    checkpoint: Optional[Path] = CheckpointOpt,
    audio_checkpoint: Optional[Path] = AudioCheckpointOpt,
    preset: str = PresetOpt,
    out: Path = typer.Option(Path("dist/onnx"), "--out", help="Bundle directory (written atomically)."),
    quant: str = typer.Option("int4", "--quant", help="Linear layers of all towers, lm_head included: int4 (MatMulNBits) or fp32."),
    block_size: Optional[int] = typer.Option(None, "--block-size", help="int4 block size along the input dimension: 16, 32 (default, or the quantized checkpoint's group size), 64, 128, 256."),
    quantized_checkpoint: Optional[Path] = QuantizedCheckpointOpt,
    max_seq_len: int = typer.Option(128, "--max-seq-len", help="Prefill chunk for validation and `run` (the graph takes any length)."),
    max_context: Optional[int] = typer.Option(None, "--max-context-len", help="KV-cache length (default: preset's)."),
    image_size: Optional[str] = typer.Option(None, "--image-size", help="Export image resolution HxW, multiples of 28."),
    audio_frames: Optional[int] = typer.Option(None, "--audio-frames", help="Mel frames per audio clip (100 per second)."),
    validate: bool = typer.Option(True, "--validate/--no-validate", help="Run the bundle with onnxruntime and gate on parity."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing bundle."),
):
    """Export an ONNX bundle: one .onnx per component + tokenizer.json + manifest.json + parity.json."""
    from .onnx_export import OnnxOptions, OnnxQuant, export_onnx
    from .pipeline import ModelRequest

    request = ModelRequest(checkpoint, audio_checkpoint, preset, max_context, parse_hw(image_size), audio_frames,
                           quantized_checkpoint=quantized_checkpoint)
    opts = OnnxOptions(out=out, quant=OnnxQuant(quant, block_size), max_seq_len=max_seq_len, validate=validate, force=force)
    path, report = export_onnx(request, opts)
    if report is not None:
        console.print("\n".join(report.lines()), highlight=False)
    console.print(f"[green]bundle written to {path}[/]")


@app.command()
@guarded
def ios(
    checkpoint: Optional[Path] = CheckpointOpt,
    audio_checkpoint: Optional[Path] = AudioCheckpointOpt,
    preset: str = PresetOpt,
    out: Path = typer.Option(Path("dist/ios"), "--out", help="Bundle directory (written atomically)."),
    min_ios: int = typer.Option(18, "--min-ios", help="18: KV cache as Core ML state, int4, prefill/decode functions. 17: cache as inputs/outputs, int8."),
    quant: Optional[str] = typer.Option(None, "--quant", help="Weights: int4 (per-block, iOS 18; the default there), int8 (per-channel; the default for 17), fp16. With --quantized-checkpoint: the token embedding only."),
    block_size: Optional[int] = typer.Option(None, "--block-size", help="int4 block size along the input channels: 16, 32 (default, or the quantized checkpoint's group size), 64, 128, 256."),
    quantized_checkpoint: Optional[Path] = QuantizedCheckpointOpt,
    max_context: Optional[int] = typer.Option(None, "--max-context-len", help="KV-cache length (default: preset's)."),
    prefill_chunk: int = typer.Option(64, "--prefill-chunk", "--max-seq-len", help="Tokens per prefill call (the decoder's fixed prefill shape)."),
    image_size: Optional[str] = typer.Option(None, "--image-size", help="Export image resolution HxW, multiples of 28."),
    audio_frames: Optional[int] = typer.Option(None, "--audio-frames", help="Mel frames per audio clip (100 per second)."),
    compute_units: str = typer.Option("all", "--compute-units", help="all, cpu_and_gpu, cpu_and_ne (recorded for the app; used by MLModel validation on macOS)."),
    validate: bool = typer.Option(True, "--validate/--no-validate", help="Run the packages (MIL interpreter on Linux, MLModel on macOS) and gate on parity."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing bundle."),
):
    """Export Core ML packages for iPhone: *.mlpackage + tokenizer.json + manifest.json + parity.json."""
    from .ios_export import IOSOptions, export_ios
    from .pipeline import ModelRequest
    from .targets.coreml import CoreMLRecipe

    recipe = CoreMLRecipe(weights=quant or ("int4" if min_ios >= 18 else "int8"), block_size=block_size, min_ios=min_ios)
    request = ModelRequest(checkpoint, audio_checkpoint, preset, max_context, parse_hw(image_size), audio_frames,
                           quantized_checkpoint=quantized_checkpoint)
    opts = IOSOptions(out=out, recipe=recipe, prefill_chunk=prefill_chunk, compute_units=compute_units,
                      validate=validate, force=force)
    path, report = export_ios(request, opts)
    if report is not None:
        console.print("\n".join(report.lines()), highlight=False)
    console.print(f"[green]bundle written to {path}[/]")


@app.command()
@guarded
def calibrate(
    checkpoint: Optional[Path] = CheckpointOpt,
    audio_checkpoint: Optional[Path] = AudioCheckpointOpt,
    preset: str = PresetOpt,
    out: Path = typer.Option(Path("dist/quantized"), "--out", help="Quantized checkpoint directory (written atomically)."),
    method: str = typer.Option("gptq", "--method", help="gptq (activation-aware, block by block) or rtn (round-to-nearest, for comparison)."),
    quant: str = CalQuantOpt,
    group_size: int = CalGroupSizeOpt,
    quant_encoder: str = CalQuantEncoderOpt,
    data: Optional[Path] = CalibrationDataOpt,
    max_prompts: Optional[int] = MaxPromptsOpt,
    text_windows: int = TextWindowsOpt,
    seq_len: int = SeqLenOpt,
    damp: float = typer.Option(0.01, "--damp", help="GPTQ dampening, a fraction of the mean Hessian diagonal."),
    max_context: Optional[int] = typer.Option(None, "--max-context-len", help="KV-cache length (default: preset's)."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing quantized checkpoint."),
):
    """Post-training quantization with calibration (GPTQ) through the full multimodal path; writes a quantized checkpoint."""
    from .calibrate import CalibrateOptions, run_calibrate
    from .pipeline import ModelRequest
    from .quantize import QuantRecipe

    recipe = QuantRecipe(linear=quant, group_size=group_size, encoder=quant_encoder)
    opts = CalibrateOptions(out=out, recipe=recipe, method=method, data=data, max_prompts=max_prompts,
                            text_windows=text_windows, seq_len=seq_len, damp=damp, force=force)
    path = run_calibrate(ModelRequest(checkpoint, audio_checkpoint, preset, max_context), opts)
    console.print(f"[green]quantized checkpoint written to {path}[/]; export it with --quantized-checkpoint {path}")


@app.command()
@guarded
def qat(
    checkpoint: Optional[Path] = CheckpointOpt,
    audio_checkpoint: Optional[Path] = AudioCheckpointOpt,
    preset: str = PresetOpt,
    out: Path = typer.Option(Path("dist/qat"), "--out", help="Quantized checkpoint directory (written atomically)."),
    steps: int = typer.Option(200, "--steps", help="Training steps (one calibration sample each)."),
    lr: float = typer.Option(3e-5, "--lr", help="Peak AdamW learning rate (warmup then cosine; 3e-5 was best of 1e-5..2e-4 on tiny)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the sample order and of torch."),
    top_k: int = typer.Option(64, "--top-k", help="Teacher probabilities kept per position for the distillation loss."),
    save_every: int = typer.Option(50, "--save-every", help="Save resumable training state every N steps."),
    resume: bool = typer.Option(False, "--resume", help="Continue from <out>.qat-state/ (same options and seed)."),
    train_encoders: bool = typer.Option(False, "--train-encoders", help="Also update the vision/audio towers (default: frozen, still fake-quantized)."),
    quant: str = CalQuantOpt,
    group_size: int = CalGroupSizeOpt,
    quant_encoder: str = CalQuantEncoderOpt,
    data: Optional[Path] = CalibrationDataOpt,
    max_prompts: Optional[int] = MaxPromptsOpt,
    text_windows: int = TextWindowsOpt,
    seq_len: int = SeqLenOpt,
    max_context: Optional[int] = typer.Option(None, "--max-context-len", help="KV-cache length (default: preset's)."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing quantized checkpoint."),
):
    """Quantization-aware training (torchao QATConfig) distilled from the fp model; writes a quantized checkpoint."""
    from .pipeline import ModelRequest
    from .qat import QATOptions, run_qat
    from .quantize import QuantRecipe

    recipe = QuantRecipe(linear=quant, group_size=group_size, encoder=quant_encoder)
    opts = QATOptions(out=out, recipe=recipe, steps=steps, lr=lr, seed=seed, top_k=top_k, save_every=save_every,
                      resume=resume, train_encoders=train_encoders, data=data, max_prompts=max_prompts, text_windows=text_windows, seq_len=seq_len, force=force)
    path = run_qat(ModelRequest(checkpoint, audio_checkpoint, preset, max_context), opts)
    console.print(f"[green]quantized checkpoint written to {path}[/]; export it with --quantized-checkpoint {path}")


@app.command()
@guarded
def validate(
    bundle: Path = typer.Argument(..., help="Bundle directory to check."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Compare against this checkpoint instead of the one in the manifest."),
    audio_checkpoint: Optional[Path] = AudioCheckpointOpt,
):
    """Re-run the parity checks of an existing bundle against freshly built references."""
    from .revalidate import validate_bundle

    report = validate_bundle(bundle, checkpoint, audio_checkpoint)
    console.print("\n".join(report.lines()), highlight=False)
    if not report.passed:
        console.print(f"[bold red]error:[/] {bundle} fails parity")
        raise typer.Exit(1)
    console.print(f"[green]{bundle}: parity passed[/]")


@app.command()
@guarded
def verify(
    checkpoint: Optional[Path] = CheckpointOpt,
    audio_checkpoint: Optional[Path] = AudioCheckpointOpt,
    preset: str = PresetOpt,
):
    """Check our re-implementation against transformers on an image+text prompt (needs transformers)."""
    from .source import open_source
    from .verify import verify_against_transformers

    report = verify_against_transformers(open_source(checkpoint, audio_checkpoint, preset))
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
    from .report import write_report

    results = write_report(bundles, out)
    for r in results:
        status = "PASS" if r.passed else f"FAIL {r.problem or '; '.join(r.report.failures)}"
        console.print(f"  {r.target or '?':10s} {r.path}: {status}", highlight=False)
    console.print(f"wrote {out} and {out.with_suffix('.html')}")
    if not all(r.passed for r in results):
        raise typer.Exit(1)


@app.command()
@guarded
def serve(
    bundle: Optional[Path] = typer.Argument(None, help="Bundle directory (dist/android, dist/onnx, dist/ios). Without it: the eager PyTorch model."),
    checkpoint: Optional[Path] = CheckpointOpt,
    audio_checkpoint: Optional[Path] = AudioCheckpointOpt,
    preset: str = PresetOpt,
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind. Anything but loopback without --api-key prints a warning."),
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="TCP port (0: a free one, printed at start)."),
    model_name: str = typer.Option("autoglm-phone-9b", "--model-name", help="The model id clients send (GET /v1/models)."),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="AUTOGLM_API_KEY", help="Require 'Authorization: Bearer KEY' on /v1/*."),
    max_queue: int = typer.Option(16, "--max-queue", min=0, help="Requests that may wait behind the running one; more get 429."),
    request_timeout: float = typer.Option(600.0, "--request-timeout", min=0.001, help="Seconds from arrival to the last token (504 after)."),
    max_body_mb: float = typer.Option(64.0, "--max-body-mb", min=0.001, help="Largest request body (413 beyond)."),
    max_image_mb: float = typer.Option(20.0, "--max-image-mb", min=0.001, help="Largest image or audio file in a request (413 beyond)."),
    allow_media_path: list[Path] = typer.Option([], "--allow-media-path", help="Directory whose files requests may name as image_url (repeatable). Default: none."),
    allow_media_url: list[str] = typer.Option([], "--allow-media-url", help="http(s) URL prefix requests may name as image_url (repeatable). Default: none."),
    prefix_reuse: bool = typer.Option(True, "--prefix-reuse/--no-prefix-reuse", help="Keep the KV cache of the prefix shared with the previous request."),
    max_context: Optional[int] = typer.Option(None, "--max-context", help="KV-cache length for the eager model (default: preset's)."),
):
    """Serve a bundle (or the eager model) over an OpenAI-compatible HTTP API: /v1/chat/completions, /v1/models, /health, /docs."""
    try:
        from autoglm_runtime.server import ServerConfig
        from autoglm_runtime.server import serve as run_server
    except ImportError as e:
        raise typer.BadParameter(f"serving needs the serve extra ({e}): pip install 'autoglm-export[serve]'") from None

    mb = 1 << 20
    try:
        config = ServerConfig(model_name=model_name, api_key=api_key, max_queue=max_queue, request_timeout=request_timeout,
                              max_body_bytes=int(max_body_mb * mb), max_image_bytes=int(max_image_mb * mb),
                              max_audio_bytes=int(max_image_mb * mb), allowed_media_paths=tuple(allow_media_path),
                              allowed_media_urls=tuple(allow_media_url), prefix_reuse=prefix_reuse)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    backend, tokenizer, spec, chunk = _open_backend(bundle, checkpoint, audio_checkpoint, preset, max_context)
    try:
        run_server(backend, tokenizer, spec, config, host=host, port=port, prefill_chunk=chunk,
                   announce=lambda line: console.print(line, highlight=False))
    except OSError as e:
        console.print(f"[bold red]error:[/] cannot listen on {host}:{port}: {e.strerror or e}", highlight=False)
        raise typer.Exit(1) from None


def main() -> None:
    app()


if __name__ == "__main__":
    main()
