"""Environment throughput: steps/s of one environment and of an EnvPool of N workers.

Reports agent steps/s (calls to ``step``, one rendered 64x64 frame each) and environment steps/s
(agent steps times the action repeat, the unit the paper counts in), with random actions. Also
times replay sampling of fine-tuning batches.

    MUJOCO_GL=egl PYTHONPATH=. python benchmarks/bench_envs.py --workers 1 2 --steps 100
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np

from apv_hub.envs import EnvPool, default_options, make
from apv_hub.replay import ReplayBuffer


def bench_single(name: str, steps: int) -> float:
    """Agent steps/s of one environment in this process (resets included)."""
    rng = np.random.default_rng(0)
    with make(name, seed=0) as env:
        obs, _ = env.reset()
        start = time.perf_counter()
        for _ in range(steps):
            if obs["is_last"]:
                obs, _ = env.reset()
            obs, _ = env.step(rng.uniform(-1, 1, env.action_dim))
        return steps / (time.perf_counter() - start)


def bench_pool(name: str, workers: int, steps: int) -> float:
    """Agent steps/s summed over ``workers`` environments in an EnvPool (after start-up)."""
    rng = np.random.default_rng(0)
    with EnvPool(name, num_envs=workers, seed=0) as pool:
        pool.reset()
        start = time.perf_counter()
        for _ in range(steps):
            pool.step(rng.uniform(-1, 1, (workers, pool.action_dim)))
        return steps * workers / (time.perf_counter() - start)


def bench_replay(batch: int, length: int, repeats: int = 20) -> float:
    """Sampled ``[batch, length]`` batches per second from a 100-episode buffer of 64x64 frames."""
    replay = ReplayBuffer(capacity=100_000, seed=0)
    image = np.zeros((3, 64, 64), np.uint8)
    for _ in range(100):
        for t in range(500):
            replay.add(
                {
                    "image": image,
                    "action": np.zeros(6, np.float32),
                    "reward": np.float32(0),
                    "is_first": t == 0,
                    "is_last": t == 499,
                    "is_terminal": False,
                }
            )
    start = time.perf_counter()
    for _ in range(repeats):
        replay.sample(batch, length)
    return repeats / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--envs", nargs="+", default=["metaworld/drawer-open-v3", "dmc/walker-walk"]
    )
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--steps", type=int, default=100, help="agent steps per measurement")
    args = parser.parse_args()
    print(f"# {platform.node()}, Python {platform.python_version()}")
    print("| environment | setting | agent steps/s | env steps/s |")
    print("|---|---|---|---|")
    for name in args.envs:
        repeat = default_options(name)["action_repeat"]
        rows = [("1 env, in process", bench_single(name, args.steps))]
        rows += [(f"EnvPool, {n} workers", bench_pool(name, n, args.steps)) for n in args.workers]
        for setting, rate in rows:
            print(f"| {name} | {setting} | {rate:.1f} | {rate * repeat:.1f} |", flush=True)
    for batch, length in ((16, 50), (50, 50)):
        rate = bench_replay(batch, length)
        print(f"| replay sample | B={batch} x T={length}, 64x64 | {rate:.1f} batches/s | |")


if __name__ == "__main__":
    main()
