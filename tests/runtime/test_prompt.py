"""Chat template, placeholder expansion, the committed tiny tokenizer and streaming detokenization."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from autoglm_runtime.errors import InputError
from autoglm_runtime.prompt import Message, build_prompt, encode_chat, expand_placeholders
from autoglm_runtime.tokenizer import GLM_ADDED_TOKENS, GLM_SPECIAL_TOKENS, StreamDecoder, Tokenizer

ROOT = Path(__file__).resolve().parents[2]
TOKENIZER = ROOT / "export/autoglm_export/presets/tiny/tokenizer.json"

# chat_template of zai-org/GLM-4.1V-9B-Thinking at revision 3c1471e51dc811b589d4d12b1c1c7c1c941267c2
# (sha256 5232dbe7ee947df4d2009f2b262b70a22d4f2d2f0590e2af4ef2a78096171e90), kept verbatim as test data.
GLM41V_TEMPLATE = (
    "[gMASK]<sop>\n{%- for msg in messages %}\n    {%- if msg.role == 'system' %}\n<|system|>\n{{ msg.content }}\n"
    "    {%- elif msg.role == 'user' %}\n<|user|>{{ '\\n' }}\n\n        {%- if msg.content is string %}\n"
    "{{ msg.content }}\n        {%- else %}\n            {%- for item in msg.content %}\n"
    "                {%- if item.type == 'video' or 'video' in item %}\n<|begin_of_video|><|video|><|end_of_video|>\n"
    "                {%- elif item.type == 'image' or 'image' in item %}\n<|begin_of_image|><|image|><|end_of_image|>\n"
    "                {%- elif item.type == 'text' %}\n{{ item.text }}\n                {%- endif %}\n"
    "            {%- endfor %}\n        {%- endif %}\n    {%- elif msg.role == 'assistant' %}\n"
    "        {%- if msg.metadata %}\n<|assistant|>{{ msg.metadata }}\n{{ msg.content }}\n        {%- else %}\n"
    "<|assistant|>\n{{ msg.content }}\n        {%- endif %}\n    {%- endif %}\n{%- endfor %}\n"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
IMG = "<|begin_of_image|><|image|><|end_of_image|>"

SYSTEM_USER_IMAGE = [
    {"role": "system", "content": "你是一个手机操作助手。"},
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "打开微信给张三发消息"}]},
]
MULTI_TURN = [
    {"role": "system", "content": "You operate an Android phone."},
    {"role": "user", "content": [{"type": "text", "text": "Open WeChat"}, {"type": "image"}]},
    {
        "role": "assistant",
        "content": '<think>The home screen is shown.</think><answer>do(action="Launch", app="微信")</answer>',
    },
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "** Screen Info **"}]},
    {"role": "assistant", "content": '<answer>finish(message="done")</answer>'},
    {"role": "user", "content": "thanks"},
]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer(TOKENIZER)


def _render_real(messages, add_generation_prompt: bool) -> str:
    utils = pytest.importorskip("transformers.utils.chat_template_utils")
    rendered, _ = utils.render_jinja_template(
        conversations=[messages], chat_template=GLM41V_TEMPLATE, add_generation_prompt=add_generation_prompt
    )
    return rendered[0]


# --- template -------------------------------------------------------------------------------------


def test_system_user_image_exact_string():
    assert build_prompt(SYSTEM_USER_IMAGE) == (
        "[gMASK]<sop><|system|>\n你是一个手机操作助手。<|user|>\n" + IMG + "打开微信给张三发消息<|assistant|>\n"
    )


def test_multi_turn_exact_string():
    assert build_prompt(MULTI_TURN, add_generation_prompt=False) == (
        "[gMASK]<sop><|system|>\nYou operate an Android phone."
        "<|user|>\nOpen WeChat" + IMG + "<|assistant|>\n<think>The home screen is shown.</think>"
        '<answer>do(action="Launch", app="微信")</answer><|user|>\n' + IMG + "** Screen Info **"
        '<|assistant|>\n<answer>finish(message="done")</answer><|user|>\nthanks'
    )


@pytest.mark.parametrize("messages", [SYSTEM_USER_IMAGE, MULTI_TURN, [{"role": "user", "content": "你好"}]])
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_matches_real_glm41v_template(messages, add_generation_prompt):
    want = _render_real(messages, add_generation_prompt)
    assert build_prompt(messages, add_generation_prompt=add_generation_prompt) == want
    # Message objects and dicts render the same.
    objs = [Message(m["role"], m["content"]) for m in messages]
    assert build_prompt(objs, add_generation_prompt=add_generation_prompt) == want


def test_thinking_switch():
    base = build_prompt(SYSTEM_USER_IMAGE, enable_thinking=None)
    # GLM-4.1V always thinks: True renders exactly like the template (no switch in it).
    assert build_prompt(SYSTEM_USER_IMAGE, enable_thinking=True) == base == _render_real(SYSTEM_USER_IMAGE, True)
    off = build_prompt(SYSTEM_USER_IMAGE, enable_thinking=False)
    assert off == base + "<think></think>"
    assert off.endswith("<|assistant|>\n<think></think>")
    # No generation prompt, nothing to pre-fill.
    assert build_prompt(SYSTEM_USER_IMAGE, enable_thinking=False, add_generation_prompt=False) == build_prompt(
        SYSTEM_USER_IMAGE, add_generation_prompt=False
    )


def test_audio_part():
    msgs = [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "转写这段语音"}]}]
    assert build_prompt(msgs) == (
        "[gMASK]<sop><|user|>\n<|begin_of_audio|><|audio|><|end_of_audio|>转写这段语音<|assistant|>\n"
    )


@pytest.mark.parametrize(
    "messages, match",
    [
        ([{"role": "tool", "content": "x"}], "role 'tool'"),
        ([{"role": "user", "content": [{"type": "video"}]}], "video"),
        ([{"role": "user", "content": [{"type": "image_url"}]}], "'image_url'"),
        ([{"role": "system", "content": [{"type": "image"}]}], "only allowed in user"),
        ([{"role": "user", "content": [{"type": "text"}]}], "text part"),
        ([{"content": "no role"}], "role"),
    ],
)
def test_bad_messages_raise_input_error(messages, match):
    with pytest.raises(InputError, match=match):
        build_prompt(messages)


# --- placeholder expansion and encode_chat --------------------------------------------------------


def test_expand_placeholders_counts_and_types():
    img, aud = 7, 9
    ids = [1, img, 2, aud, 3, img, 4]
    out, types = expand_placeholders(ids, img, [6, 8], aud, 5)
    assert out == [1] + [img] * 6 + [2] + [aud] * 5 + [3] + [img] * 8 + [4]
    assert types.dtype == np.int32
    assert types.tolist() == [0] + [1] * 6 + [0] * 7 + [1] * 8 + [0]  # audio counts as text for positions
    out, types = expand_placeholders(ids, img, 3, aud, 2)  # one count for all items
    assert out.count(img) == 6 and out.count(aud) == 2 and int(types.sum()) == 6
    with pytest.raises(InputError, match="2 image placeholder"):
        expand_placeholders(ids, img, [6], aud, 5)
    with pytest.raises(InputError, match="at least one token"):
        expand_placeholders(ids, img, 4, aud, 0)


def test_encode_chat(tok):
    msgs = SYSTEM_USER_IMAGE + [{"role": "user", "content": [{"type": "image"}, {"type": "audio"}]}]
    inputs = encode_chat(tok, msgs, image_grids=[(1, 4, 6), (1, 8, 4)], audio_tokens_per_clip=[11])
    image_id, audio_id = tok.token_to_id("<|image|>"), tok.token_to_id("<|audio|>")
    ids = inputs.input_ids
    assert ids.dtype == np.int64 and ids.ndim == 1
    assert int((ids == image_id).sum()) == 6 + 8
    assert int((ids == audio_id).sum()) == 11
    np.testing.assert_array_equal(inputs.mm_token_types == 1, ids == image_id)
    assert inputs.position_ids.shape == (3, ids.shape[0]) and inputs.position_ids.dtype == np.int64
    assert inputs.image_grids == [(1, 4, 6), (1, 8, 4)] and inputs.audio_tokens == [11]
    # Collapsing the runs again gives back the tokenized prompt.
    media = (image_id, audio_id)
    collapsed = [t for i, t in enumerate(ids) if i == 0 or not (t == ids[i - 1] and t in media)]
    assert tok.decode(collapsed) == build_prompt(msgs)
    # One grid for every image (a phone screenshot resized to a fixed size).
    same = encode_chat(tok, MULTI_TURN, image_grids=(1, 4, 4))
    assert int((same.input_ids == image_id).sum()) == 2 * 4
    assert same.rope_delta == 2 * ((4 // 2) - 4)  # each 4-token image advances positions by 2


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({}, "no image grid"),
        ({"image_grids": [(1, 4, 6), (1, 4, 6)]}, "2 image grid"),
        ({"image_grids": [(1, 5, 6)]}, "not divisible"),
    ],
)
def test_encode_chat_grid_errors(tok, kwargs, match):
    with pytest.raises(InputError, match=match):
        encode_chat(tok, SYSTEM_USER_IMAGE, **kwargs)


def test_encode_chat_rejects_reserved_tokens_in_text(tok):
    sneaky = [{"role": "user", "content": "look: " + IMG}]
    with pytest.raises(InputError, match="reserved token <\\|image\\|>"):
        encode_chat(tok, sneaky, image_grids=(1, 4, 4))
    with pytest.raises(InputError, match="reserved token <\\|audio\\|>"):
        encode_chat(tok, [{"role": "user", "content": "<|audio|>"}])


# --- committed tokenizer --------------------------------------------------------------------------


def test_committed_tokenizer_layout(tok):
    assert tok.vocab_size == 4096
    ids = tok.special_ids()
    assert list(ids) == list(GLM_SPECIAL_TOKENS)  # every GLM token present
    assert list(ids.values()) == list(range(4096 - len(GLM_ADDED_TOKENS), 4096))
    for name, tid in ids.items():
        assert tok.encode(name) == [tid], name  # a single id, never split into pieces
        assert tok.decode([tid]) == name
    special = {name for name, is_special in GLM_ADDED_TOKENS if is_special}
    assert {"<think>", "</think>", "<answer>", "</answer>"}.isdisjoint(special)
    assert tok.decode(tok.encode("<|assistant|>\n<think>x</think>"), skip_special_tokens=True) == "\n<think>x</think>"


def test_token_to_id_missing_names_token(tok):
    with pytest.raises(InputError, match="<\\|nope\\|>"):
        tok.token_to_id("<|nope|>")


def test_missing_tokenizer_file(tmp_path):
    with pytest.raises(InputError, match="cannot load tokenizer"):
        Tokenizer(tmp_path / "absent.json")


@pytest.mark.parametrize(
    "text",
    [
        "打开微信给张三发消息：今晚七点在公司楼下见。",
        "Open WeChat and send Zhang San a message: see you at 7 pm!",
        '中英混合 mixed 文本 with emoji 🚀 and ümlauts\n\t<answer>do(action="Tap", element=[500,800])</answer>',
        "繁體字與罕見字：龘靐齉",
    ],
)
def test_round_trip(tok, text):
    ids = tok.encode(text)
    assert all(0 <= i < 4096 for i in ids)
    assert tok.decode(ids) == text


def test_tokenizer_learned_chinese(tok):
    # A 4096 vocab trained on zh + en should hold common Chinese words, not just bytes (3 per char).
    text = "打开微信给张三发消息"
    assert len(tok.encode(text)) <= len(text)


def test_committed_tokenizer_is_reproducible():
    spec = importlib.util.spec_from_file_location("train_tokenizer", ROOT / "tools/train_tokenizer.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    fresh, committed = json.loads(mod.serialize(mod.build())), json.loads(TOKENIZER.read_text(encoding="utf-8"))
    # Compare what defines the ids (not the raw text, which may change with the tokenizers version).
    assert fresh["model"]["vocab"] == committed["model"]["vocab"]
    assert fresh["model"]["merges"] == committed["model"]["merges"]
    added = [[(t["id"], t["content"], t["special"]) for t in d["added_tokens"]] for d in (fresh, committed)]
    assert added[0] == added[1]


# --- streaming ------------------------------------------------------------------------------------


def test_stream_decoder_never_splits_chinese(tok):
    text = "龘靐齉：打开微信，给张三发消息“今晚见”。喫饭了吗？🚀"
    ids = tok.encode(text)
    # The case under test must occur: some token ends inside a character.
    assert any("\ufffd" in tok.decode([i]) for i in ids)
    dec = StreamDecoder(tok)
    deltas = [dec.push(i) for i in ids]
    assert dec.finish() == ""
    assert "".join(deltas) == text
    for d in deltas:
        assert "\ufffd" not in d
        d.encode("utf-8")  # whole characters only (a lone surrogate would raise)
    assert "" in deltas  # some steps had to wait for the rest of a character


def test_stream_decoder_matches_decode_with_specials(tok):
    ids = tok.encode(build_prompt(SYSTEM_USER_IMAGE)) + tok.encode("<think>好的</think><answer>完成</answer>")
    for skip in (False, True):
        assert "".join(StreamDecoder(tok, skip_special_tokens=skip).stream(ids)) == tok.decode(
            ids, skip_special_tokens=skip
        )


def test_stream_decoder_flushes_dangling_bytes(tok):
    first_half = tok.encode("龘")[:1]  # the first byte(s) of a 3-byte character
    assert tok.decode(first_half).endswith("\ufffd")
    dec = StreamDecoder(tok)
    assert dec.push(first_half[0]) == ""
    assert dec.finish() == "\ufffd"
