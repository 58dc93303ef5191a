"""APVAgent: every variant trains, freezing, acting in a real environment, checkpoints, resume."""

from __future__ import annotations

import json
import math
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from apv_hub.agent import TRAINING_STATE_NAME, APVAgent, make_optimizers
from apv_hub.config import VARIANTS, AgentConfig
from apv_hub.optim import apply_gradients, flatten_optimizers, load_optimizers
from apv_hub.video_model import APVVideoModel
from apv_hub.weights import CheckpointError
from tests.agent_helpers import ACTION_DIM, changed, random_batch, snapshot


def tiny_agent(variant: str = "apv", **overrides) -> APVAgent:
    torch.manual_seed(7)
    config = AgentConfig.preset("tiny", variant, **overrides)
    video = APVVideoModel(config.video)
    return APVAgent.from_video_model(video, config, ACTION_DIM)


def assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert sa[key].dtype == sb[key].dtype and torch.equal(sa[key], sb[key]), key


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_each_variant_builds_and_trains_a_step(variant: str) -> None:
    agent = tiny_agent(variant)
    assert agent.config.variant() == variant
    assert (agent.world_model.af_rssm is not None) == agent.config.world_model.stacked
    intrinsic = agent.config.intrinsic
    assert (agent.bonus is not None) == (intrinsic.enabled and intrinsic.kind == "video")
    disagreement = intrinsic.enabled and intrinsic.kind == "disagreement"
    assert (agent.disagreement is not None) == disagreement == (variant == "viper")
    if variant == "dreamerv2":
        assert agent.world_model.af_rssm is None and agent.bonus is None
        assert agent.training_info["transferred"] == []
    optimizers = make_optimizers(agent)
    before = snapshot(agent)
    metrics = agent.update(random_batch(agent.config), optimizers)
    assert all(math.isfinite(v) for v in metrics.values()), metrics
    moved = changed(before, agent)
    for part in (
        "world_model.rssm.",
        "world_model.reward_head.",
        "behavior.actor.",
        "behavior.critic.",
    ):
        assert any(k.startswith(part) for k in moved), part
    if agent.bonus is not None:
        assert "bonus.queue" in moved and "bonus_mean" in metrics
    if agent.disagreement is not None:
        assert any(k.startswith("disagreement.heads.") for k in moved)
        assert "disagreement.norm_mag" in moved and metrics["imag_intrinsic_mean"] > 0
    assert agent.num_updates == 1


def test_freeze_holds_encoder_and_action_free_rssm() -> None:
    agent = tiny_agent(world_model={"freeze_pretrained_updates": 2})
    optimizers = make_optimizers(agent)
    start = snapshot(agent)
    for i in range(2):
        metrics = agent.update(random_batch(agent.config, seed=i), optimizers)
        assert metrics["pretrained_frozen"] == 1.0
    moved = changed(start, agent)
    assert not any(k.startswith(("world_model.encoder.", "world_model.af_rssm.")) for k in moved)
    assert any(k.startswith("world_model.rssm.") for k in moved)
    assert any(k.startswith("world_model.decoder.") for k in moved)
    metrics = agent.update(random_batch(agent.config, seed=5), optimizers)
    assert metrics["pretrained_frozen"] == 0.0
    moved = changed(start, agent)
    assert any(k.startswith("world_model.encoder.") for k in moved)
    assert any(k.startswith("world_model.af_rssm.") for k in moved)


def test_act_shapes_range_determinism_and_resets() -> None:
    agent = tiny_agent()
    frames = random_batch(agent.config, batch=5)["image"][:, 0]
    action, state = agent.act({"image": frames}, None, explore=True)
    assert action.shape == (5, ACTION_DIM) and action.abs().max() <= 1
    assert set(state) == {"deter", "stoch", "logits", "af_deter", "af_stoch", "af_logits", "action"}
    # explore=False with state_mean is deterministic given the observation and state.
    greedy1, s1 = agent.act({"image": frames}, state, explore=False, state_mean=True)
    greedy2, s2 = agent.act({"image": frames}, state, explore=False, state_mean=True)
    assert torch.equal(greedy1, greedy2) and torch.equal(s1["deter"], s2["deter"])
    assert torch.equal(s1["stoch"], s2["stoch"])
    # Without it the latent state is sampled, as the release evaluates.
    _, s3 = agent.act({"image": frames}, state, explore=False)
    _, s4 = agent.act({"image": frames}, state, explore=False)
    assert not torch.equal(s3["stoch"], s4["stoch"])
    # is_first restarts an environment from the initial state, whatever state is passed.
    first = torch.ones(5, dtype=torch.bool)
    fresh, _ = agent.act({"image": frames, "is_first": first}, None, False, state_mean=True)
    reset, _ = agent.act({"image": frames, "is_first": first}, s1, False, state_mean=True)
    torch.testing.assert_close(fresh, reset)
    with pytest.raises(ValueError, match="uint8"):
        agent.act({"image": frames.float()})


