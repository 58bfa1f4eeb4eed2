"""Big intermediates of one export kept on disk and memory-mapped back, not in anonymous memory.

At 9B the quantized model is ~12 GB of integers and scales (torchao holds one int8 per int4 weight)
and XNNPACK's packed weights another ~5 GB: together more than a 24 GB machine holds beside the
checkpoint. Written here as they are made, they become file pages the kernel reads back when touched
and can drop again (``release``), so resident memory follows the layer being worked on, not the model.
The numbers are the same bytes either way.

One ``Scratch`` per export, in a hidden folder next to the output (same disk as the estimate checked
before work), removed when the export ends, failed or not.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from .checkpoint import release_pages

log = logging.getLogger(__name__)

PAGE = 4096


class Scratch:
    def __init__(self, parent: str | Path):
        Path(parent).mkdir(parents=True, exist_ok=True)
        self.dir = Path(tempfile.mkdtemp(prefix=".autoglm-scratch-", dir=parent))
        self._tensors = open(self.dir / "tensors.bin", "wb+")  # noqa: SIM115  (lives as long as the maps)
        self._mapped: list[torch.Tensor] = []
        self._files = 0
        self.bytes = 0

    def __enter__(self) -> Scratch:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def keep(self, t: torch.Tensor) -> torch.Tensor:
        """``t``'s bytes appended to the scratch file; returns the same tensor memory-mapped from it
        (copy-on-write: writing to it never changes the file)."""
        t = t.detach().contiguous()
        nbytes = t.numel() * t.element_size()
        if nbytes == 0:
            return t
        f = self._tensors
        offset = -(-f.seek(0, 2) // PAGE) * PAGE  # page-aligned, so ``release`` frees whole pages
        f.seek(offset)
        f.write(memoryview(t.view(torch.uint8).reshape(-1).numpy()))
        f.flush()
        mapped = np.memmap(f, dtype=np.uint8, mode="c", offset=offset, shape=(nbytes,))
        out = torch.from_numpy(mapped).view(t.dtype).view(t.shape)
        self._mapped.append(out)
        self.bytes += nbytes
        return out

    def file_for(self, data: bytes) -> Path:
        """``data`` written to a file of its own (for writers that take a path, like ExecuTorch's
        FileBackedData)."""
        self._files += 1
        path = self.dir / f"blob-{self._files:06d}.bin"
        with open(path, "wb") as f:
            f.write(data)
        self.bytes += len(data)
        return path

    def release(self) -> None:
        """Give back the resident pages of everything kept so far (re-read from disk when touched)."""
        release_pages(self._mapped)

    def close(self) -> None:
        self._mapped.clear()
        self._tensors.close()
        shutil.rmtree(self.dir, ignore_errors=True)
        log.debug("scratch %s removed (%.1f GB written)", self.dir, self.bytes / 1e9)
