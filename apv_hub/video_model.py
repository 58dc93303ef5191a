"""APVVideoModel: the action-free latent video prediction model of APV's pre-training phase.

Conv encoder -> action-free RSSM (discrete latents) -> conv decoder, trained on videos alone by
the ELBO: image log-likelihood + kl_scale * balanced KL(posterior || prior). Checkpoints are
``model.safetensors`` + ``config.json`` + a ``README.md`` model card, loaded without unpickling.
"""

from __future__ import annotations

from typing import Any

import torch
from huggingface_hub import ModelCard
from torch import Tensor, nn

from apv_hub.cards import VIDEO_MODEL_METADATA, video_model_card
from apv_hub.config import APVConfig
from apv_hub.hub import SafetensorsHubMixin
from apv_hub.nets import (
    ConvDecoder,
    ConvEncoder,
    check_image_geometry,
    image_nll,
    keras_init_,
    postprocess,
    preprocess,
)
from apv_hub.rssm import RSSM, State


def default_is_first(frames: Tensor) -> Tensor:
    """[B, T, ...] -> bool [B, T], True at t = 0 only: each batch row is one episode."""
    is_first = torch.zeros(frames.shape[:2], dtype=torch.bool, device=frames.device)
    is_first[:, 0] = True
    return is_first


class APVVideoModel(nn.Module, SafetensorsHubMixin, **VIDEO_MODEL_METADATA):
    """Encoder + action-free RSSM + decoder.

    Frames at the edges are uint8 [B, T, C, H, W]; features are [B, T, feat_dim] with
    feat_dim = stoch * classes + deter.
    """

    MODEL_TYPE = "apv-video"
    CONFIG_CLASS = APVConfig

    def __init__(self, config: APVConfig | dict | None = None, training: dict | None = None):
        super().__init__()
        if config is None:
            config = APVConfig()
        elif isinstance(config, dict):
            config = APVConfig.from_dict(config)
        check_image_geometry(config)
        self.config = config
        # What the checkpoint was trained on (data, steps, command, final metrics) for its card.
        self.training_info: dict[str, Any] = dict(training or {})
        self.encoder = ConvEncoder(config)
        self.rssm = RSSM(
            embed_dim=self.encoder.embed_dim,
            action_dim=0,
            deter=config.deter,
            hidden=config.hidden,
            stoch=config.stoch,
            classes=config.classes,
            act=config.act,
            layer_norm=config.gru_layer_norm,
            norm_eps=config.layer_norm_eps,
            gru_bias=config.gru_bias,
        )
        self.decoder = ConvDecoder(config, self.rssm.feat_dim)
        if config.init == "keras":
            keras_init_(self)

    @property
    def feat_dim(self) -> int:
        return self.rssm.feat_dim

    @property
    def embed_dim(self) -> int:
        return self.encoder.embed_dim

    def _check_frames(self, frames: Tensor) -> None:
        c, size = self.config.image_channels, self.config.image_size
        if frames.dim() != 5 or tuple(frames.shape[2:]) != (c, size, size):
            raise ValueError(
                f"expected frames [B, T, {c}, {size}, {size}], got {tuple(frames.shape)}"
            )
        if frames.dtype != torch.uint8:
            raise TypeError(f"expected uint8 frames, got {frames.dtype}")

    def observe(
        self, frames: Tensor, is_first: Tensor | None = None, sample: bool = True
    ) -> tuple[Tensor, State, State]:
        """uint8 frames [B, T, C, H, W] -> (embed [B, T, E], posterior, prior [B, T, ...])."""
        self._check_frames(frames)
        if is_first is None:
            is_first = default_is_first(frames)
        embed = self.encoder(preprocess(frames))
        post, prior = self.rssm.observe(embed, None, is_first, sample=sample)
        return embed, post, prior

    def features(
        self, frames: Tensor, is_first: Tensor | None = None, sample: bool = True
    ) -> Tensor:
        """uint8 frames [B, T, C, H, W] -> action-free posterior features [B, T, feat_dim].

        ``sample=False`` uses the latent modes instead of draws (deterministic features)."""
        _, post, _ = self.observe(frames, is_first, sample=sample)
        return self.rssm.get_feat(post)

    def loss(
        self, frames: Tensor, is_first: Tensor | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Negative ELBO of uint8 frames [B, T, C, H, W] -> (scalar loss, metrics).

        The metrics are detached 0-dim tensors on the model's device: reading them is left to
        the caller's log interval, so a training step never waits for the device.

        Image term: negative log-likelihood under a unit-variance Normal, summed over C x H x W and
        averaged over batch and time. KL term: balanced KL summed over the latents.
        """
        cfg = self.config
        _, post, prior = self.observe(frames, is_first)
        recon = self.decoder(self.rssm.get_feat(post))
        nll = image_nll(recon, frames)
        kl_loss, kl_value = self.rssm.kl_loss(
            post, prior, cfg.kl_balance, cfg.free_nats, cfg.free_avg
        )
        loss = cfg.image_loss_scale * nll + cfg.kl_scale * kl_loss
        metrics = {
            "loss": loss.detach(),
            "image_nll": nll.detach(),
            "image_mse": (recon.detach().float() - preprocess(frames)).pow(2).mean(),
            "kl": kl_value.detach().mean(),
            "kl_loss": kl_loss.detach(),
        }
        return loss, metrics

    @torch.no_grad()
    def predict(self, context_frames: Tensor, horizon: int, sample: bool = False) -> Tensor:
        """Open-loop prediction: uint8 [B, T_ctx, C, H, W] -> uint8 [B, horizon, C, H, W].

        The context is filtered by the posterior; the following frames are decoded from a prior
        rollout (latent modes by default, random draws with ``sample=True``).
        """
        _, post, _ = self.observe(context_frames, sample=sample)
        last = {k: v[:, -1] for k, v in post.items()}
        imagined = self.rssm.imagine(last, horizon=horizon, sample=sample)
        return postprocess(self.decoder(self.rssm.get_feat(imagined)))

    def num_parameters(self) -> dict[str, int]:
        """Parameter counts of each part and in total."""
        counts = {
            name: sum(p.numel() for p in getattr(self, name).parameters())
            for name in ("encoder", "rssm", "decoder")
        }
        counts["total"] = sum(counts.values())
        return counts

    # Hub integration -------------------------------------------------------------------------

    def model_card(self, repo_id: str | None = None) -> ModelCard:
        return video_model_card(self, repo_id=repo_id)
