"""Tiny published-format checkpoints and reference implementations of their forward passes.

The release's files are written the way its ``common.Module.save`` writes them: a tuple of numpy
arrays in ``tf.Module.variables`` order (see the variable lists below, read from the release's
``apv_pretraining/common/nets.py``), pickled with protocol 3 under numpy 1.x module names
(``numpy.core.multiarray``), as Python 3.7/3.8 with TensorFlow 2.6 did. ContextWM's are
``torch.save``-d state dicts with its key names.

The references compute what the original code computes, from its own semantics and layouts:
``tf_reference`` in numpy, channels-last, as TensorFlow/Keras do (Conv2D and Conv2DTranspose
'valid' with stride 2, Dense as x @ kernel + bias, Keras LayerNormalization with epsilon 1e-3,
DreamerV2's GRU, flattening (h, w, c)); ``contextwm_reference`` with torch.nn.functional on
ContextWM's state dict, channels-first. Neither uses apv-hub's modules or converter.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Sizes:
    """A tiny model, every size distinct so that a transposed or misplaced tensor is caught."""

    channels: int = 3
    depth: int = 4  # encoder channels 4, 8, 16, 32; 64x64 frames -> 2x2x32 = 128 features
    enc_kernels: tuple[int, ...] = (4, 4, 4, 4)
    dec_kernels: tuple[int, ...] = (5, 5, 6, 6)
    deter: int = 16
    hidden: int = 12
    stoch: int = 3
    classes: int = 5
    zero_action: int = 50  # the release's zero_action width (ContextWM: fill_action)

    @property
    def stoch_dim(self) -> int:
        return self.stoch * self.classes

    @property
    def embed(self) -> int:
        return self.depth * 2 ** (len(self.enc_kernels) - 1) * 2 * 2


def release_variables(s: Sizes) -> dict[str, list[tuple[str, tuple[int, ...]]]]:
    """Each release file's (variable, TensorFlow shape) list in the order Module.save writes it.

    tf.Module.variables: a module's attributes in sorted order, layers of DreamerV2's
    ``Module.get`` in its ``_modules`` dict (sorted keys), a Keras layer's weights in creation
    order. EnsembleRSSM: ``_cells[0]`` (Dense with bias, then LayerNormalization) comes before
    ``_modules``; its ``_cell`` is never built and has no variables.
    """
    enc, dec = [], []
    channels = s.channels
    for i, k in enumerate(s.enc_kernels):
        out = s.depth * 2**i
        enc += [(f"conv{i}/kernel", (k, k, channels, out)), (f"conv{i}/bias", (out,))]
        channels = out
    channels = 32 * s.depth
    n = len(s.dec_kernels)
    for i, k in enumerate(s.dec_kernels):
        out = s.channels if i == n - 1 else s.depth * 2 ** (n - i - 2)
        dec += [(f"conv{i}/kernel", (k, k, out, channels)), (f"conv{i}/bias", (out,))]
        channels = out
    feat = s.stoch_dim + s.deter
    dec += [("convin/kernel", (feat, 32 * s.depth)), ("convin/bias", (32 * s.depth,))]
    rssm = [
        ("gru/kernel", (s.hidden + s.deter, 3 * s.deter)),
        ("gru/bias", (3 * s.deter,)),
        ("gru/norm/gamma", (3 * s.deter,)),
        ("gru/norm/beta", (3 * s.deter,)),
        ("img_dist_0/kernel", (s.hidden, s.stoch_dim)),
        ("img_dist_0/bias", (s.stoch_dim,)),
        ("img_in/kernel", (s.stoch_dim + s.zero_action, s.hidden)),
        ("img_in/bias", (s.hidden,)),
        ("img_out_0/kernel", (s.deter, s.hidden)),
        ("img_out_0/bias", (s.hidden,)),
        ("obs_dist/kernel", (s.hidden, s.stoch_dim)),
        ("obs_dist/bias", (s.stoch_dim,)),
        ("obs_out/kernel", (s.deter + s.embed, s.hidden)),
        ("obs_out/bias", (s.hidden,)),
    ]
    return {"encoder": enc, "rssm": rssm, "decoder": dec}


def random_arrays(spec: list[tuple[str, tuple[int, ...]]], seed: int) -> dict[str, np.ndarray]:
    """Seeded float32 values; layer-norm gains near 1 and every bias non-zero."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in spec:
        fan_in = shape[0] if len(shape) == 2 else int(np.prod(shape[:-1])) if shape[1:] else 1
        scale = 1.0 / np.sqrt(fan_in) if len(shape) > 1 else 0.1
        value = rng.normal(0.0, scale, shape)
        if name.endswith("gamma"):
            value = 1.0 + value
        out[name] = value.astype(np.float32)
    return out


