"""Tiny checkpoints and export settings shared by the target tests (tests/export/targets/).

Plain functions (not fixtures) so module-scoped fixtures can call them with ``tmp_path_factory``, and
so ``perturbed_export_main`` can run the same export in a separate Python process.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from conftest import TINY_TOKENIZER, TOKENIZER_IDS, build_hf_glm4v, build_hf_glmasr

# Small static shapes: every export in the tests uses them.
IMAGE_HW = (56, 56)  # 4x4 patches -> 4 image tokens
AUDIO_FRAMES = 200
MAX_CONTEXT = 128
MAX_SEQ_LEN = 32  # shorter than every calibration prompt: prefill runs in chunks
GROUP_SIZE = 32
# The eos ids of the project tokenizer's <|endoftext|>, <|user|>, <|observation|>.
EOS_IDS = [4073, 4080, 4082]
# Dense-layer intermediate_size that is not a multiple of GROUP_SIZE: that layer's down_proj
# (in_features 48) must fall back from 8da4w to 8da8w; every other text linear divides.
ODD_FFN = 48


def write_chat_checkpoint(path: Path, *, moe: bool = False, text: dict | None = None, seed: int = 0, **kwargs) -> Path:
    """A seeded random Glm4v(Moe) checkpoint (vocab 4096) with the project tokenizer next to its weights."""
    model = build_hf_glm4v(
        text={"vocab_size": 4096, **(text or {})}, moe=moe, seed=seed, eos_token_id=EOS_IDS, **TOKENIZER_IDS, **kwargs
    )
    model.save_pretrained(path)
    shutil.copy(TINY_TOKENIZER, Path(path) / "tokenizer.json")
    return Path(path)


def write_asr_checkpoint(path: Path, text_hidden: int = 64, seed: int = 0, **audio) -> Path:
    """A seeded random GlmAsr checkpoint whose projector outputs ``text_hidden``."""
    build_hf_glmasr(text_hidden=text_hidden, seed=seed, **audio).save_pretrained(path)
    return Path(path)


def write_moe_checkpoints(root: Path) -> tuple[Path, Path]:
    """Glm4vMoe (layer 0 dense with intermediate ODD_FFN, layer 1 MoE: 4 experts top-2 + 1 shared),
    one-block vision tower, plus a one-layer GlmAsr checkpoint to attach with --audio-checkpoint."""
    ckpt = write_chat_checkpoint(root / "moe", moe=True, text={"intermediate_size": ODD_FFN}, vision={"depth": 1})
    asr = write_asr_checkpoint(root / "asr", num_hidden_layers=1)
    return ckpt, asr


def moe_request(ckpt: Path, asr: Path):
    from autoglm_export.request import ModelRequest

    return ModelRequest(ckpt, asr, image_hw=IMAGE_HW, audio_frames=AUDIO_FRAMES, max_context=MAX_CONTEXT)


def moe_options(out: Path, **kw):
    from autoglm_export.quantize import QuantRecipe
    from autoglm_export.targets.executorch.export import ExecuTorchOptions

    # No text_decoder_step: the MoE bundles decode through text_decoder (the tiny bundle has the step).
    kw.setdefault("decode_step", False)
    return ExecuTorchOptions(
        out=out, recipe=QuantRecipe(linear="8da4w", group_size=GROUP_SIZE), max_seq_len=MAX_SEQ_LEN, **kw
    )


def perturbed_export_main() -> None:
    """``python -c ... CKPT ASR OUT RESULT_JSON``: export the MoE checkpoint exactly as the in-process
    fixture does, but with the ExecuTorch outputs of text_decoder perturbed before the parity gate.

    Writes the lowered program's bytes next to RESULT_JSON as ``lowered.pte`` (for the
    reproducibility check) and the exception it ended with into RESULT_JSON.
    """
    import logging

    import numpy as np

    import autoglm_export.pipeline as pipeline
    import autoglm_export.targets.executorch.export as executorch_export
    from autoglm_export.pipeline import export_bundle

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    ckpt, asr, out, result_path = (Path(a) for a in sys.argv[1:5])
    lowered_path = result_path.parent / "lowered.pte"
    real_lower, real_run = executorch_export.lower, pipeline.run_components

    def spy_lower(*args, **kwargs):
        lowered = real_lower(*args, **kwargs)
        lowered.write(lowered_path)
        return lowered

    def perturbed_run(backend, probes, max_seq_len, *components):
        got = real_run(backend, probes, max_seq_len, *components)
        if backend.name == "executorch":  # the references stay untouched
            logits = got["text_decoder"]
            noise = np.random.default_rng(0).standard_normal(logits.shape).astype(logits.dtype)
            got["text_decoder"] = logits + noise * logits.std()
        return got

    executorch_export.lower, pipeline.run_components = spy_lower, perturbed_run
    result: dict = {"error_type": None, "error_module": None, "message": None}
    try:
        export_bundle("executorch", moe_request(ckpt, asr), moe_options(out))
    except Exception as e:  # reported to the test, which decides
        result = {"error_type": type(e).__name__, "error_module": type(e).__module__, "message": str(e)}
    result["lowered"] = str(lowered_path) if lowered_path.exists() else None
    result_path.write_text(json.dumps(result))
