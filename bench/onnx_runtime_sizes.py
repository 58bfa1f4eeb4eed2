"""Sizes of an ONNX bundle: every graph with its external data, weight bytes, bits per weight."""

from __future__ import annotations

from pathlib import Path


def initializer_bytes(tensor) -> int:
    """Stored bytes of one initializer, inline or in external data."""
    from onnx import external_data_helper

    if external_data_helper.uses_external_data(tensor):
        return int({e.key: e.value for e in tensor.external_data}.get("length", 0))
    return len(tensor.raw_data) or tensor.ByteSize()


def graph_bytes(path: Path) -> dict:
    """Weight bytes of one .onnx graph (its external data not loaded): all, and those feeding MatMulNBits."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    sizes = {t.name: initializer_bytes(t) for t in model.graph.initializer}
    nbits = {name for n in model.graph.node if n.op_type == "MatMulNBits" for name in n.input[1:]}
    return {
        "weight_bytes": sum(sizes.values()),
        "matmul_nbits_bytes": sum(b for n, b in sizes.items() if n in nbits),
        "matmul_nbits": sum(n.op_type == "MatMulNBits" for n in model.graph.node),
    }


def component_params(manifest: dict) -> dict[str, int]:
    """Parameters per ONNX file: the text tower splits into token_embedding (vocab x hidden) and the decoder."""
    params, text = manifest["model"]["parameters"], manifest["model"]["text"]
    embedding = text["vocab_size"] * text["hidden_size"]
    out = {
        "vision_encoder": params.get("vision", 0),
        "token_embedding": embedding,
        "text_decoder": params["text"] - embedding,
    }
    if "audio" in params:
        out["audio_encoder"] = params["audio"]
    return out


def files_table(bundle: Path, manifest: dict) -> dict:
    params = component_params(manifest)
    files = {}
    for comp, entry in manifest["models"].items():
        onnx_bytes = (bundle / entry["file"]).stat().st_size
        data_bytes = (bundle / entry["external_data"]).stat().st_size if entry.get("external_data") else 0
        total = onnx_bytes + data_bytes
        files[comp] = {
            "file": entry["file"],
            "external_data": entry.get("external_data"),
            "onnx_bytes": onnx_bytes,
            "external_data_bytes": data_bytes,
            "bytes": total,
            "params": params.get(comp, 0),
            "bits_per_weight": 8 * total / params[comp] if params.get(comp) else None,
            "matmul_nbits": entry.get("matmul_nbits", 0),
            **graph_bytes(bundle / entry["file"]),
        }
    return files


def kv_read_bytes(kv: dict, slots: float) -> int:
    """Bytes of a manifest's ``kv_cache`` (fp32, K and V per layer) that attention reads over ``slots`` slots."""
    import numpy as np

    per_slot = len(kv["inputs"]) * int(np.prod(kv["shape"])) * 4 // kv["shape"][2]
    return int(per_slot * slots)
