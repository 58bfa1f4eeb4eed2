"""ONNX: one ``.onnx`` per component, int4 ``MatMulNBits``, the KV cache as explicit inputs/outputs."""
