"""Converters of the published APV video models into APVVideoModel checkpoints (``apv-convert``).

Nothing foreign is unpickled freely: the release's ``.pkl`` files go through an unpickler that
admits only numpy array reconstruction, ContextWM's ``.pt`` files through
``torch.load(weights_only=True)``. Every tensor is mapped by name and shape, and anything that
does not fit (a missing or extra tensor, a wrong shape, an architecture apv-hub does not have) is
named in the error.

The APV release (TensorFlow 2.6 on DreamerV2, github.com/younggyoseo/apv; its README links the
pre-trained models). ``apv_pretraining/train_video.py`` saves, per run, ``encoder_variables.pkl``,
``rssm_variables.pkl`` and ``decoder_variables.pkl`` through ``common.Module.save``:
``pickle.dump(tf.nest.map_structure(lambda v: v.numpy(), module.variables))``, a tuple of numpy
arrays. ``tf.Module.variables`` walks a module's attributes in sorted name order, yields its own
variables and then recurses into the sub-modules it met, in that order. DreamerV2's
``Module.get`` keeps layers in the dict ``_modules``, flattened in sorted key order; a Keras layer
yields its weights in creation order (kernel then bias, gamma then beta). With the release's
configs (``apv_pretraining/configs.yaml``: norm none, ensemble 1, rnn_layers 1, discrete latents)
that gives (``common/nets.py``):

- encoder (8 arrays): ``conv{i}/kernel`` [k, k, in, out] and ``conv{i}/bias`` for the four
  stride-2 'valid' Conv2D layers of depth ``cnn_depth * 2**i``; the last feature map [h, w, C]
  is flattened in (h, w, c) order.
- rssm (14 arrays): first the GRU cell (``_cells[0]``; the attribute ``_cell`` holds a second
  GRUCell that is never called, so never built, and has no variables): its Dense
  ``kernel`` [hidden + deter, 3 deter] over concat(input, state) and ``bias`` (the layer has one
  although layer norm follows), then its LayerNormalization (epsilon 1e-3) ``gamma``, ``beta``;
  gates split as (reset, candidate, update), update = sigmoid(u - 1), candidate =
  tanh(sigmoid(reset) * c). Then ``_modules`` sorted: ``img_dist_0`` [hidden, stoch * classes],
  ``img_in`` [stoch * classes + 50, hidden] (the flat one-hot state concatenated with
  ``zero_action``, 50 zeros), ``img_out_0`` [deter, hidden], ``obs_dist`` [hidden,
  stoch * classes], ``obs_out`` [deter + embed, hidden] over concat(deter, embed); kernel then
  bias each. An ensemble of K prior heads would add ``img_out_{k}``/``img_dist_{k}``.
- decoder (10 arrays): ``conv{i}`` (Conv2DTranspose, kernel [k, k, out, in], stride 2, 'valid')
  sort before ``convin`` (Dense [stoch * classes + deter, 32 * cnn_depth]).

The mapping: Dense [in, out] -> Linear [out, in]; Conv2D [H, W, in, out] -> Conv2d
[out, in, H, W] and Conv2DTranspose [H, W, out, in] -> ConvTranspose2d [in, out, H, W] (both
permute axes (3, 2, 0, 1): TensorFlow and PyTorch both cross-correlate, and both transposed
convolutions are that operation's gradient, so kernels are not flipped). The GRU's gate order and
input order are apv-hub's (GRUCell). ``obs_out``'s embedding rows are reordered from TensorFlow's
(h, w, c) flattening to PyTorch's (c, h, w). ``img_in``'s zero-action rows are dropped: the
action-free model multiplies them by zeros. The config gets ``layer_norm_eps=1e-3`` (Keras) and
``gru_bias=True``.

ContextWM (PyTorch, github.com/thuml/ContextWM; ``wmlib/agents/apv_pretrain.py``) saves
``variables.pt`` (the agent's state dict: ``wm.rssm.*``, ``wm.encoder.*``, ``wm.heads.decoder.*``)
and ``rssm_variables.pt``, ``encoder_variables.pt``, ``decoder_variables.pt`` (one module each)
with the release's layer names in PyTorch layouts (``wmlib/nets/dynamics/rssm.py``: ``_cell._layer``
Linear with bias, ``_cell._norm`` LayerNorm eps 1e-3, ``img_in`` with ``fill_action`` 50 zero
inputs, ``img_out_{k}``, ``img_dist_{k}``, ``obs_out``, ``obs_dist``; ``encoder/plaincnn.py``
``conv{i}``, flattened as (c, h, w); ``decoder/plaincnn.py`` ``convin``, ``conv{i}``). Only
``encoder_type``/``decoder_type: plaincnn`` checkpoints have APV's architecture; ContextWM's
default is a ResNet encoder and decoder (``resnet``, ``ctx_resnet``), which apv-hub does not
implement, so such checkpoints are refused with that reason.
"""

