"""Timing and memory helpers shared by the benchmark scripts."""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from collections.abc import Callable

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
