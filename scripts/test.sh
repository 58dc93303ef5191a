#!/usr/bin/env bash
# Installs what is missing, then runs the whole test suite (lint included).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export MUJOCO_GL=egl PYOPENGL_PLATFORM=egl
exec .venv/bin/python -m pytest -q "$@"