from __future__ import annotations

import argparse
import io
import pickle
import re
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from apv_hub.cli import command
from apv_hub.config import APVConfig, ConfigError
from apv_hub.io import file_sha256
from apv_hub.nets import deconv_out_size
from apv_hub.version import __version__
from apv_hub.video_model import APVVideoModel
from apv_hub.weights import CheckpointError, load_into

FORMATS = ("apv-release", "contextwm")
RELEASE_FILES = {
    "encoder": "encoder_variables.pkl",
    "rssm": "rssm_variables.pkl",
    "decoder": "decoder_variables.pkl",
}
CONTEXTWM_FILES = {
    "encoder": "encoder_variables.pt",
    "rssm": "rssm_variables.pt",
    "decoder": "decoder_variables.pt",
}
# ContextWM's whole-agent file and the prefixes of the world model's parts in it.
CONTEXTWM_AGENT_FILE = "variables.pt"
CONTEXTWM_AGENT_PREFIXES = {
    "wm.encoder.": "encoder.",
    "wm.rssm.": "rssm.",
    "wm.heads.decoder.": "decoder.",
}
# Width of the zero action the release's action-free RSSM appends to its state (zero_action).
RELEASE_ZERO_ACTION = 50
# The release's stochastic state: 32 categorical latents (rssm.stoch) of 32 classes.
RELEASE_STOCH = 32

# Loss and batch settings of the pre-training configs the published models were trained with;
# they only matter when pre-training continues from the converted checkpoint.
PRETRAIN_CONFIGS: dict[str, dict[str, Any]] = {
    # APV release, apv_pretraining/configs.yaml (RLBench and Meta-world videos).
    "metaworld_pretrain": dict(kl_scale=0.1, free_nats=0.0, lr=3e-4, batch_size=16, seq_len=25),
    # APV release, DMC videos (Triped-walk): KL scale 1, free nats 1, clips of 50 frames.
    "dmc_vision_pretrain": dict(kl_scale=1.0, free_nats=1.0, lr=3e-4, batch_size=16, seq_len=50),
    # ContextWM configs/apv_pretraining.yaml (*_pretrain: the KL scale stays 1).
    "contextwm_pretrain": dict(kl_scale=1.0, free_nats=0.0, lr=3e-4, batch_size=16, seq_len=25),
}
SOURCES: dict[str, dict[str, str]] = {
    "apv-release": dict(
        description="the APV release (Seo et al., ICML 2022), TensorFlow 2.6 on DreamerV2",
        code="https://github.com/younggyoseo/apv",
        weights="the pre-trained models folder linked from the release's README "
        "(https://drive.google.com/drive/folders/1cDjLreFqw-LCJ48Bt80Dh1Ypo1LHqWP1)",
        license="not stated in the release's README; see https://github.com/younggyoseo/apv "
        "for the terms of its code and models before redistributing them",
        pretrain_config="metaworld_pretrain",
    ),
    "contextwm": dict(
        description="ContextWM's APV pre-training (Wu et al., NeurIPS 2023), PyTorch",
        code="https://github.com/thuml/ContextWM",
        weights="the pre-trained models linked from ContextWM's README",
        license="not stated in ContextWM's README; see https://github.com/thuml/ContextWM "
        "for the terms of its code and models before redistributing them",
        pretrain_config="contextwm_pretrain",
    ),
}


class ConversionError(CheckpointError):
    """A foreign checkpoint that cannot be converted: unsafe, unreadable, or not APV's model."""


# Loading without running code ------------------------------------------------------------------


def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    """What pickle protocol 2 calls (as ``_codecs.encode``) to rebuild a bytes object."""
    if encoding not in ("latin1", "latin-1"):
        raise ConversionError(f"refused _codecs.encode with encoding {encoding!r} in a pickle")
    return text.encode("latin1")


def _numpy_globals() -> dict[tuple[str, str], Any]:
    """The only globals a pickle of numpy arrays needs, under numpy 1.x and 2.x module names."""
    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy < 2
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    table: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_bytes,  # bytes under protocol 2
    }
    for core in ("numpy.core", "numpy._core"):
        table[(f"{core}.multiarray", "_reconstruct")] = multiarray._reconstruct
        table[(f"{core}.multiarray", "scalar")] = multiarray.scalar  # numpy scalars
        table[(f"{core}.numeric", "_frombuffer")] = numeric._frombuffer  # pickle protocol 5
    return table


class ArrayUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds numpy arrays and refuses every other global by name."""

    ALLOWED = _numpy_globals()

    def __init__(self, file: Any, source: str) -> None:
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise ConversionError(
                f"{self.source}: refused to unpickle the global {module}.{name}: only numpy "
                "arrays are loaded from foreign pickles (this file is not a plain list of arrays "
                "and could run code when unpickled)"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise ConversionError(f"{self.source}: refused a persistent id in the pickle")


def load_pickled_arrays(path: str | Path) -> list[np.ndarray]:
    """A pickle of a list or tuple of numpy arrays (what DreamerV2's ``Module.save`` writes) ->
    the arrays, loaded without running code: any other global or object raises ConversionError."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConversionError(f"cannot read {path}: {e.strerror or e}") from e
    try:
        value = ArrayUnpickler(io.BytesIO(data), str(path)).load()
    except ConversionError:
        raise
    except Exception as e:  # a damaged stream raises anything from EOFError to IndexError
        raise ConversionError(
            f"{path} is not a readable pickle (truncated or corrupt?): {e}"
        ) from e
    if not isinstance(value, list | tuple):
        raise ConversionError(
            f"{path} holds a {type(value).__name__}, not the list of arrays DreamerV2's "
            "Module.save writes"
        )
    arrays = []
    for i, item in enumerate(value):
        if isinstance(item, np.generic):
            item = np.asarray(item)
        if not isinstance(item, np.ndarray) or item.dtype.kind not in "fiub":
            what = (
                f"an array of {item.dtype}" if isinstance(item, np.ndarray) else type(item).__name__
            )
            raise ConversionError(f"{path}: item {i} is {what}, not a numeric numpy array")
        arrays.append(item)
    return arrays


def load_torch_state_dict(path: str | Path) -> dict[str, Tensor]:
    """A ``torch.save``-d state dict -> its tensors, through ``torch.load(weights_only=True)``:
    a file holding anything but tensors and plain containers is refused with ConversionError."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"no such file: {path}")
    try:
        value = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        reason = str(e).strip().splitlines()
        raise ConversionError(
            f"{path}: refused by torch.load(weights_only=True): the file holds more than "
            f"tensors ({reason[0][:200] if reason else 'unsupported global'})"
        ) from e
    except (RuntimeError, OSError, EOFError, ValueError) as e:
        raise ConversionError(f"{path} is not a readable PyTorch checkpoint: {e}") from e
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in value.items()
    ):
        raise ConversionError(f"{path} does not hold a state dict (names -> tensors)")
    return dict(value)


# The APV release: TensorFlow variables in traversal order -> PyTorch layouts ------------------

# rssm_variables.pkl in order: (TensorFlow variable, the same tensor's name in PyTorch layout).
RELEASE_RSSM_VARIABLES = (
    ("gru/dense/kernel", "rssm._cell._layer.weight"),
    ("gru/dense/bias", "rssm._cell._layer.bias"),
    ("gru/layer_norm/gamma", "rssm._cell._norm.weight"),
    ("gru/layer_norm/beta", "rssm._cell._norm.bias"),
    ("img_dist_0/kernel", "rssm.img_dist_0.weight"),
    ("img_dist_0/bias", "rssm.img_dist_0.bias"),
    ("img_in/kernel", "rssm.img_in.weight"),
    ("img_in/bias", "rssm.img_in.bias"),
    ("img_out_0/kernel", "rssm.img_out_0.weight"),
    ("img_out_0/bias", "rssm.img_out_0.bias"),
    ("obs_dist/kernel", "rssm.obs_dist.weight"),
    ("obs_dist/bias", "rssm.obs_dist.bias"),
    ("obs_out/kernel", "rssm.obs_out.weight"),
    ("obs_out/bias", "rssm.obs_out.bias"),
)


def release_variable_names(part: str, count: int) -> list[str]:
    """The names of a release file's ``count`` arrays, in the order ``Module.save`` wrote them
    (part: encoder, rssm or decoder). Layer names sort as strings, as tf.nest sorts dict keys."""
    if part == "rssm":
        return [name for name, _ in RELEASE_RSSM_VARIABLES]
    convs = [f"conv{i}" for i in range(count // 2 - (part == "decoder"))]
    layers = sorted(convs + (["convin"] if part == "decoder" else []))
    return [f"{layer}/{kind}" for layer in layers for kind in ("kernel", "bias")]


def _check_release_count(part: str, path: Path, arrays: list[np.ndarray]) -> None:
    n = len(arrays)
    if part == "rssm" and n != len(RELEASE_RSSM_VARIABLES):
        heads = (n - 10) // 4
        hint = (
            f": an RSSM with an ensemble of {heads} prior heads (img_out_0..{heads - 1}); "
            "apv-hub's RSSM has one (the release's setting, rssm.ensemble 1)"
            if n > 14 and (n - 10) % 4 == 0
            else ""
        )
        names = ", ".join(release_variable_names("rssm", n))
        raise ConversionError(
            f"{path} holds {n} arrays, expected {len(RELEASE_RSSM_VARIABLES)} ({names}){hint}"
        )
    smallest = 4 if part == "decoder" else 2
    if part != "rssm" and (n % 2 or n < smallest):
        layers = "conv0, conv1, ... then convin" if part == "decoder" else "conv0, conv1, ..."
        raise ConversionError(
            f"{path} holds {n} arrays; the release's {part} writes a kernel and a bias per layer "
            f"({layers}), so an even number of at least {smallest}: a variable is missing or extra"
        )


def _check_rank(path: Path, index: int, name: str, array: np.ndarray, rank: int) -> None:
    if array.ndim != rank:
        raise ConversionError(
            f"{path}: array {index} ({name}) has shape {array.shape}, expected a {rank}-D array "
            "there; the file does not follow the release's variable order"
        )


def read_apv_release(folder: str | Path) -> tuple[dict[str, Tensor], dict[str, str], list[Path]]:
    """The release's three pickles -> (tensors in PyTorch layouts named like ContextWM's state
    dict, the source name of each, e.g. ``"rssm_variables.pkl[12] obs_out/kernel"``, the files
    read)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConversionError(f"{folder} is not a folder (expected the release's run folder)")
    missing = [f for f in RELEASE_FILES.values() if not (folder / f).is_file()]
    if missing:
        raise ConversionError(
            f"{folder} lacks {', '.join(missing)}: point at the folder that holds the release's "
            f"{', '.join(RELEASE_FILES.values())}"
        )
    tensors: dict[str, Tensor] = {}
    origin: dict[str, str] = {}
    raw: dict[str, np.ndarray] = {}
    for part, filename in RELEASE_FILES.items():
        path = folder / filename
        arrays = load_pickled_arrays(path)
        _check_release_count(part, path, arrays)
        names = release_variable_names(part, len(arrays))
        targets = (
            [key for _, key in RELEASE_RSSM_VARIABLES]
            if part == "rssm"
            else [f"{part}.{n.replace('/kernel', '.weight').replace('/', '.')}" for n in names]
        )
        for i, (name, key, array) in enumerate(zip(names, targets, arrays, strict=True)):
            conv = part != "rssm" and name.startswith("conv") and not name.startswith("convin")
            rank = 1 if not name.endswith("kernel") else 4 if conv else 2
            _check_rank(path, i, name, array, rank)
            raw[key] = array
            origin[key] = f"{filename}[{i}] {name}"
    # (h, w, c) -> (c, h, w) for the embedding rows of obs_out: C from the last encoder conv.
    encoder_convs = sum(k.startswith("encoder.") and k.endswith(".weight") for k in raw)
    channels = raw[f"encoder.conv{encoder_convs - 1}.weight"].shape[3]
    deter = raw["rssm._cell._layer.weight"].shape[1] // 3
    obs_out = raw["rssm.obs_out.weight"]
    embed = obs_out.shape[0] - deter
    side = int(round((max(embed, 0) / channels) ** 0.5))
    if embed <= 0 or side * side * channels != embed:
        raise ConversionError(
            f"{origin['rssm.obs_out.weight']} has {obs_out.shape[0]} input rows: deter {deter} "
            f"+ {embed}, which is not the {channels}-channel square feature map of the encoder"
        )
    order = np.arange(embed).reshape(side, side, channels).transpose(2, 0, 1).reshape(-1)
    raw["rssm.obs_out.weight"] = np.concatenate([obs_out[:deter], obs_out[deter:][order]])
    img_in = raw["rssm.img_in.weight"]
    stoch_dim = raw["rssm.img_dist_0.weight"].shape[1]
    if img_in.shape[0] != stoch_dim + RELEASE_ZERO_ACTION:
        raise ConversionError(
            f"{origin['rssm.img_in.weight']} has shape {img_in.shape}: expected "
            f"{stoch_dim} (stochastic state, from img_dist_0) + {RELEASE_ZERO_ACTION} "
            "(the release's zero action) input rows"
        )
    for key, array in raw.items():
        # Conv2D [H, W, in, out] -> [out, in, H, W]; Conv2DTranspose [H, W, out, in] ->
        # [in, out, H, W]: the same axis permutation.
        if array.ndim == 4:
            array = array.transpose(3, 2, 0, 1)
        elif array.ndim == 2:  # Dense [in, out] -> Linear [out, in]
            array = array.T
        tensors[key] = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    return tensors, origin, [folder / f for f in RELEASE_FILES.values()]


