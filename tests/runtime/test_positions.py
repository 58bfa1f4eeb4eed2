"""autoglm_runtime.positions against transformers' Glm4vModel (the PyTorch original)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from autoglm_runtime.errors import InputError
from autoglm_runtime.positions import decode_positions, rope_index
from autoglm_runtime.prompt import encode_chat
from autoglm_runtime.tokenizer import Tokenizer

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

MERGE = 2
TOKENIZER = Path(__file__).resolve().parents[2] / "export/autoglm_export/presets/tiny/tokenizer.json"


class _PastLength:
    """Stands in for a KV cache: compute_3d_position_ids only asks for its length."""

    def __init__(self, n: int) -> None:
        self.n = n

    def get_seq_length(self) -> int:
        return self.n


@pytest.fixture(scope="module")
def model():
    cfg = transformers.Glm4vConfig(
        text_config=dict(
            vocab_size=4096,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0},
        ),
        vision_config=dict(
            depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=32, spatial_merge_size=MERGE
        ),
    )
    return transformers.Glm4vForConditionalGeneration(cfg).eval()


def _types(*runs: tuple[int, int]) -> list[int]:
    """(kind, length) runs -> flat token types."""
    return [kind for kind, n in runs for _ in range(n)]


def _image(grid: tuple[int, int, int]) -> tuple[int, int]:
    return (1, grid[0] * grid[1] * grid[2] // (MERGE * MERGE))


def _hf_rope(model, types: list[int], grids: list[tuple[int, int, int]]) -> tuple[np.ndarray, int]:
    ids = torch.zeros(1, len(types), dtype=torch.long)  # only the shape matters to get_rope_index
    tt = torch.tensor([types], dtype=torch.int32)
    thw = torch.tensor(grids, dtype=torch.long) if grids else None
    pos, delta = model.model.get_rope_index(ids, mm_token_type_ids=tt, image_grid_thw=thw)
    return pos[:, 0].numpy(), int(delta.item())


G46, G84 = (1, 4, 6), (1, 8, 4)
CASES = {
    "text_only": (_types((0, 9)), []),
    "one_image": (_types((0, 5), _image(G46), (0, 7)), [G46]),
    "two_images_different_grids": (_types((0, 4), _image(G46), (0, 3), _image(G84), (0, 6)), [G46, G84]),
    "image_at_start": (_types(_image(G84), (0, 5)), [G84]),
    "image_at_end": (_types((0, 5), _image(G46)), [G46]),
    "only_an_image": (_types(_image(G46)), [G46]),
    "temporal_grid": (_types((0, 3), _image((2, 4, 4)), (0, 2)), [(2, 4, 4)]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_rope_index_matches_transformers(model, name):
    types, grids = CASES[name]
    want_pos, want_delta = _hf_rope(model, types, grids)
    pos, delta = rope_index(types, grids, MERGE)
    assert pos.dtype == np.int64 and pos.shape == (3, len(types))
    np.testing.assert_array_equal(pos, want_pos)
    assert delta == want_delta


def test_text_only_is_plain_arange():
    pos, delta = rope_index([0] * 6, [], MERGE)
    np.testing.assert_array_equal(pos, np.tile(np.arange(6), (3, 1)))
    assert delta == 0


@pytest.mark.parametrize("name", ["one_image", "two_images_different_grids", "image_at_end"])
def test_decode_positions_match_generation(model, name):
    """Prefill through compute_3d_position_ids, then n decode steps with a cache of the prompt's length."""
    types, grids = CASES[name]
    s = len(types)
    hidden = model.config.text_config.hidden_size
    inner = model.model
    inner.rope_deltas = None
    prefill = inner.compute_3d_position_ids(
        input_ids=torch.zeros(1, s, dtype=torch.long),
        inputs_embeds=torch.zeros(1, s, hidden),
        image_grid_thw=torch.tensor(grids),
        mm_token_type_ids=torch.tensor([types], dtype=torch.int32),
    )
    pos, delta = rope_index(types, grids, MERGE)
    np.testing.assert_array_equal(pos, prefill[:, 0].numpy())
    assert delta < 0  # images compress positions: the test would be vacuous with delta 0

    for past, n in [(s, 1), (s + 1, 1), (s + 5, 3)]:
        step = inner.compute_3d_position_ids(
            input_ids=torch.zeros(1, n, dtype=torch.long),
            inputs_embeds=torch.zeros(1, n, hidden),
            past_key_values=_PastLength(past),
        )
        np.testing.assert_array_equal(decode_positions(past, delta, n), step[:, 0].numpy())


def test_encode_chat_positions_match_transformers(model):
    tok = Tokenizer(TOKENIZER)
    msgs = [
        {"role": "system", "content": "你是手机助手。"},
        {
            "role": "user",
            "content": [
                {"type": "image"},
                {"type": "text", "text": "打开微信给张三发消息"},
                {"type": "image"},
                {"type": "text", "text": "then go back"},
            ],
        },
    ]
    inputs = encode_chat(tok, msgs, image_grids=[G46, G84], spatial_merge_size=MERGE)
    ids = torch.from_numpy(inputs.input_ids)[None]
    tt = torch.from_numpy(inputs.mm_token_types)[None]
    pos, delta = model.model.get_rope_index(ids, mm_token_type_ids=tt, image_grid_thw=torch.tensor([G46, G84]))
    np.testing.assert_array_equal(inputs.position_ids, pos[:, 0].numpy())
    assert inputs.rope_delta == int(delta.item())


def test_rope_index_rejects_mismatches():
    types = _types((0, 2), _image(G46), (0, 2))
    with pytest.raises(InputError, match="grid"):
        rope_index(types, [], MERGE)
    with pytest.raises(InputError, match="2 image grid"):
        rope_index(types, [G46, G84], MERGE)
    with pytest.raises(InputError, match="placeholder tokens"):
        rope_index(types, [G84], MERGE)
    with pytest.raises(InputError, match="token type 2"):
        rope_index([0, 2, 2, 0], [], MERGE)
