"""DreamerV2's actor-critic: lambda-returns, the truncated normal, the slow critic, learning."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from apv_hub.behavior import ActorCritic, TruncNormal, lambda_return
from apv_hub.config import AgentConfig, BehaviorConfig
from apv_hub.world_model import APVWorldModel
from tests.agent_helpers import ACTION_DIM, random_batch


def test_lambda_return_matches_hand_computation() -> None:
    reward = torch.tensor([[1.0, 2.0, 3.0]])
    value = torch.tensor([[0.5, 1.0, 1.5]])
    pcont = torch.full((1, 3), 0.9)
    bootstrap = torch.tensor([2.0])
    # By hand, from the end: R3 = 2;  R2 = 3 + .9 (.5 * 2 + .5 * 2) = 4.8;
    # R1 = 2 + .9 (.5 * 1.5 + .5 * 4.8) = 4.835;  R0 = 1 + .9 (.5 * 1 + .5 * 4.835) = 3.62575.
    got = lambda_return(reward, value, pcont, bootstrap, 0.5)
    torch.testing.assert_close(got, torch.tensor([[3.62575, 4.835, 4.8]]))
    # lambda = 1: discounted Monte Carlo return; lambda = 0: one-step TD targets.
    mc = lambda_return(reward, value, pcont, bootstrap, 1.0)
    assert mc[0, 0].item() == pytest.approx(1 + 0.9 * 2 + 0.81 * 3 + 0.729 * 2)
    td = lambda_return(reward, value, pcont, bootstrap, 0.0)
    torch.testing.assert_close(td, torch.tensor([[1 + 0.9 * 1.0, 2 + 0.9 * 1.5, 3 + 0.9 * 2.0]]))
    # A terminal step (pcont 0) cuts off everything after it.
    cut = lambda_return(reward, value, torch.tensor([[0.9, 0.0, 0.9]]), bootstrap, 0.5)
    assert cut[0, 1].item() == pytest.approx(2.0)


def test_trunc_normal_against_scipy() -> None:
    mean = torch.tensor([[0.3, -0.95, 0.0]], dtype=torch.float64)
    std = torch.tensor([[0.2, 0.5, 2.1]], dtype=torch.float64)
    dist = TruncNormal(mean, std)
    x = torch.tensor([[0.1, -0.99, 0.7]], dtype=torch.float64)
    a, b = (-1 - mean) / std, (1 - mean) / std
    ref = stats.truncnorm(a.numpy(), b.numpy(), loc=mean.numpy(), scale=std.numpy())
    assert dist.log_prob(x).item() == pytest.approx(ref.logpdf(x.numpy()).sum(), rel=1e-9)
    assert dist.entropy().item() == pytest.approx(ref.entropy().sum(), rel=1e-9)
    torch.testing.assert_close(dist.mode, mean)


def test_trunc_normal_samples_are_bounded_distributed_and_differentiable() -> None:
    torch.manual_seed(0)
    mean = torch.full((20000, 1), 0.8, requires_grad=True)
    std = torch.full((20000, 1), 0.5, requires_grad=True)
    x = TruncNormal(mean, std).sample()
    assert x.min() > -1 and x.max() < 1
    ref = stats.truncnorm((-1 - 0.8) / 0.5, (1 - 0.8) / 0.5, loc=0.8, scale=0.5)
    assert x.mean().item() == pytest.approx(ref.mean(), abs=0.01)
    assert x.std().item() == pytest.approx(ref.std(), abs=0.01)
    x.sum().backward()
    assert mean.grad.abs().sum() > 0 and std.grad.abs().sum() > 0


class LinearModel:
    """A known linear imagination model: x' = x + 0.2 a, feature x, reward -|x - goal|^2."""

    goal = torch.tensor([0.6, -0.4, 0.2])

    def get_feat(self, state: dict[str, torch.Tensor]) -> torch.Tensor:
        return state["x"]

    def img_step(self, state: dict[str, torch.Tensor], action: torch.Tensor) -> dict:
        return {"x": state["x"] + 0.2 * action}

    def predict_reward(self, feat: torch.Tensor) -> torch.Tensor:
        return -(feat - self.goal).pow(2).sum(-1)

    def predict_continuation(self, feat: torch.Tensor) -> None:
        return None


def fast_behavior(**overrides) -> BehaviorConfig:
    base = dict(
        horizon=8,
        actor_units=64,
        actor_layers=2,
        critic_units=64,
        critic_layers=2,
        actor_lr=1e-3,
        critic_lr=1e-3,
        slow_target_update=5,
    )
    return BehaviorConfig(**{**base, **overrides})


def policy_return(ac: ActorCritic, model: LinearModel, start: dict) -> float:
    """Discounted imagined return of the actor's deterministic policy (mode actions)."""
    x, total = start["x"], torch.zeros(len(start["x"]))
    with torch.no_grad():
        for t in range(ac.config.horizon):
            x = x + 0.2 * ac.actor(x).mode
            total += ac.config.discount**t * model.predict_reward(x)
    return total.mean().item()


