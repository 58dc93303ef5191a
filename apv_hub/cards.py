"""Model cards: the README.md of every checkpoint this project writes, and their metadata.

The Hub metadata of each model (library, licence, pipeline tag, tags, paper) is given once here,
as the class keywords of the model class (``class APVVideoModel(..., **VIDEO_MODEL_METADATA)``)
and in its card's YAML header, which also names what the checkpoint came from: the Hub datasets
a model was trained on (``datasets``), the Hub checkpoint it started from (``base_model``: a
video model's ``--init``, an agent's pre-trained video model) and, for a fine-tuned agent, its
last evaluation as measured (``model-index``). A card states the architecture, parameter counts,
what the model was trained on and for how long (only what was recorded), how to use it, and the
citation.
"""

from __future__ import annotations

import math
import os
import re
from typing import TYPE_CHECKING, Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

if TYPE_CHECKING:
    from apv_hub.agent import APVAgent
    from apv_hub.video_model import APVVideoModel
    from apv_hub.viper.reward_model import VIPERRewardModel

PAPER_URL = "https://arxiv.org/abs/2203.13880"
# The licence of apv-hub (its code and what it writes); a model card's notes may say more.
LICENSE = "mit"
VIDEO_MODEL_METADATA: dict[str, Any] = dict(
    library_name="apv-hub",
    license=LICENSE,
    pipeline_tag="video-to-video",
    paper_url=PAPER_URL,
    tags=["apv", "world-model", "video-prediction", "reinforcement-learning"],
)
AGENT_METADATA: dict[str, Any] = dict(
    library_name="apv-hub",
    license=LICENSE,
    pipeline_tag="reinforcement-learning",
    paper_url=PAPER_URL,
    tags=["apv", "world-model", "reinforcement-learning", "dreamerv2"],
)


def card_data(metadata: dict[str, Any], **extra: Any) -> ModelCardData:
    """The YAML header of a card: a model class's metadata (without the paper link, which the
    card body cites) plus ``extra`` fields."""
    fields = {k: v for k, v in metadata.items() if k != "paper_url"}
    return ModelCardData(**fields, **extra)


CITATION = """@inproceedings{seo2022reinforcement,
  title={Reinforcement Learning with Action-Free Pre-Training from Videos},
  author={Seo, Younggyo and Lee, Kimin and James, Stephen and Abbeel, Pieter},
  booktitle={International Conference on Machine Learning},
  year={2022}
}"""

# Checkpoints this project publishes (card sources live in model_cards/).
KNOWN_CHECKPOINTS: dict[str, str] = {
    "apv/rlbench-99": "RLBench demonstrations of 99 tasks, 5 cameras (4950 videos)",
    "apv/triped-walk": "1000 videos of a DreamerV2 agent on the three-legged Triped walk task",
    "apv/something-something-1.5k": "a random 1.5K-video subset of Something-Something-v2",
    "apv/metaworld-scripted": "Meta-world scripted-policy videos from the corner camera",
    "apv/sample": "the small Meta-world sample corpus shipped with apv-hub",
}


REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _is_repo_id(name: Any) -> bool:
    """Whether a training data entry names a Hub dataset (``owner/name``, not a local folder)."""
    return bool(name) and bool(REPO_ID.match(str(name))) and not os.path.exists(str(name))


def _hub_datasets(data: Any) -> list[str] | None:
    """The Hub dataset repo ids among a model's training data (None: there are none)."""
    names = data if isinstance(data, list) else [data]
    return [d for d in names if _is_repo_id(d)] or None


def agent_eval_results(agent: APVAgent) -> list[EvalResult]:
    """The ``model-index`` results of a fine-tuned agent: its last evaluation as measured (mean
    return, and success rate where the environment reports it); none before any evaluation."""
    info = agent.training_info.get("finetune") or {}
    curve = info.get("eval_curve") or []
    if not curve:
        return []
    last, env = curve[-1], str(info.get("env"))
    how = (
        f"{last.get('eval_episodes', '?')} deterministic episode(s) after "
        f"{last['env_steps']} environment steps"
    )
    common = dict(
        task_type="reinforcement-learning",
        task_name="Reinforcement Learning",
        dataset_type=env,
        dataset_name=env,
    )
    results = [
        EvalResult(
            **common,
            metric_type="mean_reward",
            metric_name=f"mean return over {how}",
            metric_value=float(last["return_mean"]),
        )
    ]
    if "success_rate" in last:
        results.append(
            EvalResult(
                **common,
                metric_type="success_rate",
                metric_name=f"success rate over {how}",
                metric_value=float(last["success_rate"]),
            )
        )
    return results


