"""Safetensors files with an integrity digest, and state-dict loading that names what differs.

Checkpoints never go through pickle. Each file records a SHA-256 digest of its tensors in its
metadata, so a file whose bytes were changed after saving is refused instead of loaded.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from apv_hub.errors import ApvHubError
from apv_hub.io import publish, temporary_path

DIGEST_KEY = "apv_hub_sha256"


class CheckpointError(ApvHubError, RuntimeError):
    """A checkpoint file that is missing, unreadable, corrupt, or does not fit the model."""


def tensor_digest(tensors: dict[str, Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and raw bytes of the tensors, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_tensors(
    tensors: dict[str, Tensor], path: str | Path, metadata: dict[str, str] | None = None
) -> None:
    """Write a safetensors file atomically (a crash mid-write leaves any previous file intact)."""
    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    meta = {"format": "pt", **(metadata or {}), DIGEST_KEY: tensor_digest(tensors)}
    tmp = temporary_path(path)
    save_file(tensors, tmp, metadata=meta)
    publish(tmp, path)


def load_tensors(path: str | Path, device: str = "cpu") -> tuple[dict[str, Tensor], dict[str, str]]:
    """Read a safetensors file -> (tensors, metadata), checking its digest when it has one."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    try:
        with safe_open(str(path), framework="pt", device=device) as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no iter)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(
            f"{path} is not a readable safetensors file (truncated or corrupt?): {e}"
        ) from e
    expected = metadata.get(DIGEST_KEY)
    if expected is not None and tensor_digest(tensors) != expected:
        raise CheckpointError(
            f"{path} failed its integrity check: the tensor data does not match the digest "
            "recorded when it was saved (the file was modified or damaged after saving)"
        )
    return tensors, metadata


def tensor_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """The name and shape of every tensor of a safetensors file, from its header alone (no
    tensor data is read), so a checkpoint can be checked before anything is allocated."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(
            f"{path} is not a readable safetensors file (truncated or corrupt?): {e}"
        ) from e


def shape_mismatches(
    expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]]
) -> list[str]:
    """Human-readable differences between the tensor shapes a model has (``expected``) and
    those a checkpoint holds (``found``)."""
    problems = [f"missing key {k}" for k in sorted(set(expected) - set(found))]
    problems += [f"unexpected key {k}" for k in sorted(set(found) - set(expected))]
    problems += [
        f"shape of {k}: checkpoint {found[k]}, model {expected[k]}"
        for k in sorted(set(expected) & set(found))
        if tuple(found[k]) != tuple(expected[k])
    ]
    return problems


def module_shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    """The shape of every entry of a module's state dict (also of a module on the meta device)."""
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def check_fits(
    module: nn.Module, found: dict[str, tuple[int, ...]], what: str | None = None
) -> None:
    """Raise a CheckpointError listing the keys and shapes that differ between a module and a
    checkpoint's tensor shapes ``found``; ``what`` begins the message."""
    problems = shape_mismatches(module_shapes(module), found)
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        what = what or f"the checkpoint does not fit {type(module).__name__}"
        raise CheckpointError(f"{what} ({len(problems)} difference(s)):\n  {shown}{more}")


def load_into(module: nn.Module, tensors: dict[str, Tensor], source: str) -> None:
    """Load tensors into a module strictly; on mismatch, list the keys and shapes that differ."""
    shapes = {k: tuple(v.shape) for k, v in tensors.items()}
    check_fits(module, shapes, f"checkpoint {source} does not fit {type(module).__name__}")
    module.load_state_dict(tensors, strict=True)
