"""Every preset parses, and the benchmark preset has the dimensions the docs promise."""

import pytest

from autoglm_export.config import parse_audio_config, parse_model_config
from autoglm_export.presets import PRESETS


@pytest.mark.parametrize("name", [n for n, p in PRESETS.items() if p.config is not None])
def test_preset_configs_parse(name):
    preset = PRESETS[name]
    cfg = parse_model_config(preset.config, name)
    if preset.audio_config:
        assert parse_audio_config(preset.audio_config, name).projector_out == cfg.text.hidden_size


def test_small_preset_matches_the_llama_peer():
    t = parse_model_config(PRESETS["small"].config).text
    assert (
        t.hidden_size,
        t.num_hidden_layers,
        t.num_attention_heads,
        t.num_key_value_heads,
        t.intermediate_size,
        t.vocab_size,
    ) == (1024, 16, 16, 2, 2816, 32000)
    decoder = t.vocab_size * t.hidden_size * 2 + t.num_hidden_layers * (
        2 * t.hidden_size * t.hidden_size + 2 * t.hidden_size * 128 + 3 * t.hidden_size * t.intermediate_size
    )
    assert 235e6 < decoder < 250e6  # ~242M, the optimum-executorch Llama peer's size
