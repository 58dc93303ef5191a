"""``torch.compile`` of training steps: one recipe for the trainers, the tests and the benchmarks.

A compiled step is a loss computation (forward; its backward is compiled with it by AOTAutograd)
traced for static shapes: every step of a run has the same batch shape, so a step after the
first must not compile again (`compiled_frames` counts the frames Dynamo compiled, so a trainer
or a benchmark can tell). The optimiser steps stay eager (fused Adam is one kernel on CUDA).

Modes (``COMPILE_MODES``): ``default`` (Inductor kernels), ``reduce-overhead`` (also CUDA graphs:
the whole compiled step replays as one graph launch; outputs are overwritten by the next replay,
so keep a copy of what you hold across steps, see `keep`), ``max-autotune`` (both, with kernel
autotuning; long first step). On the CPU only ``default`` makes sense and Inductor needs a C++
compiler (`compiler_missing`).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import torch
from torch import Tensor

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")
F = TypeVar("F", bound=Callable[..., Any])


def compile_step(fn: F, mode: str = "default", backend: str = "inductor") -> F:
    """``fn`` compiled for static shapes with ``mode`` (see the module doc).

    ``backend="aot_eager"`` traces and runs the same graphs without generating kernels: what the
    CPU tests use to check that a step compiles whole and computes what the eager one does.
    """
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile mode must be one of {', '.join(COMPILE_MODES)}, got {mode!r}")
    options = {"mode": None if mode == "default" else mode} if backend == "inductor" else {}
    return torch.compile(fn, dynamic=False, backend=backend, **options)  # type: ignore[return-value]


def uses_cuda_graphs(mode: str) -> bool:
    return mode in ("reduce-overhead", "max-autotune")


def begin_step(mode: str | None) -> None:
    """Call before each training step: with CUDA graphs, the previous step's outputs may now be
    overwritten (``torch.compiler.cudagraph_mark_step_begin``)."""
    if mode is not None and uses_cuda_graphs(mode):
        torch.compiler.cudagraph_mark_step_begin()


def keep(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Copies of the tensors of a compiled step's metrics, which a CUDA-graph replay of the next
    step would overwrite (0-dim: one small copy each)."""
    return {k: v.clone() if isinstance(v, Tensor) else v for k, v in metrics.items()}


def compiled_frames() -> int:
    """Frames Dynamo has compiled in this process (each recompilation and each graph break
    adds one): unchanged between two steps means the second step ran the cached graphs."""
    from torch._dynamo.utils import counters

    return int(counters["frames"]["ok"])


def graph_breaks() -> dict[str, int]:
    """Why Dynamo broke graphs in this process, with counts (empty: every step compiled whole)."""
    from torch._dynamo.utils import counters

    return {reason.splitlines()[0]: int(n) for reason, n in counters["graph_break"].items()}


def compiler_missing(device: torch.device | str = "cpu") -> str | None:
    """Why Inductor cannot generate kernels for ``device`` here, or None when it can."""
    if torch.device(device).type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            return "torch.compile on CUDA needs triton (pip install triton)"
        return None
    if not any(shutil.which(cc) for cc in ("g++", "c++", "clang++")):
        return "torch.compile on the CPU needs a C++ compiler (g++ or clang++) on the PATH"
    return None