def numpy1_pickle(value: object) -> bytes:
    """Pickle as numpy 1.x under Python 3.7 did: protocol 3, ``numpy.core`` module names."""
    data = pickle.dumps(value, protocol=3)
    return data.replace(b"cnumpy._core.", b"cnumpy.core.")


def write_release_run(folder: Path, s: Sizes = Sizes(), seed: int = 0) -> dict[str, np.ndarray]:
    """Write the three release pickles -> the arrays by ``part/variable`` name."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for i, (part, spec) in enumerate(release_variables(s).items()):
        values = random_arrays(spec, seed * 10 + i)
        ordered = tuple(values[name] for name, _ in spec)  # tf.nest.map_structure keeps a tuple
        (folder / f"{part}_variables.pkl").write_bytes(numpy1_pickle(ordered))
        arrays.update({f"{part}/{name}": v for name, v in values.items()})
    return arrays


# The TensorFlow semantics, in numpy (float64) --------------------------------------------------


def elu(x: np.ndarray) -> np.ndarray:
    return np.where(x > 0, x, np.expm1(np.minimum(x, 0)))


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def conv2d_valid_s2(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """tf.nn.conv2d, 'VALID', stride 2: x [N, H, W, in], kernel [k, k, in, out]."""
    k = kernel.shape[0]
    ho, wo = (x.shape[1] - k) // 2 + 1, (x.shape[2] - k) // 2 + 1
    out = np.zeros((x.shape[0], ho, wo, kernel.shape[3]))
    for a in range(k):
        for b in range(k):
            out += x[:, a : a + 2 * ho - 1 : 2, b : b + 2 * wo - 1 : 2, :] @ kernel[a, b]
    return out


def conv2d_transpose_valid_s2(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Keras Conv2DTranspose, 'valid', stride 2: x [N, H, W, in], kernel [k, k, out, in] ->
    [N, 2 (H - 1) + k, 2 (W - 1) + k, out]; input pixel (i, j) spreads over (2i + a, 2j + b)."""
    k = kernel.shape[0]
    n, h, w, _ = x.shape
    out = np.zeros((n, 2 * (h - 1) + k, 2 * (w - 1) + k, kernel.shape[2]))
    for a in range(k):
        for b in range(k):
            out[:, a : a + 2 * h - 1 : 2, b : b + 2 * w - 1 : 2, :] += x @ kernel[a, b].T
    return out


def keras_layer_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-3) * gamma + beta