def test_real_environment_loop_then_update() -> None:
    dm_suite = pytest.importorskip("dm_control.suite")
    config = AgentConfig.preset("tiny", seq_len=6)
    torch.manual_seed(0)
    agent = APVAgent.from_video_model(APVVideoModel(config.video), config, action_dim=1)
    envs = [dm_suite.load("cartpole", "swingup", task_kwargs={"random": i}) for i in range(2)]
    spec = envs[0].action_spec()
    steps = {k: [] for k in ("image", "action", "reward", "is_first")}
    for env in envs:
        env.reset()
    state, action = None, torch.zeros(2, 1)
    for t in range(config.seq_len):
        frames = np.stack([env.physics.render(64, 64, camera_id=0) for env in envs])
        image = torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous()
        steps["image"].append(image)
        steps["action"].append(action)
        steps["is_first"].append(torch.full((2,), t == 0))
        action, state = agent.act({"image": image, "is_first": steps["is_first"][-1]}, state)
        assert np.all(action.numpy() >= spec.minimum) and np.all(action.numpy() <= spec.maximum)
        rewards = [env.step(a.numpy()).reward or 0.0 for env, a in zip(envs, action, strict=True)]
        steps["reward"].append(torch.tensor(rewards, dtype=torch.float32))
    batch = {k: torch.stack(v, 1) for k, v in steps.items()}
    batch["reward"] = torch.cat([torch.zeros(2, 1), batch["reward"][:, :-1]], 1)
    batch["is_last"] = batch["is_terminal"] = torch.zeros(2, config.seq_len, dtype=torch.bool)
    metrics = agent.update(batch, make_optimizers(agent))
    assert math.isfinite(metrics["model_loss"]) and math.isfinite(metrics["actor_loss"])


def test_save_load_round_trip_is_bit_identical(tmp_path: Path) -> None:
    agent = tiny_agent()
    optimizers = make_optimizers(agent)
    for i in range(2):
        agent.update(random_batch(agent.config, seed=i), optimizers)
    agent.save_pretrained(tmp_path / "agent")
    assert sorted(p.name for p in (tmp_path / "agent").iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
    ]
    loaded = APVAgent.from_pretrained(tmp_path / "agent")
    assert loaded.config == agent.config and loaded.action_dim == agent.action_dim
    assert_same_state(agent, loaded)
    assert loaded.num_updates == 2 and int(loaded.bonus.queue_count) > 0
    frames = random_batch(agent.config, batch=2)["image"][:, 0]
    torch.manual_seed(3)
    a1, _ = agent.act({"image": frames})
    torch.manual_seed(3)
    a2, _ = loaded.act({"image": frames})
    assert torch.equal(a1, a2)
    card = (tmp_path / "agent" / "README.md").read_text()
    assert "variant `apv`" in card and "copied: encoder, decoder, af_rssm" in card
    # A video-model checkpoint is not an agent, and says how to build one.
    APVVideoModel(agent.config.video).save_pretrained(tmp_path / "video")
    with pytest.raises(CheckpointError, match="from_video_model"):
        APVAgent.from_pretrained(tmp_path / "video")


def test_round_trip_through_local_hub(local_hub) -> None:
    agent = tiny_agent("dreamerv2")
    agent.update(random_batch(agent.config), make_optimizers(agent))
    repo_id = f"apv/agent-{uuid.uuid4().hex[:8]}"
    agent.push_to_hub(repo_id)
    loaded = APVAgent.from_pretrained(repo_id)
    assert loaded.config == agent.config
    assert_same_state(agent, loaded)
    assert loaded.world_model.af_rssm is None


def test_exact_resume_from_training_state(tmp_path: Path) -> None:
    agent = tiny_agent(behavior={"slow_target_update": 2})
    optimizers = make_optimizers(agent)
    batches = [random_batch(agent.config, seed=i) for i in range(5)]
    for batch in batches[:3]:
        agent.update(batch, optimizers)
    agent.save_pretrained(tmp_path / "ckpt")
    agent.save_training_state(tmp_path / "ckpt", optimizers)
    assert (tmp_path / "ckpt" / TRAINING_STATE_NAME).is_file()
    assert json.loads((tmp_path / "ckpt" / "training_state.json").read_text()) == {"updates": 3}
    for batch in batches[3:]:
        agent.update(batch, optimizers)

    resumed = APVAgent.from_pretrained(tmp_path / "ckpt")
    resumed_opts = make_optimizers(resumed)
    resumed.load_training_state(tmp_path / "ckpt", resumed_opts)
    for batch in batches[3:]:
        resumed.update(batch, resumed_opts)
    assert_same_state(agent, resumed)
    for name, opt in optimizers.items():
        theirs = resumed_opts[name].state_dict()["state"]
        for index, state in opt.state_dict()["state"].items():
            for key, value in state.items():
                assert torch.equal(value, theirs[index][key]), (name, index, key)
    # Training state saved at another update count is refused.
    with pytest.raises(CheckpointError, match="saved after 3 updates"):
        resumed.load_training_state(tmp_path / "ckpt", resumed_opts)


