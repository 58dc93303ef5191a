"""Shapes, the RSSM's reset and gradient paths, and learning on a synthetic video."""

import pytest
import torch

from apv_hub import APVConfig, APVVideoModel
from apv_hub.optim import apply_gradients, make_adam
from apv_hub.synthetic import moving_squares


def frames(batch: int, length: int, size: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, length, 3, size, size), dtype=torch.uint8, generator=g)


@pytest.mark.parametrize(
    "preset, batch, length", [("tiny", 3, 4), ("small", 2, 3), ("paper", 1, 2)]
)
def test_forward_backward_shapes(preset, batch, length):
    model = APVVideoModel(APVConfig.preset(preset))
    cfg = model.config
    video = frames(batch, length)
    loss, metrics = model.loss(video)
    loss.backward()
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert {"image_nll", "kl", "kl_loss", "image_mse"} <= set(metrics)
    assert all(p.grad is not None for p in model.parameters())
    assert model.features(video).shape == (batch, length, cfg.stoch * cfg.classes + cfg.deter)
    pred = model.predict(video[:, :1], horizon=3)
    assert pred.shape == (batch, 3, 3, 64, 64) and pred.dtype == torch.uint8


def test_paper_parameter_counts_match_the_reference():
    # REFERENCE section 2: encoder 1.55M, RSSM 13.2M, decoder 11.2M, total about 25.9M.
    counts = APVVideoModel(APVConfig.preset("paper")).num_parameters()
    assert counts["encoder"] == pytest.approx(1.55e6, rel=0.01)
    assert counts["decoder"] == pytest.approx(11.2e6, rel=0.01)
    assert counts["rssm"] == pytest.approx(13.2e6, rel=0.01)
    assert counts["total"] == pytest.approx(25.9e6, rel=0.01)
    assert APVVideoModel(APVConfig.preset("paper")).embed_dim == 1536


def test_bad_frames_are_refused_clearly():
    model = APVVideoModel(APVConfig.preset("tiny"))
    with pytest.raises(ValueError, match=r"expected frames \[B, T, 3, 64, 64\]"):
        model.loss(frames(1, 2, size=32))
    with pytest.raises(TypeError, match="uint8"):
        model.loss(frames(1, 2).float())
    with pytest.raises(ValueError, match="encoder_kernels .* shrink 32x32"):
        APVVideoModel(APVConfig.preset("tiny", image_size=32))
    with pytest.raises(ValueError, match="decoder_kernels .* produce 64x64 frames, not .* 80"):
        APVVideoModel(APVConfig.preset("tiny", image_size=80))


def test_is_first_resets_the_recurrent_state():
    torch.manual_seed(0)
    model = APVVideoModel(APVConfig.preset("tiny"))
    video = frames(2, 6)
    is_first = torch.zeros(2, 6, dtype=torch.bool)
    is_first[:, 0] = is_first[:, 3] = True
    _, post, _ = model.observe(video, is_first, sample=False)
    _, fresh, _ = model.observe(video[:, 3:], sample=False)
    torch.testing.assert_close(post["deter"][:, 3:], fresh["deter"], rtol=0, atol=1e-6)
    torch.testing.assert_close(post["logits"][:, 3:], fresh["logits"], rtol=0, atol=1e-6)
    # Without the reset, step 3 carries the history of steps 0-2 and differs.
    _, carried, _ = model.observe(video, sample=False)
    assert not torch.allclose(carried["deter"][:, 3], fresh["deter"][:, 0], atol=1e-4)


def test_gradients_reach_the_encoder_through_the_straight_through_sampler():
    # With one step from the zero state, the encoder reaches the image loss only through the
    # sampled latents, so a zero gradient would mean the sampler blocks it.
    model = APVVideoModel(APVConfig.preset("tiny", kl_scale=0.0))
    loss, _ = model.loss(frames(2, 1))
    loss.backward()
    grad = model.encoder.net[0].weight.grad
    assert grad is not None and grad.abs().sum() > 0


def test_learns_to_predict_a_moving_square_open_loop():
    torch.manual_seed(0)
    train = moving_squares(512, 15, square=20, seed=0)
    test = moving_squares(32, 15, square=20, seed=1)
    cfg = APVConfig.preset("tiny", kl_scale=1.0, lr=1e-3)
    model = APVVideoModel(cfg).train()
    opt = make_adam(model.parameters(), cfg.lr, cfg.adam_eps, cfg.weight_decay)
    g = torch.Generator().manual_seed(0)
    for _ in range(400):
        loss, _ = model.loss(train[torch.randint(0, len(train), (16,), generator=g)])
        apply_gradients(loss, opt, model.parameters(), cfg.grad_clip)

    context, truth = test[:, :5], test[:, 5:].float()

    def mse(pred: torch.Tensor) -> float:
        return ((pred.float() - truth) / 255).pow(2).mean().item()

    predicted = mse(model.predict(context, horizon=10))
    # Static guesses: a model that ignores motion can do no better than the best of these.
    baselines = {
        "repeat last frame": mse(context[:, -1:].expand_as(truth)),
        "mean context frame": mse(context.float().mean(1, keepdim=True).expand_as(truth)),
        "empty background": mse(torch.zeros_like(truth)),
    }
    best = min(baselines.values())
    assert predicted < 0.8 * best, f"prediction MSE {predicted:.4f} vs baselines {baselines}"
