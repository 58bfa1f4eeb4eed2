#!/usr/bin/env bash
# The optimum-executorch peer's own virtualenv (it pins its own transformers, so it cannot share .venv).
#   bash bench/peer/make_venv.sh [VENV]     (default /work/venv-peer; `make peer-venv` runs it)
# torch is the project's pin (CPU wheel from /opt/wheels when present); executorch and torchao are the
# versions .venv uses, so both sides of bench/android_peer.py run the same runtime and kernels.
set -euo pipefail
VENV=${1:-${PEER_VENV:-/work/venv-peer}}
PYTHON=${PYTHON:-python3.11}
FIND_LINKS=()
[ -d /opt/wheels ] && FIND_LINKS=(--find-links /opt/wheels)
test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install --quiet --upgrade pip
"$VENV/bin/pip" install --quiet "${FIND_LINKS[@]}" torch==2.13.0
"$VENV/bin/pip" install --quiet "${FIND_LINKS[@]}" torch==2.13.0 executorch==1.5.1 torchao==0.18.0 optimum-executorch==1.1.0
"$VENV/bin/python" -c "import torch, transformers, executorch, optimum.executorch; print('peer venv:', 'torch', torch.__version__, 'transformers', transformers.__version__)"