def test_update_through_accelerate_prepared_optimizers() -> None:
    accelerate = pytest.importorskip("accelerate")
    accelerator = accelerate.Accelerator(cpu=True)
    agent = tiny_agent()
    reference = tiny_agent()
    names = list(make_optimizers(agent))
    prepared = dict(zip(names, accelerator.prepare(*make_optimizers(agent).values()), strict=True))
    batch = random_batch(agent.config)
    torch.manual_seed(11)
    metrics = agent.update(batch, prepared, accelerator=accelerator)
    torch.manual_seed(11)
    expected = reference.update(batch, make_optimizers(reference))
    # Single process, fp32: the accelerate path computes exactly the plain update.
    assert metrics["model_loss"] == expected["model_loss"]
    assert_same_state(agent, reference)


def test_each_parameter_group_is_clipped_on_its_own() -> None:
    """The release clips its two world-model optimisers separately: a huge gradient in one
    group must not shrink the other's."""
    big, small = torch.nn.Parameter(torch.zeros(4)), torch.nn.Parameter(torch.zeros(4))
    optimizer = torch.optim.SGD([{"params": [big]}, {"params": [small]}], lr=1.0)
    loss = (big * 1000.0).sum() + (small * 0.5).sum()  # Gradient norms 2000 and 1.
    norm = apply_gradients(loss, optimizer, [big, small], clip=100.0)
    assert norm == pytest.approx(math.hypot(2000.0, 1.0))
    torch.testing.assert_close(big.detach(), torch.full((4,), -50.0))  # Clipped to norm 100.
    torch.testing.assert_close(small.detach(), torch.full((4,), -0.5))  # Untouched.


def test_world_model_optimiser_has_the_release_groups() -> None:
    agent = tiny_agent()
    groups = make_optimizers(agent)["model"].param_groups
    pretrained = agent.world_model.pretrained_parameters()
    assert len(groups) == 2 and [id(p) for p in groups[0]["params"]] == [id(p) for p in pretrained]
    rest = {id(p) for p in groups[1]["params"]}
    for module in (agent.world_model.rssm, agent.world_model.decoder):
        assert {id(p) for p in module.parameters()} <= rest
    # The groups in the world model's own order: optimisers saved with one group still load.
    assert [id(p) for g in groups for p in g["params"]] == [
        id(p) for p in agent.world_model.parameters()
    ]
    assert len(make_optimizers(tiny_agent("dreamerv2"))["model"].param_groups) == 1


def test_freeze_sets_lr_zero_while_adam_moments_accumulate() -> None:
    agent = tiny_agent(world_model={"freeze_pretrained_updates": 2})
    optimizers = make_optimizers(agent)
    encoder = next(agent.world_model.encoder.parameters())
    before = encoder.detach().clone()
    for i in range(2):
        agent.update(random_batch(agent.config, seed=i), optimizers)
        assert optimizers["model"].param_groups[0]["lr"] == 0.0
    assert torch.equal(encoder.detach(), before)
    state = optimizers["model"].state[encoder]
    assert int(state["step"]) == 2 and state["exp_avg"].abs().sum() > 0
    agent.update(random_batch(agent.config, seed=5), optimizers)
    assert optimizers["model"].param_groups[0]["lr"] == agent.config.world_model.lr
    assert not torch.equal(encoder.detach(), before)


def test_optimiser_saved_with_one_world_model_group_loads_into_two() -> None:
    agent = tiny_agent()
    wm = agent.config.world_model
    old = torch.optim.Adam(agent.world_model.parameters(), lr=wm.lr, eps=wm.adam_eps)
    loss = sum(p.float().square().sum() for p in agent.world_model.parameters())
    apply_gradients(loss, old, agent.world_model.parameters(), clip=100.0)
    tensors, meta = flatten_optimizers({"model": old})
    new = {"model": make_optimizers(agent)["model"]}
    load_optimizers(new, tensors, meta, source="old checkpoint")
    assert [len(g["params"]) for g in new["model"].param_groups][0] > 0
    for p in agent.world_model.parameters():
        torch.testing.assert_close(new["model"].state[p]["exp_avg"], old.state[p]["exp_avg"])