# ContextWM: PyTorch state dicts --------------------------------------------------------------


def read_contextwm(path: str | Path) -> tuple[dict[str, Tensor], dict[str, str], list[Path]]:
    """ContextWM's ``variables.pt`` (a file, or a folder holding it or the three per-module
    files) -> (tensors named ``encoder.*``, ``rssm.*``, ``decoder.*``, the source name of each,
    the files read)."""
    path = Path(path)
    if path.is_dir():
        if (path / CONTEXTWM_AGENT_FILE).is_file():
            path = path / CONTEXTWM_AGENT_FILE
        else:
            missing = [f for f in CONTEXTWM_FILES.values() if not (path / f).is_file()]
            if missing:
                raise ConversionError(
                    f"{path} holds neither {CONTEXTWM_AGENT_FILE} nor all of "
                    f"{', '.join(CONTEXTWM_FILES.values())} (missing: {', '.join(missing)})"
                )
            tensors, origin = {}, {}
            for part, filename in CONTEXTWM_FILES.items():
                for key, value in load_torch_state_dict(path / filename).items():
                    tensors[f"{part}.{key}"] = value
                    origin[f"{part}.{key}"] = f"{filename}: {key}"
            return tensors, origin, [path / f for f in CONTEXTWM_FILES.values()]
    state = load_torch_state_dict(path)
    if not any(k.startswith(tuple(CONTEXTWM_AGENT_PREFIXES)) for k in state):
        raise ConversionError(
            f"{path} has no wm.encoder/wm.rssm/wm.heads.decoder tensors: pass ContextWM's "
            f"{CONTEXTWM_AGENT_FILE}, or the folder holding {', '.join(CONTEXTWM_FILES.values())}"
        )
    tensors, origin = {}, {}
    for key, value in state.items():
        prefix = next((p for p in CONTEXTWM_AGENT_PREFIXES if key.startswith(p)), None)
        name = CONTEXTWM_AGENT_PREFIXES[prefix] + key[len(prefix) :] if prefix else key
        tensors[name] = value
        origin[name] = f"{path.name}: {key}"
    return tensors, origin, [path]


