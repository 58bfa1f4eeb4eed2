"""Write a random-weight AutoGLM-Phone-9B checkpoint with the real config, streaming tensor by tensor.

    .venv/bin/python tools/make_real_checkpoint.py --out /work/ckpt/autoglm-phone-9b-random
    .venv/bin/python tools/make_real_checkpoint.py --out /tmp/one --text-layers 1 --vision-depth 1

Output: a Hugging Face directory as the real one is laid out: config.json (Glm4vConfig, real dims),
generation_config.json, preprocessor_config.json (Glm4vImageProcessor, min/max pixels 12544 /
9633792, CLIP mean/std), tokenizer.json, and bf16 safetensors shards with
model.safetensors.index.json. Tensor names and shapes come from transformers'
Glm4vForConditionalGeneration built on the meta device.

Memory stays bounded (one chunk of one tensor at a time): each shard's header is written first,
then every tensor is generated in fixed-size chunks and appended. Every tensor has its own
generator seeded from (--seed, name), so layer 0 is the same in a 1-layer and a 40-layer
checkpoint, and the same seed gives byte-identical files. The directory is built under a
temporary name and renamed at the end: a killed run leaves no half checkpoint at --out.

Tokenizer: the tiny preset's byte-level BPE (4073 ids), padded with unreachable filler tokens up to
the special-token base, then GLM's added tokens (autoglm_runtime.tokenizer.GLM_ADDED_TOKENS) in
order. The base is vocab_size - 223, which for the real 151552 is 151329: <|endoftext|> 151329,
<|user|> 151336, <|observation|> 151338, <|begin_of_image|> 151339, <|end_of_image|> 151340,
<|image|> 151343, </answer> 151348. Ids past the added tokens are embedding padding, as in the real
model. Never write it inside a git work tree: the full size is about 20 GB.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import os
import shutil
import struct
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TINY_TOKENIZER = ROOT / "export" / "autoglm_export" / "presets" / "tiny" / "tokenizer.json"
REAL_VOCAB = 151552
SPECIAL_BASE_FROM_END = REAL_VOCAB - 151329  # 223: the real checkpoint's specials start here
CHUNK_ELEMENTS = 1 << 24  # 16M elements: 64 MB fp32 + 32 MB bf16 per generation step
HEADER_ALIGN = 8  # safetensors pads the header so data starts aligned


def special_ids(vocab_size: int) -> dict[str, int]:
    from autoglm_runtime.tokenizer import GLM_ADDED_TOKENS

    base = vocab_size - SPECIAL_BASE_FROM_END
    return {content: base + i for i, (content, _) in enumerate(GLM_ADDED_TOKENS)}


def hf_config(text_layers: int, vision_depth: int, vocab_size: int):
    """The autoglm-phone-9b preset's config (the real facts, written once there), cut to the asked
    depth and vocabulary, plus what transformers' classes need to build the model."""
    from transformers import Glm4vConfig

    from autoglm_export.presets import AUTOGLM_PHONE_9B_CONFIG

    real = copy.deepcopy(AUTOGLM_PHONE_9B_CONFIG)
    ids = special_ids(vocab_size)
    eos = [ids["<|endoftext|>"], ids["<|user|>"], ids["<|observation|>"], ids["</answer>"]]
    text = {
        **real["text_config"],
        "vocab_size": vocab_size,
        "num_hidden_layers": text_layers,
        "hidden_act": "silu",
        "eos_token_id": eos,
        "pad_token_id": ids["<|endoftext|>"],
    }
    vision = {
        **real["vision_config"],
        "depth": vision_depth,
        "in_channels": 3,
        "hidden_act": "silu",
        "rms_norm_eps": real["text_config"]["rms_norm_eps"],
    }
    cfg = Glm4vConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image|>"],
        image_start_token_id=ids["<|begin_of_image|>"],
        image_end_token_id=ids["<|end_of_image|>"],
        video_token_id=ids["<|video|>"],
        video_start_token_id=ids["<|begin_of_video|>"],
        video_end_token_id=ids["<|end_of_video|>"],
        tie_word_embeddings=real["tie_word_embeddings"],
        eos_token_id=eos,
        pad_token_id=ids["<|endoftext|>"],
    )
    cfg.architectures = ["Glm4vForConditionalGeneration"]
    cfg.dtype = "bfloat16"
    return cfg, eos


