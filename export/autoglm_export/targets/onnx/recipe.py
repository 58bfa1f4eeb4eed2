"""What ``--quant`` / ``--block-size`` mean for ONNX (the manifest's ``quantization.recipe``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ...errors import ExportError
from ...quantize.grid import BLOCK_SIZES

QUANT_SCHEMES = ("int4", "fp32")


@dataclass(frozen=True)
class OnnxQuant:
    scheme: str = "int4"  # linears of all three towers, lm_head included; "fp32": none
    block_size: int | None = (
        32  # None: 32, or a quantized checkpoint's int4 group size (OnnxTarget.resolve resolves it)
    )

    def __post_init__(self):
        if self.scheme not in QUANT_SCHEMES:
            raise ExportError(f"--quant {self.scheme}: expected one of {', '.join(QUANT_SCHEMES)}")
        if self.block_size is not None and self.block_size not in BLOCK_SIZES:
            raise ExportError(f"--block-size {self.block_size}: expected one of {', '.join(map(str, BLOCK_SIZES))}")

    def kind(self, component: str) -> str:
        """How the component is quantized (decides its parity thresholds): int4 weights, fp32 activations."""
        if self.scheme == "fp32" or component == "token_embedding":
            return "fp32"
        return "weight_only"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> OnnxQuant:
        return cls(d.get("scheme", "int4"), int(d.get("block_size", 32)))
