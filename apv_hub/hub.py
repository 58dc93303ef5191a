"""Model cards and the checkpoints this project publishes.

A card states the architecture, parameter counts, what the model was trained on and for how
long (only what was recorded), how to use it, and the APV citation.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Any

from huggingface_hub import ModelCard, ModelCardData

if TYPE_CHECKING:
    from apv_hub.video_model import APVVideoModel

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


def video_model_card(model: APVVideoModel, repo_id: str | None = None) -> ModelCard:
    """The README.md model card of an APVVideoModel checkpoint."""
    cfg = model.config
    counts = model.num_parameters()
    name = repo_id or "path/to/checkpoint"
    data = model.training_info.get("data")
    card_data = ModelCardData(
        library_name="apv-hub",
        tags=["apv", "world-model", "video-prediction", "reinforcement-learning"],
        datasets=[d for d in (data if isinstance(data, list) else [data]) if _is_repo_id(d)]
        or None,
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

## Training

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
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n{body}")
