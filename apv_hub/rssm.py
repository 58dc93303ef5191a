"""Recurrent state-space model with discrete latents (DreamerV2), with or without actions.

A state is a dict of tensors:
    deter  [B, deter]            GRU state h
    stoch  [B, stoch, classes]   one-hot sample z (straight-through gradients)
    logits [B, stoch, classes]   logits of the distribution z was drawn from

The priors that filtering (``observe``, ``obs_step``) returns beside the posteriors hold
``deter`` and ``logits`` only: the losses need the prior's distribution, never a draw from it.

Every state tensor is float32, also under bf16 autocast: the networks' matmuls run in bf16 there,
but the distributions' parameters (logits), their sampling, softmax, KL and entropy, and the
recurrent state stay in float32, as in the released code.

Sequences stack the same keys along a time axis: [B, T, ...]. ``action_dim=0`` gives the
action-free RSSM of APV's pre-training; the action-conditional RSSM of fine-tuning is the same
class with ``action_dim > 0``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from apv_hub.nets import GRUCell, activation, autocast_dtype

State = dict[str, Tensor]


def stack_states(states: list[State], dim: int = 1) -> State:
    return {k: torch.stack([s[k] for s in states], dim) for k in states[0]}


def gumbel_noise(shape: tuple[int, ...], device: torch.device | str = "cpu") -> Tensor:
    """Standard Gumbel noise -log(-log(u)), u ~ U[0, 1), float32 [*shape].

    float32's uniform draws are multiples of 2^-24: the noise is truncated at about 16.6 above,
    and u = 0 (probability 2^-24) gives -inf, a class that this draw never picks.
    """
    return torch.rand(shape, device=device).log_().neg_().log_().neg_()


def sample_one_hot(logits: Tensor, sample: bool = True, noise: Tensor | None = None) -> Tensor:
    """One-hot draw (or mode) of categoricals [..., classes] with straight-through gradients.

    A draw is argmax(logits + Gumbel noise), the Gumbel-max trick: distributed as
    softmax(logits), in a few elementwise kernels instead of ``torch.multinomial``'s many.
    ``noise`` [..., classes] is Gumbel noise drawn beforehand (``observe`` draws a whole
    sequence's at once); without it, it is drawn here. The gradient is the straight-through one:
    one_hot + probs - sg(probs). Float32 whatever the dtype of ``logits``.
    """
    logits = logits.float()
    if sample:
        noise = gumbel_noise(logits.shape, logits.device) if noise is None else noise
        index = (logits + noise).argmax(-1, keepdim=True)
    else:
        index = logits.argmax(-1, keepdim=True)
    probs = logits.softmax(-1)
    one_hot = torch.zeros_like(probs).scatter_(-1, index, 1.0)
    return one_hot + probs - probs.detach()


def categorical_kl(lhs_logits: Tensor, rhs_logits: Tensor) -> Tensor:
    """KL(lhs || rhs) of independent categoricals [..., stoch, classes], summed over latents."""
    return _kl_of_log_probs(lhs_logits.float().log_softmax(-1), rhs_logits.float().log_softmax(-1))


def _kl_of_log_probs(lhs: Tensor, rhs: Tensor) -> Tensor:
    """KL(lhs || rhs) from log-probabilities [..., stoch, classes], summed over latents."""
    return (lhs.exp() * (lhs - rhs)).sum((-2, -1))


def categorical_entropy(logits: Tensor) -> Tensor:
    """Entropy of independent categoricals [..., stoch, classes], summed over latents."""
    logp = logits.float().log_softmax(-1)
    return -(logp.exp() * logp).sum((-2, -1))


class RSSM(nn.Module):
    """DreamerV2's RSSM. ``observe`` filters a sequence, ``imagine`` rolls out the prior."""

    def __init__(
        self,
        embed_dim: int,
        action_dim: int = 0,
        deter: int = 1024,
        hidden: int = 1024,
        stoch: int = 32,
        classes: int = 32,
        act: str = "elu",
        layer_norm: bool = True,
        norm_eps: float = 1e-5,
        gru_bias: bool = False,
    ) -> None:
        super().__init__()
        self.embed_dim, self.action_dim = embed_dim, action_dim
        self.deter, self.stoch, self.classes = deter, stoch, classes
        self.img_in = nn.Sequential(
            nn.Linear(stoch * classes + action_dim, hidden), activation(act)
        )
        self.gru = GRUCell(hidden, deter, layer_norm, norm_eps, gru_bias)
        self.img_out = nn.Sequential(
            nn.Linear(deter, hidden), activation(act), nn.Linear(hidden, stoch * classes)
        )
        self.obs_out = nn.Sequential(
            nn.Linear(deter + embed_dim, hidden),
            activation(act),
            nn.Linear(hidden, stoch * classes),
        )

    @property
    def feat_dim(self) -> int:
        return self.stoch * self.classes + self.deter

    def initial(self, batch: int, device: torch.device | str = "cpu") -> State:
        """The all-zero state that starts every episode."""
        zeros = torch.zeros(batch, self.stoch, self.classes, device=device)
        return {
            "deter": torch.zeros(batch, self.deter, device=device),
            "stoch": zeros,
            "logits": zeros,
        }

    def get_feat(self, state: State) -> Tensor:
        """State [..., *] -> features [..., stoch * classes + deter]."""
        stoch = state["stoch"].flatten(-2)
        return torch.cat([stoch, state["deter"]], -1)

    def _logits(self, x: Tensor) -> Tensor:
        """A head's output [..., stoch * classes] -> float32 logits [..., stoch, classes]."""
        return x.reshape(*x.shape[:-1], self.stoch, self.classes).float()

    def _deter_step(self, deter: Tensor, stoch: Tensor, action: Tensor | None) -> Tensor:
        """h_t = GRU(h_{t-1}, z_{t-1}, a_{t-1}): deter [B, deter], stoch [B, stoch, classes]."""
        x = stoch.flatten(-2)
        if self.action_dim:
            x = torch.cat([x, action], -1)
        return self.gru(self.img_in(x), deter)

    def prior_logits(self, deter: Tensor) -> Tensor:
        """Logits of p(z_t | h_t): deter [..., deter] -> float32 [..., stoch, classes]."""
        return self._logits(self.img_out(deter))

    def _posterior_weights(self) -> tuple[Tensor, Tensor]:
        """The posterior's first layer, split into the columns that read deter and embed.

        The layer reads concat(deter, embed); its embed share is computed for a whole sequence
        before the loop over time, the deter share step by step. Under autocast the weight is
        cast once here, not at every step (autocast caches casts of parameters, not of slices).
        """
        weight = self.obs_out[0].weight
        dtype = autocast_dtype(weight.device)
        if dtype is not None:
            weight = weight.to(dtype)
        return weight.split([self.deter, self.embed_dim], 1)

    def _embed_share(self, embed: Tensor, weight: Tensor) -> Tensor:
        """The embed columns' part of the posterior's first layer (with its bias) [..., hidden]."""
        return F.linear(embed, weight, self.obs_out[0].bias)

    def _post_step(
        self,
        prev: State,
        prev_action: Tensor | None,
        keep: Tensor,
        embed_share: Tensor,
        deter_weight: Tensor,
        noise: Tensor | None,
    ) -> State:
        """One posterior step q(z_t | h_t, e_t) from the previous state [B, ...].

        keep [B, 1]: 0 where an episode starts (the previous state and action are zeroed there),
        else 1. embed_share [B, hidden] and deter_weight from ``_embed_share`` /
        ``_posterior_weights``. noise [B, stoch, classes]: Gumbel noise of the draw; None takes
        the mode.
        """
        deter = prev["deter"] * keep
        stoch = prev["stoch"] * keep[..., None]
        if self.action_dim:
            prev_action = prev_action * keep
        deter = self._deter_step(deter, stoch, prev_action)
        hidden = self.obs_out[1](torch.addmm(embed_share, deter, deter_weight.t()))
        logits = self._logits(self.obs_out[2](hidden))
        stoch = sample_one_hot(logits, noise is not None, noise)
        return {"deter": deter, "stoch": stoch, "logits": logits}

    def _noise(self, lead: tuple[int, ...], device: torch.device, sample: bool) -> Tensor | None:
        """Gumbel noise [*lead, stoch, classes] for posterior draws, or None for modes."""
        return gumbel_noise((*lead, self.stoch, self.classes), device) if sample else None

    def img_step(
        self, prev: State, prev_action: Tensor | None = None, sample: bool = True
    ) -> State:
        """One prior step: p(z_t | h_t), h_t = GRU(h_{t-1}, z_{t-1}, a_{t-1})."""
        deter = self._deter_step(prev["deter"], prev["stoch"], prev_action)
        logits = self.prior_logits(deter)
        return {"deter": deter, "stoch": sample_one_hot(logits, sample), "logits": logits}

    def obs_step(
        self,
        prev: State,
        prev_action: Tensor | None,
        embed: Tensor,
        is_first: Tensor,
        sample: bool = True,
    ) -> tuple[State, State]:
        """One filtering step -> (posterior q(z_t | h_t, e_t), prior p(z_t | h_t)).

        Where ``is_first`` [B] is set, the previous state and action are zeroed so that an episode
        boundary inside a batch starts from the initial state. The prior holds ``deter`` and
        ``logits`` only: nothing is drawn from it.
        """
        keep = (~is_first).float()[:, None]
        deter_weight, embed_weight = self._posterior_weights()
        embed_share = self._embed_share(embed, embed_weight)
        noise = self._noise(embed.shape[:1], embed.device, sample)
        post = self._post_step(prev, prev_action, keep, embed_share, deter_weight, noise)
        return post, {"deter": post["deter"], "logits": self.prior_logits(post["deter"])}

    def observe(
        self,
        embed: Tensor,
        action: Tensor | None = None,
        is_first: Tensor | None = None,
        state: State | None = None,
        sample: bool = True,
    ) -> tuple[State, State]:
        """Filter a sequence.

        embed [B, T, E]; action [B, T, A], where action[:, t] is the action that led to step t;
        is_first [B, T] bool; state: the state before step 0 (default: initial).
        Returns posterior [B, T, ...] and prior states [B, T, ...]; the prior holds ``deter``
        and ``logits`` only (nothing is drawn from it).

        Only what depends on the previous step runs in the loop over time: the embedding's share
        of the posterior is one matmul over all steps before it, as is the posteriors' Gumbel
        noise, and the prior head is one after it.
        """
        batch, length = embed.shape[:2]
        if self.action_dim and action is None:
            raise ValueError("this RSSM is action-conditional: observe() needs actions")
        if is_first is None:
            is_first = torch.zeros(batch, length, dtype=torch.bool, device=embed.device)
        state = self.initial(batch, embed.device) if state is None else state
        keep = (~is_first).float()[..., None]
        deter_weight, embed_weight = self._posterior_weights()
        embed_share = self._embed_share(embed, embed_weight)
        noise = self._noise((batch, length), embed.device, sample)
        posts = []
        for t in range(length):
            act_t = action[:, t] if self.action_dim else None
            noise_t = noise[:, t] if sample else None
            state = self._post_step(
                state, act_t, keep[:, t], embed_share[:, t], deter_weight, noise_t
            )
            posts.append(state)
        post = stack_states(posts)
        return post, {"deter": post["deter"], "logits": self.prior_logits(post["deter"])}

    def imagine(
        self,
        state: State,
        horizon: int | None = None,
        action: Tensor | None = None,
        sample: bool = True,
    ) -> State:
        """Roll the prior forward from ``state`` [B, ...].

        Action-free: ``horizon`` steps. Action-conditional: ``action`` [B, H, A], where
        action[:, t] is applied before predicted step t. Returns prior states [B, H, ...].
        """
        if self.action_dim:
            if action is None:
                raise ValueError("this RSSM is action-conditional: imagine() needs actions")
            horizon = action.shape[1]
        elif horizon is None:
            raise ValueError("imagine() needs a horizon")
        priors = []
        for t in range(horizon):
            state = self.img_step(state, action[:, t] if self.action_dim else None, sample)
            priors.append(state)
        return stack_states(priors)

    @staticmethod
    def kl_loss(
        post: State, prior: State, balance: float, free: float, free_avg: bool = True
    ) -> tuple[Tensor, Tensor]:
        """KL balancing: balance * KL(sg(post) || prior) + (1 - balance) * KL(post || sg(prior)).

        The first term trains the prior towards the posterior, the second regularises the
        posterior. ``free`` nats are not penalised, applied to the batch mean (``free_avg``) or
        per step. Returns (loss, KL value [B, T], detached). Both terms have the same value; one
        log-softmax of each side serves both.
        """
        post_logp = post["logits"].float().log_softmax(-1)
        prior_logp = prior["logits"].float().log_softmax(-1)
        train_prior = _kl_of_log_probs(post_logp.detach(), prior_logp)
        train_post = _kl_of_log_probs(post_logp, prior_logp.detach())
        value = train_prior.detach()
        if free_avg:
            train_prior, train_post = train_prior.mean(), train_post.mean()
        loss = balance * train_prior.clamp_min(free) + (1 - balance) * train_post.clamp_min(free)
        return loss.mean(), value
