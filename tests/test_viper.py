"""VIPER: configs, the tokenizer on real frames, the prior, the scoring rules, checkpoints, and a
reward learned from real Meta-world expert videos that ranks episodes like the task reward."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from apv_hub.config import ConfigError
from apv_hub.data import ClipDataset, sample_corpus_path
from apv_hub.viper import (
    VIPERConfig,
    VIPERRewardModel,
    VQTokenizer,
    window_indices,
)
from apv_hub.viper.tokenizer import codebook_stats, preprocess
from apv_hub.weights import CheckpointError


def random_tokens(b: int, t: int, grid: int = 4, codes: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, codes, (b, t, grid, grid), generator=g)


def random_frames(b: int, t: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, t, 3, size, size), dtype=torch.uint8, generator=g)


def sharpened(model: VIPERRewardModel, scale: float = 0.3, seed: int = 0) -> VIPERRewardModel:
    """Perturb the prior so that its predictions depend strongly on the context (a freshly
    initialised GPT-2 predicts nearly uniform codes whatever it sees, which would let a wrong
    window go unnoticed)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.prior.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return model.eval()


def tiny(**overrides) -> VIPERRewardModel:
    torch.manual_seed(0)
    return VIPERRewardModel(VIPERConfig.preset("tiny", **overrides))


# Configs ---------------------------------------------------------------------------------------


def gpt2_parameters(width: int, mlp: int, layers: int, vocab: int, positions: int) -> int:
    """GPT-2 parameter count derived from its blocks: token and position embeddings; per layer
    two LayerNorms, qkv and output projections, a two-layer MLP; final LayerNorm; untied head."""
    per_layer = 2 * 2 * width + (width * 3 * width + 3 * width) + (width * width + width)
    per_layer += (width * mlp + mlp) + (mlp * width + width)
    return vocab * width + positions * width + layers * per_layer + 2 * width + width * vocab


@pytest.mark.parametrize(
    "preset, grid, codes, frames, skip, classes, width, mlp",
    [
        ("tiny", 4, 64, 4, 1, 0, 64, 256),
        ("dmc", 8, 256, 16, 1, 16, 256, 1024),
        ("atari", 16, 1024, 4, 4, 0, 512, 2048),
    ],
)
def test_presets_build_the_papers_models(preset, grid, codes, frames, skip, classes, width, mlp):
    model = VIPERRewardModel(VIPERConfig.preset(preset))
    cfg = model.config
    assert (cfg.tokenizer.token_grid, cfg.tokenizer.codebook_size) == (grid, codes)
    assert (cfg.prior.frames, cfg.prior.frame_skip, cfg.prior.num_classes) == (
        frames,
        skip,
        classes,
    )
    positions = 1 + frames * grid * grid
    gpt = model.prior.gpt.config
    assert (gpt.n_positions, gpt.activation_function, gpt.bos_token_id) == (
        positions,
        "quick_gelu",
        None,
    )
    vocab = codes + max(classes, 1)
    expected = gpt2_parameters(width, mlp, cfg.prior.layers, vocab, positions)
    assert model.num_parameters()["prior"] == expected


def test_config_round_trip_and_errors_name_field_and_value(tmp_path):
    cfg = VIPERConfig.preset("dmc", prior={"frame_skip": 2}, likelihood="joint")
    assert cfg.prior.frame_skip == 2 and cfg.prior.frames == 16 and cfg.context_frames == 16
    cfg.save(tmp_path / "c.json")
    assert VIPERConfig.load(tmp_path / "c.json") == cfg
    assert VIPERConfig.from_dict(cfg.to_dict(), complete=True) == cfg

    with pytest.raises(ConfigError, match=r"TokenizerConfig.image_size .* got 60"):
        VIPERConfig.preset("dmc", tokenizer={"image_size": 60})
    with pytest.raises(ConfigError, match=r"VIPERConfig.likelihood .* got 'mean'"):
        VIPERConfig.preset("tiny", likelihood="mean")
    with pytest.raises(ConfigError, match=r"VIPERConfig.context_frames .* got 5"):
        VIPERConfig.preset("tiny", context_frames=5)
    with pytest.raises(ConfigError, match=r"PriorConfig.width must be divisible .* got 65"):
        VIPERConfig.preset("tiny", prior={"width": 65})
    with pytest.raises(ConfigError, match=r"unknown PriorConfig field\(s\) prior\.depth"):
        VIPERConfig.preset("tiny", prior={"depth": 3})
    data = cfg.to_dict()
    del data["tokenizer"]["commitment"]
    with pytest.raises(
        ConfigError, match=r"missing TokenizerConfig field\(s\) tokenizer\.commitment"
    ):
        VIPERConfig.from_dict(data, complete=True)
    with pytest.raises(ConfigError, match="unknown VIPERConfig preset 'big'"):
        VIPERConfig.preset("big")


