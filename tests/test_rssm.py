"""RSSM filtering: the restructured loop computes the textbook per-step maths.

``RSSM.observe`` computes the embedding's share of the posterior's first layer for all steps before
its loop over time and the prior head for all steps after it. The reference here is the plain
loop, written with the module's own layers: concat(h_t, e_t) through the posterior MLP, the prior
head at every step, the previous latent fed forward.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from apv_hub.rssm import RSSM, State, sample_one_hot

B, T, E, A = 3, 7, 24, 2


def rssm(action_dim: int) -> RSSM:
    torch.manual_seed(0)
    return RSSM(E, action_dim, deter=32, hidden=40, stoch=4, classes=5)


def inputs(action_dim: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, State]:
    """Embeddings, actions, episode starts (one mid-sequence) and a non-zero start state."""
    g = torch.Generator().manual_seed(1)
    embed = torch.randn(B, T, E, generator=g)
    action = torch.rand(B, T, action_dim, generator=g) * 2 - 1 if action_dim else None
    is_first = torch.zeros(B, T, dtype=torch.bool)
    is_first[0, 0] = is_first[1, 4] = True
    index = torch.randint(0, 5, (B, 4), generator=g)
    state = {
        "deter": torch.randn(B, 32, generator=g),
        "stoch": F.one_hot(index, 5).float(),
        "logits": torch.randn(B, 4, 5, generator=g),
    }
    return embed, action, is_first, state


def reference_observe(
    model: RSSM,
    embed: torch.Tensor,
    action: torch.Tensor | None,
    is_first: torch.Tensor,
    state: State,
    stoch: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The plain loop -> (deter, posterior logits, prior logits, latents), each [B, T, ...].

    ``stoch`` [B, T, stoch, classes] gives the latent fed forward from each step (teacher forcing);
    None takes the posterior's mode (with the straight-through gradient of ``sample_one_hot``)
    """
    deter, z = state["deter"], state["stoch"]
    out: dict[str, list[torch.Tensor]] = {"deter": [], "post": [], "prior": [], "z": []}
    for t in range(T):
        keep = (~is_first[:, t]).float()
        deter, z = deter * keep[:, None], z * keep[:, None, None]
        x = z.flatten(-2)
        if action is not None:
            x = torch.cat([x, action[:, t] * keep[:, None]], -1)
        deter = model.gru(model.img_in(x), deter)
        post = model.obs_out(torch.cat([deter, embed[:, t]], -1)).reshape(B, 4, 5)
        prior = model.img_out(deter).reshape(B, 4, 5)
        z = sample_one_hot(post, sample=False) if stoch is None else stoch[:, t]
        for key, value in zip(out, (deter, post, prior, z), strict=True):
            out[key].append(value)
    deters, posts, priors, zs = (torch.stack(v, 1) for v in out.values())
    return deters, posts, priors, zs


@pytest.mark.parametrize("action_dim", [0, A])
def test_observe_mode_matches_the_plain_loop(action_dim: int) -> None:
    model = rssm(action_dim)
    embed, action, is_first, state = inputs(action_dim)
    post, prior = model.observe(embed, action, is_first, state, sample=False)
    deter, post_logits, prior_logits, z = reference_observe(
        model, embed, action, is_first, state, None
    )
    torch.testing.assert_close(post["deter"], deter)
    torch.testing.assert_close(post["logits"], post_logits)
    torch.testing.assert_close(prior["logits"], prior_logits)
    torch.testing.assert_close(post["stoch"], z)
    assert prior["deter"] is post["deter"] and "stoch" not in prior


@pytest.mark.parametrize("action_dim", [0, A])
def test_observe_sampled_matches_the_plain_loop_fed_its_samples(action_dim: int) -> None:
    model = rssm(action_dim)
    embed, action, is_first, state = inputs(action_dim)
    post, prior = model.observe(embed, action, is_first, state)
    deter, post_logits, prior_logits, _ = reference_observe(
        model, embed, action, is_first, state, post["stoch"].detach()
    )
    torch.testing.assert_close(post["deter"], deter)
    torch.testing.assert_close(post["logits"], post_logits)
    torch.testing.assert_close(prior["logits"], prior_logits)
    one_hot = post["stoch"].detach().round()
    assert torch.all(one_hot.sum(-1) == 1)
    torch.testing.assert_close(post["stoch"].detach(), one_hot)


@pytest.mark.parametrize("action_dim", [0, A])
def test_obs_step_by_step_equals_observe(action_dim: int) -> None:
    model = rssm(action_dim)
    embed, action, is_first, state = inputs(action_dim)
    post, prior = model.observe(embed, action, is_first, state, sample=False)
    for t in range(T):
        act_t = action[:, t] if action_dim else None
        state, prior_t = model.obs_step(state, act_t, embed[:, t], is_first[:, t], sample=False)
        for key in ("deter", "stoch", "logits"):
            torch.testing.assert_close(state[key], post[key][:, t])
        torch.testing.assert_close(prior_t["logits"], prior["logits"][:, t])


def test_gradients_match_the_plain_loop() -> None:
    """The split posterior layer passes the same gradients to its (unsplit) parameters."""
    embed, action, is_first, state = inputs(A)
    grads = []
    for restructured in (True, False):
        model = rssm(A)
        if restructured:
            post, prior = model.observe(embed, action, is_first, state, sample=False)
            values = (post["deter"], post["logits"], prior["logits"])
        else:
            values = reference_observe(model, embed, action, is_first, state, None)[:3]
        sum(v.pow(2).sum() for v in values).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], msg=name)


def test_state_dict_layout_is_unchanged() -> None:
    """Checkpoints written before the restructuring still load: same names and shapes."""
    names = {name: tuple(t.shape) for name, t in rssm(A).state_dict().items()}
    assert names["obs_out.0.weight"] == (40, 32 + E)
    assert names["obs_out.2.weight"] == (4 * 5, 40)
    assert names["img_out.2.weight"] == (4 * 5, 40)
    assert set(names) == {
        "img_in.0.weight",
        "img_in.0.bias",
        "gru.linear.weight",
        "gru.norm.weight",
        "gru.norm.bias",
        "img_out.0.weight",
        "img_out.0.bias",
        "img_out.2.weight",
        "img_out.2.bias",
        "obs_out.0.weight",
        "obs_out.0.bias",
        "obs_out.2.weight",
        "obs_out.2.bias",
    }
