"""Errors raised while loading, quantizing or exporting a model."""

from autoglm_runtime.errors import AutoglmError


class CheckpointError(AutoglmError):
    """A checkpoint directory is unreadable, of the wrong type, or does not match the model."""


class ExportError(AutoglmError):
    """An export step failed for a reason the user can act on."""
