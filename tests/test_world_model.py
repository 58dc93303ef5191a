"""The stacked world model: pre-trained weights really used, variants, loss, errors."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import torch

from apv_hub.config import AgentConfig, ConfigError, WorldModelConfig
from apv_hub.video_model import APVVideoModel
from apv_hub.weights import CheckpointError
from apv_hub.world_model import APVWorldModel
from tests.agent_helpers import ACTION_DIM, random_batch

TINY = AgentConfig.preset("tiny")


@pytest.fixture
def pretrained(tmp_path: Path) -> tuple[APVVideoModel, Path]:
    torch.manual_seed(123)
    video = APVVideoModel(TINY.video)
    video.save_pretrained(tmp_path / "video")
    return video, tmp_path / "video"


def features(model: APVWorldModel, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(af_feat, feat) with latent modes, so that they depend on the weights only."""
    with torch.no_grad():
        obs = model.observe(batch["image"], batch["action"], batch["is_first"], sample=False)
    return obs.af_feat, obs.feat


def test_pretrained_weights_are_the_ones_used(
    pretrained: tuple[APVVideoModel, Path], tmp_path: Path
) -> None:
    video, folder = pretrained
    batch = random_batch(TINY, batch=2)
    torch.manual_seed(0)
    model = APVWorldModel.from_video_model(str(folder), TINY.world_model, ACTION_DIM)
    for name, tensor in video.encoder.state_dict().items():
        assert torch.equal(model.encoder.state_dict()[name], tensor)
    for name, tensor in video.rssm.state_dict().items():
        assert torch.equal(model.af_rssm.state_dict()[name], tensor)
    # Filtering with the world model's action-free part gives the video model's features.
    with torch.no_grad():
        _, post, _ = video.observe(batch["image"], batch["is_first"], sample=False)
    af_feat, feat = features(model, batch)
    torch.testing.assert_close(af_feat, video.rssm.get_feat(post))

    # Change one pre-trained weight in the checkpoint: the features follow it.
    with torch.no_grad():
        video.encoder.net[0].weight[0, 0, 0, 0] += 0.5
    video.save_pretrained(tmp_path / "changed")
    torch.manual_seed(0)
    changed = APVWorldModel.from_video_model(str(tmp_path / "changed"), TINY.world_model, 3)
    af_feat2, feat2 = features(changed, batch)
    assert not torch.allclose(af_feat, af_feat2)
    assert not torch.allclose(feat, feat2)
    # The action-conditional RSSM is fresh: the same seed gives the same weights whatever the
    # checkpoint holds, and none of them is a checkpoint tensor.
    for name, tensor in model.rssm.state_dict().items():
        assert torch.equal(changed.rssm.state_dict()[name], tensor)
    ckpt = list(video.state_dict().values())
    for tensor in model.rssm.state_dict().values():
        if tensor.unique().numel() > 1:  # layer-norm ones and zeros are alike everywhere
            assert not any(t.shape == tensor.shape and torch.equal(t, tensor) for t in ckpt)


def test_decoder_initialised_from_pretrained(pretrained: tuple[APVVideoModel, Path]) -> None:
    video, _ = pretrained
    same = APVWorldModel.from_video_model(video, TINY.world_model, ACTION_DIM)
    for name, tensor in video.decoder.state_dict().items():
        assert torch.equal(same.decoder.state_dict()[name], tensor)
    # Another action-conditional size: the convolutions and stem bias carry over, the stem
    # weight (a different shape) stays fresh.
    other = APVWorldModel.from_video_model(
        video, WorldModelConfig(deter=48, head_units=32, head_layers=2), ACTION_DIM
    )
    assert other.decoder.stem.weight.shape[1] == other.feat_dim != video.feat_dim
    for name, tensor in video.decoder.net.state_dict().items():
        assert torch.equal(other.decoder.net.state_dict()[name], tensor)
    assert torch.equal(other.decoder.stem.bias, video.decoder.stem.bias)


def test_dmc_input_concatenates_embedding(pretrained: tuple[APVVideoModel, Path]) -> None:
    video, _ = pretrained
    cfg = WorldModelConfig(ac_input="embed_af_feat", head_units=32, head_layers=2)
    model = APVWorldModel.from_video_model(video, cfg, ACTION_DIM)
    assert model.rssm.embed_dim == video.embed_dim + video.feat_dim
    batch = random_batch(TINY, batch=2)
    loss, obs, _ = model.loss(batch)
    assert obs.feat.shape == (2, TINY.seq_len, model.feat_dim) and torch.isfinite(loss)


def test_naive_finetune_starts_as_the_action_free_model(
    pretrained: tuple[APVVideoModel, Path],
) -> None:
    video, _ = pretrained
    cfg = AgentConfig.preset("tiny", "naive_finetune").world_model
    model = APVWorldModel.from_video_model(video, cfg, ACTION_DIM)
    assert model.af_rssm is None
    stoch_dim = video.rssm.stoch * video.rssm.classes
    own = model.rssm.state_dict()
    assert torch.equal(own["img_in.0.weight"][:, :stoch_dim], video.rssm.img_in[0].weight)
    # With zero actions (what pre-training masked them to), it filters like the video model.
    batch = random_batch(TINY, batch=2)
    batch["action"].zero_()
    with torch.no_grad():
        _, post, _ = video.observe(batch["image"], batch["is_first"], sample=False)
    _, feat = features(model, batch)
    torch.testing.assert_close(feat, video.rssm.get_feat(post))
    # The action columns are fresh, so real actions change the result.
    batch["action"].uniform_(-1, 1)
    _, feat_acted = features(model, batch)
    assert not torch.allclose(feat, feat_acted)