# Both formats: PyTorch layouts with the release's names -> APVVideoModel ---------------------

_RSSM_KEYS = {  # the release's / ContextWM's RSSM layers -> apv-hub's RSSM modules
    "rssm._cell._layer": "rssm.gru.linear",
    "rssm._cell._norm": "rssm.gru.norm",
    "rssm.img_in": "rssm.img_in.0",
    "rssm.img_out_0": "rssm.img_out.0",
    "rssm.img_dist_0": "rssm.img_out.2",
    "rssm.obs_out": "rssm.obs_out.0",
    "rssm.obs_dist": "rssm.obs_out.2",
}
_KNOWN_KEY = re.compile(
    r"(encoder\.conv\d+|decoder\.conv(\d+|in)|rssm\.(_cell\._layer|_cell\._norm|img_in|"
    r"img_out_0|img_dist_0|obs_out|obs_dist))\.(weight|bias)"
)
# Key prefixes of architectures apv-hub does not have, and what they are.
_FOREIGN_HINTS = (
    (
        r"encoder\.(res\d|convin|_ctx|ctx)",
        "ContextWM's ResNet encoder (encoder_type resnet or ctx_resnet)",
    ),
    (
        r"decoder\.(res\d|_ctx|ctx|convout)",
        "ContextWM's ResNet decoder (decoder_type resnet or ctx_resnet)",
    ),
    (r"rssm\.img_(out|dist)_[1-9]", "an ensemble of prior heads (rssm.ensemble > 1)"),
    (
        r"(encoder|decoder|rssm)\..*norm",
        "normalisation layers (norm: layer), which APV's model has not",
    ),
)


def _conv_indices(tensors: dict[str, Tensor], part: str) -> list[int]:
    found = sorted(
        int(m.group(1)) for k in tensors if (m := re.fullmatch(rf"{part}\.conv(\d+)\.weight", k))
    )
    if not found:
        raise ConversionError(f"no {part}.conv0.weight: this is not APV's plain-CNN {part}")
    if found != list(range(len(found))):
        raise ConversionError(f"{part} conv layers {found} are not numbered 0..{len(found) - 1}")
    return found


def _module_names(module: nn.Module, kind: type) -> list[str]:
    return [name for name, m in module.named_modules() if isinstance(m, kind)]


