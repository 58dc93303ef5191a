"""Network building blocks: conv encoder, conv decoder, MLP, layer-normed GRU cell.

Each exists once; the video model, the stacked world model and the actor-critic compose them.
Images inside the networks are float in [-0.5, 0.5]; conversion from uint8 lives in
``preprocess`` / ``postprocess``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from apv_hub.config import APVConfig


def keras_init_(module: nn.Module) -> nn.Module:
    """Keras's defaults on every dense and (transposed) conv layer of ``module``, in place:
    glorot-uniform weights (U(+-sqrt(6 / (fan_in + fan_out))), fans over the receptive field)
    and zero biases, as the release builds its networks; PyTorch's own defaults are
    kaiming-uniform-like weights and non-zero biases. Layer norms keep weight 1 and bias 0."""
    for layer in module.modules():
        if isinstance(layer, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.xavier_uniform_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
    return module


def activation(name: str) -> nn.Module:
    return {"elu": nn.ELU, "relu": nn.ReLU, "silu": nn.SiLU, "tanh": nn.Tanh}[name]()


def preprocess(frames: Tensor) -> Tensor:
    """uint8 frames [..., C, H, W] in [0, 255] -> float in [-0.5, 0.5]."""
    return frames.float() / 255.0 - 0.5


def postprocess(images: Tensor) -> Tensor:
    """Float images [..., C, H, W] around [-0.5, 0.5] (any float dtype) -> uint8 frames."""
    return ((images.float().clamp(-0.5, 0.5) + 0.5) * 255.0).round().to(torch.uint8)


def autocast_dtype(device: torch.device | str) -> torch.dtype | None:
    """The dtype autocast runs matmuls in on ``device``'s type, or None where it is off."""
    kind = torch.device(device).type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else None


def autocast_off(device: torch.device | str) -> torch.autocast:
    """A region with autocast off on ``device``'s type, inside a caller's bf16 autocast.

    For what must run in float32 whatever the trainer's precision: the bonus's projection and
    k-NN search, and backward passes with their optimiser steps (autocast is meant for forward
    passes only; backward ops run in the dtypes their forward ops used anyway).
    """
    return torch.autocast(torch.device(device).type, enabled=False)


def image_nll(recon: Tensor, frames: Tensor) -> Tensor:
    """Unit-variance Normal NLL of uint8 frames [B, T, C, H, W] under mean images ``recon``.

    Summed over C x H x W, averaged over batch and time (the video model's convention).
    """
    target = preprocess(frames)
    pixels = math.prod(target.shape[2:])
    sq_err = (recon.float() - target).pow(2).sum((2, 3, 4))
    return (0.5 * sq_err + 0.5 * math.log(2 * math.pi) * pixels).mean()


def conv_out_size(size: int, kernels: tuple[int, ...]) -> int:
    """Spatial size after stride-2 'valid' convolutions with the given kernels."""
    for k in kernels:
        size = (size - k) // 2 + 1
    return size


def deconv_out_size(kernels: tuple[int, ...]) -> int:
    """Spatial size of stride-2 transposed convolutions applied to a 1x1 map."""
    size = 1
    for k in kernels:
        size = (size - 1) * 2 + k
    return size


def check_image_geometry(config: APVConfig) -> None:
    """Raise a clear error when the conv stacks cannot map frames to and from features."""
    if conv_out_size(config.image_size, config.encoder_kernels) < 1:
        raise ValueError(
            f"encoder_kernels {config.encoder_kernels} shrink {config.image_size}x"
            f"{config.image_size} frames below 1x1; use fewer or smaller kernels"
        )
    decoded = deconv_out_size(config.decoder_kernels)
    if decoded != config.image_size:
        raise ValueError(
            f"decoder_kernels {config.decoder_kernels} produce {decoded}x{decoded} frames, "
            f"not image_size {config.image_size}"
        )


