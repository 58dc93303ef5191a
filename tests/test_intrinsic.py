"""The video-based intrinsic bonus against a direct, slow computation, and its state."""

from __future__ import annotations

import math
from collections import deque

import pytest
import torch

from apv_hub.config import IntrinsicConfig
from apv_hub.intrinsic import VideoIntrinsicBonus

FEAT_DIM = 12


def small_config(**overrides) -> IntrinsicConfig:
    base = dict(window=3, proj_dim=8, queue_size=20, k=4, beta=0.5, norm_momentum=0.9)
    return IntrinsicConfig(**{**base, **overrides})


class SlowBonus:
    """REFERENCE section 1.3 step by step, with Python lists and loops over every vector."""

    def __init__(self, projection: torch.Tensor, config: IntrinsicConfig) -> None:
        self.projection = projection.double().tolist()
        self.config = config
        self.queue: deque[list[float]] = deque(maxlen=config.queue_size)
        self.mag = config.norm_init

    def __call__(self, feat: torch.Tensor) -> list[list[float]]:
        cfg = self.config
        rows = feat.double().tolist()
        projected = []
        for seq in rows:
            out_row = []
            for t in range(len(seq) - cfg.window + 1):
                window = seq[t : t + cfg.window]
                mean = [sum(col) / cfg.window for col in zip(*window, strict=True)]
                out_row.append(
                    [
                        sum(m * p[j] for m, p in zip(mean, self.projection, strict=True))
                        for j in range(cfg.proj_dim)
                    ]
                )
            projected.append(out_row)
        for out_row in projected:
            self.queue.extend(out_row)
        raw = []
        for out_row in projected:
            raw_row = []
            for vec in out_row:
                dists = sorted(math.dist(vec, q) for q in self.queue)
                k = min(cfg.k, len(dists))
                raw_row.append(sum(dists[:k]) / k)
            raw.append(raw_row)
        values = [abs(v) for row in raw for v in row]
        self.mag = cfg.norm_momentum * self.mag + (1 - cfg.norm_momentum) * sum(values) / len(
            values
        )
        return [[cfg.beta * v / (self.mag + cfg.norm_eps) for v in row] for row in raw]


def test_bonus_matches_slow_reference_across_queue_wraparound() -> None:
    config = small_config()
    bonus = VideoIntrinsicBonus(FEAT_DIM, config)
    slow = SlowBonus(bonus.projection, config)
    g = torch.Generator().manual_seed(1)
    # 2 x (7 - 3 + 1) = 10 vectors per batch into a queue of 20: it wraps from the third batch.
    for step in range(5):
        feat = torch.randn(2, 7, FEAT_DIM, generator=g) * (1 + step)
        got, metrics = bonus(feat)
        expected = torch.tensor(slow(feat), dtype=torch.float64)
        assert got.shape == (2, 5)
        torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-6)
        assert float(metrics["bonus_norm_mag"]) == pytest.approx(slow.mag, rel=1e-6)
    assert int(bonus.queue_count) == config.queue_size


def test_projection_is_fixed_seeded_and_scaled() -> None:
    config = small_config(proj_dim=64)
    a, b = VideoIntrinsicBonus(256, config), VideoIntrinsicBonus(256, config)
    other = VideoIntrinsicBonus(256, small_config(proj_dim=64, seed=1))
    assert torch.equal(a.projection, b.projection)
    assert not torch.equal(a.projection, other.projection)
    # Entries ~ Normal(0, (1 / proj_dim)^2) by default.
    assert a.projection.std().item() == pytest.approx(1 / 64, rel=0.05)
    before = a.projection.clone()
    a(torch.randn(2, 6, 256))
    assert torch.equal(a.projection, before)
    assert not any(p.requires_grad for p in a.parameters())


