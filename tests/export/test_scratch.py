"""scratch.py: quantized tensors moved to disk come back as the same numbers, memory-mapped, and the
folder is gone when the export ends."""

from __future__ import annotations

import torch
from torch import nn

from autoglm_export.quantize.recipes import linear_config, quantize_module
from autoglm_export.scratch import Scratch


def test_kept_tensors_are_equal_and_file_backed(tmp_path):
    with Scratch(tmp_path) as scratch:
        folder = scratch.dir
        assert folder.parent == tmp_path and folder.name.startswith(".autoglm-scratch-")
        tensors = [torch.randint(-8, 8, (33, 7), dtype=torch.int8), torch.randn(5, 3), torch.randn(4).bfloat16()]
        kept = [scratch.keep(t) for t in tensors]
        for t, k in zip(tensors, kept):
            assert k.dtype == t.dtype and torch.equal(k, t)
            assert k.data_ptr() != t.data_ptr()
        assert scratch.bytes == sum(t.numel() * t.element_size() for t in tensors)
        kept[0][0, 0] = 99  # copy-on-write: the file keeps what was written
        scratch.release()
        assert int(kept[1].numel()) == 15 and torch.equal(kept[1], tensors[1])
        blob = scratch.file_for(b"x" * 10)
        assert blob.read_bytes() == b"x" * 10
    assert not folder.exists()


def test_quantized_linear_on_scratch_equals_in_memory(tmp_path):
    torch.manual_seed(0)
    a, b = nn.Linear(64, 48, bias=False), nn.Linear(64, 48, bias=False)
    b.weight = nn.Parameter(a.weight.detach().clone(), requires_grad=False)
    a.requires_grad_(False)
    config = linear_config("8da4w", 32)
    quantize_module(a, config)
    with Scratch(tmp_path) as scratch:
        quantize_module(b, config, scratch=scratch)
        for field in ("qdata", "scale", "zero_point"):
            assert torch.equal(getattr(a.weight, field), getattr(b.weight, field))
        x = torch.randn(3, 64)
        assert torch.equal(a(x), b(x))
