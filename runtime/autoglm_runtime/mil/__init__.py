"""A numpy interpreter for Core ML ML Programs (MIL), to validate ``.mlpackage`` files on Linux.

    from autoglm_runtime.mil import MILModel
    m = MILModel("TextDecoder.mlpackage")
    state = m.make_state("prefill")
    out = m.predict({"inputs_embeds": x, ...}, function="prefill", state=state)

Loading needs coremltools (imported lazily); execution is numpy only.
"""

from .interpreter import InputInfo, MILModel, MILRuntimeError, run_op, unsupported_op_error
from .ops import OPS

SUPPORTED_OPS = frozenset(OPS)

__all__ = ["MILModel", "MILRuntimeError", "InputInfo", "OPS", "SUPPORTED_OPS", "run_op", "unsupported_op_error"]
