#!/usr/bin/env bash
# Installs what is missing, then runs the whole test suite (lint included) on one pytest worker
# per core (APV_TEST_WORKERS=N to choose; every test pins torch to one intra-op thread).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export MUJOCO_GL=egl PYOPENGL_PLATFORM=egl
exec .venv/bin/python -m pytest -q -n "${APV_TEST_WORKERS:-auto}" --dist worksteal "$@"