def _millions(n: int) -> str:
    return f"{n / 1e6:.2f}M"


def _training_section(info: dict[str, Any]) -> str:
    if not info:
        return "Not recorded: this checkpoint was saved without training information."
    lines = []
    if info.get("data"):
        data = info["data"] if isinstance(info["data"], list) else [info["data"]]
        lines.append("- Data: " + ", ".join(str(d) for d in data))
    if "steps" in info:
        lines.append(f"- Gradient steps: {info['steps']}")
    if info.get("batch"):
        lines.append(f"- Batch: {info['batch']}")
    if info.get("init"):
        lines.append(f"- Initialised from: {info['init']}")
    if info.get("precision"):
        lines.append(f"- Precision: {info['precision']}")
    for name, value in (info.get("metrics") or {}).items():
        value = f"{value:.4g}" if isinstance(value, float) else value
        lines.append(f"- Final {name} (measured): {value}")
    if info.get("metrics_note"):
        lines.append(f"- How the final values were measured: {info['metrics_note']}")
    if info.get("command"):
        lines.append(f"- Command:\n\n```bash\n{info['command']}\n```")
    return "\n".join(lines) if lines else "Not recorded."


def _notes_section(info: dict[str, Any]) -> str:
    """The card source of a published checkpoint (model_cards/<name>.md), as the run read it."""
    notes = (info.get("card_notes") or "").strip()
    return f"## About this checkpoint\n\n{notes}\n\n" if notes else ""


def _conversion_section(info: dict[str, Any]) -> str:
    """Where a converted checkpoint (apv_hub.convert) came from, its licence, what was changed."""
    conv = info.get("converted_from")
    if not conv:
        return ""
    files = "\n".join(f"  - `{name}` (sha256 `{digest}`)" for name, digest in conv["files"].items())
    changes = "\n".join(f"  - {change}" for change in conv["changes"])
    command = f"- Command:\n\n```bash\n{conv['command']}\n```\n" if conv.get("command") else ""
    return f"""## Converted from

This checkpoint was not trained by apv-hub: it is {conv["description"]}, converted by
{conv["converter"]} (`apv-convert --format {conv["format"]}`).

- Source: {conv["source"]}
- Code: {conv["code"]}
- Licence of the source: {conv["license"]}
- Files converted:
{files}
- Pre-training settings recorded in config.json: `{conv["pretrain_config"]}`
- Conversion (outputs equal the source's up to float32 rounding):
{changes}
{command}
"""


def video_model_card(model: APVVideoModel, repo_id: str | None = None) -> ModelCard:
    """The README.md model card of an APVVideoModel checkpoint."""
    cfg = model.config
    counts = model.num_parameters()
    name = repo_id or "path/to/checkpoint"
    init = model.training_info.get("init")
    header = card_data(
        VIDEO_MODEL_METADATA,
        datasets=_hub_datasets(model.training_info.get("data")),
        base_model=init if _is_repo_id(init) else None,
    )
    body = f"""
# APV action-free video model{f": {repo_id}" if repo_id else ""}

An action-free latent video prediction model from APV (Seo et al., ICML 2022), pre-trained on
videos without actions or rewards. Fine-tuning stacks an action-conditional world model on it.

## Architecture

- Frames: {cfg.image_channels} x {cfg.image_size} x {cfg.image_size}, uint8
- Encoder: {len(cfg.encoder_kernels)} stride-2 convolutions (kernels {list(cfg.encoder_kernels)},
  depth {cfg.cnn_depth}) -> {model.embed_dim}-dim embedding
  ({_millions(counts["encoder"])} parameters)
- RSSM: deterministic {cfg.deter} (layer-normed GRU), hidden {cfg.hidden}, {cfg.stoch} discrete
  latents x {cfg.classes} classes, {cfg.act} ({_millions(counts["rssm"])} parameters)
- Decoder: linear + {len(cfg.decoder_kernels)} transposed convolutions (kernels
  {list(cfg.decoder_kernels)}) ({_millions(counts["decoder"])} parameters)
- Total: {counts["total"]:,} parameters
- Loss: image NLL + {cfg.kl_scale} x KL (balance {cfg.kl_balance}, free nats {cfg.free_nats})

{_notes_section(model.training_info)}{_conversion_section(model.training_info)}## Training

{_training_section(model.training_info)}

## Usage

```python
import torch
from apv_hub import APVVideoModel

model = APVVideoModel.from_pretrained("{name}")
frames = torch.randint(0, 256, (1, 10, {cfg.image_channels}, {cfg.image_size}, {cfg.image_size}),
                       dtype=torch.uint8)          # [B, T, C, H, W]
features = model.features(frames)                   # [B, T, {model.feat_dim}]
future = model.predict(frames[:, :5], horizon=20)   # [B, 20, C, H, W] uint8
```

## Citation

```bibtex
{CITATION}
```
"""
    return ModelCard(f"---\n{header.to_yaml()}\n---\n{body}")