def tensor_specs(cfg) -> list[tuple[str, tuple[int, ...]]]:
    """(HF name, shape) of every saved tensor, in transformers' state_dict order."""
    from transformers import Glm4vForConditionalGeneration

    with torch.device("meta"):
        model = Glm4vForConditionalGeneration(cfg)
    return [(name, tuple(t.shape)) for name, t in model.state_dict().items()]


def _generator(seed: int, name: str) -> torch.Generator:
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def tensor_chunks(name: str, shape: tuple[int, ...], seed: int):
    """bf16 chunks of one tensor. Matrices ~ N(0, 0.02); 1-D: norms 1 + N(0, 0.05), biases N(0, 0.05)."""
    gen = _generator(seed, name)
    total = math.prod(shape)
    is_norm = len(shape) == 1 and name.endswith(".weight")
    std = 0.02 if len(shape) > 1 else 0.05
    for start in range(0, total, CHUNK_ELEMENTS):
        chunk = torch.empty(min(CHUNK_ELEMENTS, total - start), dtype=torch.float32)
        chunk.normal_(0.0, std, generator=gen)
        if is_norm:
            chunk += 1.0
        yield chunk.to(torch.bfloat16)


def plan_shards(specs, shard_bytes: int) -> list[list[tuple[str, tuple[int, ...]]]]:
    """Greedy, in order, like transformers' shard_checkpoint: a tensor larger than a shard gets its own."""
    shards, current, size = [], [], 0
    for name, shape in specs:
        nbytes = math.prod(shape) * 2
        if current and size + nbytes > shard_bytes:
            shards.append(current)
            current, size = [], 0
        current.append((name, shape))
        size += nbytes
    if current:
        shards.append(current)
    return shards


def write_shard(path: Path, tensors, seed: int) -> int:
    """One safetensors file: header, then each tensor's bytes streamed chunk by chunk."""
    header, offset = {}, 0
    for name, shape in tensors:
        nbytes = math.prod(shape) * 2
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    header["__metadata__"] = {"format": "pt"}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-(len(raw) + 8) % HEADER_ALIGN)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for name, shape in tensors:
            f.writelines(chunk.view(torch.int16).numpy().data for chunk in tensor_chunks(name, shape, seed))
        f.flush()
        os.fsync(f.fileno())
    return offset


def padded_tokenizer(vocab_size: int) -> str:
    """The tiny BPE with filler tokens up to the special base, then GLM's added tokens at their real ids."""
    from autoglm_runtime.tokenizer import GLM_ADDED_TOKENS

    tok = json.loads(TINY_TOKENIZER.read_text(encoding="utf-8"))
    vocab = tok["model"]["vocab"]
    base = vocab_size - SPECIAL_BASE_FROM_END
    if base < len(vocab):
        raise SystemExit(f"error: --vocab-size {vocab_size} leaves {base} base ids, below the BPE's {len(vocab)}")
    # Fillers have no merges leading to them: decodable, never produced by encoding.
    vocab.update({f"<|filler_{i}|>": i for i in range(len(vocab), base)})
    by_content = {t["content"]: t for t in tok["added_tokens"]}
    tok["added_tokens"] = [{**by_content[c], "id": base + i} for i, (c, _) in enumerate(GLM_ADDED_TOKENS)]
    return json.dumps(tok, ensure_ascii=False, separators=(",", ":")) + "\n"


