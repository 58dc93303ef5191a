"""bf16 autocast: every model runs, stays close to float32, and keeps its delicate maths in fp32.

CPU autocast runs the networks' matmuls and convolutions in bf16 as a GPU does (slowly), so these
tiny runs test the dtype paths a GPU trainer takes. The float32 path itself is pinned bit for bit
by the golden tensors (tests/test_golden.py).

Tolerances: bf16 keeps 8 significant bits, a relative rounding error of up to 2^-9 (0.2%) per
value. Losses are means of many terms whose rounding errors partly cancel: measured, they differ
from float32 by at most 0.5% (relative); gradients, which pass through more bf16 layers, by about
1% (relative L2 per tensor). The bounds below (2% on losses, 5% on gradients) are 4-5 times the
measured differences and still far below what a float32-only bug (a bf16 discount, bf16
lambda-returns, a bf16 softmax) or a wrong loss term would cause.

The models here keep PyTorch's initialisation (``init="torch"``), for which those figures were
measured. bf16 rounding flips a few of the categorical latents' argmax draws (0.3-0.5% of them
under either initialisation), and where a flip lands decides how far one update's actor loss
moves: with the Keras initialisation and these seeds, dreamerv2's actor loss moved 13% and
naive_finetune's 22% (torch: at most 0.3%), a sampling difference, not a float32-only bug.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator

import pytest
import torch

from apv_hub.agent import make_optimizers
from apv_hub.behavior import ActorCritic, lambda_return
from apv_hub.config import VARIANTS, AgentConfig, APVConfig
from apv_hub.video_model import APVVideoModel
from apv_hub.world_model import APVWorldModel
from tests.agent_helpers import ACTION_DIM, random_batch
from tests.finetune_helpers import run_finetune_script, slide_config
from tests.golden import EXTRA, build_agent, frames_and_batch

# The initialisation the tolerances were measured with (module docstring).
INIT = "torch"
LOSS_RTOL = 2e-2
GRAD_RTOL = 5e-2


def bf16(enabled: bool = True) -> torch.autocast:
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled)


def image_nll_constant(config: APVConfig) -> float:
    """The image NLL's constant 0.5 log(2 pi) per pixel, summed over C x H x W: the rest is the
    squared error that bf16 can get wrong."""
    pixels = config.image_channels * config.image_size**2
    return 0.5 * math.log(2 * math.pi) * pixels


def assert_close_rel(got: float, want: float, rtol: float, what: str) -> None:
    assert math.isfinite(got), f"{what} is {got} under bf16"
    assert abs(got - want) <= rtol * abs(want), f"{what}: bf16 {got} vs fp32 {want}"


def video_model_step(enabled: bool) -> tuple[torch.Tensor, dict, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    model = APVVideoModel(APVConfig.preset("tiny", init=INIT))
    batch = frames_and_batch(AgentConfig.preset("tiny"))
    torch.manual_seed(1)
    with bf16(enabled):
        loss, metrics = model.loss(batch["image"], batch["is_first"])
    loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    return loss, metrics, grads


def test_video_model_loss_and_backward_under_bf16_are_close_to_fp32() -> None:
    loss32, metrics32, grads32 = video_model_step(False)
    loss16, metrics16, grads16 = video_model_step(True)
    assert loss16.dtype == torch.float32
    # Autocast really ran: bf16 matmuls give other bits.
    assert metrics16["loss"] != metrics32["loss"]
    constant = image_nll_constant(APVConfig.preset("tiny"))
    assert_close_rel(
        metrics16["image_nll"] - constant, metrics32["image_nll"] - constant, LOSS_RTOL, "sq err"
    )
    for key in ("image_mse", "kl", "kl_loss"):
        assert_close_rel(metrics16[key], metrics32[key], LOSS_RTOL, key)
    for name, grad in grads32.items():
        got = grads16[name]
        assert got is not None and got.dtype == torch.float32 and torch.isfinite(got).all(), name
        assert (got - grad).norm() <= GRAD_RTOL * grad.norm(), name


def agent_update(variant: str, enabled: bool) -> dict[str, float]:
    agent = build_agent(variant, INIT)
    optimizers = make_optimizers(agent)
    torch.manual_seed(1)
    with bf16(enabled):
        metrics = agent.update(frames_and_batch(agent.config), optimizers)
    for name, p in agent.named_parameters():
        assert p.dtype == torch.float32 and torch.isfinite(p).all(), f"{variant}: {name}"
    return metrics


@pytest.mark.parametrize("variant", [*sorted(VARIANTS), *EXTRA])
def test_agent_update_under_bf16_is_close_to_fp32(variant: str) -> None:
    want = agent_update(variant, False)
    got = agent_update(variant, True)
    assert sorted(got) == sorted(want)
    bad = [k for k, v in got.items() if not math.isfinite(v)]
    assert not bad, f"non-finite metrics under bf16: {bad}"
    assert got["model_loss"] != want["model_loss"], "autocast did not take effect"
    constant = image_nll_constant(build_agent(variant).config.video)
    assert_close_rel(
        got["image_loss"] - constant, want["image_loss"] - constant, LOSS_RTOL, "image sq err"
    )
    losses = [k for k in want if k.endswith("_loss") and k not in ("image_loss", "model_loss")]
    assert {"kl_loss", "reward_loss", "actor_loss", "critic_loss"} <= set(losses)
    for key in [*losses, "actor_entropy", "model_grad_norm", "critic_grad_norm"]:
        assert_close_rel(got[key], want[key], LOSS_RTOL, key)


@pytest.fixture
def world_model() -> Iterator[tuple[APVWorldModel, ActorCritic, dict[str, torch.Tensor]]]:
    torch.manual_seed(0)
    config = AgentConfig.preset("tiny")
    wm = APVWorldModel(config.video, config.world_model, ACTION_DIM)
    ac = ActorCritic(wm.feat_dim, ACTION_DIM, config.behavior)
    batch = random_batch(config, batch=2, length=6)
    yield wm, ac, batch


def test_states_distributions_discount_and_returns_are_float32(world_model) -> None:
    wm, ac, batch = world_model
    with bf16():
        obs = wm.observe(batch["image"], batch["action"], batch["is_first"])
        assert obs.embed.dtype == torch.bfloat16, "autocast did not take effect"
        for name, state in [("post", obs.post), ("prior", obs.prior), ("af_post", obs.af_post)]:
            for key, value in state.items():
                assert value.dtype == torch.float32, f"{name}[{key!r}] is {value.dtype}"
        start = {k: v.flatten(0, 1) for k, v in obs.post.items()}
        policy = ac.actor(obs.feat)
        assert policy.mean.dtype == policy.std.dtype == torch.float32
        assert policy.sample().dtype == torch.float32
        seq = ac.imagine(wm, start)
        target = ac.target(seq)
    for key in ("feat", "action", "reward", "discount", "weight"):
        assert seq[key].dtype == torch.float32, f"seq[{key!r}] is {seq[key].dtype}"
    # Exactly float32's 0.99, not bf16's 0.98828125.
    assert torch.all(seq["discount"] == torch.tensor(0.99, dtype=torch.float32))
    assert target.dtype == torch.float32


def test_discount_with_a_continuation_head_is_float32() -> None:
    torch.manual_seed(0)
    config = AgentConfig.preset("tiny", world_model={"discount_head": True})
    wm = APVWorldModel(config.video, config.world_model, ACTION_DIM)
    ac = ActorCritic(wm.feat_dim, ACTION_DIM, config.behavior)
    is_terminal = torch.tensor([False, True])
    with bf16():
        seq = ac.imagine(wm, wm.rssm.initial(2), is_terminal)
    assert seq["discount"].dtype == torch.float32
    # The start state's discount is gamma (1 - is_terminal) in float32.
    assert seq["discount"][0, 0] == torch.tensor(0.99) and seq["discount"][1, 0] == 0


def test_lambda_return_of_bf16_inputs_is_computed_in_float32() -> None:
    g = torch.Generator().manual_seed(0)
    reward, value = torch.rand(4, 15, generator=g), torch.rand(4, 15, generator=g)
    pcont, bootstrap = torch.full((4, 15), 0.99), torch.rand(4, generator=g)
    rounded = [x.bfloat16() for x in (reward, value, pcont, bootstrap)]
    got = lambda_return(*rounded, 0.95)
    assert got.dtype == torch.float32
    # The same as float32 maths on the bf16-rounded inputs, bit for bit.
    want = lambda_return(*(x.float() for x in rounded), 0.95)
    assert torch.equal(got, want)


def test_a_short_finetuning_run_in_bf16_completes_on_the_cpu(tmp_path) -> None:
    """`finetune.py --precision bf16` honoured on the CPU (autocast through Accelerate): a run
    with updates, an evaluation and a checkpoint finishes, and its logged losses are finite.
    A process of its own: Accelerate's state, bf16 here, is one per process."""
    config = slide_config(
        "apv_no_pretrain",
        total_env_steps=120,
        prefill=60,
        pretrain_updates=2,
        train_every=10,
        eval_every=120,
        eval_episodes=1,
        checkpoint_every=120,
        log_every=60,
        **{"agent.batch_size": 2, "agent.seq_len": 8},
    )
    out = tmp_path / "run"
    result = run_finetune_script(config, out, "--precision", "bf16")
    assert result.returncode == 0, result.stderr[-4000:]
    assert json.loads((out / "run_config.json").read_text())["precision"] == "bf16"
    assert (out / "model" / "model.safetensors").is_file()
    rows = json.loads((out / "metrics.json").read_text())
    assert rows and rows[-1]["progress/updates"] > 0
    for key in ("train/model_loss", "train/actor_loss", "train/critic_loss"):
        assert all(math.isfinite(row[key]) for row in rows), key
    assert rows[-1]["progress/nonfinite_updates"] == 0
    assert json.loads((out / "eval.json").read_text()), "no evaluation"