# Tokenizer -------------------------------------------------------------------------------------


def sample_frames() -> tuple[torch.Tensor, torch.Tensor]:
    """Frames of the shipped Meta-world corpus at 32x32 -> (train [80, 3, 32, 32], held out
    [2, 8, 3, 32, 32]): clips of 8 frames, every 4th frame, the last two clips held out."""
    clips = ClipDataset(sample_corpus_path(), length=8, stride=4, size=32, seed=0, num_clips=12)
    frames = torch.stack([clips[i]["frames"] for i in range(12)])
    return frames[:10].flatten(0, 1), frames[10:]


def train_tokenizer(tokenizer: VQTokenizer, frames: torch.Tensor, steps: int) -> None:
    """Adam on tokenizer.loss over random batches of frames [N, C, H, W], with dead-code restart
    after every step (a no-op when the config disables it)."""
    opt = torch.optim.Adam(tokenizer.parameters(), lr=tokenizer.config.lr)
    g = torch.Generator().manual_seed(1)
    tokenizer.train()
    for _ in range(steps):
        idx = torch.randint(len(frames), (tokenizer.config.batch_size,), generator=g)
        loss, _ = tokenizer.loss(frames[idx][None])
        opt.zero_grad()
        loss.backward()
        opt.step()
        tokenizer.restart_dead_codes(generator=g)
    tokenizer.eval()


def held_out_quality(tokenizer: VQTokenizer, held: torch.Tensor) -> tuple[float, float]:
    """(mean absolute reconstruction error in [0, 1], fraction of the codebook used) on held."""
    l1 = (tokenizer.reconstruct(held).float() - held.float()).abs().mean().item() / 255
    usage = codebook_stats(tokenizer.encode(held), tokenizer.codebook_size)["usage"].item()
    return l1, usage


def test_tokenizer_learns_real_frames_and_kmeans_restart_keep_the_codebook_in_use():
    train, held = sample_frames()
    results = {}
    for name, overrides in {
        "original": {"kmeans_iters": 0, "dead_code_steps": 0},
        "kmeans+restart": {},
    }.items():
        torch.manual_seed(0)
        tokenizer = VQTokenizer(VIPERConfig.preset("tiny", tokenizer=overrides).tokenizer)
        if tokenizer.config.kmeans_iters:
            assert not tokenizer.codebook_initialized
            stats = tokenizer.init_codebook(
                train[None, :64], generator=torch.Generator().manual_seed(0)
            )
            assert tokenizer.codebook_initialized and stats["usage"] > 0.8
        before = held_out_quality(tokenizer.eval(), held)
        train_tokenizer(tokenizer, train, steps=30)
        results[name] = (before, held_out_quality(tokenizer, held))
    print("held-out (l1, usage) before -> after 30 steps:", results)
    (l1_before, _), (l1_after, usage) = results["kmeans+restart"]
    assert l1_after < 0.5 * l1_before
    # The original's uniform init in [-1/K, 1/K] leaves most codes unused; k-means + restart
    # keep at least a third of the 64 codes in use on frames the tokenizer never saw.
    assert usage >= 1 / 3
    assert results["original"][1][1] < usage - 0.15


def test_tokenizer_encode_decode_shapes_and_independence_of_frames():
    model = tiny()
    tokenizer = model.tokenizer.eval()
    frames = random_frames(2, 3)
    tokenizer.init_codebook(frames)
    tokens = tokenizer.encode(frames)
    assert tokens.shape == (2, 3, 4, 4) and tokens.dtype == torch.long
    assert tokens.min() >= 0 and tokens.max() < 64
    # A frame's tokens do not depend on the other frames of the batch, nor on the pass size.
    assert torch.equal(tokenizer.encode(frames[1:, 2:]), tokens[1:, 2:])
    assert torch.equal(tokenizer.encode(frames, batch_size=4), tokens)
    decoded = tokenizer.decode(tokens)
    assert decoded.shape == frames.shape and decoded.dtype == torch.uint8
    with pytest.raises(ValueError, match=r"expected frames \[B, T, 3, 32, 32\]"):
        tokenizer.encode(random_frames(1, 2, size=64))
    with pytest.raises(TypeError, match="uint8"):
        tokenizer.encode(frames.float())


