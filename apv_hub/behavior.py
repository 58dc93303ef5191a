"""DreamerV2's actor-critic, learned on rollouts imagined by the action-conditional model.

From each start state (the world model's posteriors), the actor picks actions and the model's
prior rolls forward ``horizon`` steps; rewards come from the reward head, values from a slow
copy of the critic, and lambda-returns are the targets. The actor maximises them by
back-propagating through the model's dynamics (continuous actions) or by REINFORCE, plus an
entropy bonus; the critic regresses them. Sequences here are [N, H + 1, ...]: start state at 0.

Any object with ``get_feat``, ``img_step``, ``predict_reward`` and ``predict_continuation`` (see
``ImaginationModel``) can be imagined with: the stacked world model, or a small analytic model.

Under bf16 autocast the networks run in bf16, but the actor's distribution (its parameters,
sampling, log-probabilities and entropy), rewards, values, discounts, lambda-returns and every
loss are float32, as in the released code.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from apv_hub.compilation import compile_step
from apv_hub.config import BehaviorConfig
from apv_hub.nets import MLP, autocast_off
from apv_hub.optim import apply_gradients
from apv_hub.rssm import State

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


class ImaginationModel(Protocol):
    """What the actor-critic needs from a world model."""

    def get_feat(self, state: State) -> Tensor: ...

    def img_step(self, state: State, action: Tensor) -> State: ...

    def predict_reward(self, feat: Tensor) -> Tensor: ...

    def predict_continuation(self, feat: Tensor) -> Tensor | None: ...


def _normal_cdf(x: Tensor) -> Tensor:
    return 0.5 * (1 + torch.erf(x / math.sqrt(2)))


def _normal_log_pdf(x: Tensor) -> Tensor:
    return -0.5 * x.pow(2) - _LOG_SQRT_2PI


class TruncNormal:
    """Independent Normals truncated to [low, high], over the last axis (DreamerV2's actor).

    Reparameterised sampling by the inverse CDF: u ~ U(Phi(a), Phi(b)), x = mean + std *
    Phi^-1(u), so gradients reach mean and std. Like DreamerV2, samples are clipped ``clip``
    inside the bounds with a straight-through gradient, and the mode is the clipped mean.
    """

    def __init__(
        self, mean: Tensor, std: Tensor, low: float = -1.0, high: float = 1.0, clip: float = 1e-6
    ) -> None:
        self.mean, self.std, self.low, self.high, self.clip = mean, std, low, high, clip
        self._a = (low - mean) / std
        self._b = (high - mean) / std
        self._cdf_a, self._cdf_b = _normal_cdf(self._a), _normal_cdf(self._b)
        self._z = (self._cdf_b - self._cdf_a).clamp_min(torch.finfo(mean.dtype).tiny)

    @property
    def mode(self) -> Tensor:
        return self.mean.clamp(self.low, self.high)

    def sample(self) -> Tensor:
        """A reparameterised draw [..., A]."""
        eps = torch.finfo(self.mean.dtype).eps
        u = torch.rand_like(self.mean)
        u = (self._cdf_a + u * self._z).clamp(eps, 1 - eps)
        x = self.mean + self.std * torch.special.ndtri(u)
        clipped = x.clamp(self.low + self.clip, self.high - self.clip)
        return x + (clipped - x).detach()

    def log_prob(self, x: Tensor) -> Tensor:
        """Log density of x [..., A] (inside the bounds), summed over the last axis -> [...]."""
        z = (x - self.mean) / self.std
        return (_normal_log_pdf(z) - self.std.log() - self._z.log()).sum(-1)

    def entropy(self) -> Tensor:
        """Differential entropy, summed over the last axis -> [...]."""
        a_pdf = torch.exp(_normal_log_pdf(self._a))
        b_pdf = torch.exp(_normal_log_pdf(self._b))
        per_dim = (
            0.5 * math.log(2 * math.pi * math.e)
            + self.std.log()
            + self._z.log()
            + (self._a * a_pdf - self._b * b_pdf) / (2 * self._z)
        )
        return per_dim.sum(-1)


class Actor(nn.Module):
    """Features [..., feat_dim] -> TruncNormal over actions [..., A] in [-1, 1].

    mean = tanh(x), std = 2 * sigmoid(y / 2) + min_std (DreamerV2's ``trunc_normal``), in
    float32 (``torch.special.ndtri``, which samples it, has no bf16 kernel).
    """

    def __init__(self, feat_dim: int, action_dim: int, config: BehaviorConfig) -> None:
        super().__init__()
        self.min_std = config.actor_min_std
        self.net = MLP(
            feat_dim, 2 * action_dim, config.actor_units, config.actor_layers, config.act
        )

    def forward(self, feat: Tensor) -> TruncNormal:
        mean, std = self.net(feat).float().chunk(2, -1)
        return TruncNormal(torch.tanh(mean), 2 * torch.sigmoid(std / 2) + self.min_std)


def lambda_return(
    reward: Tensor, value: Tensor, pcont: Tensor, bootstrap: Tensor, lambda_: float
) -> Tensor:
    """TD(lambda) returns over the time axis 1 (DreamerV2's ``lambda_return``).

    reward, value, pcont [N, H]; bootstrap [N] (the value after the last step).
    R_t = r_t + pcont_t * ((1 - lambda) * v_{t+1} + lambda * R_{t+1}), R_H = bootstrap.
    Computed in float32 whatever the inputs' dtype: in bf16 the sum over 15 steps would lose
    about two significant digits.
    """
    reward, value, pcont, bootstrap = (x.float() for x in (reward, value, pcont, bootstrap))
    next_value = torch.cat([value[:, 1:], bootstrap[:, None]], 1)
    inputs = reward + pcont * next_value * (1 - lambda_)
    returns, last = [], bootstrap
    for t in reversed(range(reward.shape[1])):
        last = inputs[:, t] + pcont[:, t] * lambda_ * last
        returns.append(last)
    return torch.stack(returns[::-1], 1)


@contextlib.contextmanager
def no_param_grads(module: Any) -> Iterator[None]:
    """Stop gradients into a module's parameters while still flowing through its computations.

    Imagination back-propagates the actor's objective through the world model's dynamics, but
    must not leave gradients on the world model's parameters.
    """
    params = (
        [p for p in module.parameters() if p.requires_grad] if isinstance(module, nn.Module) else []
    )
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def forget_host_updates(module: ActorCritic, _: object) -> None:
    """Load-state-dict hook: the ``updates`` buffer may have changed."""
    module.host_updates = None


class ActorCritic(nn.Module):
    """Actor, critic and slow critic, with the DreamerV2 losses and update."""

    def __init__(self, feat_dim: int, action_dim: int, config: BehaviorConfig | None = None):
        super().__init__()
        self.config = config = config or BehaviorConfig()
        self.action_dim = action_dim
        self.actor = Actor(feat_dim, action_dim, config)
        self.critic = MLP(feat_dim, 1, config.critic_units, config.critic_layers, config.act)
        self.slow_critic = copy.deepcopy(self.critic).requires_grad_(False)
        # Actor-critic updates done; the slow critic is refreshed when it is a multiple of
        # slow_target_update (DreamerV2 counts before incrementing, so update 0 copies).
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))
        # A host copy of ``updates`` for the schedule, so that an update never reads the device;
        # read from the buffer again after a state dict is loaded into it.
        self.host_updates: int | None = None
        self.register_load_state_dict_post_hook(forget_host_updates)
        self.compiled: dict[str, Callable[..., Any]] = {}  # Set by compile_losses.

    def sync_slow_critic(self) -> None:
        """Copy the critic's weights into the slow critic (after re-initialising the critic)."""
        self.slow_critic.load_state_dict(self.critic.state_dict())

    def target_critic(self) -> nn.Module:
        return self.slow_critic if self.config.slow_target else self.critic

    def imagine(
        self,
        model: ImaginationModel,
        start: State,
        is_terminal: Tensor | None = None,
        intrinsic: Any = None,
    ) -> dict[str, Tensor]:
        """Roll out ``horizon`` steps from start states [N, ...] -> sequences [N, H + 1, ...].

        Returns feat, action (action[:, t] led to step t; zeros at t = 0), reward, discount
        (gamma, times the predicted continuation when the model has a head; at t = 0 the true
        1 - is_terminal [N] of the start state then) and weight (cumulative discount before t).
        ``intrinsic`` (e.g. `apv_hub.intrinsic.DisagreementBonus`): its ``imagined_reward(seq)``
        [N, H + 1] is added to the reward and returned as ``intrinsic``.
        """
        cfg = self.config
        state = start
        feat = model.get_feat(state)
        feats = [feat]
        actions = [torch.zeros(*feat.shape[:-1], self.action_dim, device=feat.device)]
        for _ in range(cfg.horizon):
            action = self.actor(feat.detach()).sample()
            state = model.img_step(state, action)
            feat = model.get_feat(state)
            feats.append(feat)
            actions.append(action)
        seq = {"feat": torch.stack(feats, 1), "action": torch.stack(actions, 1)}
        seq["reward"] = model.predict_reward(seq["feat"]).float()
        if intrinsic is not None:
            seq["intrinsic"] = intrinsic.imagined_reward(seq)
            seq["reward"] = seq["reward"] + seq["intrinsic"]
        continuation = model.predict_continuation(seq["feat"])
        # float32: in bf16, 0.99 would be 0.98828125.
        if continuation is None:
            discount = torch.full_like(seq["reward"], cfg.discount, dtype=torch.float32)
        else:
            discount = cfg.discount * continuation.float()
            if is_terminal is not None:
                first = cfg.discount * (1.0 - is_terminal.float())
                discount = torch.cat([first[:, None], discount[:, 1:]], 1)
        seq["discount"] = discount
        # Whether step t is reached at all: the product of the discounts before it.
        ones = torch.ones_like(discount[:, :1])
        seq["weight"] = torch.cumprod(torch.cat([ones, discount[:, :-1]], 1), 1).detach()
        return seq

    def target(self, seq: dict[str, Tensor]) -> Tensor:
        """Lambda-returns [N, H] of steps 0..H-1, bootstrapped by the slow critic at step H."""
        value = self.target_critic()(seq["feat"]).squeeze(-1).float()
        return lambda_return(
            seq["reward"][:, :-1],
            value[:, :-1],
            seq["discount"][:, :-1],
            value[:, -1],
            self.config.discount_lambda,
        )

    def actor_loss(
        self, seq: dict[str, Tensor], target: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The policy at steps 0..H-2 chose the actions of steps 1..H-1, whose returns it gets."""
        cfg = self.config
        policy = self.actor(seq["feat"][:, :-2].detach())
        if cfg.actor_grad == "dynamics":
            objective = target[:, 1:]
        else:
            baseline = self.target_critic()(seq["feat"][:, :-2]).squeeze(-1).float()
            advantage = (target[:, 1:] - baseline).detach()
            objective = policy.log_prob(seq["action"][:, 1:-1].detach()) * advantage
        entropy = policy.entropy()
        objective = objective + cfg.actor_entropy * entropy
        loss = -(seq["weight"][:, :-2] * objective).mean()
        return loss, {"actor_loss": loss.detach(), "actor_entropy": entropy.detach().mean()}

    def critic_loss(
        self, seq: dict[str, Tensor], target: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Unit-variance Normal NLL (no constant) of the returns under the critic, weighted."""
        value = self.critic(seq["feat"][:, :-1].detach()).squeeze(-1).float()
        loss = (0.5 * (value - target.detach()).pow(2) * seq["weight"][:, :-1]).mean()
        return loss, {"critic_loss": loss.detach(), "critic_value": value.detach().mean()}

    def update(
        self,
        model: ImaginationModel,
        start: State,
        actor_opt: torch.optim.Optimizer,
        critic_opt: torch.optim.Optimizer,
        is_terminal: Tensor | None = None,
        accelerator: Any = None,
        intrinsic: Any = None,
    ) -> dict[str, Tensor]:
        """One actor and one critic step from start states [N, ...] (detached here); the
        ``intrinsic`` bonus of imagined states is added to their rewards (see ``imagine``).

        Imagination and the losses run under the caller's autocast, if any; the backward passes
        and optimiser steps run with autocast off.
        """
        cfg = self.config
        start = {k: v.detach() for k, v in start.items()}
        actor_side, critic_side = (
            self.compiled.get("actor", self.actor_side),
            self.compiled.get("critic", self.critic_loss),
        )
        with no_param_grads(model), no_param_grads(intrinsic):
            actor_loss, seq, target, metrics = actor_side(model, start, is_terminal, intrinsic)
        critic_loss, critic_metrics = critic_side(seq, target)
        metrics.update(critic_metrics)
        with autocast_off(actor_loss.device):
            metrics["actor_grad_norm"] = apply_gradients(
                actor_loss, actor_opt, self.actor.parameters(), cfg.grad_clip, accelerator
            )
            metrics["critic_grad_norm"] = apply_gradients(
                critic_loss, critic_opt, self.critic.parameters(), cfg.grad_clip, accelerator
            )
        self.update_slow_target()
        return metrics

    def actor_side(
        self,
        model: ImaginationModel,
        start: State,
        is_terminal: Tensor | None = None,
        intrinsic: Any = None,
    ) -> tuple[Tensor, dict[str, Tensor], Tensor, dict[str, Tensor]]:
        """Imagination from start states [N, ...], its returns and the actor loss -> (actor
        loss, the critic's inputs: detached feat [N, H + 1, F] and weight [N, H + 1], detached
        target [N, H], metrics). The caller holds the model's and the bonus's parameters out of
        the gradient (``no_param_grads``). The critic's loss is computed apart, so that the two
        losses stay two graphs when compiled (each has its own backward pass)."""
        grad = torch.enable_grad() if self.config.actor_grad == "dynamics" else torch.no_grad()
        with grad:
            seq = self.imagine(model, start, is_terminal, intrinsic)
            target = self.target(seq)
        actor_loss, metrics = self.actor_loss(seq, target)
        metrics["imag_reward_mean"] = seq["reward"].detach().mean()
        if "intrinsic" in seq:
            metrics["imag_intrinsic_mean"] = seq["intrinsic"][:, :-1].detach().mean()
        metrics["imag_return_mean"] = target.detach().mean()
        metrics["imag_action_abs_mean"] = seq["action"][:, 1:].detach().abs().mean()
        critic_seq = {"feat": seq["feat"].detach(), "weight": seq["weight"]}
        return actor_loss, critic_seq, target.detach(), metrics

    def compile_losses(self, mode: str = "default", backend: str = "inductor") -> None:
        """Run `actor_side` and `critic_loss` compiled by `apv_hub.compilation.compile_step`."""
        self.compiled = {
            "actor": compile_step(self.actor_side, mode, backend),
            "critic": compile_step(self.critic_loss, mode, backend),
        }

    @torch.no_grad()
    def update_slow_target(self) -> None:
        """Every ``slow_target_update`` updates (and at update 0), move the slow critic."""
        cfg = self.config
        done = self.update_count()
        if cfg.slow_target and done % cfg.slow_target_update == 0:
            mix = 1.0 if done == 0 else cfg.slow_target_fraction
            for slow, fast in zip(
                self.slow_critic.parameters(), self.critic.parameters(), strict=True
            ):
                # A full copy must be exact: lerp with weight 1 can differ in the last bit.
                if mix == 1.0:
                    slow.copy_(fast)
                else:
                    slow.lerp_(fast, mix)
        self.updates += 1
        self.host_updates = done + 1

    def update_count(self) -> int:
        """Actor-critic updates done (the ``updates`` buffer, read from the device once)."""
        if self.host_updates is None:
            self.host_updates = int(self.updates)
        return self.host_updates
