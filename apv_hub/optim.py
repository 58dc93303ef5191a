"""The optimiser recipe of DreamerV2/APV (Adam with L2 weight decay, gradient-norm clipping,
gradients averaged over processes) and optimiser state as safetensors + JSON (no pickle)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from apv_hub.io import write_json
from apv_hub.weights import CheckpointError, load_tensors, save_tensors

OPTIMIZERS_FILE = "optimizers.safetensors"
OPTIMIZERS_META = "optimizers.json"


def make_adam(
    params: Iterable[nn.Parameter] | Iterable[dict[str, Any]],
    lr: float,
    eps: float = 1e-5,
    weight_decay: float = 1e-6,
    fused: bool | None = None,
) -> torch.optim.Adam:
    """Adam whose weight decay is added to the gradient (L2), as in the released code.
    ``params``: parameters, or parameter groups (``{"params": [...]}``) as torch takes them.

    ``fused`` (default: when every parameter is on a CUDA device) runs one fused kernel per
    update instead of a few per parameter, and lets `apply_gradients` skip a non-finite step
    on the device. The CPU default stays the per-parameter implementation, whose numbers the
    golden tensors pin (the fused kernel rounds differently in the last bit).
    """
    params = list(params)
    if fused is None:
        tensors = [p for g in params for p in (g["params"] if isinstance(g, dict) else [g])]
        fused = bool(tensors) and all(p.device.type == "cuda" for p in tensors)
    return torch.optim.Adam(params, lr=lr, eps=eps, weight_decay=weight_decay, fused=fused)


def apply_gradients(
    loss: Tensor,
    optimizer: torch.optim.Optimizer,
    params: Iterable[nn.Parameter],
    clip: float,
    accelerator: Any = None,
) -> Tensor:
    """Backward, clip, step -> the gradient norm, a 0-dim float32 tensor on the parameters'
    device.

    Each of the optimiser's parameter groups is clipped to ``clip`` on its own, as the release
    clips each of its separate optimisers (the world model's two groups, REFERENCE 2b); the
    returned norm is that of all the gradients together, before clipping.

    With an ``accelerator`` (accelerate.Accelerator), its ``backward`` and ``clip_grad_norm_``
    are used, so mixed precision and gradient scaling work as configured there; with several
    processes the gradients are averaged across them before clipping (the agent's modules are
    not wrapped in DistributedDataParallel, so nothing else would synchronise them). A
    non-finite gradient norm skips the step (parameters and optimiser state untouched), so that
    one bad batch cannot poison the weights; the returned norm tells the caller.

    Nothing is read back to the host for a fused optimiser (`make_adam` on CUDA): the norm's
    finiteness reaches the fused kernel as its ``found_inf`` flag, the mechanism of
    ``torch.amp.GradScaler``, so a training step queues its kernels without waiting for the
    device. Other optimisers need the decision on the host: one read of the norm.
    """
    params = list(params)
    optimizer.zero_grad(set_to_none=True)
    if accelerator is not None:
        accelerator.backward(loss)
    else:
        loss.backward()
    if accelerator is not None and accelerator.num_processes > 1:
        average_gradients(params, accelerator)
    clip_fn = accelerator.clip_grad_norm_ if accelerator is not None else nn.utils.clip_grad_norm_
    norms = [clip_fn(group["params"], clip) for group in optimizer.param_groups]
    norm = norms[0] if len(norms) == 1 else torch.linalg.vector_norm(torch.stack(norms))
    step_if_finite(optimizer, norm)
    return norm.detach()


def step_if_finite(optimizer: torch.optim.Optimizer, norm: Tensor) -> None:
    """``optimizer.step()`` unless the gradient norm [] is non-finite (see `apply_gradients`)."""
    # accelerate's AcceleratedOptimizer wraps the torch optimiser and calls its step().
    inner = getattr(optimizer, "optimizer", optimizer)
    if is_fused(inner):
        inner.found_inf = (~torch.isfinite(norm)).float()
        try:
            optimizer.step()
        finally:
            inner.found_inf = None
    elif torch.isfinite(norm):
        optimizer.step()


def is_fused(optimizer: torch.optim.Optimizer) -> bool:
    """Whether every parameter group of ``optimizer`` runs a fused kernel (``fused=True``)."""
    return all(group.get("fused") for group in optimizer.param_groups)


def average_gradients(params: Iterable[nn.Parameter], accelerator: Any) -> None:
    """Average the gradients of ``params`` over the processes, in one flat all-reduce.

    Every process runs the same code on the same parameters, so the set of parameters that
    have a gradient is the same everywhere.
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    flat = accelerator.reduce(flat, reduction="mean")
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def flatten_optimizers(
    optimizers: dict[str, torch.optim.Optimizer],
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Optimiser state dicts -> (tensors named ``opt/<name>/<param>/<key>``, JSON metadata)."""
    tensors: dict[str, Tensor] = {}
    meta: dict[str, Any] = {"optimizers": {}}
    for name, opt in optimizers.items():
        sd = opt.state_dict()
        scalars: dict[str, dict[str, Any]] = {}
        for index, state in sd["state"].items():
            for key, value in state.items():
                if isinstance(value, Tensor):
                    tensors[f"opt/{name}/{index}/{key}"] = value
                else:
                    scalars.setdefault(str(index), {})[key] = value
        meta["optimizers"][name] = {"param_groups": sd["param_groups"], "scalars": scalars}
    return tensors, meta


def load_optimizers(
    optimizers: dict[str, torch.optim.Optimizer],
    tensors: dict[str, Tensor],
    meta: dict[str, Any],
    source: str,
) -> None:
    """Inverse of ``flatten_optimizers``; names the optimisers that do not match."""
    saved = meta["optimizers"]
    if set(saved) != set(optimizers):
        raise CheckpointError(
            f"training state of {source} has optimisers {sorted(saved)}, "
            f"expected {sorted(optimizers)}"
        )
    for name, opt in optimizers.items():
        state: dict[int, dict[str, Any]] = {}
        for index, scalars in saved[name]["scalars"].items():
            state.setdefault(int(index), {}).update(scalars)
        prefix = f"opt/{name}/"
        for key, value in tensors.items():
            if key.startswith(prefix):
                index, field = key[len(prefix) :].split("/", 1)
                state.setdefault(int(index), {})[field] = value
        groups = saved[name]["param_groups"]
        sizes = [len(g["params"]) for g in groups]
        own = [len(g["params"]) for g in opt.param_groups]
        if len(sizes) == 1 < len(own) and sizes[0] == sum(own):
            groups = split_group(groups[0], own)  # Saved before the groups were split.
            sizes = own
        if sizes != own:
            raise CheckpointError(
                f"optimiser {name!r} in {source} has parameter groups of sizes {sizes}, this "
                f"agent's has {own}: the checkpoint is from another architecture"
            )
        opt.load_state_dict({"state": state, "param_groups": groups})


def split_group(group: dict[str, Any], sizes: list[int]) -> list[dict[str, Any]]:
    """One saved parameter group -> consecutive groups of ``sizes`` parameters with its
    hyperparameters: loads an optimiser saved with one group into one that has several, when
    their concatenation is the old parameter order (the world model's, see `make_adam` users)."""
    groups, start = [], 0
    for size in sizes:
        groups.append({**group, "params": group["params"][start : start + size]})
        start += size
    return groups


def save_optimizer_state(folder: Path, optimizers: Mapping[str, torch.optim.Optimizer]) -> None:
    """Optimiser states as safetensors + JSON (no pickle)."""
    tensors, meta = flatten_optimizers(dict(optimizers))
    save_tensors(tensors, folder / OPTIMIZERS_FILE)
    write_json(folder / OPTIMIZERS_META, meta)


def load_optimizer_state(folder: Path, optimizers: Mapping[str, torch.optim.Optimizer]) -> None:
    tensors, _ = load_tensors(folder / OPTIMIZERS_FILE)
    try:
        meta = json.loads((folder / OPTIMIZERS_META).read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{folder / OPTIMIZERS_META} cannot be read: {e}") from None
    load_optimizers(dict(optimizers), tensors, meta, source=str(folder))