def test_dead_codes_are_moved_onto_recent_encoder_outputs():
    tokenizer = VQTokenizer(VIPERConfig.preset("tiny").tokenizer)
    frames = random_frames(1, 4)
    tokenizer.train()
    tokenizer.loss(frames)
    q = tokenizer.quantizer
    used = tokenizer.encode(frames).unique()
    q.idle_steps.fill_(tokenizer.config.dead_code_steps)
    q.idle_steps[used] = 0
    dead = q.idle_steps > 0
    before = q.codebook.detach().clone()
    moved = tokenizer.restart_dead_codes(generator=torch.Generator().manual_seed(0))
    assert moved == int(dead.sum()) > 0
    assert torch.equal(q.codebook[~dead], before[~dead])
    # Each moved code now sits exactly on one of the latest batch's encoder outputs.
    outputs = tokenizer.encode_vectors(preprocess(frames[0])).permute(0, 2, 3, 1)
    outputs = outputs.reshape(-1, q.dim)
    gap = (q.codebook[dead].detach()[:, None] - outputs.detach()[None]).abs().amax(-1)
    assert gap.min(1).values.max() < 1e-6
    assert (q.idle_steps == 0).all()


def test_gan_option_adds_a_discriminator_and_its_losses():
    cfg = VIPERConfig.preset("tiny", tokenizer={"gan_weight": 0.1, "disc_channels": 8})
    tokenizer = VQTokenizer(cfg.tokenizer)
    frames = random_frames(1, 2)
    loss, metrics = tokenizer.loss(frames)
    loss.backward()
    assert "gan_g" in metrics and all(
        p.grad is not None for p in tokenizer.discriminator.parameters()
    )
    disc_ids = {id(p) for p in tokenizer.discriminator.parameters()}
    assert not disc_ids & {id(p) for p in tokenizer.autoencoder_parameters()}
    tokenizer.zero_grad()
    d_loss, d_metrics = tokenizer.discriminator_loss(frames)
    d_loss.backward()
    assert torch.isfinite(d_loss) and tokenizer.encoder.net[0].weight.grad is None
    with pytest.raises(RuntimeError, match="no discriminator"):
        VQTokenizer(VIPERConfig.preset("tiny").tokenizer).discriminator_loss(frames)


# Prior -----------------------------------------------------------------------------------------


def test_prior_head_on_the_last_frames_equals_the_full_pass():
    prior = sharpened(tiny()).prior
    tokens = random_tokens(3, 4)
    full = prior.token_log_probs(tokens)
    assert full.shape == (3, 4, 4, 4) and (full <= 0).all()
    torch.testing.assert_close(prior.token_log_probs(tokens, last_frames=1), full[:, -1:])
    torch.testing.assert_close(
        prior.frame_log_probs(tokens, last_frames=2), full[:, 2:].sum((2, 3))
    )
    # The loss is the mean negative log-likelihood per token of the same distribution.
    loss, metrics = prior.loss(tokens)
    torch.testing.assert_close(loss, -full.mean())
    assert metrics["bits_per_token"] == pytest.approx(loss.item() / math.log(2))


def test_cached_sampling_matches_recomputing_the_prefix_for_every_token():
    prior = sharpened(tiny()).prior
    context = random_tokens(2, 2)
    # 5 frames from 2 of context: the 4-frame window fills up, then slides (cache re-primed).
    cached = prior.sample(context, 5, generator=torch.Generator().manual_seed(3))
    plain = prior.sample(context, 5, generator=torch.Generator().manual_seed(3), use_cache=False)
    assert cached.shape == (2, 5, 4, 4) and cached.dtype == torch.long
    assert torch.equal(cached, plain)
    assert not torch.equal(
        cached, prior.sample(context, 5, generator=torch.Generator().manual_seed(4))
    )
    greedy = prior.sample(context, 1, top_k=1)
    assert torch.equal(greedy, prior.sample(context, 1, top_k=1))
    assert prior.training is False


