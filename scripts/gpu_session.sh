#!/usr/bin/env bash
# The one command a GPU session runs (about 20 minutes on one H100). Results go under
# ${OUT:-runs/gpu-session}/ (every table and log; printed as it goes):
#
#   setup   install what is missing (scripts/bootstrap.sh, unless PYTHON names an interpreter
#           with a CUDA build of torch already), report the GPU and which EGL renders MuJoCo
#   checks  the CUDA equivalence tests: no host sync inside a pre-training step or an agent
#           update (torch.cuda.set_sync_debug_mode("error")), Inductor-compiled = eager step,
#           bf16 = fp32 within tolerance (tests/test_host_syncs.py, test_compile.py,
#           test_precision.py)
#   bench   the loop benchmarks at paper size, every variant (eager fp32, eager bf16, compiled
#           bf16, graph-captured bf16): benchmarks/bench_pretrain.py (16 x 25 clips from the
#           clip cache) and benchmarks/bench_finetune.py (Meta-world drawer-open, 50 x 50)
#   train   pre-train the paper-size video model on the sample corpus (bf16, compiled, clip
#           cache), then fine-tune on metaworld/drawer-open-v3 APV from it and DreamerV2 side
#           by side, each with its learning curve (eval.csv) in its run folder
#
# Run one phase or several: `bash scripts/gpu_session.sh bench train` (default: all four, in
# order; each fits the 10-minute limit of one remote command). Sizes: PRETRAIN_STEPS (3000),
# FINETUNE_STEPS (env steps, 20000), BENCH_STEPS (pre-training timed steps, 200); presets
# PRETRAIN_PRESET (paper), FINETUNE_PRESET (metaworld); COMPILE (true). A CPU dry run of the
# train phase: PRETRAIN_PRESET=tiny FINETUNE_PRESET=tiny PRETRAIN_STEPS=20 FINETUNE_STEPS=300
# COMPILE=false PRECISION=fp32 bash scripts/gpu_session.sh train  (FINETUNE_PREFILL: 1000)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-runs/gpu-session}
[ $# -gt 0 ] || set -- setup checks bench train
phases=("$@")
mkdir -p "$out"
export MUJOCO_GL=egl PYOPENGL_PLATFORM=egl PYTHONPATH=$PWD
PY=${PYTHON:-.venv/bin/python}
log() { echo "== gpu_session: $*" | tee -a "$out/session.log"; }

has() { [[ " ${phases[*]} " == *" $1 "* ]]; }

if has setup; then
  if ! "$PY" -c "import torch, apv_hub; assert torch.cuda.is_available()" 2>/dev/null; then
    log "installing (scripts/bootstrap.sh)"
    bash scripts/bootstrap.sh
    PY=.venv/bin/python
  fi
  "$PY" - <<'EOF' 2>&1 | tee "$out/device.txt"
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "device", torch.cuda.get_device_name())
from apv_hub.compilation import compiler_missing
print("torch.compile on CUDA:", compiler_missing("cuda") or "available")
try:
    from OpenGL import EGL
    import ctypes
    display = EGL.eglGetDisplay(EGL.EGL_DEFAULT_DISPLAY)
    EGL.eglInitialize(display, ctypes.pointer(EGL.EGLint()), ctypes.pointer(EGL.EGLint()))
    vendor = EGL.eglQueryString(display, EGL.EGL_VENDOR)
    print("EGL vendor:", vendor.decode() if vendor else None,
          "(NVIDIA: MuJoCo renders on the GPU; Mesa: software rendering, ~77 ms a frame)")
except Exception as e:  # noqa: BLE001 - a report, not a check
    print("EGL query failed:", e)
EOF
fi

if has checks; then
  log "CUDA equivalence and host-sync checks"
  "$PY" -m pytest -q -p no:cacheprovider tests/test_host_syncs.py tests/test_compile.py \
    tests/test_precision.py -rs 2>&1 | tee "$out/checks.txt" | tail -15
fi

if has bench; then
  log "pre-training loop benchmark, paper size"
  "$PY" benchmarks/bench_pretrain.py --preset paper --data sample --steps "${BENCH_STEPS:-200}" \
    --warmup 50 --num-workers 8 --clip-cache "$out/clip-cache" --json "$out/bench_pretrain.json" \
    2>"$out/bench_pretrain.log" | tee "$out/bench_pretrain.md"
  log "fine-tuning loop benchmark, Meta-world size"
  "$PY" benchmarks/bench_finetune.py --preset metaworld --env metaworld/drawer-open-v3 \
    --steps 1500 --prefill 500 --log-every 250 --json "$out/bench_finetune.json" \
    2>"$out/bench_finetune.log" | tee "$out/bench_finetune.md"
fi

if has train; then
  pre="$out/pretrain"
  log "pre-training the ${PRETRAIN_PRESET:-paper} video model on the sample corpus (${PRETRAIN_STEPS:-3000} steps)"
  if [ -d "$pre/checkpoints" ] && [ ! -f "$pre/summary.json" ]; then
    "$PY" pretrain.py --resume "$pre" --no-progress 2>&1 | tail -5
  elif [ ! -f "$pre/summary.json" ]; then
    "$PY" pretrain.py --data sample --preset "${PRETRAIN_PRESET:-paper}" \
      --steps "${PRETRAIN_STEPS:-3000}" --precision "${PRECISION:-bf16}" --num-workers 8 \
      --log-every 250 --checkpoint-every 1000 --out "$pre" --set "compile=${COMPILE:-true}" \
      --set "clip_cache=$out/clip-cache" --no-progress 2>&1 | tail -5
  fi
  steps=${FINETUNE_STEPS:-20000}
  log "fine-tuning on metaworld/drawer-open-v3: APV (from $pre/model) and DreamerV2, $steps env steps"
  common=(--env metaworld/drawer-open-v3 --preset "${FINETUNE_PRESET:-metaworld}" --no-progress
    --precision "${PRECISION:-bf16}" --set "total_env_steps=$steps" --set "prefill=${FINETUNE_PREFILL:-1000}"
    --set eval_every=5000 --set eval_episodes=5 --set checkpoint_every=10000
    --set "compile=${COMPILE:-true}")
  "$PY" finetune.py "${common[@]}" --variant apv --pretrained "$pre/model" --out "$out/apv" \
    >"$out/apv.log" 2>&1 &
  apv=$!
  "$PY" finetune.py "${common[@]}" --variant dreamerv2 --out "$out/dreamerv2" \
    >"$out/dreamerv2.log" 2>&1 &
  dv2=$!
  status=0
  wait $apv || status=$?
  wait $dv2 || status=$?
  for run in apv dreamerv2; do
    echo "-- $run: $(tail -1 "$out/$run.log")"
    [ -f "$out/$run/eval.csv" ] && cat "$out/$run/eval.csv"
  done | tee "$out/finetune_curves.txt"
  [ $status -eq 0 ] || { log "a fine-tuning run failed (see $out/*.log)"; exit $status; }
fi
log "done; results in $out"
