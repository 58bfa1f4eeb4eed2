"""The QAT student on several ranks: FSDP2 sharding, Distributed Checkpoint state, the gathered result.

- ``shard``: ``torch.distributed.fsdp.fully_shard`` on each text decoder layer and on a root module
  whose forward is one sample's whole multimodal pass (the model's entry points are methods, not
  ``forward``: the root is what unshards the embedding, final norm and lm_head around each pass).
  Parameters become DTensors, each rank holding 1/world of every one; AdamW's moments follow.
- ``save`` / ``load``: those shards through Distributed Checkpoint with its safetensors writer
  (``HuggingFaceStorageWriter``, every rank writes its own file; no pickle), atomically renamed into place.
- ``gather``: the full trained parameters on rank 0, loaded into a plain (unsharded) model there.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from torch import nn

from .distributed import Ranks

PREFIX = "model."  # the root module holds the model under this name


class Student(nn.Module):
    """The FSDP root: ``forward(sample)`` is ``pass_fn(model, sample)`` (logits of one sample)."""

    def __init__(self, model: nn.Module, pass_fn, trained_towers: list[str]):
        super().__init__()
        self.model, self.pass_fn, self.trained_towers = model, pass_fn, trained_towers

    def forward(self, sample) -> torch.Tensor:
        logits = self.pass_fn(self.model, sample)
        # FSDP reduces a group's gradients in one collective, so every rank must have a gradient for the same
        # parameters: a trained tower this sample did not run (no screenshot here, one on another rank) gets zeros.
        towers = [p for name in self.trained_towers for p in getattr(self.model, name).parameters()]
        return logits + 0.0 * sum(p.sum() for p in towers) if towers else logits

    def drop_idle_gradients(self, batch: list) -> None:
        """After the step's backward: a trained tower that no sample of the whole batch ran gets no gradient
        (AdamW then leaves it alone, as in one process), not the zeros ``forward`` gave it."""
        ran = {"vision": any(s.pixels is not None for s in batch), "audio": any(s.features is not None for s in batch)}
        for name in self.trained_towers:
            if not ran[name]:
                for p in getattr(self.model, name).parameters():
                    p.grad = None


def shard(model: nn.Module, pass_fn, ranks: Ranks) -> Student:
    """Shard ``model`` in place over all ranks (call after requires_grad is set: FSDP keeps it per shard)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(ranks.device.type, (ranks.world,))
    for layer in model.text.layers:  # every sample runs every layer: their all-gathers line up on all ranks
        fully_shard(layer, mesh=mesh)
    # A tower runs only for samples with its modality, which differ between ranks, so it cannot be a
    # group of its own: frozen, it is replicated and left out of FSDP; trained, it joins the root group.
    frozen, trained = set(), []
    for name in ("vision", "audio"):
        tower = getattr(model, name)
        if tower is not None and not any(p.requires_grad for p in tower.parameters()):
            frozen |= set(tower.parameters())
            tower.to(ranks.device)
        elif tower is not None:
            trained.append(name)
    student = Student(model, pass_fn, trained)
    fully_shard(student, mesh=mesh, ignored_params=frozen)  # moves the rest to ranks.device
    return student


def save(tensors: dict[str, torch.Tensor], state_dir: Path, write_meta, ranks: Ranks) -> None:
    """Every rank writes its shards of ``tensors`` to a temp folder; rank 0 adds ``write_meta(folder)``'s
    files and renames it to ``state_dir`` (a shared filesystem across machines)."""
    import torch.distributed.checkpoint as dcp

    tmp = state_dir.with_name(state_dir.name + ".tmp")
    if ranks.main:
        shutil.rmtree(tmp, ignore_errors=True)
    ranks.barrier()
    dcp.save(tensors, storage_writer=dcp.HuggingFaceStorageWriter(str(tmp), save_distributed=True))
    if ranks.main:
        write_meta(tmp)
        shutil.rmtree(state_dir, ignore_errors=True)
        tmp.rename(state_dir)
    ranks.barrier()


def saved_names(state_dir: Path) -> set[str]:
    import torch.distributed.checkpoint as dcp

    return set(dcp.HuggingFaceStorageReader(str(state_dir)).read_metadata().state_dict_metadata)


def load(tensors: dict[str, torch.Tensor], state_dir: Path) -> None:
    """In place: each rank reads its shards of ``tensors`` (the same names and layout it saved)."""
    import torch.distributed.checkpoint as dcp

    with torch.no_grad():
        dcp.load(tensors, storage_reader=dcp.HuggingFaceStorageReader(str(state_dir)))


def gather(student: Student, plain_model) -> nn.Module | None:
    """The trained parameters, gathered on rank 0 and assigned to ``plain_model()`` (a fresh model on the
    meta device: one full copy in memory, no second load); None on the other ranks."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(student, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not full:  # cpu_offload: only rank 0 receives the full tensors
        return None
    model = plain_model()
    model.load_state_dict({name.removeprefix(PREFIX): t for name, t in full.items()}, strict=True, assign=True)
    model.prepare()  # derived constants and the KV cache, as the loader does
    leftovers = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if leftovers:  # a bug, not a user error: the gathered state or prepare() missed a tensor
        raise RuntimeError(f"tensors left on the meta device after gathering: {leftovers[:5]}")
    return model