def test_class_conditional_prior_needs_and_uses_the_class():
    model = sharpened(tiny(prior={"num_classes": 3}, class_names=["reach", "push", "pick"]))
    tokens = random_tokens(2, 4)
    a = model.score_tokens(tokens, cls="push")
    assert torch.equal(a, model.score_tokens(tokens, cls=torch.tensor([1, 1])))
    assert torch.equal(a, model.score_tokens(tokens, cls=[1, "push"]))
    assert not torch.allclose(a, model.score_tokens(tokens, cls="reach"))
    with pytest.raises(ValueError, match="class-conditional"):
        model.score_tokens(tokens)
    with pytest.raises(ValueError, match="unknown task class 'door'"):
        model.score_tokens(tokens, cls="door")
    with pytest.raises(ValueError, match=r"class ids in \[0, 3\)"):
        model.score_tokens(tokens, cls=3)
    with pytest.raises(ValueError, match="unconditional"):
        tiny().score_tokens(tokens, cls=0)


# Scoring ---------------------------------------------------------------------------------------


def test_window_indices_derived_by_hand():
    # 3 frames a window, 2 steps apart; one row, a second episode starts at t = 5.
    is_first = torch.tensor([[True, False, False, False, False, True, False, False]])
    index, length = window_indices(is_first, frames=3, skip=2)
    by_hand = [[0], [1], [0, 2], [1, 3], [0, 2, 4], [5], [6], [5, 7]]
    assert length[0].tolist() == [len(w) for w in by_hand]
    assert [index[0, t, : len(w)].tolist() for t, w in enumerate(by_hand)] == by_hand
    # Longer than a window: step 9 of one episode sees 5, 7, 9.
    index, length = window_indices(torch.zeros(1, 10, dtype=torch.bool), frames=3, skip=2)
    assert index[0, 9].tolist() == [5, 7, 9] and length[0, 9] == 3


@pytest.mark.parametrize("likelihood", ["conditional", "joint"])
def test_rewards_are_the_prior_terms_of_hand_derived_windows(likelihood):
    model = sharpened(tiny(prior={"frames": 3, "frame_skip": 2}, likelihood=likelihood))
    tokens = random_tokens(1, 8)
    is_first = torch.tensor([[True, False, False, False, False, True, False, False]])
    rewards = model.score_tokens(tokens, is_first=is_first)
    assert rewards.shape == (1, 8) and torch.isfinite(rewards).all()
    by_hand = [[0], [1], [0, 2], [1, 3], [0, 2, 4], [5], [6], [5, 7]]
    for t, window in enumerate(by_hand):
        terms = model.prior.frame_log_probs(tokens[:, window])[0]
        expected = terms[-1] if likelihood == "conditional" else terms.sum() * 3 / len(window)
        assert rewards[0, t].item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-4), t
    # The first frame of an episode gets its unconditional likelihood (rescaled to 3 frames for
    # the joint); a wrong window (one step off) would give a clearly different value.
    first = model.prior.frame_log_probs(tokens[:, [5]])[0, 0] * (3 if likelihood == "joint" else 1)
    assert rewards[0, 5].item() == pytest.approx(first.item(), rel=1e-5)
    shifted = model.prior.frame_log_probs(tokens[:, [1, 3, 5]])[0]
    shifted = shifted[-1] if likelihood == "conditional" else shifted.sum()
    assert abs(shifted.item() - rewards[0, 5].item()) > 1.0


