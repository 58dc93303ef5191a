"""Timing, memory and kernel-count helpers shared by the benchmark scripts, and the variant table
(eager/compiled x fp32/bf16, each variant in a fresh process) of the model-level benchmarks."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_calls(fn: Callable[[], object], device: str, warmup: int, repeats: int) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    sync(device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def machine(device: str) -> dict[str, object]:
    """Device, threads, versions and peak memory so far (process RSS; GPU allocations)."""
    info: dict[str, object] = {
        "device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
        "threads": torch.get_num_threads(),
        # Linux reports ru_maxrss in KiB.
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    if device.startswith("cuda"):
        info["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return info


def bench_parser(doc: str | None) -> argparse.ArgumentParser:
    """An argument parser with the options every benchmark shares."""
    parser = argparse.ArgumentParser(description=(doc or "").split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls first")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    return parser


def report(run: Callable[[argparse.Namespace], dict], args: argparse.Namespace) -> None:
    """Apply the shared options, run the benchmark, print its result as JSON."""
    if args.threads:
        torch.set_num_threads(args.threads)
    json.dump(run(args), sys.stdout, indent=2)
    print()


# Variants of a model-level benchmark --------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """How a step runs: bf16 autocast or float32, eager or ``torch.compile``d."""

    bf16: bool
    compiled: bool


VARIANTS = {
    "eager_fp32": Variant(bf16=False, compiled=False),
    "eager_bf16": Variant(bf16=True, compiled=False),
    "compiled_fp32": Variant(bf16=False, compiled=True),
    "compiled_bf16": Variant(bf16=True, compiled=True),
}
ROOT = Path(__file__).resolve().parent.parent


def autocast(device: str, bf16: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on ``device``'s type, or nothing."""
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


def count_kernels(fn: Callable[[], object], device: str) -> int:
    """What one call of ``fn`` launches, counted with ``torch.profiler``.

    On CUDA: device-side events (kernels, memcpy, memset). On a CPU, where nothing is launched,
    the counterpart: outermost aten operator calls (those not made by another aten operator),
    i.e. every operator dispatched by Python code or by autograd, views included. Kernels that
    ``torch.compile`` generates are not aten operators: on a CPU a compiled step counts only the
    aten calls left around them.
    """
    cuda = device.startswith("cuda")
    activities = [torch.profiler.ProfilerActivity.CPU]
    if cuda:
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        fn()
        sync(device)
    return kernels_of(prof.events(), device)


def compile_counters() -> dict[str, int]:
    """Graphs torch.compile made and the graph breaks it took so far in this process."""
    from torch._dynamo.utils import counters

    return {
        "graphs": int(counters["stats"]["unique_graphs"]),
        "graph_breaks": int(sum(counters["graph_break"].values())),
    }


def peak_memory_gib(device: str) -> float:
    """Peak GPU memory allocated on CUDA, else the process's peak resident set."""
    if device.startswith("cuda"):
        return round(torch.cuda.max_memory_allocated() / 2**30, 3)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)


def measure_step(
    step: Callable[[], object], device: str, warmup: int, steps: int
) -> dict[str, object]:
    """First call (compilation, allocator growth) timed apart, ``warmup`` more untimed calls,
    then ``steps`` timed ones, then one profiled call -> the row of a variant table."""
    start = time.perf_counter()
    step()
    sync(device)
    first = time.perf_counter() - start
    for _ in range(warmup):
        step()
    cpu_start = time.process_time()
    times = time_calls(step, device, 0, steps)
    cpu = time.process_time() - cpu_start
    mean = sum(times) / len(times)
    row: dict[str, object] = {
        "first_call_s": round(first, 3),
        "seconds_per_step": round(mean, 4),
        "steps_per_second": round(1 / mean, 3),
        # Process CPU time (all threads) of the timed calls: on a shared machine a steadier
        # measure of the work than wall time.
        "cpu_seconds_per_step": round(cpu / steps, 4),
        "seconds_each": [round(t, 4) for t in times],
        "peak_memory_gib": peak_memory_gib(device),
    }
    row["kernels_per_step"] = count_kernels(step, device)
    return row


