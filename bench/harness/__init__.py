"""What every bench/ script shares, one concern per module.

- ``paths``: repository, results and BENCHMARKS.md locations.
- ``units``: decimal GB/MB and the number formats of every table.
- ``timing``: warmup + median timing.
- ``memory``: this process's RSS.
- ``machine``: machine facts (CPU, cores, memory, versions, L3) and the memory-bandwidth probe.
- ``load``: CPU load from other processes while a benchmark runs; waiting for a quiet machine.
- ``bundles``: export-or-reuse of a bundle, the export in a child process with its own peak RSS; ``dispatch``, a
  script's first step (the export child, ``--from-json``).
- ``backend_timing``: prefill / decode / encoders through a runtime backend (ExecuTorch, ONNX Runtime, torch).
- ``results``: the results JSON (command, run record, header fields).
- ``markdown``: tables and the idempotent sections of BENCHMARKS.md.
- ``console``: the same tables on the terminal.

Benchmarks measure and report; they never assert on timings.
"""
