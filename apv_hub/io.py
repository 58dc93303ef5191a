"""Atomic file writes and JSON-ready values: the leaf every writer of the project builds on.

A file is written to a temporary name beside its target and renamed over it, so a crash leaves
either the previous file or the new one, never half of one. Files get the mode any other new file
of this process would get (0666 masked by the umask), whatever the temporary file was created
with.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np


def temporary_path(path: str | Path) -> Path:
    """A hidden temporary name beside ``path``, unique to this process."""
    path = Path(path)
    return path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")


def default_file_mode() -> int:
    """The mode a new regular file gets under this process's umask (e.g. 0644 under 022)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def publish(tmp: str | Path, path: str | Path) -> Path:
    """Give ``tmp`` the default file mode, flush it to disk and rename it to ``path``."""
    tmp, path = Path(tmp), Path(path)
    os.chmod(tmp, default_file_mode())
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def write_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    path = Path(path)
    tmp = temporary_path(path)
    with open(tmp, "wb") as f:
        f.write(data)
    return publish(tmp, path)


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes (hex), read in blocks so that large files stay out of memory."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_json(path: str | Path, value: Any, indent: int | None = 1) -> Path:
    """``value`` as JSON (non-finite floats as null, see `json_ready`), written atomically."""
    text = json.dumps(json_ready(value), indent=indent)
    return write_atomic(path, (text + "\n").encode())


def json_ready(value: Any) -> Any:
    """Values as JSON can hold them: non-finite floats become None (JSON has no NaN), numpy
    scalars Python numbers, paths strings."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    return value