def agent_model_card(agent: APVAgent, repo_id: str | None = None) -> ModelCard:
    """The README.md model card of an APVAgent checkpoint."""
    cfg = agent.config
    counts = agent.num_parameters()
    name = repo_id or "path/to/checkpoint"
    wm = cfg.world_model
    pretrained = agent.training_info.get("pretrained")
    results = agent_eval_results(agent)
    header = card_data(
        AGENT_METADATA,
        base_model=pretrained if _is_repo_id(pretrained) else None,
        # model-index names the model its results belong to.
        model_name=(repo_id or f"apv-agent-{cfg.variant()}") if results else None,
        eval_results=results or None,
    )
    pretrained = pretrained or "none (randomly initialised)"
    transferred = ", ".join(agent.training_info.get("transferred", [])) or "nothing"
    size = f"{cfg.video.image_channels}, {cfg.video.image_size}, {cfg.video.image_size}"
    body = f"""
# APV agent{f": {repo_id}" if repo_id else ""}

A world-model agent from APV (Seo et al., ICML 2022): variant `{cfg.variant()}`.

- World model: {
        "action-conditional RSSM stacked on the action-free one"
        if wm.stacked
        else "one action-conditional RSSM (DreamerV2)"
    }; action-conditional input
  `{wm.ac_input}`; {counts["model"]:,} parameters
- Pre-trained video model: {pretrained}; copied: {transferred}
- Exploration bonus: {intrinsic_line(cfg.intrinsic)}
- Actor-critic: horizon {cfg.behavior.horizon}, discount {cfg.behavior.discount}, lambda
  {cfg.behavior.discount_lambda}; actor {counts["actor"]:,} and critic {counts["critic"]:,}
  parameters; {agent.num_updates} updates done
- Action dimension: {agent.action_dim}
{finetune_section(agent.training_info.get("finetune"))}
{deviations_section()}
## Usage

```python
import torch
from apv_hub import APVAgent

agent = APVAgent.from_pretrained("{name}")
obs = {{"image": torch.zeros(1, {size}, dtype=torch.uint8),
        "is_first": torch.ones(1, dtype=torch.bool)}}
action, state = agent.act(obs, state=None, explore=False)   # [1, {agent.action_dim}] in [-1, 1]
```

## Citation

```bibtex
{CITATION}
```
"""
    return ModelCard(f"---\n{header.to_yaml()}\n---\n{body}")


