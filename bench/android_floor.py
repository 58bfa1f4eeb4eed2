"""The ExecuTorch bundle's byte model: bytes stored per component under the recipe, bytes one decode step
reads (the bandwidth floor's numerator)."""

from __future__ import annotations

TARGET_RATIO_TO_FLOOR = 1.2  # issue 13: ExecuTorch decode <= 1.2x the bandwidth floor of the same run
GRID_CONSTANTS = ("pos_embed", "rope_cos", "rope_sin")  # per image bucket, fp32 (model/vision.py)


def linear_bytes(in_f: int, out_f: int, scheme: str, group_size: int, bias: bool) -> int:
    """Bytes XNNPACK stores (and a GEMV reads) for one linear, as ExecuTorch serializes it.

    8da4w: 4-bit weights (two per byte) + one bf16 scale per group (ExecuTorch's XNNPACK serializer
    casts per-channel-group scales to bf16; symmetric, so no zero points). 8da8w: int8 + fp32 scale per
    output channel. Bias fp32. The runtime's packed layout adds per-channel terms of the same order.
    """
    n = in_f * out_f
    if scheme == "8da4w":
        w = n // 2 + (n // group_size) * 2
    elif scheme == "8da8w":
        w = n + out_f * 4
    else:
        w = n * 4
    return w + (out_f * 4 if bias else 0)


def byte_model(model, layers: dict[str, str], group_size: int, embedding: str) -> dict:
    """Per component: stored bytes under the recipe (from the quant report's per-layer schemes), and
    the bytes one decode step reads (every decoder layer, final norm, lm_head, one embedding row)."""
    from torch import nn

    comps = {"text": model.text, "vision": model.vision, "audio": model.audio}
    out: dict = {}
    for cname, root in comps.items():
        if root is None:
            continue
        linear_params, linears_bytes, other_params = 0, 0, 0
        seen = set()
        per_layer_read = 0
        for fqn, mod in root.named_modules():
            if isinstance(mod, nn.Linear):
                scheme = layers.get(f"{cname}.{fqn}", "fp32")
                b = linear_bytes(mod.in_features, mod.out_features, scheme, group_size, mod.bias is not None)
                linears_bytes += b
                linear_params += mod.weight.numel() + (mod.bias.numel() if mod.bias is not None else 0)
                seen.add(id(mod.weight))
                if mod.bias is not None:
                    seen.add(id(mod.bias))
                if cname == "text":
                    per_layer_read += b
        emb_bytes, emb_row = 0, 0
        if cname == "text":
            e = root.embed_tokens
            rows, dim = e.num_embeddings, e.embedding_dim
            bits = {"8": 8, "4": 4, "none": 32}[embedding]
            if layers.get("text.embed_tokens", "").startswith("int8"):
                bits = 8
            scales = rows * 4 if bits == 8 else rows * (dim // group_size) * 4 if bits == 4 else 0
            emb_bytes = rows * dim * bits // 8 + scales
            emb_row = dim * bits // 8 + (scales // rows)
            seen.add(id(e.weight))
        grid_bytes = 0
        if cname == "vision":  # each image bucket's method stores its own grid constants; the table they
            # are resampled from is in none of them
            seen.add(id(root.embeddings.position_embedding.weight))
            grid_bytes = sum(b.numel() * 4 for n, b in root.named_buffers() if n.rpartition(".")[2] in GRID_CONSTANTS)
        for p in root.parameters():
            if id(p) not in seen:
                other_params += p.numel()
        out[cname] = {
            "linear_params": linear_params,
            "linear_bytes": linears_bytes,
            "embedding_bytes": emb_bytes,
            "other_fp32_params": other_params,
            "grid_constant_bytes": grid_bytes,
            "stored_bytes": linears_bytes + emb_bytes + other_params * 4 + grid_bytes,
        }
        if cname == "text":
            out[cname]["decode_read_bytes"] = per_layer_read + other_params * 4 + emb_row
            out[cname]["decode_read_linear_bytes"] = per_layer_read
            out[cname]["decode_read_embedding_row_bytes"] = emb_row
    out["total_stored_bytes"] = sum(v["stored_bytes"] for k, v in out.items() if isinstance(v, dict))
    return out


def kv_read_bytes(cfg, positions: float) -> float:
    """K and V bytes custom_sdpa reads per decode token at ``positions`` filled slots (fp32 cache)."""
    t = cfg.text
    return t.num_hidden_layers * 2 * t.num_key_value_heads * t.head_dim * 4 * positions
