"""Shared test setup: every test talks to a local Hugging Face Hub, never to the network.

huggingface_hub and datasets read HF_ENDPOINT, HF_HOME and HF_HUB_OFFLINE once, when they are
imported, so this module sets them at import time, before any test module imports them.
"""

import atexit
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.local_hub import LocalHub

REPO_ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


HUB_PORT = _free_port()
_HF_HOME = tempfile.mkdtemp(prefix="apv-hub-hf-home-")
atexit.register(shutil.rmtree, _HF_HOME, ignore_errors=True)

# Settings from the developer's shell must not redirect the cache or switch to offline mode.
for _name in (
    "HF_HUB_OFFLINE",
    "HF_DATASETS_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "HF_HUB_CACHE",
    "HUGGINGFACE_HUB_CACHE",
    "HF_DATASETS_CACHE",
    "HF_TOKEN_PATH",
):
    os.environ.pop(_name, None)
os.environ.update(
    HF_ENDPOINT=f"http://127.0.0.1:{HUB_PORT}",
    HF_HOME=_HF_HOME,
    HF_TOKEN="hf_local_test_token",
    # Xet needs its own storage service; plain LFS uploads are what the local hub speaks.
    HF_HUB_DISABLE_XET="1",
    HF_HUB_DISABLE_TELEMETRY="1",
    HF_HUB_DISABLE_PROGRESS_BARS="1",
    NO_PROXY=",".join(filter(None, [os.environ.get("NO_PROXY"), "127.0.0.1,localhost"])),
)


@pytest.fixture(scope="session", autouse=True)
def single_thread() -> Iterator[None]:
    """Every test runs on one intra-op thread: the tensors are tiny, and on a loaded 2-core
    machine two threads per op wait on each other (measured: one imagination update 2 s vs
    0.025 s); CPU results also depend on the thread count, and subprocess runs use one."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def local_hub() -> Iterator[LocalHub]:
    """The Hub server behind HF_ENDPOINT, shared by the whole session (use unique repo names)."""
    with LocalHub(port=HUB_PORT) as hub:
        yield hub


def _run_python(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run `code` in a brand-new interpreter, checkout first on sys.path, env overrides applied."""
    pythonpath = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": pythonpath, **(env or {})},
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def run_python() -> Callable[..., subprocess.CompletedProcess]:
    """`run_python(code, env)`: e.g. a fresh process with its own HF_HOME and HF_HUB_OFFLINE=1."""
    return _run_python
