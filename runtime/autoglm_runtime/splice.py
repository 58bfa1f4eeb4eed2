"""Encoder outputs into the token embeddings: the one splice every path uses (runtime sessions, the
parity probes, calibration, the transformers check)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .errors import InputError


def _joined(items):
    """One array of rows from an encoder output or a list of them (numpy arrays or torch tensors)."""
    if not isinstance(items, (list, tuple)):
        return items
    if isinstance(items[0], np.ndarray):
        return np.concatenate(items, axis=0)
    import torch  # a list of tensors comes only from a torch caller

    return torch.cat(list(items), dim=0)


def item_rows(token_ids, token_id: int, counts: Sequence[int]) -> list[np.ndarray]:
    """The rows of each media item, in order: the placeholder rows of ``token_id`` split by ``counts``."""
    rows = np.flatnonzero(np.asarray(token_ids) == token_id)
    if len(rows) != sum(counts):
        raise InputError(f"the prompt has {len(rows)} placeholder rows for token {token_id}, the media {sum(counts)}")
    starts = np.cumsum([0, *counts])
    return [rows[starts[k] : starts[k + 1]] for k in range(len(counts))]


def splice(embeds, token_ids, spec, image_embeds=None, audio_embeds=None):
    """In place, and returned: the rows of ``embeds [1, S, D]`` whose ``token_ids [S]`` are the image /
    audio placeholder take the encoders' rows, in order. ``*_embeds``: one array of rows, or a list with
    one per item (images of different buckets). numpy arrays and torch tensors alike."""
    for token_id, out in ((spec.image_token_id, image_embeds), (spec.audio_token_id, audio_embeds)):
        if out is None or (isinstance(out, (list, tuple)) and not out):
            continue
        rows = _joined(out)
        mask = token_ids == token_id
        if int(mask.sum()) != rows.shape[0]:
            raise InputError(
                f"the prompt has {int(mask.sum())} placeholder rows for token {token_id}, the media {rows.shape[0]}"
            )
        embeds[0, mask] = rows
    return embeds
