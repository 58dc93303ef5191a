"""The pre-training loop, data included, per variant: steps/s, peak memory, kernels per step,
data-wait fraction, recompilations.

    PYTHONPATH=$PWD python benchmarks/bench_pretrain.py --quick             # CPU, < 1 minute
    PYTHONPATH=$PWD python benchmarks/bench_pretrain.py --preset small --steps 20 --warmup 5
    PYTHONPATH=$PWD python benchmarks/bench_pretrain.py --preset paper --steps 500 \\
        --warmup 100 --num-workers 8 --clip-cache /tmp/clip-cache                 # on a GPU

Each variant (eager fp32, eager bf16, compiled bf16 and, on CUDA, graph-captured bf16: CUDA
graphs through ``torch.compile(mode="reduce-overhead")``) runs the real trainer
(``apv_hub.training.pretrain.Pretrainer``: DataLoader workers decoding clips or reading the clip
cache, loss, backward, clipping, Adam, logging) in a fresh process, since precision and
compilation are process-wide. The first ``warmup`` steps (worker start-up, compilation,
allocator growth) are one log window timed apart; steps/s and the data-wait fraction (time the
loop waited for the next batch) are the trainer's own records over the later windows. Kernels
per step: one loop iteration after the timed ones, counted by ``torch.profiler`` (CUDA: device
kernels; CPU: outermost aten operator calls). Recompilations: frames Dynamo compiled after the
warm-up (0 expected). ``--quick``: the tiny preset on the CPU, eager variants (Inductor's C++
code generation alone takes minutes on a small CPU).

Data: ``--data`` (a corpus folder or repo id), default the shipped sample corpus, or, where that
is missing, a synthetic moving-squares corpus built into a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from benchmarks.common import (
    ROOT,
    StepProfiler,
    load_average,
    loop_overrides,
    loop_parser,
    loop_setup,
    machine,
    report_loop,
    run_loop_variant,
)

QUICK = {"preset": "tiny", "steps": 6, "warmup": 3, "batch_size": 4, "seq_len": 8, "num_workers": 1}


def default_data(workdir: Path) -> str:
    from apv_hub.data import sample_corpus_path

    if (sample_corpus_path() / "data").is_dir():
        return "sample"
    sys.path.insert(0, str(ROOT))
    from tests.pretrain_helpers import build_squares_corpus

    return str(build_squares_corpus(workdir / "squares", num_videos=12, length=100))


def run_one(args: argparse.Namespace) -> dict:
    """One variant in this process -> its row."""
    from apv_hub.config import APVConfig
    from apv_hub.training.configs import PretrainConfig
    from apv_hub.training.pretrain import Pretrainer

    model = APVConfig.preset(args.preset)
    model = model.replace(
        batch_size=args.batch_size or model.batch_size, seq_len=args.seq_len or model.seq_len
    )
    total = args.warmup + args.steps + 1  # + the profiled step, after the timed windows.
    config = PretrainConfig(
        data=[args.data], model=model, steps=total, log_every=args.warmup,
        checkpoint_every=10**9, eval_every=10**9, eval_clips=1, eval_context=1,
        num_workers=args.num_workers, clip_cache=args.clip_cache,
        **loop_overrides(args.one_variant),
    )  # fmt: skip
    trainer = Pretrainer(config, Path(args.out), progress=False)
    profiler = StepProfiler(args.warmup + args.steps, str(trainer.run.device), lambda _: True)
    trainer.train()
    rows = json.loads((Path(args.out) / "metrics.json").read_text())
    timed = [r for r in rows if args.warmup < r["step"] <= args.warmup + args.steps]
    seconds = sum(args.warmup / r["perf/steps_per_sec"] for r in timed)
    wait = sum(r["perf/data_wait_fraction"] for r in timed) / len(timed)
    return {
        "variant": args.one_variant,
        "batch": f"{model.batch_size} x {model.seq_len}",
        "steps_per_second": round(args.warmup * len(timed) / seconds, 3),
        "peak_memory_mib": round(rows[-1]["perf/peak_memory_mb"]),
        "kernels_per_step": profiler.kernels,
        "data_wait_fraction": f"{wait:.1%}",
        "recompiles": profiler.recompiles() if config.compile else "-",
        "first_window_s": round(args.warmup / rows[0]["perf/steps_per_sec"], 2),
        "final_loss": rows[-1]["train/loss"],
        **{k: v for k, v in machine(str(trainer.run.device)).items() if k in ("device", "torch")},
    }


def main(argv: list[str] | None = None) -> None:
    parser = loop_parser(__doc__, QUICK)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--data", help="corpus (default: the sample, else synthetic)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps (a multiple of warmup)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed first steps (a log window)")
    parser.add_argument("--batch-size", type=int, help="override the preset's batch")
    parser.add_argument("--seq-len", type=int, help="override the preset's clip length")
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--clip-cache", help="read clips from a decoded clip cache here")
    args = parser.parse_args(argv)
    variants = loop_setup(args, QUICK, run_one)
    if variants is None:
        return
    if args.steps % args.warmup:
        parser.error("--steps must be a multiple of --warmup (both are log windows)")
    before = load_average()
    with tempfile.TemporaryDirectory(prefix="bench-pretrain-") as tmp:
        args.data = args.data or default_data(Path(tmp))
        rows = [run_variant(args, v, Path(tmp)) for v in variants]
    cache = f", clip cache {args.clip_cache}" if args.clip_cache else ", decoding with decord"
    report_loop(
        rows,
        lambda first: (
            f"Pre-training loop (data included), preset {args.preset}, batch "
            f"{first.get('batch')}, data {args.data}, {args.num_workers} loader workers{cache}"
        ),
        before,
        args.json,
    )


def run_variant(args: argparse.Namespace, variant: str, workdir: Path) -> dict:
    """``variant`` in a fresh process -> its row (or the error it ended with)."""
    options = {
        "preset": args.preset, "data": args.data, "steps": args.steps, "warmup": args.warmup,
        "batch-size": args.batch_size, "seq-len": args.seq_len, "num-workers": args.num_workers,
        "clip-cache": args.clip_cache, "threads": args.threads, "out": workdir / variant,
    }  # fmt: skip
    return run_loop_variant(__file__, variant, options, args.threads, args.timeout)


if __name__ == "__main__":
    main()