# Where apv-hub knowingly differs from the released APV code (REFERENCE section 2b); the README's
# "Fidelity to the release" lists the same, and every agent card carries them.
RELEASE_DEVIATIONS: tuple[str, ...] = (
    "Meta-world: Gymnasium Meta-world v3 tasks on MuJoCo 3, where the release used v2 tasks on "
    "mujoco-py (metaworld commit a0009ed); task code and physics differ, so success rates "
    "compare in ordering, not digit for digit.",
    "DMC: today's dm_control and MuJoCo, not the release's versions; the physics may differ "
    "in detail (not measured here).",
    "Mixed precision: bf16 autocast where the GPU supports it (fp32 on CPU), where the release "
    "used float16 with loss scaling; distribution parameters and lambda-returns stay float32 "
    "in both.",
    "Weight decay: 1e-6 added to the gradient (Adam's L2), where the release shrinks every "
    "weight by (1 - 1e-6) per step; the difference is negligible.",
    "Random draws: the same distributions (Gumbel-max categorical latents, truncated-normal "
    "actions) from PyTorch's generators, so no run reproduces a TensorFlow run's numbers.",
    "Replay: episodes shorter than the sequence length are stored (and counted against the "
    "capacity) but never sampled, where the release does not store them.",
)


def deviations_section() -> str:
    """The card section listing `RELEASE_DEVIATIONS`."""
    items = "\n".join(f"- {item}" for item in RELEASE_DEVIATIONS)
    return f"""## Known deviations from the released APV code

Replay, optimisers, initialisation, budgets and evaluation follow the release (the apv-hub
README, "Fidelity to the release"). What remains different:

{items}
"""


def intrinsic_line(intrinsic: Any) -> str:
    """The card's words for an agent's exploration bonus (an IntrinsicConfig)."""
    if not intrinsic.enabled:
        return "off"
    if intrinsic.kind == "disagreement":
        return (
            f"Plan2Explore disagreement of {intrinsic.ensemble} one-step models on imagined "
            f"states, beta {intrinsic.beta}"
        )
    return (
        f"APV video-based, beta {intrinsic.beta}, window {intrinsic.window}, k {intrinsic.k}, "
        f"queue {intrinsic.queue_size}"
    )


def finetune_section(info: dict[str, Any] | None) -> str:
    """The card's fine-tuning section: environment, variant, steps and the evaluation curve as
    measured (empty for an agent that was not fine-tuned by apv_hub.training.finetune)."""
    if not info:
        return ""
    lines = [
        "",
        "## Fine-tuning",
        "",
        f"- Environment: `{info.get('env')}` (options {info.get('env_options') or 'default'})",
        f"- Variant: `{info.get('variant')}`, preset `{info.get('preset')}`, "
        f"seed {info.get('seed')}",
        f"- Environment steps: {info.get('env_steps')} ({info.get('policy_steps')} policy steps), "
        f"{info.get('updates')} updates, {info.get('processes', 1)} process(es)",
    ]
    if info.get("reward_model"):
        lines.append(
            f"- Reward: VIPER reward model `{info['reward_model']}` (standardised likelihoods of "
            "the agent's frames); the task reward was used for evaluation only"
        )
    if info.get("command"):
        lines += ["- Command:", "", "```bash", str(info["command"]), "```"]
    curve = info.get("eval_curve") or []
    if curve:
        success = any("success_rate" in row for row in curve)
        lines += [
            "",
            "Evaluation (deterministic policy) during fine-tuning, as measured:",
            "",
            "| env steps | return (95% CI) |" + (" success rate |" if success else ""),
            "|---|---|" + ("---|" if success else ""),
        ]
        shown = curve if len(curve) <= 30 else curve[:: math.ceil(len(curve) / 30)] + curve[-1:]
        for row in shown:
            low, high = row["return_ci_low"], row["return_ci_high"]
            ret = f"{row['return_mean']:.2f} ({low:.2f}, {high:.2f})"
            rate = (
                f" {row['success_rate']:.2f} |"
                if "success_rate" in row
                else (" |" if success else "")
            )
            lines.append(f"| {row['env_steps']} | {ret} |{rate}")
    return "\n".join(lines) + "\n"


# VIPER reward models ---------------------------------------------------------------------------

VIPER_PAPER_URL = "https://arxiv.org/abs/2305.14343"
VIPER_METADATA: dict[str, Any] = dict(
    library_name="apv-hub",
    license=LICENSE,
    pipeline_tag="reinforcement-learning",
    paper_url=VIPER_PAPER_URL,
    tags=["viper", "video-prediction", "reward-model", "vq-gan", "reinforcement-learning"],
)
VIPER_CITATION = """@inproceedings{escontrela2023viper,
  title={Video Prediction Models as Rewards for Reinforcement Learning},
  author={Escontrela, Alejandro and Adeniji, Ademi and Yan, Wilson and Jain, Ajay and
          Peng, Xue Bin and Goldberg, Ken and Lee, Youngwoon and Hafner, Danijar and
          Abbeel, Pieter},
  booktitle={Advances in Neural Information Processing Systems},
  year={2023}
}"""


