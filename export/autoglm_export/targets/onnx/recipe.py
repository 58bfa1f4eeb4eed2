"""What ``--quant`` / ``--block-size`` mean for ONNX (the manifest's ``quantization.recipe``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ...errors import ExportError
from ...quantize.grid import BLOCK_SIZES

QUANT_SCHEMES = ("int4", "fp32")
EMBEDDING_SCHEMES = ("fp32", "int4")
ACCURACY_LEVELS = (0, 4)


@dataclass(frozen=True)
class OnnxQuant:
    scheme: str = "int4"  # linears of all three towers, lm_head included; "fp32": none
    block_size: int | None = (
        32  # None: 32, or a quantized checkpoint's int4 group size (OnnxTarget.resolve resolves it)
    )
    # MatMulNBits' accuracy_level: 0 computes in fp32 (the eager twin's math); 4 quantizes activations to
    # int8 per block at run time (onnxruntime's int8 kernels, --int8-activations): faster, judged by its own
    # parity thresholds (kind "int8_activations").
    accuracy_level: int = 0
    # The token embedding: fp32 (the table as stored), or int4 (``GatherBlockQuantized``: MatMulNBits' codes and
    # scales, blocks along the hidden size; a quarter of a bf16 table: 0.33 GB instead of 1.24 at 9B).
    embedding: str = "fp32"

    def __post_init__(self):
        if self.scheme not in QUANT_SCHEMES:
            raise ExportError(f"--quant {self.scheme}: expected one of {', '.join(QUANT_SCHEMES)}")
        if self.block_size is not None and self.block_size not in BLOCK_SIZES:
            raise ExportError(f"--block-size {self.block_size}: expected one of {', '.join(map(str, BLOCK_SIZES))}")
        if self.accuracy_level not in ACCURACY_LEVELS:
            raise ExportError(f"MatMulNBits accuracy_level {self.accuracy_level}: expected one of {ACCURACY_LEVELS}")
        if self.embedding not in EMBEDDING_SCHEMES:
            raise ExportError(f"--quant-embedding {self.embedding}: expected one of {', '.join(EMBEDDING_SCHEMES)}")
        if self.accuracy_level and self.scheme == "fp32":
            raise ExportError("--int8-activations needs --quant int4: an fp32 graph has no MatMulNBits")

    def kind(self, component: str) -> str:
        """How the component is quantized (decides its parity thresholds): int4 weights, fp32 or int8 activations."""
        if component == "token_embedding":
            return "weight_only" if self.embedding == "int4" else "fp32"  # a lookup: no activations to quantize
        if self.scheme == "fp32":
            return "fp32"
        return self.weight_kind

    @property
    def weight_kind(self) -> str:
        """The parity kind of a component whose linears are MatMulNBits."""
        return "int8_activations" if self.accuracy_level == 4 else "weight_only"

    def to_dict(self) -> dict:
        d = asdict(self)
        for key, default in (("accuracy_level", 0), ("embedding", "fp32")):
            if d[key] == default:  # recorded as before the option existed
                del d[key]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> OnnxQuant:
        return cls(
            d.get("scheme", "int4"),
            int(d.get("block_size", 32)),
            int(d.get("accuracy_level", 0)),
            d.get("embedding", "fp32"),
        )
