"""How the Core ML packages are built: weights, block size, deployment target (``CoreMLRecipe``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ...errors import ExportError
from ...quantize.grid import BLOCK_SIZES

MIN_IOS = (17, 18)
WEIGHT_SCHEMES = ("int4", "int8", "fp16")
COMPUTE_UNITS = {"all": "ALL", "cpu_and_gpu": "CPU_AND_GPU", "cpu_and_ne": "CPU_AND_NE", "cpu_only": "CPU_ONLY"}


@dataclass(frozen=True)
class CoreMLRecipe:
    """How the packages are built. Invalid combinations fail here, before any work."""

    weights: str = "int4"
    block_size: int | None = (
        32  # None: 32, or a quantized checkpoint's int4 group size (CoreMLTarget.resolve resolves it)
    )
    min_ios: int = 18
    embedding: str | None = None  # token embedding table; None = same as ``weights``

    def __post_init__(self):
        if self.min_ios not in MIN_IOS:
            raise ExportError(f"--min-ios {self.min_ios}: expected 17 or 18")
        for opt, value in (("--quant", self.weights), ("embedding", self.embedding or self.weights)):
            if value not in WEIGHT_SCHEMES:
                raise ExportError(f"{opt} {value}: expected one of {', '.join(WEIGHT_SCHEMES)}")
        if self.min_ios < 18 and "int4" in (self.weights, self.embedding):
            raise ExportError(
                "--quant int4 needs --min-ios 18: int4 per-block weights (constexpr_blockwise_shift_scale) "
                "do not exist before iOS 18; use --quant int8 (per-channel) for iOS 17"
            )
        if self.block_size is not None and self.block_size not in BLOCK_SIZES:
            raise ExportError(f"--block-size {self.block_size}: expected one of {', '.join(map(str, BLOCK_SIZES))}")

    @property
    def embedding_scheme(self) -> str:
        return self.embedding or self.weights

    def scheme(self, component: str) -> str:
        return self.embedding_scheme if component == "token_embedding" else self.weights

    def kind(self, component: str) -> str:
        """Parity kind (``autoglm_runtime.parity``) of a component's package."""
        return "fp16" if self.scheme(component) == "fp16" else "weight_only_fp16"

    def to_dict(self) -> dict:
        return {**asdict(self), "embedding": self.embedding_scheme, "compute_precision": "float16"}

    @classmethod
    def from_dict(cls, d: dict) -> CoreMLRecipe:
        return cls(
            weights=d["weights"],
            block_size=int(d["block_size"]),
            min_ios=int(d["min_ios"]),
            embedding=d.get("embedding"),
        )
