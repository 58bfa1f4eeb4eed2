"""Encoder outputs into the token embeddings: the one splice every path uses (runtime sessions, the
parity probes, calibration, the transformers check)."""

from __future__ import annotations


def splice(embeds, token_ids, spec, image_embeds=None, audio_embeds=None):
    """In place, and returned: the rows of ``embeds [1, S, D]`` whose ``token_ids [S]`` are the image /
    audio placeholder take the encoders' rows, in order. numpy arrays and torch tensors alike."""
    if image_embeds is not None:
        embeds[0, token_ids == spec.image_token_id] = image_embeds
    if audio_embeds is not None:
        embeds[0, token_ids == spec.audio_token_id] = audio_embeds
    return embeds
