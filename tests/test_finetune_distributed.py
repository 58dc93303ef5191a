"""Two real processes (torchrun, CPU, gloo) fine-tune one agent through ``finetune.py``."""

from __future__ import annotations

import json
import shutil
import socket
import sys
from pathlib import Path

import pytest

from apv_hub import APVAgent
from apv_hub.training.checkpoint import list_checkpoints
from tests.finetune_helpers import run_finetune_script, slide_config


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_share_one_agent_and_count_steps_globally(tmp_path: Path) -> None:
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    if torchrun is None:
        pytest.skip("torchrun is not installed")
    config = slide_config(
        total_env_steps=240,
        prefill=80,
        pretrain_updates=2,
        train_every=10,
        eval_every=120,
        eval_episodes=3,
        checkpoint_every=120,
        log_every=60,
        **{"agent.batch_size": 4, "agent.seq_len": 8},
    )
    out = tmp_path / "run"
    launcher = (torchrun, "--nproc_per_node", "2", "--master_addr", "127.0.0.1")
    result = run_finetune_script(
        config, out, launcher=(*launcher, "--master_port", str(free_port()))
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    steps = [s for s, _ in list_checkpoints(out / "checkpoints")]
    assert steps == [120, 240]
    last = out / "checkpoints" / f"ckpt-{steps[-1]:09d}"
    ranks = [json.loads((last / f"loop-rank{r}.json").read_text()) for r in (0, 1)]
    # Written by each rank from inside its own process: the world it saw and its weights.
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert ranks[0]["parameter_digest"] == ranks[1]["parameter_digest"]
    # Steps are global: each rank stepped its own environment for half of them (episodes of
    # 20 steps, plus a first step per episode in its replay).
    saved = json.loads((last / "state.json").read_text())
    state = saved["trainer"]["counters"]
    assert saved["world_size"] == 2 and state["env_steps"] == state["policy_steps"] == 240
    assert state["episodes"] == 240 // 20
    assert [r["replay_steps"] for r in ranks] == [120 + 6, 120 + 6]
    # Updates follow the global schedule: 2 when prefill ends, then one per 10 policy steps.
    agent = APVAgent.from_pretrained(out / "model")
    assert agent.num_updates == 2 + (240 - 80) // 10
    # Evaluation episodes were split over the ranks and gathered: three per curve row, at the
    # release's points (when prefill ends, every eval_every from there) and at the end.
    rows = json.loads((out / "eval.json").read_text())
    assert [(r["env_steps"], r["eval_episodes"]) for r in rows] == [(80, 3), (200, 3), (240, 3)]
    # Only the main process wrote the run's records.
    assert len(list((out / "logs").iterdir())) == 1