class ConvEncoder(nn.Module):
    """Frames [..., C, H, W] float -> embeddings [..., embed_dim].

    Stride-2 'valid' convolutions with channels depth * 2**i; 64x64 frames at depth 48 with kernels
    4,4,4,4 give 384 x 2 x 2 = 1536 features, as in DreamerV2.

    Weights and activations are kept channels-last (NHWC in memory; shapes and the state dict's
    values are unchanged), the layout oneDNN on CPUs and cuDNN's tensor-core kernels work in
    natively, which saves layout conversions around every convolution (a paper-size
    pre-training step's peak memory on a CPU: 1.55 -> 1.47 GiB).
    """

    def __init__(self, config: APVConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = config.image_channels
        for i, k in enumerate(config.encoder_kernels):
            out = config.cnn_depth * 2**i
            layers += [nn.Conv2d(channels, out, k, stride=2), activation(config.act)]
            channels = out
        self.net = nn.Sequential(*layers, nn.Flatten()).to(memory_format=torch.channels_last)
        spatial = conv_out_size(config.image_size, config.encoder_kernels)
        self.embed_dim = channels * spatial * spatial

    def forward(self, images: Tensor) -> Tensor:
        lead = images.shape[:-3]
        x = images.reshape(-1, *images.shape[-3:]).contiguous(memory_format=torch.channels_last)
        x = self.net(x)
        return x.reshape(*lead, self.embed_dim)


class ConvDecoder(nn.Module):
    """Features [..., in_dim] -> mean images [..., C, H, W] (a unit-variance Normal's mean).

    A linear layer to 32 * depth channels at 1x1, then stride-2 transposed convolutions with
    channels depth * 2**(n-i-2); kernels 5,5,6,6 grow 1x1 to 64x64.

    The transposed convolutions' weights are channels-last like the encoder's, so their outputs
    are too (a 1x1 input map is both layouts at once); the returned images keep that layout.
    """

    def __init__(self, config: APVConfig, in_dim: int) -> None:
        super().__init__()
        depth, kernels = config.cnn_depth, config.decoder_kernels
        self.stem = nn.Linear(in_dim, 32 * depth)
        layers: list[nn.Module] = []
        channels = 32 * depth
        for i, k in enumerate(kernels):
            last = i == len(kernels) - 1
            out = config.image_channels if last else depth * 2 ** (len(kernels) - i - 2)
            layers.append(nn.ConvTranspose2d(channels, out, k, stride=2))
            if not last:
                layers.append(activation(config.act))
            channels = out
        self.net = nn.Sequential(*layers).to(memory_format=torch.channels_last)

    def forward(self, feat: Tensor) -> Tensor:
        lead = feat.shape[:-1]
        x = self.stem(feat.reshape(-1, feat.shape[-1]))
        x = self.net(x[:, :, None, None])
        return x.reshape(*lead, *x.shape[1:])


class MLP(nn.Module):
    """[..., in_dim] -> [..., out_dim] through `layers` hidden layers of `units` units."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        units: int,
        layers: int,
        act: str = "elu",
        layer_norm: bool = False,
    ) -> None:
        super().__init__()
        mods: list[nn.Module] = []
        dim = in_dim
        for _ in range(layers):
            mods.append(nn.Linear(dim, units))
            if layer_norm:
                mods.append(nn.LayerNorm(units))
            mods.append(activation(act))
            dim = units
        mods.append(nn.Linear(dim, out_dim))
        self.net = nn.Sequential(*mods)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class GRUCell(nn.Module):
    """DreamerV2's GRU: one linear layer for all gates, optional layer norm over them.

    The update gate is biased towards keeping the state (sigmoid(u - 1)), and the reset gate
    scales the candidate rather than the previous state.
    """

    def __init__(
        self,
        in_dim: int,
        size: int,
        layer_norm: bool = True,
        norm_eps: float = 1e-5,
        bias: bool = False,
    ) -> None:
        """``bias``: give the gate layer a bias also when layer norm follows it (the release's
        GRU has one); without layer norm it always has one."""
        super().__init__()
        self.linear = nn.Linear(in_dim + size, 3 * size, bias=bias or not layer_norm)
        self.norm = nn.LayerNorm(3 * size, eps=norm_eps) if layer_norm else nn.Identity()

    def forward(self, x: Tensor, state: Tensor) -> Tensor:
        """x [B, in_dim], state [B, size] -> new state [B, size] (float32).

        Under bf16 autocast the matmul runs in bf16; the layer norm, the gates and the state stay
        in float32 (on CPU autocast would keep the layer norm in bf16, on CUDA not: the explicit
        cast makes both the same), so the recurrent state does not drift by bf16 rounding.
        """
        parts = self.norm(self.linear(torch.cat([x, state], -1)).float())
        reset, cand, update = parts.chunk(3, -1)
        cand = torch.tanh(torch.sigmoid(reset) * cand)
        update = torch.sigmoid(update - 1)
        return update * cand + (1 - update) * state
