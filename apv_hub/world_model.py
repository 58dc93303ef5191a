"""APVWorldModel: an action-conditional RSSM stacked on a pre-trained action-free video model.

Frames -> conv encoder -> action-free RSSM posterior features ``af_feat`` -> these (or
concat(embed, af_feat), the DMC setting) are the observation embedding of a fresh
action-conditional RSSM of the same class, which also reads the actions. The decoder (initialised
from the pre-trained one), the reward head and an optional continuation head read the
action-conditional features. Imagination rolls out the action-conditional RSSM only.

``stacked=False`` drops the action-free RSSM: the action-conditional RSSM reads the encoder
embedding directly (DreamerV2; naive fine-tuning when initialised from the action-free RSSM).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from apv_hub.config import APVConfig, ConfigError, WorldModelConfig
from apv_hub.nets import (
    MLP,
    ConvDecoder,
    ConvEncoder,
    check_image_geometry,
    image_nll,
    preprocess,
)
from apv_hub.rssm import RSSM, State
from apv_hub.video_model import APVVideoModel
from apv_hub.weights import CheckpointError

# Keys of a replay batch the world model reads (is_last is not needed by the losses).
BATCH_KEYS = ("image", "action", "reward", "is_first", "is_terminal")


@dataclass
class Observation:
    """What filtering a sequence gives: every tensor is [B, T, ...].

    af_post / af_prior / af_feat are None for a non-stacked (DreamerV2) world model.
    """

    embed: Tensor
    post: State
    prior: State
    feat: Tensor
    af_post: State | None = None
    af_prior: State | None = None
    af_feat: Tensor | None = None


class APVWorldModel(nn.Module):
    """Encoder, action-free RSSM (when stacked), action-conditional RSSM, decoder, heads."""

    def __init__(self, video_config: APVConfig, config: WorldModelConfig, action_dim: int) -> None:
        super().__init__()
        if action_dim <= 0:
            raise ValueError(f"action_dim must be positive, got {action_dim}")
        check_image_geometry(video_config)
        self.video_config, self.config, self.action_dim = video_config, config, action_dim
        vc = video_config
        self.encoder = ConvEncoder(vc)
        embed_dim = self.encoder.embed_dim
        self.af_rssm: RSSM | None = None
        if config.stacked:
            self.af_rssm = RSSM(
                embed_dim,
                0,
                vc.deter,
                vc.hidden,
                vc.stoch,
                vc.classes,
                vc.act,
                vc.gru_layer_norm,
                vc.layer_norm_eps,
                vc.gru_bias,
            )
            ac_in = self.af_rssm.feat_dim
            if config.ac_input == "embed_af_feat":
                ac_in += embed_dim
        else:
            ac_in = embed_dim
        self.rssm = RSSM(
            ac_in,
            action_dim,
            deter=config.deter or vc.deter,
            hidden=config.hidden or vc.hidden,
            stoch=config.stoch or vc.stoch,
            classes=config.classes or vc.classes,
            act=vc.act,
            layer_norm=vc.gru_layer_norm,
            norm_eps=vc.layer_norm_eps,
            gru_bias=vc.gru_bias,
        )
        feat_dim = self.rssm.feat_dim
        self.decoder = ConvDecoder(vc, feat_dim)
        self.reward_head = MLP(feat_dim, 1, config.head_units, config.head_layers, vc.act)
        self.continuation_head = (
            MLP(feat_dim, 1, config.head_units, config.head_layers, vc.act)
            if config.discount_head
            else None
        )

    @property
    def feat_dim(self) -> int:
        """Size of the action-conditional features the heads and the actor-critic read."""
        return self.rssm.feat_dim

    @property
    def af_feat_dim(self) -> int:
        """Size of the action-free features (0 without an action-free RSSM)."""
        return self.af_rssm.feat_dim if self.af_rssm is not None else 0

    # Building from a pre-trained video model ---------------------------------------------------

    @classmethod
    def from_video_model(
        cls,
        source: str | Path | APVVideoModel,
        config: WorldModelConfig,
        action_dim: int,
        **download_kwargs: Any,
    ) -> APVWorldModel:
        """Stack a fresh action-conditional model on a video model (instance, folder or repo id).

        The video model's APVConfig fixes the architecture; ``config.transfer`` says what is
        copied from it (see ``load_pretrained``).
        """
        video = (
            source
            if isinstance(source, APVVideoModel)
            else APVVideoModel.from_pretrained(source, **download_kwargs)
        )
        model = cls(video.config, config, action_dim)
        model.load_pretrained(video)
        return model.to(next(video.parameters()).device)

    def load_pretrained(self, video: APVVideoModel) -> list[str]:
        """Copy pre-trained weights per ``config.transfer``; returns the parts copied.

        - ``all``: encoder, decoder, and the action-free RSSM (stacked) or, non-stacked (naive
          fine-tuning), the action-conditional RSSM initialised from the action-free one.
        - ``encoder_decoder``: the conv encoder and decoder only.
        - ``none``: nothing (APV without pre-training, DreamerV2).
        The action-conditional RSSM of a stacked model and the heads are never copied.
        """
        if video.config != self.video_config:
            raise CheckpointError(
                "the video model's APVConfig differs from this world model's; build the world "
                "model with APVWorldModel.from_video_model so that the architectures match"
            )
        transfer = self.config.transfer
        if transfer == "none":
            return []
        self.encoder.load_state_dict(video.encoder.state_dict())
        parts = ["encoder", *self._load_decoder(video.decoder)]
        if transfer == "all":
            if self.af_rssm is not None:
                self.af_rssm.load_state_dict(video.rssm.state_dict())
                parts.append("af_rssm")
            else:
                self._load_rssm_from_action_free(video.rssm)
                parts.append("rssm (from the action-free RSSM)")
        return parts

    @torch.no_grad()
    def _load_decoder(self, source: ConvDecoder) -> list[str]:
        """Initialise the decoder from the pre-trained one.

        The transposed convolutions map the same 1x1 map to images in both, so they are always
        copied, as is the stem's bias. The stem's weight maps features to that map: it is copied
        when the action-conditional features have the size of the action-free ones; otherwise
        (another RSSM size, and always so for ``embed_af_feat`` inputs of a different size) it
        keeps its fresh initialisation, since no column correspondence exists.
        """
        self.decoder.net.load_state_dict(source.net.state_dict())
        self.decoder.stem.bias.copy_(source.stem.bias)
        if self.decoder.stem.weight.shape == source.stem.weight.shape:
            self.decoder.stem.weight.copy_(source.stem.weight)
            return ["decoder"]
        return ["decoder (convolutions; stem weight fresh: feature sizes differ)"]

    @torch.no_grad()
    def _load_rssm_from_action_free(self, source: RSSM) -> None:
        """Naive fine-tuning: the action-conditional RSSM starts as the action-free one.

        An action-free RSSM is the action-conditional one with its action inputs masked to zero,
        so every weight carries over except the input columns that read the action, which keep
        their fresh initialisation (the paper's "re-initialised at fine-tuning").
        """
        own, theirs = self.rssm.state_dict(), source.state_dict()
        action_cols = "img_in.0.weight"
        for name, tensor in theirs.items():
            target = own[name]
            if name == action_cols and target.shape[:1] == tensor.shape[:1]:
                target = target[:, : tensor.shape[1]]
            if target.shape != tensor.shape:
                raise ConfigError(
                    f"naive fine-tuning needs the action-conditional RSSM to have the action-free "
                    f"RSSM's sizes; {name} is {tuple(own[name].shape)} here and "
                    f"{tuple(tensor.shape)} in the checkpoint"
                )
            target.copy_(tensor)

    def pretrained_parameters(self) -> list[nn.Parameter]:
        """Encoder and action-free RSSM parameters: what ``freeze_pretrained_updates`` holds."""
        params = list(self.encoder.parameters())
        if self.af_rssm is not None:
            params += list(self.af_rssm.parameters())
        return params

    # Filtering and the loss --------------------------------------------------------------------

    def observe(
        self,
        image: Tensor,
        action: Tensor,
        is_first: Tensor,
        sample: bool = True,
    ) -> Observation:
        """Filter uint8 image [B, T, C, H, W] with actions [B, T, A] and is_first [B, T]."""
        embed = self.encoder(preprocess(image))
        af_post = af_prior = af_feat = None
        ac_in = embed
        if self.af_rssm is not None:
            af_post, af_prior = self.af_rssm.observe(embed, None, is_first, sample=sample)
            af_feat = self.af_rssm.get_feat(af_post)
            ac_in = af_feat
            if self.config.ac_input == "embed_af_feat":
                ac_in = torch.cat([embed, af_feat], -1)
        post, prior = self.rssm.observe(ac_in, action, is_first, sample=sample)
        return Observation(embed, post, prior, self.rssm.get_feat(post), af_post, af_prior, af_feat)

    def loss(
        self, batch: dict[str, Tensor], bonus: nn.Module | None = None
    ) -> tuple[Tensor, Observation, dict[str, Tensor]]:
        """World-model loss of a replay batch -> (scalar loss, observation, metrics).

        batch: image uint8 [B, T, C, H, W], action [B, T, A], reward [B, T], is_first and
        is_terminal bool [B, T]. ``bonus`` maps af_feat [B, T, D] to (beta * bonus [B, T'],
        metrics); the reward head then regresses reward + bonus on the first T' steps.
        """
        cfg = self.config
        check_batch(batch, self.video_config, self.action_dim)
        obs = self.observe(batch["image"], batch["action"], batch["is_first"])
        losses: dict[str, Tensor] = {}
        metrics: dict[str, Tensor] = {}  # Detached 0-dim tensors: no host sync per update.
        losses["image"] = image_nll(self.decoder(obs.feat), batch["image"])
        losses["kl"], kl_value = RSSM.kl_loss(
            obs.post, obs.prior, cfg.kl_balance, cfg.free_nats, cfg.free_avg
        )
        metrics["kl"] = kl_value.detach().mean()
        scales = {
            "image": cfg.image_loss_scale,
            "kl": cfg.kl_scale,
            "reward": cfg.reward_loss_scale,
            "af_kl": cfg.af_kl_scale,
            "continuation": cfg.discount_loss_scale,
        }
        if obs.af_post is not None:
            af_kl_loss, af_kl_value = RSSM.kl_loss(
                obs.af_post, obs.af_prior, cfg.kl_balance, cfg.free_nats, cfg.free_avg
            )
            metrics["af_kl"] = af_kl_value.detach().mean()
            # At scale 0 (fine-tuning default) the action-free RSSM learns only through af_feat.
            if cfg.af_kl_scale:
                losses["af_kl"] = af_kl_loss
        reward, feat = batch["reward"].float(), obs.feat
        if bonus is not None:
            if obs.af_feat is None:
                raise ConfigError("the intrinsic bonus needs a stacked world model")
            intrinsic, bonus_metrics = bonus(obs.af_feat)
            metrics.update(bonus_metrics)
            # The windowed bonus exists for the first T' = T - window + 1 steps only.
            steps = intrinsic.shape[1]
            reward, feat = reward[:, :steps] + intrinsic, feat[:, :steps]
        pred = self.predict_reward(feat)
        losses["reward"] = 0.5 * (pred - reward).pow(2).mean()
        if self.continuation_head is not None:
            logits = self.continuation_head(obs.feat).squeeze(-1).float()
            target = 1.0 - batch["is_terminal"].float()
            losses["continuation"] = F.binary_cross_entropy_with_logits(logits, target)
        total = sum(scales[name] * value for name, value in losses.items())
        metrics.update({f"{name}_loss": value.detach() for name, value in losses.items()})
        metrics["model_loss"] = total.detach()
        metrics["reward_target_mean"] = reward.detach().mean()
        metrics["reward_pred_mean"] = pred.detach().mean()
        return total, obs, metrics

    # Imagination (the actor-critic's model interface) ------------------------------------------

    def get_feat(self, state: State) -> Tensor:
        """Action-conditional state [N, ...] -> features [N, feat_dim]."""
        return self.rssm.get_feat(state)

    def img_step(self, state: State, action: Tensor) -> State:
        """One prior step of the action-conditional RSSM: state [N, ...], action [N, A]."""
        return self.rssm.img_step(state, action)

    def predict_reward(self, feat: Tensor) -> Tensor:
        """Features [..., feat_dim] -> predicted (extrinsic + beta * bonus) reward [...] (fp32)."""
        return self.reward_head(feat).squeeze(-1).float()

    def predict_continuation(self, feat: Tensor) -> Tensor | None:
        """Features [..., feat_dim] -> probability the episode goes on [...] (float32), or None
        (no head)."""
        if self.continuation_head is None:
            return None
        return torch.sigmoid(self.continuation_head(feat).squeeze(-1).float())

    # Acting: one filtering step ----------------------------------------------------------------

    def initial_state(self, batch: int, device: torch.device | str = "cpu") -> dict[str, Tensor]:
        """Flat recurrent state of both RSSMs (action-free keys prefixed ``af_``) [N, ...]."""
        state = dict(self.rssm.initial(batch, device))
        if self.af_rssm is not None:
            state.update({f"af_{k}": v for k, v in self.af_rssm.initial(batch, device).items()})
        return state

    def obs_step(
        self,
        state: dict[str, Tensor],
        prev_action: Tensor,
        image: Tensor,
        is_first: Tensor,
        sample: bool = True,
    ) -> tuple[dict[str, Tensor], Tensor]:
        """Filter one frame: uint8 image [N, C, H, W], prev_action [N, A], is_first [N] bool.

        Returns the new flat state and action-conditional features [N, feat_dim].
        """
        embed = self.encoder(preprocess(image))
        ac_in, new_state = embed, {}
        if self.af_rssm is not None:
            af_prev = {k[3:]: v for k, v in state.items() if k.startswith("af_")}
            af_post, _ = self.af_rssm.obs_step(af_prev, None, embed, is_first, sample)
            new_state.update({f"af_{k}": v for k, v in af_post.items()})
            ac_in = self.af_rssm.get_feat(af_post)
            if self.config.ac_input == "embed_af_feat":
                ac_in = torch.cat([embed, ac_in], -1)
        prev = {k: state[k] for k in ("deter", "stoch", "logits")}
        post, _ = self.rssm.obs_step(prev, prev_action, ac_in, is_first, sample)
        new_state.update(post)
        return new_state, self.rssm.get_feat(post)


def check_batch(batch: dict[str, Tensor], video_config: APVConfig, action_dim: int) -> None:
    """Raise an error naming the key when a replay batch has a wrong key, dtype or shape."""
    missing = [k for k in BATCH_KEYS if k not in batch]
    if missing:
        raise KeyError(f"replay batch is missing key(s) {missing}; it has {sorted(batch)}")
    image = batch["image"]
    c, size = video_config.image_channels, video_config.image_size
    if image.dim() != 5 or tuple(image.shape[2:]) != (c, size, size):
        raise ValueError(
            f"batch['image'] must be [B, T, {c}, {size}, {size}], got {tuple(image.shape)}"
        )
    if image.dtype != torch.uint8:
        raise TypeError(f"batch['image'] must be uint8, got {image.dtype}")
    lead = tuple(image.shape[:2])
    expected = {
        "action": (*lead, action_dim),
        "reward": lead,
        "is_first": lead,
        "is_terminal": lead,
    }
    for key, shape in expected.items():
        if tuple(batch[key].shape) != shape:
            raise ValueError(f"batch[{key!r}] must be {list(shape)}, got {list(batch[key].shape)}")
    for key in ("is_first", "is_terminal"):
        if batch[key].dtype != torch.bool:
            raise TypeError(f"batch[{key!r}] must be bool, got {batch[key].dtype}")