@pytest.mark.parametrize("likelihood", ["conditional", "joint"])
def test_shared_prefix_scoring_matches_one_pass_per_window(likelihood):
    model = sharpened(tiny(prior={"frames": 4, "frame_skip": 2}, likelihood=likelihood))
    tokens = random_tokens(3, 13)
    is_first = torch.zeros(3, 13, dtype=torch.bool)
    is_first[1, 6] = is_first[2, 11] = True
    shared = model.score_tokens(tokens, is_first=is_first)
    plain = model.score_tokens(tokens, is_first=is_first, share_prefixes=False)
    torch.testing.assert_close(shared, plain, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("share_prefixes", [True, False])
def test_context_steps_are_seen_but_not_scored(share_prefixes):
    """``context=k``: the first k steps are only context (NaN), the others score as without it;
    episode starts inside the context and after it are respected."""
    model = sharpened(tiny(prior={"frames": 4, "frame_skip": 2}, likelihood="joint"))
    tokens = random_tokens(3, 14)
    is_first = torch.zeros(3, 14, dtype=torch.bool)
    is_first[0, 3] = is_first[1, 9] = is_first[2, 6] = True
    full = model.score_tokens(tokens, is_first=is_first, share_prefixes=share_prefixes)
    part = model.score_tokens(tokens, is_first=is_first, share_prefixes=share_prefixes, context=6)
    assert part[:, :6].isnan().all()
    torch.testing.assert_close(part[:, 6:], full[:, 6:], rtol=1e-5, atol=1e-4)


def test_rewards_are_causal():
    model = sharpened(tiny(prior={"frame_skip": 2}))
    frames = random_frames(2, 12)
    model.tokenizer.init_codebook(frames)
    rewards = model.score(frames)
    changed = frames.clone()
    changed[:, 7:] = random_frames(2, 5, seed=9)
    after = model.score(changed)
    torch.testing.assert_close(after[:, :7], rewards[:, :7], rtol=0, atol=1e-5)
    assert (after[:, 7:] - rewards[:, 7:]).abs().min() > 1e-3


def test_rewards_do_not_depend_on_batch_composition_or_order():
    model = sharpened(tiny(prior={"frame_skip": 2}, score_batch_size=5))
    frames = random_frames(3, 11)
    model.tokenizer.init_codebook(frames)
    is_first = torch.zeros(3, 11, dtype=torch.bool)
    is_first[0, 4] = True
    together = model.score(frames, is_first=is_first)
    alone = torch.cat(
        [model.score(frames[i : i + 1], is_first=is_first[i : i + 1]) for i in range(3)]
    )
    order = torch.tensor([2, 0, 1])
    permuted = model.score(frames[order], is_first=is_first[order])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(permuted, together[order], rtol=1e-5, atol=1e-4)


def test_reward_statistics_match_the_rewards_they_were_computed_from():
    model = sharpened(tiny())
    batches = [random_frames(2, 6, seed=1), random_frames(1, 9, seed=2)]
    model.tokenizer.init_codebook(batches[0])
    with pytest.raises(RuntimeError, match="no reward statistics"):
        model.score(batches[0], standardize=True)
    raw = [model.update_reward_stats(b).flatten().numpy() for b in batches]
    values = np.concatenate(raw).astype(np.float64)
    stats = model.reward_stats()
    assert stats["count"].item() == len(values) == 21
    assert stats["mean"].item() == pytest.approx(values.mean(), rel=1e-9)
    assert stats["std"].item() == pytest.approx(values.std(), rel=1e-7)
    standardized = model.score(batches[1], standardize=True).flatten().numpy()
    np.testing.assert_allclose(standardized, (raw[1] - values.mean()) / values.std(), rtol=1e-4)
    model.reset_reward_stats()
    assert model.reward_stats()["count"].item() == 0


# Checkpoints -----------------------------------------------------------------------------------


def trained_looking(seed: int = 0) -> VIPERRewardModel:
    """A tiny class-conditional model with perturbed weights and reward statistics."""
    model = sharpened(tiny(prior={"num_classes": 2}, class_names=["a", "b"]), seed=seed)
    model.training_info = {"data": ["apv/sample"], "steps": {"tokenizer": 3, "prior": 4}}
    with torch.no_grad():
        for p in model.tokenizer.parameters():
            p.add_(0.01 * torch.randn_like(p))
    frames = random_frames(2, 5)
    model.tokenizer.init_codebook(frames)
    model.update_reward_stats(frames, cls="a")
    return model


def outputs(model: VIPERRewardModel) -> tuple[torch.Tensor, ...]:
    frames = random_frames(2, 6, seed=5)
    tokens = model.tokenizer.encode(frames)
    return tokens, model.tokenizer.decode(tokens), model.score(frames, cls="a", standardize=True)


def test_save_load_round_trip_is_bit_identical_with_a_card(tmp_path):
    model = trained_looking()
    model.save_pretrained(tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
    ]
    loaded = VIPERRewardModel.from_pretrained(tmp_path / "ckpt")
    assert loaded.config == model.config and loaded.training_info == model.training_info
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
    for mine, theirs in zip(outputs(model), outputs(loaded), strict=True):
        assert torch.equal(mine, theirs)
    card = (tmp_path / "ckpt" / "README.md").read_text()
    assert f"{model.num_parameters()['total']:,} parameters" in card
    assert "class-conditional over 2 tasks (a, b)" in card and "over 10 steps" in card
    assert "@inproceedings{escontrela2023viper" in card and "library_name: apv-hub" in card
    with pytest.raises(CheckpointError, match="'viper-reward' checkpoint, not a 'apv-video'"):
        from apv_hub import APVVideoModel

        APVVideoModel.from_pretrained(tmp_path / "ckpt")


def test_push_to_local_hub_and_load_by_repo_id(local_hub, tmp_path):
    model = trained_looking(seed=1)
    model.push_to_hub("viper/tiny-test")
    loaded = VIPERRewardModel.from_pretrained("viper/tiny-test", cache_dir=tmp_path / "cache")
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
    for mine, theirs in zip(outputs(model), outputs(loaded), strict=True):
        assert torch.equal(mine, theirs)
    with pytest.raises(CheckpointError, match="no Hub repository"):
        VIPERRewardModel.from_pretrained("viper/missing", cache_dir=tmp_path / "cache")


# The reward works ------------------------------------------------------------------------------

TASK = "drawer-open-v3"
DECISIONS, ACTION_REPEAT = 25, 4  # 100 environment steps; the scripted expert opens the drawer


def render_episodes(specs: list[tuple[str, float, int]]) -> list[tuple[torch.Tensor, float]]:
    """Episodes of TASK at 32x32 from (policy, action noise, seed) -> [(uint8 frames
    [T, 3, 32, 32], task return)]. Shadows and reflections are switched off in the MuJoCo model:
    software rendering of Meta-world's 4096-pixel shadow map costs 4-6x the rest of a frame."""
    from apv_hub.data.rollouts import metaworld_episode
    from apv_hub.envs.meta_world import make_gym_env

    env = make_gym_env(TASK, seed=0, render_size=32)
    physics = env.unwrapped.model
    physics.light_castshadow[:] = 0
    physics.mat_reflectance[:] = 0
    try:
        episodes = []
        for policy, noise, seed in specs:
            ep = metaworld_episode(env, TASK, seed, DECISIONS, noise, ACTION_REPEAT, policy)
            frames = torch.from_numpy(ep.frames).permute(0, 3, 1, 2).contiguous()
            episodes.append((frames, float(ep.rewards.sum())))
        return episodes
    finally:
        env.close()


def train_prior(model: VIPERRewardModel, videos: list[torch.Tensor], steps: int) -> None:
    """Adam on prior.loss over random windows (frames `frame_skip` apart) of tokenized videos."""
    prior, cfg = model.prior, model.config.prior
    tokens = [model.tokenizer.encode(v[None])[0] for v in videos]
    opt = torch.optim.Adam(prior.parameters(), lr=cfg.lr)
    g = torch.Generator().manual_seed(2)
    prior.train()
    for _ in range(steps):
        windows = []
        for _ in range(cfg.batch_size):
            video = tokens[int(torch.randint(len(tokens), (1,), generator=g))]
            start = int(torch.randint(len(video) - cfg.span + 1, (1,), generator=g))
            windows.append(video[start : start + cfg.span : cfg.frame_skip])
        loss, _ = prior.loss(torch.stack(windows))
        opt.zero_grad()
        loss.backward()
        opt.step()
    prior.eval()


def test_reward_learned_from_expert_videos_ranks_episodes_like_the_task_reward():
    """Train the tiny tokenizer and prior on 4 scripted-expert videos of drawer-open, then score
    held-out expert, noisy-expert and random-action episodes of the same task (new object
    positions): experts must score highest, and the episodes' VIPER returns must rank-correlate
    with their task returns."""
    experts = render_episodes([("scripted", 0.0, seed) for seed in range(100, 106)])
    train, held = [f for f, _ in experts[:4]], experts[4:]
    noisy = render_episodes([("scripted", 0.5, 200), ("scripted", 0.5, 201)])
    noisier = render_episodes([("scripted", 1.0, 300), ("scripted", 1.0, 301)])
    random = render_episodes([("random", 0.0, 400), ("random", 0.0, 401)])

    model = tiny()
    frames = torch.cat(train)
    model.tokenizer.init_codebook(frames[None, :64], generator=torch.Generator().manual_seed(0))
    train_tokenizer(model.tokenizer, frames, steps=80)
    train_prior(model, train, steps=200)

    def mean_reward(episodes):
        return [model.score(f[None])[0].mean().item() for f, _ in episodes]

    groups = {"expert": held, "noisy 0.5": noisy, "noisy 1.0": noisier, "random": random}
    scores = {name: mean_reward(eps) for name, eps in groups.items()}
    returns = {name: [r for _, r in eps] for name, eps in groups.items()}
    rho = spearmanr(sum(scores.values(), []), sum(returns.values(), [])).statistic
    print("mean reward per step:", scores, "task returns:", returns, "spearman:", rho)

    expert = np.mean(scores["expert"])
    assert expert > np.mean(scores["noisy 0.5"] + scores["noisy 1.0"])
    assert expert > np.mean(scores["noisy 1.0"]) + 1.0
    assert min(scores["expert"]) > max(scores["random"])
    assert rho > 0.5