def test_queue_is_fifo_and_wraps_around() -> None:
    bonus = VideoIntrinsicBonus(FEAT_DIM, small_config(queue_size=5, proj_dim=2))
    pushed: list[torch.Tensor] = []

    def push(n: int) -> None:
        vectors = torch.arange(len(pushed), len(pushed) + n).float()[:, None].repeat(1, 2)
        pushed.extend(vectors)
        bonus.push(vectors)
        held = bonus.queue[: int(bonus.queue_count)]
        newest = torch.stack(pushed[-5:])
        # The queue holds exactly the newest min(total, size) vectors, whatever the ring offset.
        assert sorted(held[:, 0].tolist()) == sorted(newest[:, 0].tolist())

    push(3)
    assert (int(bonus.queue_count), int(bonus.queue_next)) == (3, 3)
    push(4)  # wraps: writes slots 3, 4, 0, 1
    assert (int(bonus.queue_count), int(bonus.queue_next)) == (5, 2)
    assert bonus.queue[:, 0].tolist() == [5.0, 6.0, 2.0, 3.0, 4.0]
    push(7)  # more than the queue holds: only the newest 5 survive
    assert int(bonus.queue_count) == 5
    push(2)
    assert int(bonus.queue_next) == 2


def test_first_batch_sees_only_itself() -> None:
    # Before any history, the queue is this batch, so a vector's nearest neighbour is itself.
    bonus = VideoIntrinsicBonus(FEAT_DIM, small_config(k=1, norm_momentum=0.0))
    feat = torch.randn(2, 6, FEAT_DIM)
    windows = bonus.window_average(feat)
    vectors = (windows @ bonus.projection).reshape(-1, 8)
    bonus.push(vectors)
    assert torch.allclose(bonus.knn_distance(vectors), torch.zeros(len(vectors)))


def test_running_normalisation() -> None:
    config = small_config(norm_momentum=0.99, beta=1.0)
    bonus = VideoIntrinsicBonus(FEAT_DIM, config)
    mag = config.norm_init
    g = torch.Generator().manual_seed(3)
    for _ in range(3):
        raw = torch.rand(40, generator=g) * 7
        out = bonus.normalise(raw)
        mag = 0.99 * mag + 0.01 * raw.abs().mean().item()
        torch.testing.assert_close(out, raw / (mag + config.norm_eps))
    # With momentum 0 the normaliser is this batch's mean |bonus|: the output has mean 1.
    instant = VideoIntrinsicBonus(FEAT_DIM, small_config(norm_momentum=0.0))
    assert instant.normalise(torch.rand(50) * 9).abs().mean().item() == pytest.approx(1.0)


def test_state_round_trip_gives_identical_bonus() -> None:
    config = small_config()
    bonus = VideoIntrinsicBonus(FEAT_DIM, config)
    for _ in range(3):
        bonus(torch.randn(2, 7, FEAT_DIM))
    restored = VideoIntrinsicBonus(FEAT_DIM, small_config(seed=99))
    restored.load_state_dict(bonus.state_dict())
    feat = torch.randn(2, 7, FEAT_DIM)
    assert torch.equal(bonus(feat)[0], restored(feat)[0])
    assert torch.equal(bonus.queue, restored.queue)


def test_clear_errors() -> None:
    bonus = VideoIntrinsicBonus(FEAT_DIM, small_config(window=5))
    with pytest.raises(ValueError, match="shorter than the bonus window"):
        bonus(torch.randn(2, 4, FEAT_DIM))
    with pytest.raises(ValueError, match="expected features"):
        bonus(torch.randn(2, 8, FEAT_DIM + 1))


# Plan2Explore's disagreement ---------------------------------------------------------------------


def disagreement_config(**overrides) -> IntrinsicConfig:
    base = dict(kind="disagreement", ensemble=4, ensemble_units=32, ensemble_layers=2, beta=2.0)
    return IntrinsicConfig(**{**base, **overrides})


