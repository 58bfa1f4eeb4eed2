"""autoglm_runtime: the reference runtime for autoglm-export bundles.

Prompt building and preprocessing need only numpy/PIL/tokenizers, mirroring what the demo apps do;
backends (torch, ExecuTorch, onnxruntime, Core ML) plug in behind one small interface.
"""

__version__ = "0.1.0"
