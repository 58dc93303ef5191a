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
            "recorded when it was saved (the file was modified or damaged); download it again"
        )
    return tensors, metadata


def state_dict_mismatches(module: nn.Module, tensors: dict[str, Tensor]) -> list[str]:
    """Human-readable differences between a module's state dict and loaded tensors."""
    own = module.state_dict()
    problems = [f"missing key {k}" for k in sorted(set(own) - set(tensors))]
    problems += [f"unexpected key {k}" for k in sorted(set(tensors) - set(own))]
    problems += [
        f"shape of {k}: checkpoint {tuple(tensors[k].shape)}, model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(tensors))
        if tensors[k].shape != own[k].shape
    ]
    return problems


def load_into(module: nn.Module, tensors: dict[str, Tensor], source: str) -> None:
    """Load tensors into a module strictly; on mismatch, list the keys and shapes that differ."""
    problems = state_dict_mismatches(module, tensors)
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise CheckpointError(
            f"checkpoint {source} does not fit {type(module).__name__} "
            f"({len(problems)} difference(s)):\n  {shown}{more}"
        )
    module.load_state_dict(tensors, strict=True)