def _pretrain_settings(name: str) -> dict[str, Any]:
    if name not in PRETRAIN_CONFIGS:
        raise ConversionError(
            f"unknown pre-training config {name!r}; one of {sorted(PRETRAIN_CONFIGS)}"
        )
    return PRETRAIN_CONFIGS[name]


def model_from_release_names(
    tensors: dict[str, Tensor],
    origin: dict[str, str],
    source: str,
    stoch: int = RELEASE_STOCH,
    pretrain_config: str = "metaworld_pretrain",
) -> APVVideoModel:
    """Tensors in PyTorch layouts with the release's layer names (``encoder.conv{i}``,
    ``rssm._cell._layer``, ``rssm.img_in``, ..., ``decoder.convin``) -> an APVVideoModel whose
    config is read off their shapes. ``origin`` names each tensor in the source's terms."""
    where = lambda key: origin.get(key, key)
    unknown = [k for k in tensors if not _KNOWN_KEY.fullmatch(k)]
    if unknown:
        reasons = sorted(
            {why for k in unknown for pattern, why in _FOREIGN_HINTS if re.match(pattern, k)}
        )
        shown = ", ".join(where(k) for k in unknown[:12]) + (" ..." if len(unknown) > 12 else "")
        raise ConversionError(
            f"{source}: {len(unknown)} tensor(s) with no place in APV's video model: {shown}"
            + (f" (this checkpoint has {'; '.join(reasons)})" if reasons else "")
        )
    enc, dec = _conv_indices(tensors, "encoder"), _conv_indices(tensors, "decoder")
    required = [f"{p}.{kind}" for p in _RSSM_KEYS for kind in ("weight", "bias")]
    required += [f"encoder.conv{i}.{kind}" for i in enc for kind in ("weight", "bias")]
    required += [f"decoder.conv{i}.{kind}" for i in dec for kind in ("weight", "bias")]
    required += ["decoder.convin.weight", "decoder.convin.bias"]
    missing = [k for k in required if k not in tensors]
    if missing:
        raise ConversionError(f"{source}: missing tensor(s) {', '.join(missing)}")
    for key, value in tensors.items():
        conv = re.fullmatch(r"(encoder|decoder)\.conv\d+\.weight", key)
        rank = 4 if conv else 2 if key.endswith(".weight") and "_norm" not in key else 1
        if value.dim() != rank:
            raise ConversionError(
                f"{source}: {where(key)} has shape {tuple(value.shape)}, expected {rank}-D"
            )
        if not torch.isfinite(value).all():
            raise ConversionError(f"{source}: {where(key)} holds non-finite values")

    shape = lambda key: tuple(tensors[key].shape)
    stoch_dim = shape("rssm.obs_dist.weight")[0]
    if stoch <= 0 or stoch_dim % stoch:
        raise ConversionError(
            f"{where('rssm.obs_dist.weight')} has {stoch_dim} outputs, not {stoch} latents of a "
            "whole number of classes: pass the stochastic state's number of latents (--stoch)"
        )
    fill = shape("rssm.img_in.weight")[-1] - stoch_dim
    if fill < 0:
        raise ConversionError(
            f"{where('rssm.img_in.weight')} has shape {shape('rssm.img_in.weight')}: fewer "
            f"inputs than the {stoch_dim}-dim stochastic state (from obs_dist)"
        )
    try:
        config = APVConfig(
            image_size=deconv_out_size(tuple(shape(f"decoder.conv{i}.weight")[-1] for i in dec)),
            image_channels=shape("encoder.conv0.weight")[1],
            cnn_depth=shape("encoder.conv0.weight")[0],
            encoder_kernels=tuple(shape(f"encoder.conv{i}.weight")[-1] for i in enc),
            decoder_kernels=tuple(shape(f"decoder.conv{i}.weight")[-1] for i in dec),
            deter=shape("rssm._cell._layer.weight")[0] // 3,
            hidden=shape("rssm.img_in.weight")[0],
            stoch=stoch,
            classes=stoch_dim // stoch,
            act="elu",
            gru_layer_norm=True,
            layer_norm_eps=1e-3,
            gru_bias=True,
            **_pretrain_settings(pretrain_config),
        )
        model = APVVideoModel(config)
    except (ConfigError, ValueError) as e:
        raise ConversionError(f"{source}: the tensors' shapes give no valid APV model: {e}") from e

    mapping: list[tuple[str, str, Callable[[Tensor], Tensor]]] = []
    keep = lambda t: t
    for src, dst in _RSSM_KEYS.items():
        for kind in ("weight", "bias"):
            drop_fill = src == "rssm.img_in" and kind == "weight"
            mapping.append(
                (
                    f"{src}.{kind}",
                    f"{dst}.{kind}",
                    (lambda t: t[:, :stoch_dim]) if drop_fill else keep,
                )
            )
    for part, kind in (("encoder", nn.Conv2d), ("decoder", nn.ConvTranspose2d)):
        ours = _module_names(getattr(model, part), kind)
        if len(ours) != len(enc if part == "encoder" else dec):
            raise ConversionError(f"{source}: {part} layer count differs from the model's")
        for i, name in enumerate(ours):
            for p in ("weight", "bias"):
                mapping.append((f"{part}.conv{i}.{p}", f"{part}.{name}.{p}", keep))
    mapping += [(f"decoder.convin.{p}", f"decoder.stem.{p}", keep) for p in ("weight", "bias")]

    own = model.state_dict()
    state, problems = {}, []
    for src, dst, transform in mapping:
        value = transform(tensors[src].detach().to(torch.float32))
        if dst not in own:
            raise ConversionError(f"apv-hub's model has no {dst} (for {where(src)})")
        if value.shape != own[dst].shape:
            expected = tuple(own[dst].shape)
            if transform is not keep:
                expected = (*expected[:-1], expected[-1] + fill)
            problems.append(f"{where(src)}: shape {shape(src)}, expected {expected}")
        state[dst] = value
    if problems:
        raise ConversionError(
            f"{source}: {len(problems)} tensor(s) do not fit the model the other tensors describe "
            f"({describe_architecture(config)}):\n  " + "\n  ".join(problems)
        )
    load_into(model, state, source)
    return model.eval()


