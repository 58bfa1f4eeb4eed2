"""GLM-4.1V multimodal RoPE (M-RoPE) position ids, numpy port for one sequence.

Port of transformers 5.23 `Glm4vModel.get_rope_index` / `get_vision_position_ids` (models/glm4v/
modeling_glm4v.py): every run of text tokens gets the same running position on all three planes
(temporal, height, width); a run of image tokens gets a (t, h, w) grid of positions starting at the
running position, which then advances by max(h, w) // merge, not by the number of image tokens.
`rope_delta` = max position + 1 - sequence length, so decode steps continue at `cache_pos + delta`.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from autoglm_runtime.errors import InputError

TEXT, IMAGE, VIDEO = 0, 1, 2


def vision_positions(start: int, grid_thw: Sequence[int], spatial_merge_size: int) -> np.ndarray:
    """[3, t*h*w/merge^2] positions of one image, offset by `start` (time_interval = 1 for images)."""
    t, h, w = int(grid_thw[0]), int(grid_thw[1]) // spatial_merge_size, int(grid_thw[2]) // spatial_merge_size
    tt, hh, ww = np.meshgrid(np.arange(t), np.arange(h), np.arange(w), indexing="ij")
    return np.stack([tt, hh, ww]).reshape(3, -1).astype(np.int64) + start


def rope_index(
    mm_token_types: Sequence[int] | np.ndarray,
    image_grids_thw: Sequence[Sequence[int]] | np.ndarray,
    spatial_merge_size: int,
) -> tuple[np.ndarray, int]:
    """Position ids [3, S] (int64) and the rope delta for one unpadded sequence.

    mm_token_types: per token 0 text, 1 image (video, 2, is not supported on device).
    image_grids_thw: one (t, h, w) grid per image, in patches (before the spatial merge), in order.
    """
    types = np.asarray(mm_token_types, dtype=np.int64).reshape(-1)
    grids = iter([tuple(int(x) for x in g) for g in image_grids_thw])
    n_grids = len(image_grids_thw)
    pieces: list[np.ndarray] = []
    pos = 0
    used = 0
    for kind, run in itertools.groupby(types.tolist()):
        length = len(list(run))
        if kind == TEXT:
            pieces.append(np.broadcast_to(np.arange(pos, pos + length, dtype=np.int64), (3, length)))
            pos += length
            continue
        if kind != IMAGE:
            raise InputError(f"token type {kind} is not supported (0 text, 1 image)")
        grid = next(grids, None)
        if grid is None:
            raise InputError(f"prompt has more image runs than the {n_grids} image grid(s) given")
        used += 1
        vis = vision_positions(pos, grid, spatial_merge_size)
        if vis.shape[1] != length:
            # Two images with no token between them would also land here (transformers groups them too).
            raise InputError(
                f"image {used} has {length} placeholder tokens but grid {grid} with merge "
                f"{spatial_merge_size} needs {vis.shape[1]}"
            )
        pieces.append(vis)
        pos += max(grid[1], grid[2]) // spatial_merge_size
    if used != n_grids:
        raise InputError(f"{n_grids} image grid(s) given but the prompt has {used} image(s)")
    if not pieces:
        return np.zeros((3, 0), dtype=np.int64), 0
    positions = np.concatenate(pieces, axis=1)
    return positions, int(positions.max()) + 1 - types.shape[0]


def decode_positions(cache_position: int, rope_delta: int, n: int = 1) -> np.ndarray:
    """[3, n] position ids for n new tokens after `cache_position` cached ones (text on all planes).

    Matches transformers' compute_3d_position_ids during generation: arange(past, past + n) + delta.
    """
    return np.broadcast_to(np.arange(cache_position, cache_position + n, dtype=np.int64) + rope_delta, (3, n)).copy()
