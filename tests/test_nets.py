"""The conv encoder and decoder run channels-last and compute what the contiguous layout does."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from apv_hub.config import APVConfig
from apv_hub.nets import ConvDecoder, ConvEncoder

CHANNELS_LAST = torch.channels_last


def conv_weights(module: nn.Module) -> list[torch.Tensor]:
    return [m.weight for m in module.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)]


def contiguous_copy(module: nn.Module) -> nn.Module:
    """The same module with every weight in the default (NCHW-contiguous) layout."""
    plain = copy.deepcopy(module).to(memory_format=torch.contiguous_format)
    assert all(w.is_contiguous() for w in conv_weights(plain))
    return plain


def grads(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad for name, p in module.named_parameters()}


def assert_close_rel(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    """Relative L2 error below 1e-5: the layouts sum in other orders (bias gradients sum some
    10^4-10^5 float32 terms, an error of order 1.2e-7 * sqrt(terms)), nothing more."""
    assert got.shape == want.shape, what
    assert (got - want).norm() <= 1e-5 * want.norm(), f"{what}: {(got - want).norm()}"


def assert_backward_close(
    fast: nn.Module,
    plain: nn.Module,
    outputs: tuple[torch.Tensor, torch.Tensor],
    inputs: tuple[torch.Tensor, torch.Tensor],
) -> None:
    """Outputs, and the gradients of one upstream gradient into inputs and parameters, agree."""
    out, want = outputs
    assert_close_rel(out, want, "output")
    upstream = torch.randn_like(out)
    (out * upstream).sum().backward()
    (want * upstream).sum().backward()
    assert_close_rel(inputs[0].grad, inputs[1].grad, "input gradient")
    want_grads = grads(plain)
    for name, grad in grads(fast).items():
        assert_close_rel(grad, want_grads[name], name)


def leaf_pair(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x.clone().requires_grad_(), x.clone().requires_grad_()


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_encoder_channels_last_equals_contiguous(preset: str) -> None:
    torch.manual_seed(0)
    config = APVConfig.preset(preset)
    encoder = ConvEncoder(config)
    assert all(w.is_contiguous(memory_format=CHANNELS_LAST) for w in conv_weights(encoder))
    plain = contiguous_copy(encoder)
    images = torch.rand(2, 3, 3, config.image_size, config.image_size) - 0.5
    fast_in, plain_in = leaf_pair(images)
    layouts = []
    encoder.net[0].register_forward_pre_hook(
        lambda _, args: layouts.append(args[0].is_contiguous(memory_format=CHANNELS_LAST))
    )
    out = encoder(fast_in)
    assert layouts == [True], "the first convolution's input is not channels-last"
    # The contiguous path: the same layers on NCHW-contiguous input and weights.
    want = plain.net(plain_in.reshape(-1, *images.shape[2:])).reshape(out.shape)
    assert_backward_close(encoder, plain, (out, want), (fast_in, plain_in))


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_decoder_channels_last_equals_contiguous(preset: str) -> None:
    torch.manual_seed(0)
    config = APVConfig.preset(preset)
    decoder = ConvDecoder(config, 40)
    assert all(w.is_contiguous(memory_format=CHANNELS_LAST) for w in conv_weights(decoder))
    plain = contiguous_copy(decoder)
    fast_in, plain_in = leaf_pair(torch.randn(2, 3, 40))
    out = decoder(fast_in)
    assert out.shape == (2, 3, 3, config.image_size, config.image_size)
    assert out.flatten(0, 1).is_contiguous(memory_format=CHANNELS_LAST)
    hidden = plain.stem(plain_in.reshape(-1, 40))[:, :, None, None].contiguous()
    want = plain.net(hidden).reshape(out.shape)
    assert want.is_contiguous()
    assert_backward_close(decoder, plain, (out, want), (fast_in, plain_in))


def test_layout_survives_loading_and_moving_and_state_dicts_are_the_same_values() -> None:
    """Checkpoints of either layout load into channels-last modules, value for value."""
    config = APVConfig.preset("tiny")
    source = contiguous_copy(ConvEncoder(config))
    encoder = ConvEncoder(config)
    encoder.load_state_dict(source.state_dict())
    encoder = encoder.to("cpu", torch.float32)
    assert all(w.is_contiguous(memory_format=CHANNELS_LAST) for w in conv_weights(encoder))
    for name, value in encoder.state_dict().items():
        assert torch.equal(value, source.state_dict()[name]), name