def tf_reference(arrays: dict[str, np.ndarray], frames: np.ndarray, s: Sizes) -> dict:
    """The release's forward pass on uint8 frames [B, T, H, W, C] (is_first at t = 0 only),
    latents at their mode -> embed [B, T, h, w, c], deter, prior and posterior logits
    [B, T, stoch, classes], decoder mean [B, T, H, W, C] of the posterior features."""
    a = {k: v.astype(np.float64) for k, v in arrays.items()}
    batch, length = frames.shape[:2]
    x = frames.reshape(-1, *frames.shape[2:]).astype(np.float64) / 255.0 - 0.5
    for i in range(len(s.enc_kernels)):
        x = elu(conv2d_valid_s2(x, a[f"encoder/conv{i}/kernel"]) + a[f"encoder/conv{i}/bias"])
    embed_map = x.reshape(batch, length, *x.shape[1:])
    embed = x.reshape(batch, length, -1)

    dense = lambda x, name: x @ a[f"rssm/{name}/kernel"] + a[f"rssm/{name}/bias"]
    deter = np.zeros((batch, s.deter))
    stoch = np.zeros((batch, s.stoch_dim))
    out = {"deter": [], "prior": [], "post": [], "feat": []}
    for t in range(length):
        if t == 0:  # is_first: the previous state is zeroed
            deter, stoch = deter * 0, stoch * 0
        h = elu(dense(np.concatenate([stoch, np.zeros((batch, s.zero_action))], -1), "img_in"))
        parts = np.concatenate([h, deter], -1) @ a["rssm/gru/kernel"] + a["rssm/gru/bias"]
        parts = keras_layer_norm(parts, a["rssm/gru/norm/gamma"], a["rssm/gru/norm/beta"])
        reset, cand, update = np.split(parts, 3, -1)
        cand = np.tanh(sigmoid(reset) * cand)
        update = sigmoid(update - 1)
        deter = update * cand + (1 - update) * deter
        prior = dense(elu(dense(deter, "img_out_0")), "img_dist_0")
        post = dense(elu(dense(np.concatenate([deter, embed[:, t]], -1), "obs_out")), "obs_dist")
        post = post.reshape(batch, s.stoch, s.classes)
        stoch = np.eye(s.classes)[post.argmax(-1)].reshape(batch, -1)
        out["deter"].append(deter)
        out["prior"].append(prior.reshape(batch, s.stoch, s.classes))
        out["post"].append(post)
        out["feat"].append(np.concatenate([stoch, deter], -1))
    result = {k: np.stack(v, 1) for k, v in out.items()}

    y = result["feat"].reshape(batch * length, -1) @ a["decoder/convin/kernel"]
    y = (y + a["decoder/convin/bias"]).reshape(-1, 1, 1, 32 * s.depth)
    for i in range(len(s.dec_kernels)):
        y = conv2d_transpose_valid_s2(y, a[f"decoder/conv{i}/kernel"]) + a[f"decoder/conv{i}/bias"]
        if i < len(s.dec_kernels) - 1:
            y = elu(y)
    result["embed"] = embed_map
    result["mean"] = y.reshape(batch, length, *y.shape[1:])
    return result


# ContextWM: its state dict and its forward pass ------------------------------------------------


def contextwm_state_dict(s: Sizes = Sizes(), seed: int = 0) -> dict[str, torch.Tensor]:
    """ContextWM's APV_Pretrain state dict (plaincnn encoder and decoder): ``wm.encoder.*``,
    ``wm.rssm.*``, ``wm.heads.decoder.*`` in PyTorch layouts."""
    g = torch.Generator().manual_seed(seed)
    shapes = {}
    channels = s.channels
    for i, k in enumerate(s.enc_kernels):
        out = s.depth * 2**i
        shapes[f"wm.encoder.conv{i}.weight"] = (out, channels, k, k)
        shapes[f"wm.encoder.conv{i}.bias"] = (out,)
        channels = out
    three = 3 * s.deter
    shapes.update(
        {
            "wm.rssm._cell._layer.weight": (three, s.hidden + s.deter),
            "wm.rssm._cell._layer.bias": (three,),
            "wm.rssm._cell._norm.weight": (three,),
            "wm.rssm._cell._norm.bias": (three,),
            "wm.rssm.img_in.weight": (s.hidden, s.stoch_dim + s.zero_action),
            "wm.rssm.img_in.bias": (s.hidden,),
            "wm.rssm.img_out_0.weight": (s.hidden, s.deter),
            "wm.rssm.img_out_0.bias": (s.hidden,),
            "wm.rssm.img_dist_0.weight": (s.stoch_dim, s.hidden),
            "wm.rssm.img_dist_0.bias": (s.stoch_dim,),
            "wm.rssm.obs_out.weight": (s.hidden, s.deter + s.embed),
            "wm.rssm.obs_out.bias": (s.hidden,),
            "wm.rssm.obs_dist.weight": (s.stoch_dim, s.hidden),
            "wm.rssm.obs_dist.bias": (s.stoch_dim,),
            "wm.heads.decoder.convin.weight": (32 * s.depth, s.stoch_dim + s.deter),
            "wm.heads.decoder.convin.bias": (32 * s.depth,),
        }
    )
    channels, n = 32 * s.depth, len(s.dec_kernels)
    for i, k in enumerate(s.dec_kernels):
        out = s.channels if i == n - 1 else s.depth * 2 ** (n - i - 2)
        shapes[f"wm.heads.decoder.conv{i}.weight"] = (channels, out, k, k)
        shapes[f"wm.heads.decoder.conv{i}.bias"] = (out,)
        channels = out
    state = {}
    for name, shape in shapes.items():
        fan_in = shape[1] * (shape[2] * shape[3] if len(shape) == 4 else 1) if shape[1:] else 10
        value = torch.randn(shape, generator=g) / fan_in**0.5
        state[name] = value + 1 if name.endswith("_norm.weight") else value
    return state