def describe_architecture(config: APVConfig) -> str:
    return (
        f"{config.image_channels}x{config.image_size}x{config.image_size} frames, encoder depth "
        f"{config.cnn_depth} kernels {list(config.encoder_kernels)}, decoder kernels "
        f"{list(config.decoder_kernels)}, deter {config.deter}, hidden {config.hidden}, "
        f"{config.stoch} x {config.classes} latents"
    )


# Public API -------------------------------------------------------------------------------------


def convert(
    source: str | Path,
    format: str,
    stoch: int = RELEASE_STOCH,
    pretrain_config: str | None = None,
    data: str | None = None,
    source_url: str | None = None,
    source_license: str | None = None,
    command: str | None = None,
) -> APVVideoModel:
    """A published pre-trained video model -> an APVVideoModel with its provenance for the card.

    Args:
        source: the release's run folder (``*_variables.pkl``), or ContextWM's ``variables.pt``
            or a folder holding it or its three ``*_variables.pt`` files.
        format: ``apv-release`` or ``contextwm``.
        stoch: latents of the stochastic state (both releases: 32); classes follow from shapes.
        pretrain_config: the loss/batch settings the source was trained with (PRETRAIN_CONFIGS),
            recorded in the config for continued pre-training; default per format.
        data: what the source was pre-trained on, for the card.
        source_url, source_license: where the files came from and their terms, for the card.
        command: the conversion command, for the card.
    """
    if format not in SOURCES:
        raise ConversionError(f"unknown format {format!r}; one of {list(SOURCES)}")
    meta = SOURCES[format]
    pretrain_config = pretrain_config or meta["pretrain_config"]
    source = Path(source)
    if not source.exists():
        raise ConversionError(f"no such file or folder: {source}")
    read = read_apv_release if format == "apv-release" else read_contextwm
    tensors, origin, files = read(source)
    model = model_from_release_names(tensors, origin, str(source), stoch, pretrain_config)
    zero_action = tensors["rssm.img_in.weight"].shape[-1] - model.config.stoch_dim
    changes = [
        f"img_in's {zero_action} zero-action inputs dropped (always zero in the action-free model)",
        "GRU layer-norm epsilon 1e-3 (Keras) and the bias of the GRU's gate layer kept",
    ]
    if format == "apv-release":
        changes[:0] = [
            "TensorFlow layouts to PyTorch (Dense [in, out] -> [out, in]; Conv2D HWIO -> OIHW; "
            "Conv2DTranspose HWOI -> IOHW)",
            "obs_out's embedding inputs reordered from TensorFlow's (h, w, c) flattening to "
            "(c, h, w)",
        ]
    model.training_info = {
        **({"data": data} if data else {}),
        "converted_from": {
            "format": format,
            "description": meta["description"],
            "source": source_url or meta["weights"],
            "code": meta["code"],
            "license": source_license or meta["license"],
            "files": {f.name: file_sha256(f) for f in files},
            "pretrain_config": pretrain_config,
            "changes": changes,
            "converter": f"apv-hub {__version__}",
            **({"command": command} if command else {}),
        },
    }
    return model


