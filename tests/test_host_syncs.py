"""No host syncs inside a training step (issue 11 part 2).

On the CPU a host read cannot be observed directly, so these tests check what makes it possible:
the steps hand back tensors (metrics, gradient norms), the non-finite decision is made on the
device and read only when the trainer flushes, the bonus's k-NN search has fixed shapes and
equals the former variable-size search, and a fused optimiser skips a non-finite step as the
per-parameter one does. On CUDA, ``torch.cuda.set_sync_debug_mode("error")`` turns any sync
into an error: the last tests run both training steps under it (skipped without CUDA).
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import Tensor, nn

from apv_hub.agent import APVAgent, make_optimizers
from apv_hub.config import AgentConfig, APVConfig, IntrinsicConfig
from apv_hub.intrinsic import VideoIntrinsicBonus
from apv_hub.optim import apply_gradients, is_fused, make_adam
from apv_hub.training.run import DivergenceError, MetricWindow, NonFiniteGuard
from apv_hub.video_model import APVVideoModel
from tests.agent_helpers import ACTION_DIM, random_batch

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def tiny_video_model(device: str = "cpu") -> APVVideoModel:
    torch.manual_seed(0)
    return APVVideoModel(APVConfig.preset("tiny")).to(device)


def tiny_frames(config: APVConfig, batch: int = 2, device: str = "cpu") -> Tensor:
    g = torch.Generator().manual_seed(1)
    shape = (batch, config.seq_len, config.image_channels, config.image_size, config.image_size)
    return torch.randint(0, 256, shape, generator=g, dtype=torch.uint8).to(device)


def tiny_agent(device: str = "cpu") -> APVAgent:
    torch.manual_seed(7)
    config = AgentConfig.preset("tiny", "apv")
    agent = APVAgent.from_video_model(APVVideoModel(config.video), config, ACTION_DIM)
    return agent.to(device)


# The steps return tensors -----------------------------------------------------------------------


def test_pretraining_step_returns_tensors_not_floats() -> None:
    model = tiny_video_model()
    loss, metrics = model.loss(tiny_frames(model.config))
    norm = apply_gradients(loss, make_adam(model.parameters(), 1e-3), model.parameters(), 100.0)
    for name, value in {**metrics, "grad_norm": norm}.items():
        assert isinstance(value, Tensor) and value.dim() == 0, name
        assert not value.requires_grad and value.dtype == torch.float32, name


def test_agent_update_returns_tensors_except_host_counters() -> None:
    agent = tiny_agent()
    metrics = agent.update(random_batch(agent.config), make_optimizers(agent))
    # These two are counters the host already holds; everything computed is a device tensor.
    host = {"pretrained_frozen", "updates"}
    floats = {k for k, v in metrics.items() if not isinstance(v, Tensor)}
    assert floats == host
    assert {"model_grad_norm", "actor_grad_norm", "critic_grad_norm", "bonus_mean"} <= set(metrics)
    assert all(metrics[k].dim() == 0 for k in set(metrics) - host)


def test_metric_window_of_tensors_reduces_like_floats() -> None:
    values = [1.0, float("nan"), 3.0, float("inf"), 5.0]
    as_floats, as_tensors = MetricWindow(), MetricWindow()
    for v in values:
        as_floats.add({"x": v, "y": 2 * v})
        as_tensors.add({"x": torch.tensor(v), "y": 2 * v})  # Mixed, as a trainer's rows are.
    keys, sums = as_tensors.local_sums()
    assert keys == ["x", "y"] and sums.device.type == "cpu"
    assert sums.tolist() == [[9.0, 3.0], [18.0, 3.0]]
    assert torch.equal(sums, as_floats.local_sums()[1])


# Non-finite steps are skipped on the device ----------------------------------------------------


def one_layer(fused: bool) -> tuple[nn.Linear, torch.optim.Adam]:
    torch.manual_seed(0)
    layer = nn.Linear(4, 3)
    return layer, make_adam(layer.parameters(), 1e-2, fused=fused)


@pytest.mark.parametrize("fused", [False, True], ids=["per-parameter", "fused"])
def test_a_non_finite_gradient_skips_the_step(fused: bool) -> None:
    layer, opt = one_layer(fused)
    assert is_fused(opt) == fused
    x = torch.randn(5, 4)
    apply_gradients(layer(x).pow(2).mean(), opt, layer.parameters(), 100.0)
    weights = {k: v.clone() for k, v in layer.state_dict().items()}
    state = {k: {n: t.clone() for n, t in s.items()} for k, s in opt.state.items()}
    norm = apply_gradients(layer(x).sum() * float("nan"), opt, layer.parameters(), 100.0)
    assert isinstance(norm, Tensor) and not torch.isfinite(norm)
    for k, v in layer.state_dict().items():
        assert torch.equal(v, weights[k]), k
    for p, s in opt.state.items():
        for n, t in s.items():
            assert torch.equal(t, state[p][n]), n  # Moments and the step count untouched.
    # And the next finite step is taken.
    apply_gradients(layer(x).pow(2).mean(), opt, layer.parameters(), 100.0)
    assert not torch.equal(layer.weight, weights["weight"])


def test_fused_adam_takes_the_per_parameter_step() -> None:
    (a, opt_a), (b, opt_b) = one_layer(False), one_layer(True)
    x = torch.randn(5, 4)
    for _ in range(3):
        na = apply_gradients(a(x).pow(2).mean(), opt_a, a.parameters(), 0.5)
        nb = apply_gradients(b(x).pow(2).mean(), opt_b, b.parameters(), 0.5)
        torch.testing.assert_close(na, nb)
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7, msg=name)


def test_make_adam_is_per_parameter_on_the_cpu() -> None:
    # The golden tensors pin the per-parameter implementation's rounding.
    assert not is_fused(make_adam(nn.Linear(2, 2).parameters(), 1e-3))


def test_deferred_guard_decides_like_the_immediate_one() -> None:
    pattern = [True, False, True, False, False, True]
    immediate, deferred = NonFiniteGuard(limit=3), NonFiniteGuard(limit=3)
    with warnings.catch_warnings(record=True) as seen_now:
        warnings.simplefilter("always")
        for i, ok in enumerate(pattern):
            immediate.observe(ok, f"step {i}", f"loss={1.0 if ok else float('nan'):.4g}", None)
    with warnings.catch_warnings(record=True) as seen_later:
        warnings.simplefilter("always")
        for i, ok in enumerate(pattern):
            loss = torch.tensor(1.0 if ok else float("nan"))
            deferred.defer(torch.isfinite(loss), f"step {i}", {"loss": loss, "lr": 0.1})
        assert not seen_later and len(deferred.pending) == len(pattern)
        deferred.flush(None)
    assert [str(w.message) for w in seen_later] == [str(w.message) for w in seen_now]
    assert (
        (deferred.total, deferred.consecutive) == (immediate.total, immediate.consecutive) == (3, 0)
    )
    assert not deferred.pending


def test_deferred_guard_stops_at_the_step_that_tripped_it() -> None:
    guard = NonFiniteGuard(limit=2)
    for i in range(5):
        loss = torch.tensor(float("nan") if i >= 1 else 1.0)
        guard.defer(torch.isfinite(loss), f"step {i + 1}", {"loss": loss, "grad_norm": 2.0})
    with (
        pytest.warns(UserWarning, match="non-finite step 2: loss=nan;"),
        pytest.raises(DivergenceError, match=r"non-finite step 3: loss=nan; .* 2 non-finite step"),
    ):
        guard.flush(None)
    assert not guard.pending


# The bonus's k-NN search over the fixed-size queue ---------------------------------------------


def variable_size_knn(bonus: VideoIntrinsicBonus, vectors: Tensor) -> Tensor:
    """The search as it was before the masked queue: over the filled entries only."""
    entries = bonus.queue[: int(bonus.queue_count)]
    dist = torch.cdist(vectors, entries, compute_mode="donot_use_mm_for_euclid_dist")
    k = min(bonus.config.k, len(entries))
    return dist.topk(k, dim=-1, largest=False).values.mean(-1)


@pytest.mark.parametrize("pushes", [[3], [7], [5, 5, 6], [40], [9, 30]])
def test_masked_knn_equals_the_variable_size_search(pushes: list[int]) -> None:
    # k = 5 and a queue of 32: fewer filled entries than k, more, a wrapped ring, a full queue.
    bonus = VideoIntrinsicBonus(6, IntrinsicConfig(k=5, queue_size=32, proj_dim=4))
    g = torch.Generator().manual_seed(len(pushes))
    for n in pushes:
        vectors = torch.randn(n, 4, generator=g)
        bonus.push(vectors)
        queries = torch.cat([vectors, torch.randn(3, 4, generator=g)])
        got, want = bonus.knn_distance(queries), variable_size_knn(bonus, queries)
        torch.testing.assert_close(got, want, rtol=1e-6, atol=0.0)


def test_bonus_forward_equals_the_variable_size_search() -> None:
    config = IntrinsicConfig(k=4, queue_size=50, proj_dim=8)
    masked, reference = VideoIntrinsicBonus(10, config), VideoIntrinsicBonus(10, config)
    g = torch.Generator().manual_seed(3)
    reference.knn_distance = lambda v: variable_size_knn(reference, v)  # type: ignore[method-assign]
    for _ in range(4):  # Fills, then wraps the queue; the normaliser follows the same values.
        feat = torch.randn(2, 12, 10, generator=g)
        got, metrics = masked(feat)
        want, _ = reference(feat)
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
        assert isinstance(metrics["bonus_queue_fill"], Tensor)
    torch.testing.assert_close(masked.norm_mag, reference.norm_mag, rtol=1e-6, atol=0.0)


# On CUDA: no sync at all ------------------------------------------------------------------------


@CUDA
def test_cuda_pretraining_step_has_no_host_sync() -> None:
    model = tiny_video_model("cuda")
    opt = make_adam(model.parameters(), 1e-3)
    assert is_fused(opt)
    frames = tiny_frames(model.config, device="cuda")
    for step in range(3):  # The first step allocates the optimiser state; check the later ones.
        if step:
            torch.cuda.set_sync_debug_mode("error")
        try:
            loss, metrics = model.loss(frames)
            apply_gradients(loss, opt, model.parameters(), 100.0)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


@CUDA
def test_cuda_agent_update_has_no_host_sync() -> None:
    agent = tiny_agent("cuda")
    optimizers = make_optimizers(agent)
    batch = {k: v.to("cuda") for k, v in random_batch(agent.config).items()}
    for step in range(3):
        if step:
            torch.cuda.set_sync_debug_mode("error")
        try:
            agent.update(batch, optimizers)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


def test_the_update_schedule_counts_on_the_host() -> None:
    agent = tiny_agent()
    optimizers = make_optimizers(agent)
    fresh = {k: v.clone() for k, v in agent.state_dict().items()}
    for _ in range(2):
        agent.update(random_batch(agent.config), optimizers)
    # The slow critic's schedule and num_updates read the host copy, kept with the buffer.
    assert agent.behavior.host_updates == int(agent.behavior.updates) == agent.num_updates == 2
    agent.load_state_dict(fresh)  # A checkpoint's count replaces both.
    assert agent.behavior.host_updates is None and agent.num_updates == 0
