"""The optimum-executorch peer: a random Llama with the ``small`` preset's text dims, exported with
optimum-executorch's XNNPACK recipe. Runs in the peer's own virtualenv (bench/peer/make_venv.sh), not .venv:

    /work/venv-peer/bin/python bench/peer/export_peer.py --out DIR [--max-seq-len 1024]

Writes DIR/checkpoint (config + seeded random safetensors) and DIR/model.pte, then prints one JSON line
(wall time, the command, versions). Nothing here imports the project: the peer is built as its users would.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

# The `small` preset's text decoder (export/autoglm_export/presets: hidden 1024, 16 layers, 16/2 heads,
# ffn 2816, vocab 32000); a Llama has no sandwich norms, q/k/v bias or partial rotary, the bytes read per
# token are the same to within the biases.
DIMS = {
    "hidden_size": 1024,
    "num_hidden_layers": 16,
    "num_attention_heads": 16,
    "num_key_value_heads": 2,
    "intermediate_size": 2816,
    "vocab_size": 32000,
}
RECIPE = [
    "--recipe",
    "xnnpack",
    "--use_custom_sdpa",
    "--use_custom_kv_cache",
    "--qlinear",
    "8da4w",
    "--qembedding",
    "8w",
]


def write_checkpoint(path: Path, max_seq_len: int) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(**DIMS, max_position_embeddings=max(2048, max_seq_len), tie_word_embeddings=False)
    LlamaForCausalLM(cfg).save_pretrained(path, safe_serialization=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--max-seq-len", type=int, default=1024, help="optimum's --max_seq_len (its KV cache length)")
    args = p.parse_args()
    ckpt = args.out / "checkpoint"
    if ckpt.exists():
        shutil.rmtree(ckpt)
    args.out.mkdir(parents=True, exist_ok=True)
    write_checkpoint(ckpt, args.max_seq_len)
    cli = Path(sys.executable).with_name("optimum-cli")
    cmd = [str(cli), "export", "executorch", "--model", str(ckpt), "--task", "text-generation", *RECIPE]
    cmd += ["--max_seq_len", str(args.max_seq_len), "--output_dir", str(args.out)]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    wall = time.perf_counter() - t0
    from importlib.metadata import version

    import executorch
    import transformers

    print(
        json.dumps(
            {
                "pte": str(args.out / "model.pte"),
                "export_wall_s": wall,
                "command": " ".join(["optimum-cli", *cmd[1:]]),
                "versions": {
                    "optimum-executorch": version("optimum-executorch"),
                    "transformers": transformers.__version__,
                    "executorch": getattr(executorch, "__version__", version("executorch")),
                },
                "dims": DIMS,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
