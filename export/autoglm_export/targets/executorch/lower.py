"""ExecuTorch recipe: torch.export each component, lower (XNNPACK or QNN), emit one multi-method .pte.

Conventions follow ExecuTorch's LLM runner: methods ``vision_encoder``, ``audio_encoder``,
``token_embedding``, ``text_decoder`` and constant methods ``get_max_seq_len``,
``get_max_context_len``, ``get_bos_id``, ``get_eos_ids``, ``get_vocab_size``, ``use_kv_cache``,
``enable_dynamic_shape``, plus ours for the runtime (image/audio token ids and counts, sizes).
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, field

import torch

from ...components import Component
from ...errors import ExportError

log = logging.getLogger(__name__)

BACKENDS = ("xnnpack", "qnn")
QNN_HELP = (
    "--backend qnn needs the Qualcomm AI Engine Direct SDK (QNN / QAIRT, from Qualcomm's developer site; "
    "it cannot be installed from PyPI): install it and set QNN_SDK_ROOT to its root. "
    "QNN_SDK_ROOT is not set on this machine; nothing was written"
)


@dataclass
class LoweredProgram:
    program: object  # executorch ExecutorchProgramManager (None until emitted)
    methods: dict[str, dict] = field(default_factory=dict)  # name -> {"inputs": [...], "outputs": [...]}
    delegation: dict[str, dict] = field(default_factory=dict)
    constant_methods: dict[str, object] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def write(self, path) -> int:
        """Serialise the .pte straight into ``path`` (ExecuTorch's ``write_to_file``: no contiguous copy
        of the whole program in memory, unlike ``.buffer``); returns its size in bytes."""
        with open(path, "wb") as f:
            self.program.write_to_file(f)
        return os.path.getsize(path)


def check_backend(backend: str, soc: str | None, quant: str) -> None:
    """Fail before any work when the requested backend can't be used here."""
    if backend not in BACKENDS:
        raise ExportError(f"--backend {backend}: expected one of {', '.join(BACKENDS)}")
    if backend != "qnn":
        return
    sdk = os.environ.get("QNN_SDK_ROOT")
    if not sdk:
        raise ExportError(QNN_HELP)
    if not os.path.isdir(sdk):
        raise ExportError(f"QNN_SDK_ROOT={sdk} is not a directory; point it at the QNN/QAIRT SDK root")
    if not soc:
        raise ExportError("--backend qnn needs --soc (for example SM8650 for Snapdragon 8 Gen 3)")
    if quant != "fp32":
        raise ExportError(
            "--backend qnn lowers fp16 graphs to the HTP; pass --quant fp32 (QNN's own int quantizer is not wired up yet)"
        )


def _tensor_spec(name: str, t: torch.Tensor, dynamic: dict | None) -> dict:
    shape = [("seq" if dynamic and i in dynamic else int(s)) for i, s in enumerate(t.shape)]
    return {"name": name, "shape": shape, "dtype": str(t.dtype).replace("torch.", "")}


# Graph bookkeeping, not compute: excluded from the delegated fraction.
_BOOKKEEPING = ("getitem", "_assert_scalar", "sym_size", "_local_scalar_dense", "sym_constrain_range")


def _delegation(edge_program) -> dict:
    from executorch.devtools.backend_debug import get_delegation_info

    info = get_delegation_info(edge_program.graph_module)
    undelegated = Counter(
        {
            op: b.non_delegated
            for op, b in info.delegation_by_operator.items()
            if b.non_delegated and not op.startswith(_BOOKKEEPING)
        }
    )
    non_delegated = sum(undelegated.values())
    total = info.num_delegated_nodes + non_delegated
    return {
        "delegated_nodes": info.num_delegated_nodes,
        "non_delegated_nodes": non_delegated,
        "delegated_fraction": round(info.num_delegated_nodes / total, 4) if total else 0.0,
        "delegated_subgraphs": info.num_delegated_subgraphs,
        "top_non_delegated_ops": dict(undelegated.most_common(8)),
    }


