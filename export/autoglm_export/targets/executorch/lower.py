"""ExecuTorch recipe: torch.export each component, lower (XNNPACK or QNN), emit one multi-method .pte.

Conventions follow ExecuTorch's LLM runner: methods ``vision_encoder``, ``audio_encoder``,
``token_embedding``, ``text_decoder`` and constant methods ``get_max_seq_len``,
``get_max_context_len``, ``get_bos_id``, ``get_eos_ids``, ``get_vocab_size``, ``use_kv_cache``,
``enable_dynamic_shape``, plus ours for the runtime (image/audio token ids and counts, sizes).
"""

from __future__ import annotations

import copy
import logging
import os
import time
from collections import Counter
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import torch

from ...components import Component
from ...errors import ExportError
from ...scratch import Scratch

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

    def write_weights(self, directory) -> dict[str, int]:
        """The external weight files (``<tag>.ptd``), streamed like the .pte; name -> size in bytes."""
        data = self.program._tensor_data or {}  # no public accessor in executorch 1.5.1
        if data:
            self.program.write_tensor_data_to_file(str(directory))
        names = [n if n.endswith(".ptd") else n + ".ptd" for n in data]
        return {n: os.path.getsize(os.path.join(directory, n)) for n in names}


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


def _announced(partitioners: list, message: str, progress, external_weights: str | None) -> list:
    """Partitioners that report ``message`` when lowering reaches their method (lowering is the long,
    otherwise silent step: minutes at full size) and tag its weights for ``external_weights`` first (on
    the edge program: torch.export's decompositions drop the tag from placeholders)."""
    if progress is None and external_weights is None:
        return partitioners
    for p in partitioners:

        def partition(exported_program, _partition=p.partition):
            if progress:
                progress(message)
            if external_weights:
                _tag_weights(exported_program, external_weights)
            return _partition(exported_program)

        p.partition = partition
    return partitioners


def _tag_weights(program, tag: str) -> None:
    """Mark every parameter and constant of ``program`` for the external data file ``tag``: the ones a
    delegate consumes (XNNPACK puts them in its named data under this tag) and the ones left to
    portable kernels (``external_constants`` below). Mutable buffers (the KV cache) stay planned."""
    sig = program.graph_signature
    weights = set(sig.inputs_to_parameters) | set(sig.inputs_to_lifted_tensor_constants)
    weights |= {n for n, b in sig.inputs_to_buffers.items() if b not in sig.buffers_to_mutate.values()}
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in weights:
            node.meta.setdefault("custom", {})["delegate_constant_tag"] = tag


def _external_tag(tag: str):
    """The ``external_constants`` rule: every weight to ``tag``, except constants that ExecuTorch's own
    passes create (``_prop_tensor_constant<N>``, e.g. the packed int4 embedding): those names restart
    at 0 in every method, and the data file is keyed by name, so two methods' different constants
    would collide there (the runtime then fails with "Scalar type mismatch"). They stay in the .pte."""

    def rule(node) -> str | None:
        return None if node.name.startswith("_prop_tensor_constant") else tag

    return rule


SPILL_BYTES = 1 << 20  # delegate blobs from 1 MB up go to disk; small ones are not worth a file


@contextmanager
def packed_weights_on_disk(scratch: Scratch):
    """Lowering without a second copy of the weights in memory:

    - ExecuTorch deep-copies every partition's program, weights included, before the backend packs it
      ("in case backends change graph inside preprocess"): at 9B, 9 GB of copies of the quantized
      weights held at once. The copies here share the weight tensors instead (the graphs are still
      copied; XNNPACK reads the weights and never writes them);
    - XNNPACK's packed weights are written to ``scratch`` as it makes them (ExecuTorch's
      FileBackedData, which the .pte/.ptd writer copies from disk in chunks) instead of held as bytes
      until the program is written (~5 GB at 9B); after each one the quantized tensors it was packed
      from (memory-mapped from the same scratch) give their pages back.
    """
    from executorch.backends.xnnpack.xnnpack_preprocess import XnnpackBackend
    from executorch.exir._serialize._cord import FileBackedData
    from executorch.exir._serialize._named_data_store import NamedDataStore

    original = NamedDataStore.add_named_data

    def add_named_data(self, key, data, alignment=1, external_tag=None, tensor_layout=None):
        if isinstance(data, (bytes, bytearray)) and len(data) >= SPILL_BYTES:
            data = FileBackedData(str(scratch.file_for(data)))
            scratch.release()
        return original(self, key, data, alignment, external_tag, tensor_layout)

    def copy_sharing_weights(cls, program, compile_specs):
        weights = [*program.state_dict.values(), *program.constants.values()]
        return copy.deepcopy(program, {id(t): t for t in weights if isinstance(t, torch.Tensor)})

    name = "copy_exported_program_for_preprocess"
    own = XnnpackBackend.__dict__.get(name)  # None: it inherits BackendDetails' deep copy
    NamedDataStore.add_named_data = add_named_data
    setattr(XnnpackBackend, name, classmethod(copy_sharing_weights))
    try:
        yield
    finally:
        NamedDataStore.add_named_data = original
        if own is None:
            delattr(XnnpackBackend, name)
        else:
            setattr(XnnpackBackend, name, own)


@torch.no_grad()
def lower(
    components: list[Component],
    constant_methods: dict,
    backend: str = "xnnpack",
    soc: str | None = None,
    progress=None,
    external_weights: str | None = None,
    scratch: Scratch | None = None,
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
        name: _announced(
            _partitioners(backend, soc),
            f"lowering {name} to {backend} ({i}/{len(exported)})",
            progress,
            external_weights,
        )
        for i, name in enumerate(exported, 1)
    }
    with packed_weights_on_disk(scratch) if scratch is not None else nullcontext():
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
            external_constants=_external_tag(external_weights) if external_weights else False,
        )
    )
    out.program = program
    out.seconds["emit"] = time.perf_counter() - t2
    if progress:
        progress("emitted the program")
    return out
