#!/usr/bin/env bash
# The main job: installs what is missing, pre-trains the `small` APV video model on the
# Meta-world sample corpus shipped with the package (reach, drawer-open, button-press-topdown,
# door-open), writing a checkpoint, its model card and an open-loop prediction video under
# runs/sample; then probes what the model learned on a task the corpus does not show
# (door-lock): ridge regressions from its features to the state and the reward, scored on
# held-out episodes against the same architecture at random initialisation (table printed,
# runs/sample/probe/probe.md and probe_r2.png written). A few minutes on a 2-core CPU.
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
  .venv/bin/python pretrain.py --resume "$out" "$@"
else
  .venv/bin/python pretrain.py --data sample --preset small --steps 200 --log-every 20 \
    --out "$out" "$@"
fi
# Rendering Meta-world in software costs about 0.2 s of CPU a frame, so the probe is kept
# small: 8 scripted episodes of 30 steps (the last 2 held out), 3 random-init models.
.venv/bin/python -m apv_hub.evaluation.probe "$out/model" --env metaworld/door-lock-v3 \
  --episodes 8 --test-episodes 2 --episode-length 30 --folds 3 --random-init-seeds 3 \
  --out "$out/probe" --quiet