def _partitioners(backend: str, soc: str | None):
    if backend == "xnnpack":
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

        return [XnnpackPartitioner()]
    # Only reached with QNN_SDK_ROOT set (check_backend); unverified on these machines.
    from executorch.backends.qualcomm.partition.qnn_partitioner import QnnPartitioner
    from executorch.backends.qualcomm.utils.utils import (
        generate_htp_compiler_spec,
        generate_qnn_executorch_compiler_spec,
        get_soc_to_chipset_map,
    )

    chipsets = get_soc_to_chipset_map()
    if soc not in chipsets:
        raise ExportError(f"--soc {soc}: unknown; QNN knows {', '.join(sorted(chipsets))}")
    specs = generate_qnn_executorch_compiler_spec(
        soc_model=chipsets[soc], backend_options=generate_htp_compiler_spec(use_fp16=True)
    )
    return [QnnPartitioner(specs)]


def _announced(partitioners: list, message: str, progress) -> list:
    """Partitioners that report ``message`` when lowering reaches their method: lowering is the long,
    otherwise silent step (minutes at full size), and it takes the methods one by one."""
    if progress is None:
        return partitioners
    for p in partitioners:

        def partition(exported_program, _partition=p.partition):
            progress(message)
            return _partition(exported_program)

        p.partition = partition
    return partitioners


@torch.no_grad()
def lower(
    components: list[Component], constant_methods: dict, backend: str = "xnnpack", soc: str | None = None, progress=None
) -> LoweredProgram:
    """torch.export every component, lower with the backend's partitioner, emit the program (``write`` it)."""
    import executorch.extension.llm.custom_ops  # noqa: F401  (registers llama:: ops if the graph uses them)
    from executorch.exir import ExecutorchBackendConfig, to_edge_transform_and_lower
    from executorch.exir.passes import MemoryPlanningPass

    out = LoweredProgram(None, constant_methods=constant_methods)
    exported = {}
    t0 = time.perf_counter()
    for comp in components:
        comp.module.eval()
        exported[comp.name] = torch.export.export(
            comp.module, comp.example_inputs, dynamic_shapes=comp.dynamic_shapes, strict=False
        )
        # The output's shape and dtype as traced (no eager run: at 9B one costs minutes and a dequantized lm_head).
        sample = exported[comp.name].graph.output_node().args[0][0].meta["val"]
        dyn = comp.dynamic_shapes or (None,) * len(comp.example_inputs)
        out.methods[comp.name] = {
            "inputs": [_tensor_spec(n, t, d) for n, t, d in zip(comp.input_names, comp.example_inputs, dyn)],
            # Dynamic components are sequence-shaped: [1, seq, ...] in, [1, seq, ...] out.
            "outputs": [_tensor_spec(comp.output_names[0], sample, {1: "seq"} if comp.dynamic_shapes else None)],
        }
        if progress:
            progress(f"exported {comp.name}")
    out.seconds["torch_export"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    partitioners = {
        name: _announced(_partitioners(backend, soc), f"lowering {name} to {backend} ({i}/{len(exported)})", progress)
        for i, name in enumerate(exported, 1)
    }
    edge = to_edge_transform_and_lower(exported, partitioner=partitioners, constant_methods=constant_methods)
    out.seconds["lower"] = time.perf_counter() - t1
    for comp in components:
        out.delegation[comp.name] = _delegation(edge.exported_program(comp.name))
    if progress:
        progress("lowered to " + backend)
    t2 = time.perf_counter()
    program = edge.to_executorch(
        ExecutorchBackendConfig(
            # Inputs come from the caller; KV-cache buffers are planned and persist across calls.
            # share_mutable_buffers: the KV cache gets its own memory, shared by name between methods
            # (text_decoder, reset_cache). Without it, calling token_embedding between decoder steps
            # overwrites the cache in the shared planned arena.
            memory_planning_pass=MemoryPlanningPass(alloc_graph_input=False, share_mutable_buffers=True),
            # Fuses dequantize + embedding into the quantized embedding kernels (else "missing out variants").
            do_quant_fusion_and_const_prop=True,
        )
    )
    out.program = program
    out.seconds["emit"] = time.perf_counter() - t2
    if progress:
        progress("emitted the program")
    return out