def convert_apv_release(folder: str | Path, **kwargs: Any) -> APVVideoModel:
    """The APV release's run folder (encoder/rssm/decoder_variables.pkl) -> APVVideoModel."""
    return convert(folder, "apv-release", **kwargs)


def convert_contextwm(path: str | Path, **kwargs: Any) -> APVVideoModel:
    """ContextWM's APV pre-training checkpoint (variables.pt or its folder) -> APVVideoModel."""
    return convert(path, "contextwm", **kwargs)


def push_converted(
    model: APVVideoModel, repo_id: str, private: bool = False, revision: str | None = None
) -> str:
    """Push a converted model to ``repo_id`` (created if missing; ``revision``: a branch, created
    if missing) -> the commit URL."""
    if revision and revision != "main":
        from huggingface_hub import HfApi

        api = HfApi()
        api.create_repo(repo_id, private=private, exist_ok=True)
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    return model.push_to_hub(
        repo_id,
        private=private,
        branch=revision,
        commit_message=f"apv-convert: {model.training_info['converted_from']['format']} model",
    )


# Command line -----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="apv-convert",
        description="""\
Convert a published APV pre-trained video model (the TensorFlow release's pickles, or
ContextWM's .pt) into an apv-hub checkpoint folder: model.safetensors + config.json + a model
card naming the source, its licence and the conversion. Only numpy arrays and tensors are
loaded; nothing else is unpickled.""",
        epilog="""examples:
  apv-convert downloads/rlbench --format apv-release --out converted/rlbench-99
  apv-convert downloads/contextwm/variables.pt --format contextwm --out converted/cwm
  apv-convert downloads/rlbench --format apv-release --out converted/rlbench-99 \\
      --push-to-hub me/rlbench-99 --private --revision converted

The release's files: its README links a pre-trained models folder; each run folder holds
encoder_variables.pkl, rssm_variables.pkl and decoder_variables.pkl.""",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "source",
        type=Path,
        help="apv-release: the run folder with the three *_variables.pkl; contextwm: "
        "variables.pt, or a folder holding it or encoder/rssm/decoder_variables.pt",
    )
    parser.add_argument("--format", required=True, choices=FORMATS, help="the source's format")
    parser.add_argument("--out", required=True, type=Path, help="checkpoint folder to write")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace the files of an existing --out folder"
    )
    parser.add_argument(
        "--stoch",
        type=int,
        default=RELEASE_STOCH,
        help="latents of the stochastic state (default %(default)s, as in both releases); the "
        "classes per latent follow from the shapes",
    )
    parser.add_argument(
        "--pretrain-config",
        choices=sorted(PRETRAIN_CONFIGS),
        help="the source's pre-training settings (KL scale, free nats, batch), kept in "
        "config.json for continued pre-training; default: metaworld_pretrain for apv-release "
        "(use dmc_vision_pretrain for its DMC/Triped models), contextwm_pretrain for contextwm",
    )
    parser.add_argument("--data", help="what the source was pre-trained on, for the model card")
    parser.add_argument("--source-url", help="where the files were downloaded from, for the card")
    parser.add_argument(
        "--source-license",
        help="the source's licence terms, for the card (default: pointer to "
        "the source's repository)",
    )
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="also upload to this Hub repo")
    parser.add_argument("--private", action="store_true", help="create the Hub repo private")
    parser.add_argument(
        "--revision", metavar="BRANCH", help="Hub branch to push to (created if missing)"
    )
    return parser


@command("apv-convert")
def main(argv: Sequence[str] | None = None) -> int:
    """``apv-convert``: see ``--help``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.private or args.revision) and not args.push_to_hub:
        raise ConfigError("--private and --revision need --push-to-hub")
    out: Path = args.out
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise ConfigError(f"{out} exists and is not empty (pass --overwrite)")
    model = convert(
        args.source,
        args.format,
        stoch=args.stoch,
        pretrain_config=args.pretrain_config,
        data=args.data,
        source_url=args.source_url,
        source_license=args.source_license,
        command="apv-convert " + shlex.join(argv),
    )
    model.save_pretrained(out)
    counts = model.num_parameters()
    print(f"converted {args.source} ({args.format}): {describe_architecture(model.config)}")
    print(
        f"parameters: encoder {counts['encoder']:,}, RSSM {counts['rssm']:,}, decoder "
        f"{counts['decoder']:,}, total {counts['total']:,}"
    )
    print(f"checkpoint: {out} (model.safetensors, config.json, README.md)")
    if args.push_to_hub:
        url = push_converted(model, args.push_to_hub, args.private, args.revision)
        print(f"pushed: {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