def contextwm_reference(sd: dict[str, torch.Tensor], frames: torch.Tensor, s: Sizes) -> dict:
    """ContextWM's forward pass (float64) on uint8 frames [B, T, C, H, W], is_first at t = 0,
    latents at their mode -> embed [B, T, E], deter, prior/post logits, decoder mean."""
    p = {k: v.double() for k, v in sd.items()}
    batch, length = frames.shape[:2]
    x = frames.reshape(-1, *frames.shape[2:]).double() / 255.0 - 0.5
    for i in range(len(s.enc_kernels)):
        x = F.elu(F.conv2d(x, p[f"wm.encoder.conv{i}.weight"], p[f"wm.encoder.conv{i}.bias"], 2))
    embed = x.reshape(batch, length, -1)
    lin = lambda x, name: F.linear(x, p[f"wm.rssm.{name}.weight"], p[f"wm.rssm.{name}.bias"])
    deter = torch.zeros(batch, s.deter, dtype=torch.float64)
    stoch = torch.zeros(batch, s.stoch_dim, dtype=torch.float64)
    out = {"deter": [], "prior": [], "post": [], "feat": []}
    for t in range(length):
        if t == 0:
            deter, stoch = deter * 0, stoch * 0
        h = F.elu(lin(torch.cat([stoch, torch.zeros(batch, s.zero_action).double()], -1), "img_in"))
        parts = lin(torch.cat([h, deter], -1), "_cell._layer")
        parts = F.layer_norm(
            parts,
            (3 * s.deter,),
            p["wm.rssm._cell._norm.weight"],
            p["wm.rssm._cell._norm.bias"],
            1e-3,
        )
        reset, cand, update = parts.chunk(3, -1)
        cand = torch.tanh(torch.sigmoid(reset) * cand)
        update = torch.sigmoid(update - 1)
        deter = update * cand + (1 - update) * deter
        prior = lin(F.elu(lin(deter, "img_out_0")), "img_dist_0").reshape(batch, s.stoch, -1)
        post = lin(F.elu(lin(torch.cat([deter, embed[:, t]], -1), "obs_out")), "obs_dist")
        post = post.reshape(batch, s.stoch, s.classes)
        stoch = F.one_hot(post.argmax(-1), s.classes).double().reshape(batch, -1)
        for key, value in zip(
            out, (deter, prior, post, torch.cat([stoch, deter], -1)), strict=True
        ):
            out[key].append(value)
    result = {k: torch.stack(v, 1) for k, v in out.items()}
    y = F.linear(
        result["feat"].reshape(batch * length, -1),
        p["wm.heads.decoder.convin.weight"],
        p["wm.heads.decoder.convin.bias"],
    ).reshape(batch * length, -1, 1, 1)
    for i in range(len(s.dec_kernels)):
        w, b = p[f"wm.heads.decoder.conv{i}.weight"], p[f"wm.heads.decoder.conv{i}.bias"]
        y = F.conv_transpose2d(y, w, b, 2)
        if i < len(s.dec_kernels) - 1:
            y = F.elu(y)
    result["embed"] = embed
    result["mean"] = y.reshape(batch, length, *y.shape[1:])
    return result
