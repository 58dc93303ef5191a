#!/usr/bin/env bash
# The main job: installs what is missing, then pre-trains the `small` APV video model on the
# Meta-world sample corpus shipped with the package (a few minutes on a 2-core CPU), writing a
# checkpoint, its model card and an open-loop prediction video under runs/sample.
# Extra arguments go to pretrain.py (e.g. `bash scripts/main.sh --steps 400`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export MUJOCO_GL=egl PYOPENGL_PLATFORM=egl
# One intra-op thread: on a small, shared CPU two threads often wait on each other.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
out=runs/sample
if [ -d "$out/checkpoints" ]; then
  echo "apv-hub: $out already holds a run; continuing it (delete $out to start over)"
  exec .venv/bin/python pretrain.py --resume "$out" "$@"
fi
exec .venv/bin/python pretrain.py --data sample --preset small --steps 200 --log-every 20 \
  --out "$out" "$@"
