"""Correctness checks, named by what they compare:

- ``against_transformers``: our fp32 re-implementation vs transformers (the "PyTorch original");
- ``probes``: the parity probes (calibration prompts as exact component inputs) and running any
  backend on them;
- ``parity``: a backend's outputs vs the fp32 and quantized-eager references, with the thresholds
  of ``autoglm_runtime.parity`` (the one threshold table);
- ``report``: several bundles' ``parity.json`` as one markdown + HTML report.
"""
