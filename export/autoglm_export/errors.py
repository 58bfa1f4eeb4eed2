"""Errors raised while loading, quantizing or exporting a model."""

from contextlib import contextmanager
from pathlib import Path

from autoglm_runtime.errors import AutoglmError


class CheckpointError(AutoglmError):
    """A checkpoint directory is unreadable, of the wrong type, or does not match the model."""


class ExportError(AutoglmError):
    """An export step failed for a reason the user can act on."""


@contextmanager
def values_of(path: Path):
    """Values of the wrong type or range deep in a JSON file (a list where a number belongs, null where
    a table belongs) become one CheckpointError naming the file, not a Python traceback."""
    try:
        yield
    except (TypeError, ValueError, AttributeError, KeyError, IndexError, OverflowError, ZeroDivisionError) as exc:
        reason = (str(exc).splitlines() or [""])[0]
        raise CheckpointError(f"{path}: invalid value ({type(exc).__name__}: {reason})") from None
