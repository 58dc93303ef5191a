"""APVAgent: stacked world model + video-based bonus + actor-critic, as one Hub checkpoint.

Modules and optimisers are built separately (``APVAgent(...)`` / ``make_optimizers(agent)``) so
a trainer can hand both to ``accelerate``; ``update(batch, optimizers)`` is one full training
step. A checkpoint folder holds ``model.safetensors`` (every weight and buffer: world model,
bonus queue/normaliser/projection, actor, critic, slow critic, update counter),
``config.json`` and a ``README.md`` card; ``save_training_state`` adds the optimiser and
random-number-generator states (the files the trainers' checkpoints hold) for an exact resume.
Nothing is pickled.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import ModelCard
from torch import Tensor, nn

from apv_hub.behavior import ActorCritic
from apv_hub.cards import AGENT_METADATA, agent_model_card
from apv_hub.compilation import begin_step, compile_step, keep
from apv_hub.config import AgentConfig, ConfigError
from apv_hub.hub import SafetensorsHubMixin
from apv_hub.intrinsic import DisagreementBonus, VideoIntrinsicBonus
from apv_hub.io import write_json
from apv_hub.nets import autocast_off, keras_init_
from apv_hub.optim import (
    OPTIMIZERS_FILE,
    apply_gradients,
    load_optimizer_state,
    make_adam,
    save_optimizer_state,
)
from apv_hub.seeding import load_rng_state, save_rng_state
from apv_hub.version import __version__
from apv_hub.video_model import APVVideoModel
from apv_hub.weights import CheckpointError
from apv_hub.world_model import BATCH_KEYS, APVWorldModel

# save_training_state: the optimiser states (this file + its JSON), the RNG state and this.
TRAINING_STATE_NAME = OPTIMIZERS_FILE
TRAINING_STATE_JSON = "training_state.json"


class APVAgent(nn.Module, SafetensorsHubMixin, **AGENT_METADATA):
    """World model + intrinsic bonus (when enabled) + DreamerV2 actor-critic.

    Build from a pre-trained video model with ``from_video_model``; ``APVAgent(config,
    action_dim)`` gives a randomly initialised agent (DreamerV2, APV without pre-training).
    """

    MODEL_TYPE = "apv-agent"
    LOAD_HINTS = {"apv-video": "build an agent on it with APVAgent.from_video_model"}

    def __init__(
        self,
        config: AgentConfig | dict | None = None,
        action_dim: int = 0,
        training: dict | None = None,
    ) -> None:
        super().__init__()
        if config is None:
            config = AgentConfig()
        elif isinstance(config, dict):
            config = AgentConfig.from_dict(config)
        if action_dim <= 0:
            raise ValueError(f"action_dim must be positive, got {action_dim}")
        self.config, self.action_dim = config, action_dim
        # Where the pre-trained part came from and what was copied, for the card.
        self.training_info: dict[str, Any] = dict(training or {})
        self.world_model = APVWorldModel(config.video, config.world_model, action_dim)
        intrinsic = config.intrinsic
        # The exploration bonus (IntrinsicConfig.kind): APV's on the reward head's target, or
        # Plan2Explore's ensemble on the imagined rewards.
        self.bonus = (
            VideoIntrinsicBonus(self.world_model.af_feat_dim, intrinsic)
            if intrinsic.enabled and intrinsic.kind == "video"
            else None
        )
        rssm = self.world_model.rssm
        self.disagreement = (
            DisagreementBonus(
                rssm.feat_dim, action_dim, rssm.stoch * rssm.classes, intrinsic, config.video.act
            )
            if intrinsic.enabled and intrinsic.kind == "disagreement"
            else None
        )
        self.behavior = ActorCritic(self.world_model.feat_dim, action_dim, config.behavior)
        if config.init == "keras":
            # Every part here is fresh; from_video_model then copies the pre-trained ones in.
            keras_init_(self)
            self.behavior.sync_slow_critic()
        self.compile_mode: str | None = None  # Set by compile_update.
        self.compiled_loss: Callable[..., tuple[Tensor, Any, dict[str, Tensor]]] | None = None

    @classmethod
    def from_video_model(
        cls,
        source: str | Path | APVVideoModel,
        config: AgentConfig,
        action_dim: int,
        **download_kwargs: Any,
    ) -> APVAgent:
        """Build on a pre-trained APVVideoModel (instance, checkpoint folder or Hub repo id).

        The checkpoint's APVConfig replaces ``config.video``; ``config.world_model.transfer``
        says what is copied (``all`` for APV).
        """
        video = (
            source
            if isinstance(source, APVVideoModel)
            else APVVideoModel.from_pretrained(source, **download_kwargs)
        )
        config = dataclasses.replace(config, video=video.config)
        named = not isinstance(source, APVVideoModel)
        info = {"pretrained": str(source) if named else "an APVVideoModel instance"}
        agent = cls(config, action_dim, training=info)
        agent.training_info["transferred"] = agent.world_model.load_pretrained(video)
        return agent.to(next(video.parameters()).device)

    @classmethod
    def build(
        cls,
        config: AgentConfig,
        action_dim: int,
        pretrained: str | Path | None = None,
        revision: str | None = None,
    ) -> APVAgent:
        """The agent ``config`` describes: on the ``pretrained`` video model (folder or repo id,
        at Hub ``revision``) when given, else from scratch, which only variants that copy
        nothing can be."""
        if pretrained:
            return cls.from_video_model(pretrained, config, action_dim, revision=revision)
        if config.world_model.transfer != "none":
            raise ConfigError(
                f"variant {config.variant()!r} copies weights from a pre-trained video model: "
                "pass --pretrained (a checkpoint folder or Hub repo id), or use a variant that "
                "starts from scratch (dreamerv2, apv_scratch)"
            )
        return cls(config, action_dim, training={"pretrained": None})

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def num_updates(self) -> int:
        """Full updates done (world model + actor-critic)."""
        return self.behavior.update_count()

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trained parameters per optimiser: ``model`` (world model), ``actor``, ``critic``, and
        ``intrinsic`` (the disagreement ensemble) where there is one."""
        groups = {
            "model": list(self.world_model.parameters()),
            "actor": list(self.behavior.actor.parameters()),
            "critic": list(self.behavior.critic.parameters()),
        }
        if self.disagreement is not None:
            groups["intrinsic"] = list(self.disagreement.parameters())
        return groups

    def make_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Fresh optimisers of this agent (see the module-level `make_optimizers`)."""
        return make_optimizers(self)

    def num_parameters(self) -> dict[str, int]:
        """Trained parameter counts per optimiser and in total."""
        counts = {k: sum(p.numel() for p in v) for k, v in self.parameter_groups().items()}
        counts["total"] = sum(counts.values())
        return counts

    # Training ----------------------------------------------------------------------------------

    def update(
        self,
        batch: dict[str, Tensor],
        optimizers: dict[str, torch.optim.Optimizer],
        accelerator: Any = None,
    ) -> dict[str, Tensor | float]:
        """One full update on a replay batch -> metrics.

        batch: image uint8 [B, T, C, H, W], action float [B, T, A] (action[t] led to obs t),
        reward [B, T], is_first / is_last / is_terminal bool [B, T]. Steps: world-model loss
        (reward target = reward + beta * bonus), a model step (the encoder and action-free RSSM
        at learning rate 0 during the first ``freeze_pretrained_updates``, their Adam moments
        still accumulating, as in the release), then an actor and a critic step on
        rollouts imagined from every posterior state of the batch.

        Under bf16 autocast (a trainer may wrap the whole call in ``accelerator.autocast()``),
        the forward passes run in bf16 and everything numerically delicate in float32 (see the
        modules); the backward passes and optimiser steps run with autocast off.
        """
        self.train()
        batch = {k: batch[k].to(self.device, non_blocking=True) for k in BATCH_KEYS if k in batch}
        wm_cfg = self.config.world_model
        frozen = self.num_updates < wm_cfg.freeze_pretrained_updates
        obs, metrics = self.update_world_model(batch, optimizers["model"], frozen, accelerator)
        if self.disagreement is not None:
            ensemble_loss, ensemble_metrics = self.disagreement.loss(
                obs.feat, batch["action"], obs.post["stoch"], batch["is_first"]
            )
            metrics.update(ensemble_metrics)
            with autocast_off(self.device):
                metrics["intrinsic_grad_norm"] = apply_gradients(
                    ensemble_loss,
                    optimizers["intrinsic"],
                    self.disagreement.parameters(),
                    wm_cfg.grad_clip,
                    accelerator,
                )
        start = {k: v.flatten(0, 1) for k, v in obs.post.items()}
        metrics.update(
            self.behavior.update(
                self.world_model,
                start,
                optimizers["actor"],
                optimizers["critic"],
                batch["is_terminal"].flatten(0, 1),
                accelerator,
                self.disagreement,
            )
        )
        metrics["pretrained_frozen"] = float(frozen)
        metrics["updates"] = float(self.num_updates)
        return metrics if self.compile_mode is None else keep(metrics)

    def compile_update(self, mode: str = "default", backend: str = "inductor") -> None:
        """Compile `update`'s two loss computations (world model; imagination and actor-critic
        losses) with `apv_hub.compilation.compile_step`: static shapes, so every update after
        the first reuses the graphs; the optimiser steps stay eager."""
        self.compile_mode = mode
        self.compiled_loss = compile_step(self.world_model.loss, mode, backend)
        self.behavior.compile_losses(mode, backend)

    def update_world_model(
        self,
        batch: dict[str, Tensor],
        optimizer: torch.optim.Optimizer,
        frozen: bool,
        accelerator: Any = None,
    ) -> tuple[Any, dict[str, Tensor]]:
        """One world-model step on a batch already on this agent's device -> (the posterior
        pass of the loss, its metrics with ``model_grad_norm``).

        ``frozen`` holds the pre-trained group (encoder and action-free RSSM) at learning rate 0
        while its Adam moments keep accumulating, the release's freeze; a world model without a
        pre-trained group (one parameter group) trains everything either way.
        """
        wm_cfg = self.config.world_model
        groups = optimizer.param_groups
        if len(groups) == 2:
            groups[0]["lr"] = 0.0 if frozen else wm_cfg.lr
        begin_step(self.compile_mode)
        loss_fn = self.world_model.loss if self.compiled_loss is None else self.compiled_loss
        loss, obs, metrics = loss_fn(batch, self.bonus)
        with autocast_off(self.device):
            metrics["model_grad_norm"] = apply_gradients(
                loss, optimizer, self.world_model.parameters(), wm_cfg.grad_clip, accelerator
            )
        return obs, metrics

    # Acting ------------------------------------------------------------------------------------

    def initial_state(self, batch: int) -> dict[str, Tensor]:
        """Recurrent state of N environments before their first step: both RSSMs + action."""
        state = self.world_model.initial_state(batch, self.device)
        state["action"] = torch.zeros(batch, self.action_dim, device=self.device)
        return state

    @torch.no_grad()
    def act(
        self,
        obs: dict[str, Any],
        state: dict[str, Tensor] | None = None,
        explore: bool = True,
        state_mean: bool = False,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Actions for N environments -> (actions [N, A] in [-1, 1], new state).

        obs: ``image`` uint8 [N, C, H, W] and ``is_first`` bool [N] (default: True when
        ``state`` is None, else False). ``explore=True`` samples the actor, ``explore=False``
        takes its mode. The latent state is sampled in both, as the release evaluates
        (``eval_state_mean: False``); ``state_mean=True`` takes its mode instead, which makes
        ``explore=False`` deterministic.
        """
        image = torch.as_tensor(obs["image"], device=self.device)
        vc = self.config.video
        expected = (vc.image_channels, vc.image_size, vc.image_size)
        if image.dim() != 4 or tuple(image.shape[1:]) != expected or image.dtype != torch.uint8:
            raise ValueError(
                f"obs['image'] must be uint8 [N, {', '.join(map(str, expected))}], got "
                f"{image.dtype} {list(image.shape)}"
            )
        n = len(image)
        is_first = obs.get("is_first")
        if is_first is None:
            is_first = torch.full((n,), state is None, dtype=torch.bool)
        is_first = torch.as_tensor(is_first, device=self.device).bool().reshape(n)
        state = self.initial_state(n) if state is None else state
        latent, feat = self.world_model.obs_step(
            state, state["action"], image, is_first, sample=not state_mean
        )
        policy = self.behavior.actor(feat)
        action = policy.sample() if explore else policy.mode
        return action, {**latent, "action": action}

    # Training state (exact resume) -------------------------------------------------------------

    def save_training_state(
        self, directory: str | Path, optimizers: dict[str, torch.optim.Optimizer]
    ) -> None:
        """Write optimiser and RNG states beside a checkpoint (tensors + JSON, no pickle), as
        the trainers' checkpoints hold them, plus the update count they belong to."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_optimizer_state(directory, optimizers)
        save_rng_state(directory, rank=0, generators={})
        write_json(directory / TRAINING_STATE_JSON, {"updates": self.num_updates})

    def load_training_state(
        self,
        directory: str | Path,
        optimizers: dict[str, torch.optim.Optimizer],
        restore_rng: bool = True,
    ) -> None:
        """Restore what ``save_training_state`` wrote into freshly built optimisers."""
        directory = Path(directory)
        json_path = directory / TRAINING_STATE_JSON
        if not json_path.is_file():
            raise CheckpointError(f"{directory} has no {TRAINING_STATE_JSON}; nothing to resume")
        updates = json.loads(json_path.read_text()).get("updates")
        if updates != self.num_updates:
            raise CheckpointError(
                f"training state of {directory} was saved after {updates} updates, "
                f"but the agent has done {self.num_updates}: load the weights saved with it"
            )
        load_optimizer_state(directory, optimizers)
        if restore_rng:
            load_rng_state(directory, rank=0)

    # Hub integration ---------------------------------------------------------------------------

    def config_dict(self) -> dict[str, Any]:
        return {
            "apv_hub_version": __version__,
            "action_dim": self.action_dim,
            "agent": self.config.to_dict(),
            "training": self.training_info,
        }

    @classmethod
    def from_config_dict(cls, config: dict[str, Any]) -> APVAgent:
        return cls(
            AgentConfig.from_dict(config["agent"], complete=True),
            int(config["action_dim"]),
            training=config.get("training"),
        )

    def model_card(self, repo_id: str | None = None) -> ModelCard:
        return agent_model_card(self, repo_id=repo_id)


def make_optimizers(agent: APVAgent) -> dict[str, torch.optim.Optimizer]:
    """Adam optimisers (L2 weight decay) for ``model``, ``actor`` and ``critic`` (REFERENCE 2),
    and ``intrinsic`` for a disagreement ensemble (DreamerV2's Plan2Explore settings).

    A stacked world model's optimiser has two parameter groups, the release's two optimisers
    (REFERENCE 2b): group 0 the pre-trained part (encoder + action-free RSSM), group 1 the rest
    (action-conditional RSSM, decoder, heads); `apply_gradients` clips each at ``grad_clip``.
    Both are in the world model's parameter order, so an optimiser saved with one group loads.
    """
    wm, bc = agent.config.world_model, agent.config.behavior
    groups = agent.parameter_groups()
    model_params: list[dict[str, Any]] = [{"params": groups["model"]}]
    if agent.world_model.af_rssm is not None:
        pretrained = agent.world_model.pretrained_parameters()
        ids = {id(p) for p in pretrained}
        model_params = [
            {"params": pretrained},
            {"params": [p for p in groups["model"] if id(p) not in ids]},
        ]
    optimizers = {
        "model": make_adam(model_params, wm.lr, wm.adam_eps, wm.weight_decay),
        "actor": make_adam(groups["actor"], bc.actor_lr, bc.adam_eps, bc.weight_decay),
        "critic": make_adam(groups["critic"], bc.critic_lr, bc.adam_eps, bc.weight_decay),
    }
    if "intrinsic" in groups:
        optimizers["intrinsic"] = make_adam(
            groups["intrinsic"], agent.config.intrinsic.ensemble_lr, wm.adam_eps, wm.weight_decay
        )
    return optimizers