def test_dreamerv2_has_no_action_free_model() -> None:
    cfg = AgentConfig.preset("tiny", "dreamerv2")
    model = APVWorldModel(cfg.video, cfg.world_model, ACTION_DIM)
    assert model.af_rssm is None and model.af_feat_dim == 0
    assert not any(name.startswith("af_rssm") for name in model.state_dict())
    assert model.rssm.embed_dim == model.encoder.embed_dim
    loss, obs, metrics = model.loss(random_batch(cfg, batch=2))
    assert obs.af_feat is None and "af_kl" not in metrics and torch.isfinite(loss)
    with pytest.raises(ConfigError, match="intrinsic bonus"):
        AgentConfig.preset("tiny", "dreamerv2", intrinsic={"enabled": True})


def test_loss_is_the_weighted_sum_and_af_rssm_learns_through_af_feat() -> None:
    batch = random_batch(TINY, batch=2)

    def run(af_kl_scale: float) -> tuple[torch.Tensor, dict, APVWorldModel]:
        torch.manual_seed(0)
        cfg = WorldModelConfig(head_units=32, head_layers=2, af_kl_scale=af_kl_scale)
        model = APVWorldModel(TINY.video, cfg, ACTION_DIM)
        torch.manual_seed(1)
        loss, _, metrics = model.loss(batch)
        return loss, metrics, model

    loss0, m0, model = run(0.0)
    parts = float(m0["image_loss"] + m0["kl_loss"] + m0["reward_loss"])
    assert loss0.item() == pytest.approx(parts, rel=1e-6)
    assert "af_kl_loss" not in m0
    # At action-free KL scale 0, the action-free RSSM still learns through af_feat; only its
    # prior head (img_out), which af_feat does not read, gets no gradient.
    loss0.backward()
    for name, p in model.af_rssm.named_parameters():
        reached = p.grad is not None and p.grad.abs().sum() > 0
        assert reached == (not name.startswith("img_out")), name
    loss1, m1, _ = run(1.0)
    assert loss1.item() == pytest.approx(loss0.item() + float(m1["af_kl_loss"]), rel=1e-6)


def test_bonus_shortens_the_reward_target() -> None:
    from apv_hub.intrinsic import VideoIntrinsicBonus

    torch.manual_seed(0)
    model = APVWorldModel(TINY.video, TINY.world_model, ACTION_DIM)
    bonus = VideoIntrinsicBonus(model.af_feat_dim, TINY.intrinsic)
    batch = random_batch(TINY, batch=2)
    _, _, metrics = model.loss(batch, bonus)
    metrics = {k: float(v) for k, v in metrics.items()}
    steps = TINY.seq_len - TINY.intrinsic.window + 1
    assert int(bonus.queue_count) == 2 * steps
    # The target mean includes the (positive) bonus on the first T - window + 1 steps.
    extrinsic = batch["reward"][:, :steps].mean().item()
    assert metrics["reward_target_mean"] > extrinsic
    assert metrics["reward_target_mean"] == pytest.approx(
        extrinsic + TINY.intrinsic.beta * metrics["bonus_mean"], rel=1e-5
    )


def test_bad_batches_are_named() -> None:
    model = APVWorldModel(TINY.video, TINY.world_model, ACTION_DIM)
    batch = random_batch(TINY, batch=2)
    with pytest.raises(KeyError, match="reward"):
        model.loss({k: v for k, v in batch.items() if k != "reward"})
    with pytest.raises(TypeError, match="uint8"):
        model.loss({**batch, "image": batch["image"].float()})
    with pytest.raises(ValueError, match="action"):
        model.loss({**batch, "action": batch["action"][..., :2]})
    with pytest.raises(TypeError, match="is_first"):
        model.loss({**batch, "is_first": batch["is_first"].float()})


def test_mismatched_architecture_is_refused(pretrained: tuple[APVVideoModel, Path]) -> None:
    video, _ = pretrained
    model = APVWorldModel(AgentConfig.preset("small").video, TINY.world_model, ACTION_DIM)
    with pytest.raises(CheckpointError, match="APVConfig differs"):
        model.load_pretrained(video)
    cfg = AgentConfig.preset("tiny", "naive_finetune", world_model={"deter": 48}).world_model
    with pytest.raises(ConfigError, match="naive fine-tuning needs"):
        APVWorldModel.from_video_model(video, cfg, ACTION_DIM)


def test_built_from_hub_repo_id_in_one_call(local_hub, pretrained) -> None:
    video, _ = pretrained
    repo_id = f"apv/wm-video-{uuid.uuid4().hex[:8]}"
    video.push_to_hub(repo_id)
    model = APVWorldModel.from_video_model(repo_id, TINY.world_model, ACTION_DIM)
    for name, tensor in video.encoder.state_dict().items():
        assert torch.equal(model.encoder.state_dict()[name], tensor)
    with pytest.raises(CheckpointError, match="no Hub repository"):
        APVWorldModel.from_video_model("apv/does-not-exist", TINY.world_model, ACTION_DIM)
