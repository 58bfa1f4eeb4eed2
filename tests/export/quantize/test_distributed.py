"""``calibrate`` and ``qat`` on two CPU processes (torchrun, gloo) against one process.

One process runs here with one thread, as torchrun gives each rank (OMP_NUM_THREADS=1): the single
process's own results change with its thread count (fp32 matmul blocking), which is no distributed
effect. Under that condition calibration gives the same integers exactly (the per-rank Gram matrices
are fp64 sums of fp32 products, summed over ranks: only their order differs), and QAT's losses agree
to LOSS_TOL (gradients are summed over ranks by reduce-scatter instead of accumulated in one process).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from autoglm_export.cli import app
from autoglm_export.errors import AutoglmError
from autoglm_export.quantize import distributed, qcheckpoint
from autoglm_export.quantize.calibrate import CalibrateOptions, run_calibrate
from autoglm_export.quantize.qat import QATOptions, run_qat
from autoglm_export.request import ModelRequest

REPO = Path(__file__).resolve().parents[3]
CAL = dict(max_prompts=3, text_windows=2, seq_len=48)
QAT = dict(max_prompts=2, text_windows=2, seq_len=48, top_k=16, steps=6, save_every=3, batch_size=2, lr=1e-4, seed=7)
LOSS_TOL = dict(rel=1e-3, abs=1e-5)


def args(options: dict) -> list[str]:
    return [x for k, v in options.items() for x in (f"--{k.replace('_', '-')}", str(v))]


def run(*argv: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "export"), str(REPO / "runtime")]))
    env.pop("OMP_NUM_THREADS", None)  # torchrun's default: one thread per rank
    proc = subprocess.run([sys.executable, *argv], env=env, capture_output=True, text=True, timeout=timeout)
    return proc


def cli(*argv: str) -> subprocess.CompletedProcess:
    proc = run("-m", "autoglm_export.cli", *argv)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def assert_same_integers(a: Path, b: Path) -> None:
    qa, qb = qcheckpoint.load(a), qcheckpoint.load(b)
    assert sorted(qa.linears) == sorted(qb.linears)
    for fqn, q in qa.linears.items():
        assert torch.equal(q.codes, qb.linears[fqn].codes), fqn
        assert torch.equal(q.scales, qb.linears[fqn].scales), fqn
    assert sorted(qa.params) == sorted(qb.params)


def losses(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()]


# ----------------------------------------------------------------------------- calibrate


def test_calibrate_on_two_ranks_gives_the_same_integers(tmp_path, one_thread):
    one = run_calibrate(ModelRequest(), CalibrateOptions(out=tmp_path / "one", **CAL))
    proc = cli("calibrate", "--nproc", "2", "--out", str(tmp_path / "two"), *args(CAL))
    assert "2 ranks (gloo" in proc.stderr
    assert proc.stderr.count("gptq block 12/12") == 1  # progress on rank 0 only
    assert_same_integers(one, tmp_path / "two")
    cal = qcheckpoint.load(tmp_path / "two").config["calibration"]
    assert cal["ranks"] == 2 and cal["tokens"] == qcheckpoint.load(one).config["calibration"]["tokens"]
    assert cal["layers"] == qcheckpoint.load(one).config["calibration"]["layers"]  # token counts and MSEs too


# ----------------------------------------------------------------------------- qat


@pytest.fixture(scope="module")
def two_rank_qat(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("qat2") / "qat"
    cli("qat", "--nproc", "2", "--out", str(out), *args(QAT))
    return out


def test_qat_on_two_ranks_matches_one_process_with_the_same_global_batch(two_rank_qat, tmp_path, one_thread):
    one = run_qat(ModelRequest(), QATOptions(out=tmp_path / "one", **QAT))
    log1, log2 = losses(tmp_path / "one.qat-log.jsonl"), losses(two_rank_qat.with_name("qat.qat-log.jsonl"))
    assert len(log1) == len(log2) == QAT["steps"]
    assert [r["samples"] for r in log1] == [r["samples"] for r in log2]  # the same global batches
    assert len({s for r in log1 for s in r["samples"]}) > 1
    for r1, r2 in zip(log1, log2, strict=True):
        assert r2["loss"] == pytest.approx(r1["loss"], **LOSS_TOL), (r1, r2)
    q1, q2 = qcheckpoint.load(one), qcheckpoint.load(two_rank_qat)
    assert q2.config["calibration"]["ranks"] == 2 and q2.config["calibration"]["batch_size"] == 2
    differ = sum(int((q.codes != q2.linears[f].codes).sum()) for f, q in q1.linears.items())
    total = sum(q.codes.numel() for q in q1.linears.values())
    assert differ <= total * 1e-3, (differ, total)
    assert not two_rank_qat.with_name("qat.qat-state").exists()


def test_two_rank_qat_killed_and_resumed_gives_the_same_integers(two_rank_qat, tmp_path):
    out = tmp_path / "qat"
    torchrun = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    proc = run(*torchrun, str(Path(__file__).with_name("killed_qat.py")), "5", "qat", "--out", str(out), *args(QAT))
    assert proc.returncode != 0 and not out.exists()
    state = tmp_path / "qat.qat-state"
    assert json.loads((state / "state.json").read_text())["step"] == 3  # saved after step 3, killed in step 5
    assert sorted(p.suffix for p in state.iterdir()) == [".json", ".safetensors", ".safetensors"]  # a shard per rank
    with pytest.raises(AutoglmError, match="on 2 process"):  # N ranks resume on N
        run_qat(ModelRequest(), QATOptions(out=out, resume=True, **QAT))
    cli("qat", "--nproc", "2", "--resume", "--out", str(out), *args(QAT))
    assert_same_integers(two_rank_qat, out)
    straight, resumed = losses(two_rank_qat.with_name("qat.qat-log.jsonl")), losses(tmp_path / "qat.qat-log.jsonl")
    assert resumed[-3:] == straight[-3:]  # steps 4-6, appended after what the killed run logged
    assert not state.exists()


def test_two_rank_qat_checkpoint_exports_and_passes_the_parity_gate(two_rank_qat, tmp_path):
    out = tmp_path / "android"
    result = CliRunner().invoke(
        app, ["android", "--quantized-checkpoint", str(two_rank_qat), "--out", str(out), "--max-seq-len", "32"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads((out / "parity.json").read_text())["passed"]
    assert json.loads((out / "manifest.json").read_text())["quantization"]["quantized_checkpoint"]["method"] == "qat"


# ----------------------------------------------------------------------------- options


def test_nproc_is_dropped_from_the_relaunched_command_line():
    argv = ["-v", "qat", "--nproc", "2", "--steps", "3", "--nproc=4", "--out", "x"]
    assert distributed.without_nproc(argv) == ["-v", "qat", "--steps", "3", "--out", "x"]


def test_a_batch_the_ranks_cannot_share_evenly_is_refused():
    distributed.check_batch(4, distributed.Ranks(0, 2))
    with pytest.raises(AutoglmError, match="--batch-size 3: not a multiple of the 2 ranks"):
        distributed.check_batch(3, distributed.Ranks(0, 2))


def test_bad_options_are_refused_once_before_the_processes_start(tmp_path):
    result = CliRunner().invoke(app, ["qat", "--nproc", "2", "--batch-size", "3", "--out", str(tmp_path / "q")])
    assert result.exit_code == 1 and result.stderr.count("error:") == 1 and "--batch-size 3" in result.stderr
    result = CliRunner().invoke(app, ["calibrate", "--nproc", "0", "--out", str(tmp_path / "q")])
    assert result.exit_code == 1 and "--nproc 0" in result.stderr
    assert not (tmp_path / "q").exists()
