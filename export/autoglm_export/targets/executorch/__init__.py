"""ExecuTorch (Android): one multi-method ``model.pte`` lowered to XNNPACK (or QNN)."""
