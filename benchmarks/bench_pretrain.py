"""Steps/s and peak memory of the full pre-training loop, data loading included.

    PYTHONPATH=$PWD python benchmarks/bench_pretrain.py --preset small --steps 20 --warmup 5
    PYTHONPATH=$PWD python benchmarks/bench_pretrain.py --preset paper --variants fp32 bf16 \
        compile compile-bf16 --steps 500 --warmup 100                          # on a GPU

Each variant runs the real trainer (``apv_hub.training.pretrain``: DataLoader workers decoding
clips from the corpus, loss, backward, clipping, Adam, logging) in a fresh process, since
precision and compilation are process-wide. The first ``warmup`` steps (worker start-up,
compilation, allocator growth) are timed separately; the figure is the mean rate over the
remaining steps. Checkpoints and eval videos are left out of the timed window.

Data: ``--data`` (a corpus folder or repo id), default the shipped sample corpus, or, where that
is missing, a synthetic moving-squares corpus built into a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

VARIANTS = {
    "fp32": ["--precision", "fp32"],
    "bf16": ["--precision", "bf16"],
    "compile": ["--precision", "fp32", "--compile"],
    "compile-bf16": ["--precision", "bf16", "--compile"],
}


def default_data(workdir: Path) -> str:
    from apv_hub.data import sample_corpus_path

    if (sample_corpus_path() / "data").is_dir():
        return "sample"
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.pretrain_helpers import build_squares_corpus

    return str(build_squares_corpus(workdir / "squares", num_videos=12, length=100))


def run_variant(args: argparse.Namespace, variant: str, data: str, workdir: Path) -> dict:
    """One variant in a fresh process -> the measured window of its learning curve."""
    out = workdir / variant
    command = [
        sys.executable, str(Path(__file__).resolve().parent.parent / "pretrain.py"),
        "--data", data, "--out", str(out), "--preset", args.preset,
        "--steps", str(args.warmup + args.steps), "--log-every", str(args.warmup),
        "--checkpoint-every", str(10**9), "--eval-every", str(10**9), "--eval-clips", "1",
        "--num-workers", str(args.num_workers), "--no-progress", *VARIANTS[variant],
    ]  # fmt: skip
    if args.batch_size:
        command += ["--batch-size", str(args.batch_size)]
    env = {**os.environ}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    try:
        done = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=args.timeout
        )
    except subprocess.TimeoutExpired:
        return {"variant": variant, "error": f"did not finish within {args.timeout} s"}
    if done.returncode:
        return {"variant": variant, "error": done.stderr.strip().splitlines()[-1][-300:]}
    rows = json.loads((out / "metrics.json").read_text())
    timed = [r for r in rows if r["step"] > args.warmup]
    seconds = sum(args.warmup / r["perf/steps_per_sec"] for r in timed)
    steps = args.warmup * len(timed)
    config = json.loads((out / "run_config.json").read_text())["model"]
    return {
        "variant": variant,
        "preset": args.preset,
        "batch": f"{config['batch_size']} x {config['seq_len']}",
        "steps_per_sec": steps / seconds,
        "sec_per_step": seconds / steps,
        "warmup_steps_per_sec": rows[0]["perf/steps_per_sec"],
        "data_wait_fraction": sum(r["perf/data_wait_fraction"] for r in timed) / len(timed),
        "peak_memory_mib": rows[-1]["perf/peak_memory_mb"],
        "final_loss": rows[-1]["train/loss"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--data", help="corpus (default: the sample, else synthetic)")
    parser.add_argument("--variants", nargs="+", default=["fp32"], choices=sorted(VARIANTS))
    parser.add_argument("--steps", type=int, default=20, help="timed steps (a multiple of warmup)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed first steps")
    parser.add_argument("--batch-size", type=int, help="override the preset's batch")
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS of the runs")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per variant")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    if args.steps % args.warmup:
        parser.error("--steps must be a multiple of --warmup (both are log windows)")
    with tempfile.TemporaryDirectory(prefix="bench-pretrain-") as tmp:
        data = args.data or default_data(Path(tmp))
        results = []
        for variant in args.variants:
            results.append(run_variant(args, variant, data, Path(tmp)))
            print(json.dumps(results[-1]), flush=True)
    machine = {
        "cpu_count": os.cpu_count(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "data": data,
    }
    print(json.dumps({"machine": machine}))
    for r in results:
        if "error" in r:
            print(f"| {args.preset} | {r['variant']} | failed: {r['error']} |")
            continue
        print(
            f"| {r['preset']} | {r['variant']} | {r['batch']} | {r['steps_per_sec']:.3g} "
            f"| {r['sec_per_step']:.3g} | {r['data_wait_fraction']:.1%} "
            f"| {r['peak_memory_mib']:.0f} MiB |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine, "results": results}, indent=2))


if __name__ == "__main__":
    main()
