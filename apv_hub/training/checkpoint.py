"""Atomic run checkpoints: ``<dir>/ckpt-<step>/`` folders that exist whole or not at all.

A checkpoint is written into a temporary folder ``<dir>/.ckpt-<step>.tmp`` and renamed to
``ckpt-<step>`` when complete (a rename is atomic on POSIX file systems), so a crash while saving
leaves the previous checkpoints intact and never a half-written one that looks complete;
`latest_checkpoint` ignores temporaries. What goes inside is up to the trainer.

Several processes can write into one checkpoint (e.g. each rank its replay buffer): the main
process calls `begin_checkpoint`, every process writes into the returned folder, then the main
process calls `commit_checkpoint` after a barrier (`apv_hub.training.run.Run.save_checkpoint`).

Large immutable files (replay episodes) are shared between consecutive checkpoints by hard links
(`link_files`), so a checkpoint costs only what changed since the previous one.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

PREFIX = "ckpt-"
_NAME = re.compile(rf"^{PREFIX}(\d+)$")


def checkpoint_path(directory: str | Path, step: int) -> Path:
    """``<directory>/ckpt-<step>`` (steps are zero-padded to sort by name too)."""
    return Path(directory) / f"{PREFIX}{step:09d}"


def list_checkpoints(directory: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under ``directory`` as (step, path), oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        match = _NAME.match(path.name)
        if match and path.is_dir():
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The newest complete checkpoint under ``directory``, or None."""
    found = list_checkpoints(directory)
    return found[-1][1] if found else None


def begin_checkpoint(directory: str | Path, step: int) -> Path:
    """Create (afresh) and return the temporary folder of checkpoint ``step``."""
    final = checkpoint_path(directory, step)
    tmp = final.with_name(f".{final.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)  # Left over by a crash during an earlier save.
    tmp.mkdir(parents=True)
    return tmp


def commit_checkpoint(tmp: str | Path, keep: int | None = None) -> Path:
    """Publish a folder from `begin_checkpoint` as its final name; prune to ``keep`` newest."""
    tmp = Path(tmp)
    final = tmp.with_name(tmp.name[1:].removesuffix(".tmp"))
    _fsync_tree(tmp)
    if final.exists():
        # Saving the same step again (e.g. a resumed run that stops where it started): move the
        # old one aside first, since a rename cannot replace a non-empty folder.
        old = final.with_name(f".{final.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _fsync_dir(final.parent)
    if keep is not None:
        prune_checkpoints(final.parent, keep)
    return final


def prune_checkpoints(directory: str | Path, keep: int) -> None:
    """Delete all but the ``keep`` newest checkpoints (``keep`` >= 1)."""
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    for _, path in list_checkpoints(directory)[:-keep]:
        shutil.rmtree(path, ignore_errors=True)


def link_files(source: str | Path, target: str | Path) -> int:
    """Hard-link every file of folder ``source`` into ``target`` (copy where links fail).

    For immutable files shared by consecutive checkpoints; returns how many were linked.
    """
    source, target = Path(source), Path(target)
    if not source.is_dir():
        return 0
    target.mkdir(parents=True, exist_ok=True)
    count = 0
    for file in source.iterdir():
        if not file.is_file() or file.name.startswith("."):
            continue
        dest = target / file.name
        if dest.exists():
            continue
        try:
            os.link(file, dest)
        except OSError:  # Another file system, or one without hard links.
            shutil.copy2(file, dest)
        count += 1
    return count


def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    for folder in [root, *(p for p in root.rglob("*") if p.is_dir())]:
        _fsync_dir(folder)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