def variant_parser(doc: str | None, quick: dict[str, object]) -> argparse.ArgumentParser:
    """``bench_parser`` plus the variant table's options; ``quick`` is what ``--quick`` sets."""
    parser = bench_parser(doc)
    parser.add_argument(
        "--variants", nargs="+", choices=sorted(VARIANTS), default=None,
        help="default: all four (--quick: the eager ones)",
    )  # fmt: skip
    parser.add_argument("--quick", action="store_true", help=f"CPU smoke run: {quick}, eager")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON too")
    parser.add_argument("--one-variant", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    return parser


def variant_row(
    args: argparse.Namespace, step: Callable[[], object], steps: int, **setting: object
) -> dict[str, object]:
    """Measure ``step`` of the variant ``args.one_variant`` -> its row, with the setting."""
    row = {"variant": args.one_variant, **measure_step(step, args.device, args.warmup, steps)}
    if VARIANTS[args.one_variant].compiled:
        row.update(compile_counters())
    info = machine(args.device)
    return {**row, **setting, **{k: info[k] for k in ("device", "threads", "torch")}}


def variant_main(
    script: str,
    run: Callable[[argparse.Namespace], dict],
    args: argparse.Namespace,
    quick: dict[str, object],
    options: tuple[str, ...],
    title: Callable[[dict], str],
    step: str,
) -> None:
    """A model-level benchmark's command line: in a child (``--one-variant``), measure one
    variant and print its row as JSON; otherwise run every variant in its own process and print
    the table. ``options`` name the arguments the children get; ``title`` describes the setting
    from a row."""
    if args.quick:
        vars(args).update(quick)
    if args.one_variant:
        report(run, args)
        return
    variants = args.variants or (["eager_fp32", "eager_bf16"] if args.quick else list(VARIANTS))
    before = load_average()
    passed = {k: getattr(args, k) for k in (*options, "warmup", "device", "threads")}
    rows = run_variants(script, variants, passed)
    first = next((r for r in rows if "error" not in r), {})
    machine_line = (
        f"device {first.get('device')}, {first.get('threads')} threads, torch "
        f"{first.get('torch')}; load average before {before}, after {load_average()}"
    )
    print_table(rows, [title(first), machine_line], step, rows if args.json else None)


def run_variants(script: str, variants: list[str], options: dict[str, object]) -> list[dict]:
    """Run ``script --one-variant V --key value ...`` for each variant in a fresh process (precision
    and compilation are process-wide, and so is the peak memory) -> their JSON rows."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    argv = [f"--{k.replace('_', '-')}={v}" for k, v in options.items() if v is not None]
    rows = []
    for name in variants:
        command = [sys.executable, script, "--one-variant", name, *argv]
        done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
        if done.returncode:
            tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
            rows.append({"variant": name, "error": tail[:200]})
            print(f"{name} failed:\n{done.stderr[-3000:]}", file=sys.stderr)
            continue
        rows.append(json.loads(done.stdout))
    return rows


def print_table(
    rows: list[dict],
    header: list[str],
    step: str = "step",
    json_rows: list[dict] | None = None,
    columns: tuple[tuple[str, str], ...] | None = None,
) -> None:
    """A Markdown table of the variant rows after lines describing the setting (a ``step`` is
    what one row times: "step", "update"), then, if given, the rows as JSON. ``columns``:
    (row key, title) pairs (default: those of the model-level benchmarks)."""
    columns = columns or (
        ("variant", "variant"),
        ("seconds_per_step", f"s / {step}"),
        ("steps_per_second", f"{step}s / s"),
        ("cpu_seconds_per_step", f"CPU s / {step}"),
        ("peak_memory_gib", "peak memory GiB"),
        ("kernels_per_step", f"kernels / {step}"),
        ("first_call_s", "first call s"),
        ("graphs", "graphs"),
        ("graph_breaks", "graph breaks"),
    )
    for line in header:
        print(line)
    print()
    print("| " + " | ".join(title for _, title in columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        if "error" in row:
            cells = [row["variant"], f"failed: {row['error']}"] + [""] * (len(columns) - 2)
        else:
            cells = [str(row.get(key, "-")) for key, _ in columns]
        print("| " + " | ".join(cells) + " |")
    if json_rows is not None:
        print()
        json.dump(json_rows, sys.stdout, indent=2)
        print()


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# Variants of a training-loop benchmark ------------------------------------------------------------

# name -> (precision, compile, compile mode); graph-captured (CUDA graphs) needs CUDA.
LOOP_VARIANTS: dict[str, tuple[str, bool, str]] = {
    "eager_fp32": ("fp32", False, "default"),
    "eager_bf16": ("bf16", False, "default"),
    "compiled_bf16": ("bf16", True, "default"),
    "graphs_bf16": ("bf16", True, "reduce-overhead"),
}


def loop_overrides(variant: str) -> dict[str, object]:
    """The trainer config fields of a loop variant."""
    precision, compiled, mode = LOOP_VARIANTS[variant]
    return {"precision": precision, "compile": compiled, "compile_mode": mode}


class StepProfiler:
    """Counts what one training step launches inside a real training loop, with ``torch.profiler``
    (see `count_kernels`): from the ``at``-th ``optimizer.step()`` of the optimiser ``target``
    returns (a function of the optimiser: the loops do not hand theirs out before they run) to
    the next one, so the window is one whole loop iteration. Also records the frames Dynamo had
    compiled at that point, so that recompilations after it can be counted."""

    def __init__(self, at: int, device: str, target: Callable[[torch.optim.Optimizer], bool]):
        self.at, self.device, self.target = at, device, target
        self.seen, self.profile, self.kernels = 0, None, None
        self.frames_at_start: int | None = None
        from torch.optim.optimizer import register_optimizer_step_post_hook

        self.handle = register_optimizer_step_post_hook(self.hook)

    def hook(self, optimizer: torch.optim.Optimizer, *_: object) -> None:
        if not self.target(optimizer):
            return
        self.seen += 1
        if self.seen == self.at:
            from apv_hub.compilation import compiled_frames

            self.frames_at_start = compiled_frames()
            activities = [torch.profiler.ProfilerActivity.CPU]
            if self.device.startswith("cuda"):
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            self.profile = torch.profiler.profile(activities=activities)
            self.profile.__enter__()
        elif self.seen == self.at + 1 and self.profile is not None:
            sync(self.device)
            self.profile.__exit__(None, None, None)
            self.kernels = kernels_of(self.profile.events(), self.device)
            self.profile = None
            self.handle.remove()

    def recompiles(self) -> int | None:
        """Frames Dynamo compiled after the profiled step began (0: no recompilation)."""
        from apv_hub.compilation import compiled_frames

        return None if self.frames_at_start is None else compiled_frames() - self.frames_at_start


def kernels_of(events: list, device: str) -> int:
    """Kernels in profiler events: device events on CUDA, outermost aten calls on a CPU."""
    if device.startswith("cuda"):
        return sum(1 for e in events if e.device_type == torch.autograd.DeviceType.CUDA)

    def is_aten(event: object) -> bool:
        return event is not None and event.name.startswith("aten::")

    return sum(1 for e in events if is_aten(e) and not is_aten(e.cpu_parent))


LOOP_COLUMNS = (
    ("variant", "variant"),
    ("steps_per_second", "steps / s"),
    ("updates_per_second", "updates / s"),
    ("env_steps_per_second", "env steps / s"),
    ("peak_memory_mib", "peak memory MiB"),
    ("kernels_per_step", "kernels / step"),
    ("data_wait_fraction", "data wait"),
    ("recompiles", "recompiles after warm-up"),
    ("first_window_s", "warm-up s"),
)


def print_loop_table(rows: list[dict], header: list[str]) -> None:
    """The variant table of a loop benchmark (the columns that apply) after its header lines."""
    columns = tuple((k, t) for k, t in LOOP_COLUMNS if k == "variant" or any(k in r for r in rows))
    print_table(rows, header, columns=columns)


def report_loop(
    rows: list[dict], describe: Callable[[dict], str], load_before: str, json_path: str | None
) -> None:
    """Print a loop benchmark's table: ``describe(first good row)``, the device and load line,
    the rows; also write them to ``json_path`` if given."""
    first = next((r for r in rows if "error" not in r), {})
    header = [
        describe(first),
        f"device {first.get('device')}, torch {first.get('torch')}, {os.cpu_count()} CPUs; "
        f"load average before {load_before}, after {load_average()}",
    ]
    print_loop_table(rows, header)
    if json_path:
        Path(json_path).write_text(json.dumps(rows, indent=2))


def loop_parser(doc: str | None, quick: dict[str, object]) -> argparse.ArgumentParser:
    """The options every loop benchmark has; ``quick`` is what ``--quick`` sets."""
    parser = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    parser.add_argument("--variants", nargs="+", choices=sorted(LOOP_VARIANTS), default=None)
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS of the runs")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per variant")
    parser.add_argument("--quick", action="store_true", help=f"CPU smoke run: {quick}, eager")
    parser.add_argument("--json", help="also write the rows here")
    parser.add_argument("--one-variant", choices=sorted(LOOP_VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    return parser


def loop_setup(
    args: argparse.Namespace,
    quick: dict[str, object],
    run_one: Callable[[argparse.Namespace], dict],
) -> list[str] | None:
    """Apply ``--quick``; in a child (``--one-variant``) run ``run_one`` and print its row
    (-> None); else -> the variants to run (default: every one the device has; ``--quick``:
    the eager ones)."""
    if args.quick:
        vars(args).update(quick)
    if args.one_variant:
        if args.threads:
            torch.set_num_threads(args.threads)
        print(json.dumps(run_one(args)))
        return None
    if args.variants:
        return args.variants
    if args.quick:
        return ["eager_fp32", "eager_bf16"]
    return [v for v in LOOP_VARIANTS if torch.cuda.is_available() or v != "graphs_bf16"]


def run_loop_variant(
    script: str, variant: str, options: dict[str, object], threads: int | None, timeout: float
) -> dict:
    """``script --one-variant variant --key=value ...`` in a fresh process -> the JSON row it
    prints last (with its wall time), or the error it ended with."""
    argv = [f"--{k}={v}" for k, v in options.items() if v is not None]
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    start = time.perf_counter()
    try:
        done = subprocess.run(
            [sys.executable, script, "--one-variant", variant, *argv],
            capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return {"variant": variant, "error": f"did not finish within {timeout:.0f} s"}
    if done.returncode:
        print(f"{variant} failed:\n{done.stderr[-3000:]}", file=sys.stderr)
        tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"variant": variant, "error": tail[:200]}
    row = json.loads(done.stdout.strip().splitlines()[-1])
    row["wall_s"] = round(time.perf_counter() - start, 1)
    print(json.dumps(row), file=sys.stderr, flush=True)
    return row
