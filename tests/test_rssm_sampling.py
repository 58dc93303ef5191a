"""Gumbel-max sampling of the RSSM's categorical latents is the categorical distribution.

``sample_one_hot`` draws argmax(logits + Gumbel noise) instead of ``torch.multinomial``'s draw
from softmax(logits). The two have the same distribution (the Gumbel-max trick); these tests
check it empirically at fixed seeds with chi-square tests, check that the tests would notice a
wrong distribution, and check that the straight-through gradient is the one the multinomial
sampler had: one_hot + probs - sg(probs).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from apv_hub.rssm import gumbel_noise, sample_one_hot

DRAWS = 100_000
# Three latents: near-uniform, skewed, and one dominant class with rare others.
LOGITS = torch.tensor(
    [
        [0.1, 0.0, -0.1, 0.05, 0.2, -0.2],
        [2.0, 1.0, 0.0, -1.0, -2.0, 0.5],
        [4.0, 0.0, 0.5, -1.0, 1.0, 0.0],
    ]
)
# A fixed seed makes each test deterministic; the threshold says how unlikely a pass would be if
# the distributions differed by as much as the sensitivity test below.
ALPHA = 0.01


def gumbel_counts(logits: torch.Tensor, seed: int = 0) -> np.ndarray:
    """Class counts [latents, classes] of DRAWS Gumbel-max draws per latent."""
    torch.manual_seed(seed)
    draws = sample_one_hot(logits.expand(DRAWS, *logits.shape))
    return draws.detach().round().sum(0).long().numpy()


def multinomial_counts(logits: torch.Tensor, seed: int = 1) -> np.ndarray:
    """The same from the sampler it replaces: torch.multinomial on softmax(logits)."""
    torch.manual_seed(seed)
    index = torch.multinomial(logits.softmax(-1), DRAWS, replacement=True)
    return F.one_hot(index, logits.shape[-1]).sum(1).numpy()


def goodness_of_fit(counts: np.ndarray, logits: torch.Tensor) -> float:
    """p-value of a chi-square test of counts [latents, classes] against softmax(logits).

    The latents are drawn independently, so their statistics and degrees of freedom add up to
    one test.
    """
    expected = logits.double().softmax(-1).numpy() * DRAWS
    statistic = ((counts - expected) ** 2 / expected).sum()
    return stats.chi2.sf(statistic, counts.shape[0] * (counts.shape[1] - 1))


def test_expected_counts_are_large_enough_for_a_chi_square_test() -> None:
    assert (LOGITS.softmax(-1) * DRAWS).min() >= 5


def test_gumbel_max_draws_follow_softmax() -> None:
    counts = gumbel_counts(LOGITS)
    assert (counts.sum(-1) == DRAWS).all()
    pvalue = goodness_of_fit(counts, LOGITS)
    assert pvalue > ALPHA, pvalue


def test_gumbel_max_and_multinomial_draws_are_alike() -> None:
    """Two-sample chi-square (homogeneity) test against the old sampler, over all latents."""
    ours, theirs = gumbel_counts(LOGITS), multinomial_counts(LOGITS)
    tests = [stats.chi2_contingency(np.stack(pair)) for pair in zip(ours, theirs, strict=True)]
    statistic, dof = sum(t.statistic for t in tests), sum(t.dof for t in tests)
    pvalue = stats.chi2.sf(statistic, dof)
    assert pvalue > ALPHA, pvalue


def test_the_chi_square_test_notices_a_small_distortion() -> None:
    """Logits off by 10% (temperature 1.1) are rejected: a pass above means something."""
    counts = gumbel_counts(LOGITS)
    pvalue = goodness_of_fit(counts, LOGITS * 1.1)
    assert pvalue < 1e-6, pvalue


def test_gumbel_noise_is_standard_gumbel_in_float32() -> None:
    torch.manual_seed(0)
    noise = gumbel_noise((DRAWS,))
    assert noise.dtype == torch.float32
    assert stats.kstest(noise.numpy(), stats.gumbel_r.cdf).pvalue > ALPHA
    assert noise.mean().item() == pytest.approx(np.euler_gamma, abs=0.03)
    assert noise.var().item() == pytest.approx(math.pi**2 / 6, rel=0.05)


def test_given_noise_decides_the_draw() -> None:
    logits = torch.randn(5, 3, 6)
    noise = gumbel_noise(logits.shape)
    draw = sample_one_hot(logits, noise=noise).detach()
    assert torch.equal(draw.round().argmax(-1), (logits + noise).argmax(-1))
    mode = sample_one_hot(logits, sample=False).detach()
    assert torch.equal(mode.round().argmax(-1), logits.argmax(-1))


@pytest.mark.parametrize("sample", [True, False])
def test_straight_through_gradient_is_the_multinomial_samplers(sample: bool) -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 3, 6, generator=g, requires_grad=True)
    upstream = torch.randn(4, 3, 6, generator=g)
    draw = sample_one_hot(logits, sample)
    (draw * upstream).sum().backward()
    ours = logits.grad.clone()
    # The old sampler's output for the same classes: F.one_hot(index) + probs - sg(probs).
    logits.grad = None
    probs = logits.softmax(-1)
    index = draw.detach().round().argmax(-1)
    old = F.one_hot(index, 6).to(probs.dtype) + probs - probs.detach()
    (old * upstream).sum().backward()
    assert torch.equal(ours, logits.grad)
    # Which is the softmax Jacobian applied to the upstream gradient.
    with torch.no_grad():
        p = logits.softmax(-1)
        want = p * (upstream - (p * upstream).sum(-1, keepdim=True))
    torch.testing.assert_close(ours, want)
    # The forward value is the one-hot draw.
    torch.testing.assert_close(draw.detach(), F.one_hot(index, 6).float())


def test_bf16_logits_give_float32_draws() -> None:
    draw = sample_one_hot(LOGITS.bfloat16())
    assert draw.dtype == torch.float32