def transitions(n: int, t: int, centre: float, seed: int) -> dict[str, torch.Tensor]:
    """Sequences whose next stochastic state is a fixed function of (features, next action):
    the signs of a fixed random projection, as one-hot pairs. Features lie around ``centre``."""
    g = torch.Generator().manual_seed(seed)
    feat = centre + 0.3 * torch.randn(n, t, 6, generator=g)
    action = torch.rand(n, t, 2, generator=g) * 2 - 1
    w = torch.randn(8, 5, generator=torch.Generator().manual_seed(99))
    signs = (torch.cat([feat[:, :-1], action[:, 1:]], -1) @ w > 0).long()
    stoch = torch.zeros(n, t, 5, 2)
    stoch[:, 1:] = torch.nn.functional.one_hot(signs, 2).float()
    return {"feat": feat, "action": action, "stoch": stoch}


def test_disagreement_bonus_is_larger_on_novel_states():
    from apv_hub.intrinsic import DisagreementBonus

    torch.manual_seed(0)
    bonus = DisagreementBonus(6, 2, 10, disagreement_config())
    optimizer = torch.optim.Adam(bonus.parameters(), lr=3e-3)
    is_first = torch.zeros(16, 10, dtype=torch.bool)
    for step in range(300):
        data = transitions(16, 10, centre=0.0, seed=step)
        loss, metrics = bonus.loss(data["feat"], data["action"], data["stoch"], is_first)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert metrics["ensemble_loss"] < 0.1  # a constant 0.5 would score 0.25
    # One call on seen-like and novel states together (one normaliser for both).
    familiar, novel = transitions(32, 6, 0.0, seed=1000), transitions(32, 6, 4.0, seed=1001)
    seq = {k: torch.cat([familiar[k], novel[k]]) for k in ("feat", "action")}
    with torch.no_grad():
        reward = bonus.imagined_reward(seq)
    assert reward.shape == (64, 6) and (reward[:, -1] == 0).all()
    print("bonus familiar / novel:", reward[:32, :-1].mean().item(), reward[32:, :-1].mean().item())
    assert reward[32:, :-1].mean() > 3 * reward[:32, :-1].mean()
    # The normaliser divides by the running mean of |disagreement| (beta 2 on top).
    raw = bonus.predict(seq["feat"][:, :-1], seq["action"][:, 1:]).std(0).mean(-1)
    expected = 2.0 * raw / (bonus.norm_mag.float() + 1e-8)
    torch.testing.assert_close(reward[:, :-1], expected)


def test_disagreement_loss_leaves_out_transitions_into_a_new_episode():
    from apv_hub.intrinsic import DisagreementBonus

    torch.manual_seed(0)
    bonus = DisagreementBonus(6, 2, 10, disagreement_config())
    data = transitions(3, 8, 0.0, seed=0)
    is_first = torch.zeros(3, 8, dtype=torch.bool)
    is_first[1, 5] = True
    loss, _ = bonus.loss(data["feat"], data["action"], data["stoch"], is_first)
    changed = data["stoch"].clone()
    changed[1, 5] = 1.0 - changed[1, 5]  # the first state of row 1's second episode
    again, _ = bonus.loss(data["feat"], data["action"], changed, is_first)
    assert again.item() == pytest.approx(loss.item(), rel=1e-6)
    changed[1, 6] = 1.0 - changed[1, 6]
    assert bonus.loss(data["feat"], data["action"], changed, is_first)[0].item() != loss.item()


def test_disagreement_reaches_the_actions_not_the_ensemble_weights():
    from apv_hub.behavior import no_param_grads
    from apv_hub.intrinsic import DisagreementBonus

    bonus = DisagreementBonus(6, 2, 10, disagreement_config())
    data = transitions(4, 5, 0.0, seed=0)
    action = data["action"].requires_grad_(True)
    with no_param_grads(bonus):
        bonus.imagined_reward({"feat": data["feat"], "action": action}).sum().backward()
    assert action.grad is not None and action.grad[:, 1:].abs().sum() > 0
    assert all(p.grad is None for p in bonus.parameters())
    assert all(p.requires_grad for p in bonus.parameters())