def preprocessor_config() -> dict:
    from autoglm_runtime.preprocess.image import CLIP_MEAN, CLIP_STD

    return {
        "image_processor_type": "Glm4vImageProcessor",
        "processor_class": "Glm4vProcessor",
        "do_resize": True,
        "size": {"shortest_edge": 12544, "longest_edge": 9633792},
        "resample": 3,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(CLIP_MEAN),
        "image_std": list(CLIP_STD),
        "do_convert_rgb": True,
        "patch_size": 14,
        "temporal_patch_size": 2,
        "merge_size": 2,
    }


def _inside_git_worktree(path: Path) -> bool:
    for parent in [path, *path.parents]:
        if (parent / ".git").exists():
            return True
    return False


def make(
    out: Path, text_layers: int, vision_depth: int, vocab_size: int, seed: int, shard_bytes: int, log=print
) -> dict:
    cfg, eos = hf_config(text_layers, vision_depth, vocab_size)
    specs = tensor_specs(cfg)
    shards = plan_shards(specs, shard_bytes)
    needed = sum(math.prod(shape) * 2 for _, shape in specs) + (50 << 20)  # + tokenizer and configs
    free = shutil.disk_usage(out.parent).free
    if free < needed:
        raise SystemExit(
            f"error: {out.parent}: the checkpoint needs {needed / 1e9:.2f} GB, only {free / 1e9:.2f} GB free"
        )
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    tmp.mkdir(parents=True)
    try:
        cfg.to_json_file(tmp / "config.json", use_diff=False)
        gen = {"eos_token_id": eos, "pad_token_id": eos[0]}  # only what glm4v.md records of the real file
        (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
        (tmp / "preprocessor_config.json").write_text(json.dumps(preprocessor_config(), indent=2) + "\n")
        (tmp / "tokenizer.json").write_text(padded_tokenizer(vocab_size), encoding="utf-8")
        weight_map, total = {}, 0
        for i, tensors in enumerate(shards):
            fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            t0 = time.perf_counter()
            nbytes = write_shard(tmp / fname, tensors, seed)
            total += nbytes
            weight_map.update({name: fname for name, _ in tensors})
            log(f"  {fname}: {len(tensors)} tensors, {nbytes / 1e9:.2f} GB in {time.perf_counter() - t0:.1f} s")
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        os.replace(tmp, out)  # atomic: --out is whole or absent
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    params = sum(math.prod(s) for _, s in specs)
    return {"params": params, "bytes": total, "shards": len(shards), "tensors": len(specs)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="output directory (must not exist; not in a git work tree)")
    ap.add_argument("--text-layers", type=int, default=40, help="decoder layers (real: 40)")
    ap.add_argument("--vision-depth", type=int, default=24, help="vision blocks (real: 24)")
    ap.add_argument(
        "--vocab-size",
        type=int,
        default=REAL_VOCAB,
        help="embedding rows (real: 151552); the specials start 223 ids before the end",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shard-gb", type=float, default=5.0, help="maximum shard size in GB (1e9 bytes)")
    ap.add_argument("--allow-git-tree", action="store_true", help="allow --out inside a git work tree (tests)")
    args = ap.parse_args(argv)
    out = args.out.resolve()
    if out.exists():
        print(f"error: {out} already exists; remove it or choose another --out", file=sys.stderr)
        return 1
    if not args.allow_git_tree and _inside_git_worktree(out.parent):
        print(f"error: {out} is inside a git work tree; write checkpoints outside it", file=sys.stderr)
        return 1
    if args.text_layers < 1 or args.vision_depth < 1:
        print("error: --text-layers and --vision-depth must be >= 1", file=sys.stderr)
        return 1
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    stats = make(out, args.text_layers, args.vision_depth, args.vocab_size, args.seed, int(args.shard_gb * 1e9))
    print(
        f"wrote {out}: {stats['params'] / 1e9:.3f} B params, {stats['tensors']} tensors, "
        f"{stats['bytes'] / 1e9:.2f} GB bf16 in {stats['shards']} shards, {time.perf_counter() - t0:.1f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
