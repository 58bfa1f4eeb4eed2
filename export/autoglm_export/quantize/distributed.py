"""torch.distributed for ``calibrate`` and ``qat``: joining the process group, the few collectives they
use, and ``--nproc N`` (the same command line re-run under ``torchrun``).

Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) ``join()`` joins the group torchrun set up:
gloo for CPU tensors, and NCCL for CUDA tensors when the process has a GPU (one per local rank; torch
picks the backend by the tensor's device). Anything else is a group of one whose collectives return
at once, so a single process runs exactly the code it always ran. Ranks other than 0 log warnings and
errors only.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch

from ..errors import ExportError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ranks:
    """This process's place in the run (``rank`` of ``world``) and the collectives over all of them."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")  # where training computes: this rank's GPU, or the CPU

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        """Rank 0: the one that logs, shows progress and writes the results."""
        return self.rank == 0

    def mine(self, n: int) -> range:
        """This rank's share of ``n`` items (every ``world``-th one, from ``rank``); all of them alone."""
        return range(self.rank, n, self.world)

    def owner(self, i: int) -> int:
        return i % self.world

    def sum_(self, t: torch.Tensor) -> torch.Tensor:
        """In place: the element-wise sum over all ranks."""
        if self.distributed:
            import torch.distributed as dist

            dist.all_reduce(t)
        return t

    def mean(self, value: float) -> float:
        """The mean of one number over all ranks (fp64 on the wire)."""
        if not self.distributed:
            return value
        return float(self.sum_(torch.tensor([value], dtype=torch.float64))[0]) / self.world

    def share_(self, i: int, *tensors: torch.Tensor) -> None:
        """In place: every rank gets item ``i``'s tensors from its owner (the rank that computed them)."""
        if self.distributed:
            import torch.distributed as dist

            for t in tensors:
                dist.broadcast(t, src=self.owner(i))

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()


ONE = Ranks()


def under_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_rank_zero() -> bool:
    """Before or after ``join()``: whether this process is rank 0 (the one that reports)."""
    return int(os.environ.get("RANK", "0")) == 0


@contextmanager
def join() -> Iterator[Ranks]:
    """The ranks of this run: the torchrun group (joined here, left on exit), or ``ONE``."""
    if not under_torchrun():
        yield ONE
        return
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
        device, backend = torch.device("cuda", local), "cpu:gloo,cuda:nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    # Ranks wait for one another for long stretches at full size (GPTQ of a wide linear on its owner,
    # rank 0 converting and writing the checkpoint): far longer than the default 10 min NCCL timeout.
    dist.init_process_group(backend, timeout=timedelta(hours=2))
    ranks = Ranks(dist.get_rank(), dist.get_world_size(), device)
    if not ranks.main:
        logging.disable(logging.INFO)  # warnings and errors only
    log.info("  %d ranks (%s; compute on %s)", ranks.world, backend, device.type)
    try:
        yield ranks
    finally:
        logging.disable(logging.NOTSET)
        dist.destroy_process_group()


def check_batch(batch_size: int, ranks: Ranks) -> None:
    if batch_size % ranks.world:
        raise ExportError(
            f"--batch-size {batch_size}: not a multiple of the {ranks.world} ranks (each rank takes an equal share)"
        )


# ----------------------------------------------------------------------------- --nproc N


def without_nproc(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            out.append(a)
    return out


def relaunch(nproc: int, argv: list[str]) -> int:
    """Run ``autoglm-export <argv>`` (without ``--nproc``) as ``nproc`` processes on this machine, as
    ``torchrun --standalone --nproc-per-node nproc`` would; returns 0, or 1 when a rank failed (each rank
    prints its own ``error:`` line; torchrun's traceback of the failure is not shown)."""
    import uuid

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    os.environ.setdefault("OMP_NUM_THREADS", "1")  # torchrun's default: N processes must not each take every core
    for name in ("torch.distributed.elastic", "torch.distributed.launcher"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=str(uuid.uuid4()),
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        max_restarts=0,
    )
    log.info("  %d processes: %s -m autoglm_export.cli %s", nproc, sys.executable, " ".join(without_nproc(argv)))
    try:
        elastic_launch(config, sys.executable)("-m", "autoglm_export.cli", *without_nproc(argv))
    except ChildFailedError:
        return 1
    return 0
