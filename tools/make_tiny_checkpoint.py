"""Write the embedded ``tiny`` checkpoint with transformers' own classes (seeded random weights).

    .venv/bin/python tools/make_tiny_checkpoint.py

Output: export/autoglm_export/presets/tiny/{config.json, model.safetensors, generation_config.json,
preprocessor_config.json} and presets/tiny/audio/ (a GlmAsr checkpoint). Weights are stored in
bfloat16 (half the size in git); loading upcasts them. The tokenizer (tokenizer.json, made by
tools/train_tokenizer.py) must exist first: its special-token ids go into the config.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch
from tokenizers import Tokenizer
from transformers import Glm4vConfig, Glm4vForConditionalGeneration, GlmAsrConfig, GlmAsrForConditionalGeneration

OUT = Path(__file__).resolve().parents[1] / "export/autoglm_export/presets/tiny"
SEED = 20261125
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def _perturb(model: torch.nn.Module) -> None:
    """HF init leaves norms at 1 and biases at 0; perturb them so every weight carries signal."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.05)


def main() -> int:
    tok = Tokenizer.from_file(str(OUT / "tokenizer.json"))
    ids = {
        t: tok.token_to_id(t)
        for t in [
            "<|image|>",
            "<|begin_of_image|>",
            "<|end_of_image|>",
            "<|video|>",
            "<|begin_of_video|>",
            "<|end_of_video|>",
            "<|endoftext|>",
            "<|user|>",
            "<|observation|>",
            "</answer>",
        ]
    }
    missing = [t for t, i in ids.items() if i is None]
    if missing:
        print(f"error: tokenizer.json lacks {missing}", file=sys.stderr)
        return 1
    eos = [ids["<|endoftext|>"], ids["<|user|>"], ids["<|observation|>"], ids["</answer>"]]
    cfg = Glm4vConfig(
        text_config=dict(
            vocab_size=tok.get_vocab_size(),
            hidden_size=128,
            intermediate_size=352,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=4096,
            eos_token_id=eos,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 10000.0,
                "partial_rotary_factor": 0.5,
                "mrope_section": [2, 3, 3],
            },
        ),
        vision_config=dict(
            depth=2,
            hidden_size=64,
            num_heads=2,
            intermediate_size=128,
            out_hidden_size=128,
            image_size=112,
            patch_size=14,
        ),
        image_token_id=ids["<|image|>"],
        image_start_token_id=ids["<|begin_of_image|>"],
        image_end_token_id=ids["<|end_of_image|>"],
        video_token_id=ids["<|video|>"],
        video_start_token_id=ids["<|begin_of_video|>"],
        video_end_token_id=ids["<|end_of_video|>"],
        eos_token_id=eos,
    )
    torch.manual_seed(SEED)
    model = Glm4vForConditionalGeneration(cfg).eval()
    _perturb(model)
    model.generation_config.eos_token_id = eos
    model.to(torch.bfloat16).save_pretrained(OUT)

    audio_cfg = GlmAsrConfig(
        audio_config=dict(
            hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2, num_mel_bins=128
        ),
        # GlmAsr's own LLM is not used by us (only its encoder + projector); keep it minimal.
        text_config=dict(
            vocab_size=64,
            hidden_size=128,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
        ),
    )
    torch.manual_seed(SEED + 1)
    audio = GlmAsrForConditionalGeneration(audio_cfg).eval()
    _perturb(audio)
    audio_dir = OUT / "audio"
    if audio_dir.exists():
        shutil.rmtree(audio_dir)
    audio.to(torch.bfloat16).save_pretrained(audio_dir)

    (OUT / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "image_processor_type": "Glm4vImageProcessor",
                "do_resize": True,
                "do_rescale": True,
                "rescale_factor": 1 / 255,
                "do_normalize": True,
                "image_mean": CLIP_MEAN,
                "image_std": CLIP_STD,
                "patch_size": 14,
                "temporal_patch_size": 2,
                "merge_size": 2,
                "feature_extractor_type": "WhisperFeatureExtractor",
                "feature_size": 128,
                "sampling_rate": 16000,
                "hop_length": 160,
                "n_fft": 400,
                "chunk_length": 30,
            },
            indent=2,
        )
        + "\n"
    )
    total = sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file())
    print(f"wrote {OUT} ({total / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
