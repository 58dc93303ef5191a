"""Golden tensors: the numerics of the tiny presets, pinned across refactors and optimisations.

For seeded ``tiny`` models this computes the outputs, loss terms and gradient statistics of
``APVVideoModel.loss`` and ``APVWorldModel.loss``, and the metrics and updated parameters of one
full ``APVAgent.update`` for every variant. ``tests/test_golden.py`` recomputes them and compares
with the files in ``tests/golden/``; refactors keep them bit-identical on CPU.

A deliberate numerical change regenerates them, in a commit of its own that says why::

    python -m tests.golden          # rewrites tests/golden/*.safetensors

Everything runs on one intra-op thread in float32 on the CPU, the setting in which PyTorch's CPU
kernels are deterministic. The files record the CPU capability they were written on (AVX2,
AVX512, ...): another capability may pick other kernels, so the test compares bit for bit only on
a machine of the recorded capability, and to a tight tolerance elsewhere.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from apv_hub.agent import APVAgent, make_optimizers
from apv_hub.config import VARIANTS, AgentConfig, APVConfig
from apv_hub.video_model import APVVideoModel

GOLDEN_DIR = Path(__file__).resolve().parent / "golden"
ACTION_DIM = 3
BATCH, LENGTH = 3, 8
# Metadata key naming the CPU kernels the files were computed with.
CAPABILITY_KEY = "cpu_capability"


def cpu_capability() -> str:
    return torch.backends.cpu.get_cpu_capability()


def frames_and_batch(config: AgentConfig, seed: int = 0) -> dict[str, Tensor]:
    """A fixed replay batch [BATCH, LENGTH, ...]: random frames, actions and rewards, one
    episode start per row and a second one in the middle of row 1 (is_first resets state)."""
    g = torch.Generator().manual_seed(seed)
    vc = config.video
    shape = (BATCH, LENGTH)
    is_first = torch.zeros(shape, dtype=torch.bool)
    is_first[:, 0] = True
    is_first[1, LENGTH // 2] = True
    action = torch.rand(*shape, ACTION_DIM, generator=g) * 2 - 1
    action[is_first] = 0.0
    image = torch.randint(
        0, 256, (*shape, vc.image_channels, vc.image_size, vc.image_size), generator=g
    )
    return {
        "image": image.to(torch.uint8),
        "action": action,
        "reward": torch.rand(shape, generator=g),
        "is_first": is_first,
        "is_last": torch.zeros(shape, dtype=torch.bool),
        "is_terminal": torch.zeros(shape, dtype=torch.bool),
    }


def _scalars(metrics: dict[str, object], prefix: str) -> dict[str, Tensor]:
    """Metrics (floats or 0-dim tensors) as float64 0-dim tensors named ``prefix/name``."""
    return {
        f"{prefix}/{k}": torch.as_tensor(float(v), dtype=torch.float64) for k, v in metrics.items()
    }


def _param_stats(module: nn.Module, prefix: str, grads: bool = False) -> dict[str, Tensor]:
    """Per tensor: [sum, sum of squares, first element, last element] in float64 (of the
    gradient with ``grads``), which any change of a single value moves."""
    out = {}
    for name, p in module.named_parameters():
        t = p.grad if grads else p
        if t is None:
            continue
        t = t.detach().double().reshape(-1)
        out[f"{prefix}/{name}"] = torch.stack([t.sum(), t.pow(2).sum(), t[0], t[-1]])
    return out


def video_model_case() -> dict[str, Tensor]:
    """APVVideoModel.loss on the tiny preset: loss terms, features, gradient statistics."""
    torch.manual_seed(0)
    model = APVVideoModel(APVConfig.preset("tiny"))
    batch = frames_and_batch(AgentConfig.preset("tiny"))
    torch.manual_seed(1)
    loss, metrics = model.loss(batch["image"], batch["is_first"])
    loss.backward()
    out = {"loss": loss.detach().double(), **_scalars(metrics, "metric")}
    out.update(_param_stats(model, "grad", grads=True))
    with torch.no_grad():
        out["features_mode"] = model.rssm.get_feat(
            model.observe(batch["image"], batch["is_first"], sample=False)[1]
        )
    return out


def world_model_case(variant: str) -> dict[str, Tensor]:
    """APVWorldModel.loss of ``variant`` (with the bonus where it has one)."""
    agent = build_agent(variant)
    batch = frames_and_batch(agent.config)
    torch.manual_seed(1)
    loss, obs, metrics = agent.world_model.loss(batch, agent.bonus)
    loss.backward()
    out = {"loss": loss.detach().double(), **_scalars(metrics, "metric")}
    out["feat"] = obs.feat.detach()
    out.update(_param_stats(agent.world_model, "grad", grads=True))
    return out


def agent_update_case(variant: str) -> dict[str, Tensor]:
    """Two full APVAgent.update steps of ``variant``: metrics, then every parameter's stats."""
    agent = build_agent(variant)
    optimizers = make_optimizers(agent)
    out: dict[str, Tensor] = {}
    torch.manual_seed(1)
    for i in range(2):
        metrics = agent.update(frames_and_batch(agent.config, seed=i), optimizers)
        out.update(_scalars(metrics, f"update{i}"))
    out.update(_param_stats(agent, "param"))
    for name, buffer in agent.named_buffers():
        out[f"buffer/{name}"] = buffer.detach().double().reshape(-1)[:64].clone()
    return out


# Settings the variants leave at their defaults: the DMC world model (embedding and action-free
# features as input, free nats) with a continuation head.
EXTRA = {
    "dmc_style": ("apv", {"ac_input": "embed_af_feat", "free_nats": 1.0, "discount_head": True})
}


def build_agent(variant: str, init: str = "keras") -> APVAgent:
    """The tiny agent of ``variant``; ``init`` initialises its video model and fresh parts."""
    torch.manual_seed(0)
    base, world_model = EXTRA.get(variant, (variant, {}))
    config = AgentConfig.preset("tiny", base, world_model=world_model, init=init)
    video = APVVideoModel(config.video.override({"init": init}))
    torch.manual_seed(2)
    return APVAgent.from_video_model(video, config, ACTION_DIM)


def cases() -> dict[str, Callable[[], dict[str, Tensor]]]:
    """Every golden file's name and the function that computes it."""
    found: dict[str, Callable[[], dict[str, Tensor]]] = {"video_model_loss": video_model_case}
    for variant in [*sorted(VARIANTS), *EXTRA]:
        found[f"world_model_loss_{variant}"] = lambda v=variant: world_model_case(v)
        found[f"agent_update_{variant}"] = lambda v=variant: agent_update_case(v)
    return found


def compute(name: str) -> dict[str, Tensor]:
    """One case's tensors, on one thread (deterministic CPU kernels)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return cases()[name]()
    finally:
        torch.set_num_threads(threads)


def write_all(directory: Path = GOLDEN_DIR) -> list[Path]:
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name in cases():
        path = directory / f"{name}.safetensors"
        tensors = {k: v.contiguous() for k, v in compute(name).items()}
        save_file(tensors, path, metadata={CAPABILITY_KEY: cpu_capability()})
        written.append(path)
    return written


if __name__ == "__main__":
    for path in write_all():
        print(f"wrote {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}")
    sys.exit(0)