def viper_reward_stats_section(model: VIPERRewardModel) -> str:
    """The card's lines on the reward standardisation statistics, as stored in the model."""
    stats = model.reward_stats()
    slots = stats["count"].nonzero().flatten().tolist()
    if not slots:
        return "- Standardisation statistics: not computed (`update_reward_stats` on expert videos)"
    names = model.config.class_names
    conditional = model.config.prior.num_classes > 0
    lines = ["- Standardisation statistics of the raw reward on expert videos (as measured):"]
    for slot in slots:
        label = names[slot] if names else (f"class {slot}" if conditional else "all")
        lines.append(
            f"  - {label}: mean {float(stats['mean'][slot]):.4g}, "
            f"std {float(stats['std'][slot]):.4g} over {int(stats['count'][slot])} steps"
        )
    return "\n".join(lines)


def viper_model_card(model: VIPERRewardModel, repo_id: str | None = None) -> ModelCard:
    """The README.md model card of a VIPERRewardModel checkpoint."""
    cfg = model.config
    tok, prior = cfg.tokenizer, cfg.prior
    counts = model.num_parameters()
    name = repo_id or "path/to/checkpoint"
    header = card_data(VIPER_METADATA, datasets=_hub_datasets(model.training_info.get("data")))
    g = tok.token_grid
    if prior.num_classes:
        classes = ", ".join(cfg.class_names) if cfg.class_names else "unnamed"
        conditioning = f"class-conditional over {prior.num_classes} tasks ({classes})"
        cls_arg = repr(cfg.class_names[0]) if cfg.class_names else "0"
    else:
        conditioning, cls_arg = "unconditional", "None"
    likelihood = (
        "log p(o_t | earlier frames of the window), summed over the frame's tokens"
        if cfg.likelihood == "conditional"
        else "sum over the window's frames of log p(frame | earlier frames of the window)"
    )
    body = f"""
# VIPER video reward model{f": {repo_id}" if repo_id else ""}

A video prediction reward model from VIPER (Escontrela et al., 2023): a frame tokenizer and an
autoregressive video transformer trained on expert videos. The reward of an agent's step is the
likelihood the frozen model gives its frames; no task reward is involved.

## Architecture

- Frames: {tok.image_channels} x {tok.image_size} x {tok.image_size}, uint8
- Tokenizer: VQ autoencoder, width {tok.channels} x {list(tok.channel_mult)}, {tok.res_blocks}
  ResNet block(s) per level{", middle attention" if tok.mid_attention else ""}; codebook
  {tok.codebook_size} x {tok.embed_dim}; {g} x {g} tokens per frame
  ({_millions(counts["tokenizer"])} parameters)
- Prior: GPT-2, {prior.layers} layers, {prior.heads} heads, width {prior.width}, MLP
  {prior.mlp_width}; windows of {prior.frames} frames, {prior.frame_skip} step(s) apart;
  {conditioning} ({_millions(counts["prior"])} parameters)
- Total: {counts["total"]:,} parameters

## Reward

- Definition (`{cfg.likelihood}`): {likelihood}; windows of {cfg.context_frames} frames
  ending at the scored step
- Episode start: windows cut to the frames that exist, placed at the start of the context
{viper_reward_stats_section(model)}

{_notes_section(model.training_info)}## Training

{_training_section(model.training_info)}

## Usage

```python
import torch
from apv_hub.viper import VIPERRewardModel

model = VIPERRewardModel.from_pretrained("{name}")
frames = torch.randint(0, 256, (1, 50, {tok.image_channels}, {tok.image_size}, {tok.image_size}),
                       dtype=torch.uint8)                     # [B, T, C, H, W]
rewards = model.score(frames, cls={cls_arg})                  # [B, T] log-likelihoods
```

## Citation

```bibtex
{VIPER_CITATION}
```
"""
    return ModelCard(f"---\n{header.to_yaml()}\n---\n{body}")