@pytest.mark.parametrize("actor_grad", ["dynamics", "reinforce"])
def test_actor_return_improves_on_analytic_model(actor_grad: str) -> None:
    torch.manual_seed(0)
    model = LinearModel()
    ac = ActorCritic(3, 3, fast_behavior(actor_grad=actor_grad))
    actor_opt = torch.optim.Adam(ac.actor.parameters(), lr=ac.config.actor_lr)
    critic_opt = torch.optim.Adam(ac.critic.parameters(), lr=ac.config.critic_lr)
    evaluation = {"x": torch.rand(256, 3) * 2 - 1}
    before = policy_return(ac, model, evaluation)
    updates = 150 if actor_grad == "dynamics" else 400
    for _ in range(updates):
        start = {"x": torch.rand(128, 3) * 2 - 1}
        ac.update(model, start, actor_opt, critic_opt)
    after = policy_return(ac, model, evaluation)
    # The best policy heads for the goal at full speed; a still policy keeps the start error.
    still = policy_return_of(lambda x: torch.zeros_like(x), model, evaluation, ac.config)
    best = policy_return_of(
        lambda x: ((model.goal - x) / 0.2).clamp(-1, 1), model, evaluation, ac.config
    )
    assert after > before
    # It closes most of the gap between standing still and the best policy.
    assert after > still + 0.7 * (best - still), (before, after, still, best)


def policy_return_of(policy, model: LinearModel, start: dict, config: BehaviorConfig) -> float:
    x, total = start["x"], torch.zeros(len(start["x"]))
    for t in range(config.horizon):
        x = x + 0.2 * policy(x)
        total += config.discount**t * model.predict_reward(x)
    return total.mean().item()


def test_slow_critic_follows_every_period() -> None:
    torch.manual_seed(0)
    period = 3
    ac = ActorCritic(3, 3, fast_behavior(slow_target_update=period))
    model = LinearModel()
    actor_opt = torch.optim.Adam(ac.actor.parameters(), lr=1e-3)
    critic_opt = torch.optim.Adam(ac.critic.parameters(), lr=1e-3)
    history = []
    for i in range(8):
        ac.update(model, {"x": torch.rand(32, 3)}, actor_opt, critic_opt)
        history.append([p.detach().clone() for p in ac.critic.parameters()])
        # After update i, the slow critic is the critic as it was after update i // p * p.
        copied = history[i // period * period]
        slow = list(ac.slow_critic.parameters())
        assert all(torch.equal(s, c) for s, c in zip(slow, copied, strict=True)), i
        if i % period:
            assert not all(torch.equal(s, c) for s, c in zip(slow, history[i], strict=True))
    assert int(ac.updates) == 8


def test_imagination_leaves_no_gradients_on_the_world_model() -> None:
    torch.manual_seed(0)
    config = AgentConfig.preset("tiny")
    wm = APVWorldModel(config.video, config.world_model, ACTION_DIM)
    ac = ActorCritic(wm.feat_dim, ACTION_DIM, config.behavior)
    batch = random_batch(config, batch=2)
    obs = wm.observe(batch["image"], batch["action"], batch["is_first"])
    start = {k: v.flatten(0, 1) for k, v in obs.post.items()}
    actor_opt = torch.optim.Adam(ac.actor.parameters())
    critic_opt = torch.optim.Adam(ac.critic.parameters())
    before = [p.detach().clone() for p in ac.actor.parameters()]
    metrics = ac.update(wm, start, actor_opt, critic_opt)
    assert all(p.grad is None for p in wm.parameters())
    assert all(p.requires_grad for p in wm.parameters())
    assert all(p.grad is not None for p in ac.actor.parameters())
    assert any(not torch.equal(b, p) for b, p in zip(before, ac.actor.parameters(), strict=True))
    assert math.isfinite(metrics["actor_loss"]) and math.isfinite(metrics["critic_loss"])


def test_imagined_sequence_layout_and_discount_override() -> None:
    torch.manual_seed(0)
    config = AgentConfig.preset("tiny", world_model={"discount_head": True})
    wm = APVWorldModel(config.video, config.world_model, ACTION_DIM)
    ac = ActorCritic(wm.feat_dim, ACTION_DIM, config.behavior)
    start = wm.rssm.initial(4)
    is_terminal = torch.tensor([True, False, False, True])
    seq = ac.imagine(wm, start, is_terminal)
    horizon = config.behavior.horizon
    assert seq["feat"].shape == (4, horizon + 1, wm.feat_dim)
    assert seq["action"].shape == (4, horizon + 1, ACTION_DIM)
    assert torch.equal(seq["action"][:, 0], torch.zeros(4, ACTION_DIM))
    # The start state's discount is the true one: 0 where it is terminal, gamma elsewhere.
    torch.testing.assert_close(seq["discount"][:, 0], torch.tensor([0.0, 0.99, 0.99, 0.0]))
    assert torch.all(seq["weight"][is_terminal, 1:] == 0)
    assert torch.all(seq["weight"][:, 0] == 1)
