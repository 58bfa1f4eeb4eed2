"""Export targets: one folder each (``executorch/``, ``coreml/``, ``onnx/``), one ``Target`` each.

Every target folder has the same modules:
- ``export.py``: the target's options and its ``Target`` (registered here by name);
- ``lower.py`` / ``convert.py``: the backend work (programs, graphs, packages) from the eager model;
- ``twin.py``: the quantized eager twin, the eager model holding exactly the artifact's weights
  (the "quantized_eager" parity reference).

``pipeline.export_bundle`` runs the shared steps in one order for every target; a ``Target`` only
supplies what differs.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from ..errors import ExportError
from ..quantize import QuantRecipe, QuantReport

TARGET_MODULES = {"executorch": "executorch.export", "coreml": "coreml.export", "onnx": "onnx.export"}
TARGETS: dict[str, Target] = {}


def register_target(cls):
    """Class decorator: one instance per target, found by ``get_target(name)``."""
    TARGETS[cls.name] = cls()
    return cls


def get_target(name: str) -> Target:
    if name not in TARGET_MODULES:
        raise ExportError(f"unknown target '{name}': expected one of {', '.join(TARGET_MODULES)}")
    if name not in TARGETS:
        importlib.import_module(f"{__name__}.{TARGET_MODULES[name]}")  # registers it
    return TARGETS[name]


@dataclass
class ExportOptions:
    """Options every target has; each target's options extend these."""

    out: Path
    validate: bool = True
    force: bool = False


@dataclass
class Job:
    """One export (or re-validation) in progress: what the pipeline hands each ``Target`` step."""

    src: object  # source.ModelSource
    options: ExportOptions
    stages: object  # stages.Stages
    qc: object | None = None  # quantize.qcheckpoint.QuantizedCheckpoint, already loaded into the model
    bundle: object | None = None  # bundle.BundleWriter (None when re-validating a bundle)
    quant_report: QuantReport | None = None
    artifacts: dict = field(default_factory=dict)  # what convert() wrote, for the manifest and backend
    scratch: object | None = None  # scratch.Scratch: big intermediates on disk for this export

    @property
    def fixed(self) -> dict | None:
        """The quantized checkpoint's linears (fqn -> QuantizedLinear), or None."""
        return self.qc.linears if self.qc is not None else None


class Target:
    """What differs per target. ``pipeline.export_bundle`` calls these in its one documented order."""

    name: ClassVar[str]  # registry key and the manifest's "target"
    command: ClassVar[str]  # the CLI command users know (android, ios, onnx)
    # Which weights ``convert`` reads: "original" (the converter rounds them itself, then ``twin``
    # applies the same rounding to the eager model) or "twin" (the backend lowers the quantized twin).
    converts: ClassVar[str] = "original"
    parity_name: ClassVar[str]  # name of the parity report's target
    # Load linear weights and the token embedding as stored (bf16, memory-mapped; ``stored.py``) and
    # make them fp32 one module at a time, instead of an fp32 copy of the whole model up front.
    keeps_stored: ClassVar[bool] = False
    # A quantized checkpoint's linears reach the twin as codes (``recipes.apply_recipe``'s ``fixed``), so
    # the eager model never needs their dequantized fp32 weights (``qcheckpoint.load_into_model``).
    twin_from_codes: ClassVar[bool] = False

    def resolve(self, options, quantized_checkpoint: Path | None):
        """Options made final before anything is loaded (conflicts with a quantized checkpoint fail here)."""
        return options

    def size_recipe(self, options) -> QuantRecipe | None:
        """The bundle's weights as a ``QuantRecipe`` for ``disk.estimate_bundle_bytes`` (None: all fp32)."""
        return None

    def check(self, src, options) -> None:
        """Options checked against the loaded model (shape limits)."""

    def chunk(self, options) -> int:
        """Longest text_decoder call of the parity probes (the prefill chunk)."""
        raise NotImplementedError

    def scratch_bytes(self, cfg, shape, options, bundle_bytes: int) -> int:
        """Disk the export needs beside the bundle for its intermediates (``scratch.py``) until it ends."""
        return 0

    def twin(self, job: Job) -> QuantReport:
        """The eager model made the artifact's quantized twin, in place."""
        raise NotImplementedError

    def convert(self, job: Job) -> None:
        """Write the artifacts into ``job.bundle`` and record them in ``job.artifacts``."""
        raise NotImplementedError

    def quant_kinds(self, options, fixed: dict | None) -> dict[str, str]:
        """Parity kind per component (decides the thresholds)."""
        raise NotImplementedError

    def backend(self, root: Path, manifest_fields: dict, options):
        """A runtime backend over the artifacts in ``root`` (the temp bundle, or a published one)."""
        raise NotImplementedError

    def recipe(self, options):
        """The quantization recipe (``to_dict`` goes into the manifest)."""
        raise NotImplementedError

    def runtime_name(self, options) -> str:
        """What runs the artifacts in the parity gate, for the log."""
        raise NotImplementedError

    def parity_info(self, options, backend) -> dict:
        """Context recorded in parity.json's ``info``."""
        return {}

    def manifest_fields(self, job: Job) -> dict:
        """The target's own manifest entries (beside ``summary.base_manifest``'s)."""
        raise NotImplementedError

    def options_from_manifest(self, manifest: dict):
        """The options a published bundle was exported with (for ``validate BUNDLE``)."""
        raise NotImplementedError
