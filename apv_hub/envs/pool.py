"""`EnvPool`: N environments stepping in parallel worker processes, surviving worker deaths.

Each environment lives in its own process. Workers never come from a plain ``fork`` of the
trainer (MuJoCo's EGL contexts, OpenGL state and torch's threads do not survive it): the default
start method is ``forkserver``, whose server process imports the simulators once (see
`PRELOAD`) and forks clean, single-threaded workers from there in about a second each; ``spawn``
works too (and is the only choice on Windows) but re-imports everything in every worker. The pool
steps all environments at once and returns batched observations in the
`apv_hub.envs.base.PixelEnv` convention, each with a leading ``[N]`` axis.

Episode boundaries follow DreamerV2's driver: when environment ``i`` returns ``is_last=True``,
the next ``step`` ignores action ``i`` and returns the first observation of a new episode
(``is_first=True``, zero action) for that slot. Every observation carries the ``action`` that
led to it, so ``replay.add_batch(pool.step(actions))`` records complete episodes.

Failures: a worker that dies (killed, segfault, an exception such as MuJoCo's ``PhysicsError``
while stepping) or does not answer within ``step_timeout`` seconds is killed and replaced by a
fresh worker with a new seed. Its episode ends there as truncated (``is_last=True``,
``is_terminal=False``, reward 0, the last frame repeated) and ``pool.restarts`` counts it; the next
step starts a new episode in that slot. A worker that cannot build its environment
``max_start_attempts`` times in a row raises `EnvError` with the worker's traceback.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from apv_hub.envs.base import Obs, PixelEnv
from apv_hub.errors import ApvHubError

EnvFactory = Callable[[int], PixelEnv]
logger = logging.getLogger(__name__)
# Imported once by the forkserver process, so that forked workers start without re-importing
# the simulators (modules that are not installed are skipped by multiprocessing).
PRELOAD = ["apv_hub.envs.registry", "apv_hub.envs.dmc", "dm_control.suite", "metaworld"]
DEFAULT_START_METHOD = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"


class EnvError(ApvHubError, RuntimeError):
    """An environment that cannot be built, or a pool used wrongly."""


def _worker_error(message: str, report: str) -> EnvError:
    """An EnvError: ``message`` with the worker's exception (the last line of its ``report``);
    the whole traceback is attached as a note (shown with a traceback, not on the one line
    the console commands print)."""
    lines = [line.strip() for line in report.strip().splitlines() if line.strip()]
    error = EnvError(f"{message}: {lines[-1] if lines else 'no report'}")
    error.add_note(f"worker report:\n{report.strip()}")
    return error


@dataclass
class Failure:
    """One worker failure: which slot, why, and when (``time.time()``)."""

    slot: int
    reason: str
    time: float

    def describe(self, env: str) -> str:
        """One line: the environment, the slot, when, and the last line of the reason."""
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.time))
        return f"{env} worker {self.slot} at {when}: {self.reason.splitlines()[-1]}"


def _build(spec: str | EnvFactory, seed: int, options: dict[str, Any]) -> PixelEnv:
    if callable(spec):
        return spec(seed)
    from apv_hub.envs.registry import make

    return make(spec, seed=seed, **options)


def _worker(conn: Any, spec: str | EnvFactory, seed: int, options: dict[str, Any]) -> None:
    """Worker process: build the environment, then answer reset/step/close commands.

    Every reply is ``(status, payload)``; on an exception the traceback is sent and the worker
    exits, because an environment that raised mid-step is in an unknown state.
    """
    try:
        env = _build(spec, seed, options)
        conn.send(("ready", (env.obs_space, env.act_space)))
    except BaseException:  # noqa: BLE001  (every construction error goes back to the parent)
        conn.send(("error", traceback.format_exc()))
        conn.close()
        return
    try:
        while True:
            command, action = conn.recv()
            if command == "close":
                break
            # A reset's payload is the episode's seed (or None), a step's the action.
            obs, info = env.reset(action) if command == "reset" else env.step(action)
            conn.send(("ok", (obs, info)))
    except (EOFError, KeyboardInterrupt):
        pass  # The parent went away or is shutting down.
    except BaseException:  # noqa: BLE001
        conn.send(("error", traceback.format_exc()))
    finally:
        env.close()
        conn.close()


class EnvPool:
    """Run ``num_envs`` copies of an environment in worker processes.

    Args:
        env: an environment name for `apv_hub.envs.make` (``"dmc/walker-walk"``), or a picklable
            factory ``seed -> PixelEnv`` (a module-level function) for custom environments.
        num_envs: number of worker processes (N).
        seed: worker ``i`` is seeded ``seed + i``; its k-th replacement ``seed + i + k * N``.
        step_timeout: seconds a worker may take to answer a reset or step before it is declared
            hung, killed and replaced.
        start_timeout: seconds a worker may take to build its environment.
        max_start_attempts: consecutive construction failures of one slot before `EnvError`.
        start_method: multiprocessing start method, ``forkserver`` (default where available) or
            ``spawn``.
        **options: options for `apv_hub.envs.make` (``episode_length``, ``action_repeat``...).

    Attributes:
        restarts: number of workers replaced after a failure (each ended an episode as truncated).
        failures: the `Failure` records, oldest first.
        infos: the info dicts of the last ``reset``/``step``, one per slot (``{}`` for slots
            whose worker failed).

    Example:
        >>> with EnvPool("dmc/walker-walk", num_envs=4, seed=0) as pool:
        ...     obs = pool.reset()                      # obs["image"]: uint8 [4, 3, 64, 64]
        ...     obs = pool.step(np.zeros((4, pool.action_dim), np.float32))
    """

    def __init__(
        self,
        env: str | EnvFactory,
        num_envs: int,
        *,
        seed: int = 0,
        step_timeout: float = 120.0,
        start_timeout: float = 300.0,
        max_start_attempts: int = 3,
        start_method: str = DEFAULT_START_METHOD,
        **options: Any,
    ) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        self.env = env
        self.num_envs = num_envs
        self.seed = seed
        self.step_timeout = step_timeout
        self.start_timeout = start_timeout
        self.max_start_attempts = max_start_attempts
        self.options = options
        self.restarts = 0
        self.failures: list[Failure] = []
        self.infos: list[dict[str, Any]] = [{} for _ in range(num_envs)]
        self._ctx = mp.get_context(start_method)
        if start_method == "forkserver":
            self._ctx.set_forkserver_preload(PRELOAD)  # No effect once the server runs.
        self._procs: list[Any] = [None] * num_envs
        self._conns: list[Any] = [None] * num_envs
        self._generation = [0] * num_envs
        self._last: list[Obs | None] = [None] * num_envs
        self._closed = False
        try:
            spaces = self._start(range(num_envs))
        except BaseException:
            self.close()
            raise
        self.obs_space, self.act_space = spaces[0]
        self.action_dim = int(self.act_space.shape[0])

    def __repr__(self) -> str:
        return f"EnvPool({self.env!r}, num_envs={self.num_envs}, restarts={self.restarts})"

    @property
    def worker_pids(self) -> list[int]:
        """Process ids of the current workers, one per slot."""
        return [p.pid for p in self._procs]

    def reset(self, seeds: Sequence[int] | None = None) -> Obs:
        """Start a new episode in every slot; returns observations with a leading ``[N]`` axis.

        ``seeds`` ([N] ints) reseeds each slot's environment for this episode; None continues
        the environments' own random streams.
        """
        self._check_open()
        seeds = self._check_seeds(seeds)
        return self._exchange([("reset", seed) for seed in seeds])

    def step(self, actions: np.ndarray, seeds: Sequence[int] | None = None) -> Obs:
        """Step every slot with ``actions`` ``[N, A]`` (in ``[-1, 1]``).

        Slots whose previous observation was the last of an episode are reset instead (their
        action is ignored) and return ``is_first=True``; ``seeds`` ([N] ints, optional) gives
        the seeds of those new episodes (entries of the other slots are not used).
        """
        self._check_open()
        seeds = self._check_seeds(seeds)
        actions = np.asarray(actions, dtype=np.float32)
        if actions.shape != (self.num_envs, self.action_dim):
            raise ValueError(
                f"actions must have shape ({self.num_envs}, {self.action_dim}), got {actions.shape}"
            )
        if any(last is None for last in self._last):
            raise EnvError("call reset() before step()")
        commands = [
            ("reset", seed) if last["is_last"] else ("step", action)
            for last, action, seed in zip(self._last, actions, seeds, strict=True)
        ]
        return self._exchange(commands)

    def _check_seeds(self, seeds: Sequence[int] | None) -> list[int | None]:
        if seeds is None:
            return [None] * self.num_envs
        if len(seeds) != self.num_envs:
            raise ValueError(f"seeds must have {self.num_envs} entries, got {len(seeds)}")
        return [int(seed) for seed in seeds]

    def close(self) -> None:
        """Stop every worker (asking politely first, then killing)."""
        if self._closed:
            return
        self._closed = True
        for conn in self._conns:
            if conn is not None:
                with contextlib.suppress(OSError, ValueError):
                    conn.send(("close", None))
        for slot in range(self.num_envs):
            self._stop(slot, grace=5.0)

    def __enter__(self) -> EnvPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise EnvError("the pool is closed")

    def _exchange(self, commands: Sequence[tuple[str, Any]]) -> Obs:
        """Send one command to every worker, then gather the replies (workers run in parallel)."""
        sent = [self._send(slot, command) for slot, command in enumerate(commands)]
        results: list[Obs] = []
        for slot, (command, action) in enumerate(commands):
            reply = self._receive(slot) if sent[slot] else ("error", "the worker's pipe is closed")
            if command == "reset":
                reply = self._retry_reset(slot, reply, action)
            if reply[0] == "ok":
                obs, self.infos[slot] = reply[1]
            else:
                obs, self.infos[slot] = self._truncated(slot, action), {}
                self._replace(slot, reply[1])
            self._last[slot] = obs
            results.append(obs)
        return {key: np.stack([obs[key] for obs in results]) for key in results[0]}

    def _retry_reset(self, slot: int, reply: tuple[str, Any], seed: int | None) -> tuple[str, Any]:
        """Reset on fresh workers until one succeeds (no episode was running, nothing to end)."""
        for _ in range(self.max_start_attempts):
            if reply[0] == "ok":
                return reply
            self._replace(slot, reply[1])
            sent = self._send(slot, ("reset", seed))
            reply = self._receive(slot) if sent else ("error", "the worker's pipe is closed")
        if reply[0] != "ok":
            raise _worker_error(
                f"environment {self.env!r} failed to reset in worker {slot} "
                f"{self.max_start_attempts + 1} times in a row",
                reply[1],
            )
        return reply

    def _truncated(self, slot: int, action: np.ndarray) -> Obs:
        """The observation ending an episode whose worker failed: last frame, truncated."""
        obs = dict(self._last[slot])
        obs.update(
            action=np.clip(action, -1.0, 1.0).astype(np.float32),
            reward=np.array(0.0, np.float32),
            is_first=np.array(False),
            is_last=np.array(True),
            is_terminal=np.array(False),
        )
        if "success" in obs:
            obs["success"] = np.array(0.0, np.float32)
        return obs

    def _send(self, slot: int, command: tuple[str, np.ndarray | None]) -> bool:
        try:
            self._conns[slot].send(command)
            return True
        except (OSError, ValueError):
            return False

    def _receive(self, slot: int) -> tuple[str, Any]:
        conn = self._conns[slot]
        try:
            if not conn.poll(self.step_timeout):
                return ("error", f"no answer within step_timeout={self.step_timeout} s (hung)")
            return conn.recv()
        except (EOFError, OSError):
            self._procs[slot].join(1.0)  # Reap it so that the exit code (-9: killed) is known.
            return ("error", f"the worker process died (exit code {self._procs[slot].exitcode})")

    def _replace(self, slot: int, reason: str) -> None:
        """Record a failure of ``slot``'s worker, kill it and start a fresh one."""
        self.restarts += 1
        self.failures.append(Failure(slot, reason.strip(), time.time()))
        lines = reason.strip().splitlines() or ["unknown failure"]
        logger.warning(
            "environment %r: worker %d failed (%s) and was replaced (%d restart(s) so far)",
            self.env,
            slot,
            lines[-1],
            self.restarts,
        )
        self._stop(slot, grace=0.0)
        self._generation[slot] += 1
        self._start([slot])

    def _start(self, slots: Sequence[int]) -> list[tuple[Any, Any]]:
        """Start workers for ``slots`` in parallel; retry construction failures per slot."""
        slots = list(slots)
        errors: dict[int, list[str]] = {slot: [] for slot in slots}
        spaces: dict[int, tuple[Any, Any]] = {}
        pending = slots
        while pending:
            for slot in pending:
                self._spawn(slot)
            retry = []
            for slot in pending:
                status, payload = self._wait_ready(slot)
                if status == "ready":
                    spaces[slot] = payload
                    continue
                errors[slot].append(payload)
                self._stop(slot, grace=1.0)
                if len(errors[slot]) >= self.max_start_attempts:
                    raise _worker_error(
                        f"environment {self.env!r} cannot be built (worker {slot} failed "
                        f"{len(errors[slot])} times in a row)",
                        payload,
                    )
                self._generation[slot] += 1
                retry.append(slot)
            pending = retry
        return [spaces[slot] for slot in slots]

    def _spawn(self, slot: int) -> None:
        parent, child = self._ctx.Pipe()
        seed = self.seed + slot + self._generation[slot] * self.num_envs
        proc = self._ctx.Process(
            target=_worker,
            args=(child, self.env, seed, self.options),
            name=f"apv-env-{slot}",
            daemon=True,
        )
        proc.start()
        child.close()  # Only the worker holds this end, so its death closes the pipe.
        self._procs[slot], self._conns[slot] = proc, parent

    def _wait_ready(self, slot: int) -> tuple[str, Any]:
        conn = self._conns[slot]
        try:
            if not conn.poll(self.start_timeout):
                return ("error", f"no answer within start_timeout={self.start_timeout} s")
            return conn.recv()
        except (EOFError, OSError):
            self._procs[slot].join(1.0)
            code = self._procs[slot].exitcode
            return ("error", f"the worker died while starting (exit code {code})")

    def _stop(self, slot: int, grace: float) -> None:
        proc, conn = self._procs[slot], self._conns[slot]
        if proc is not None:
            proc.join(grace)
            if proc.is_alive():
                proc.kill()
                proc.join(5.0)
        if conn is not None:
            conn.close()
        self._procs[slot] = self._conns[slot] = None
