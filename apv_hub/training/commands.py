"""The command lines of the trainers: ``apv-pretrain``, ``apv-finetune`` and ``apv-viper-train``.

All speak one grammar:

- a new run: ``--out RUN`` plus options; ``--config FILE`` starts from a saved
  ``run_config.json`` instead of a preset;
- a resumed run: ``--resume RUN`` continues with the config saved in RUN; only schedule and
  output keys may change (``--steps``, ``--log-every``, ``--push-to-hub``, ...);
- ``--set KEY=VALUE`` sets any config key (dotted for sections: ``model.lr``,
  ``agent.behavior.horizon``); VALUE is JSON or a bare string; the flags of common keys are
  generated from the config classes, so ``--steps`` and ``--set steps=`` are the same thing;
- ``--print-config`` prints the resolved config and exits.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from apv_hub.cli import (
    add_config_flags,
    add_set_flag,
    command,
    command_line,
    config_assignments,
    fields_epilog,
)
from apv_hub.config import METADATA_KEYS, VARIANTS, APVConfig
from apv_hub.config_base import Config, ConfigError, read_json_object, text_list
from apv_hub.training.configs import (
    CLASS_MODES,
    VARIANT_ALIASES,
    FinetuneConfig,
    PretrainConfig,
    VIPERTrainConfig,
    default_preset,
)
from apv_hub.training.run import RunPaths, resume_config
from apv_hub.weights import CheckpointError

PRETRAIN_FLAGS = {
    "--data": "data",
    "--weights": "weights",
    "--stride": "stride",
    "--num-workers": "num_workers",
    "--short-videos": "short_videos",
    "--resize": "resize",
    "--init": "init",
    "--init-revision": "init_revision",
    "--batch-size": "model.batch_size",
    "--seq-len": "model.seq_len",
    "--steps": "steps",
    "--seed": "seed",
    "--precision": "precision",
    "--compile": "compile",
    "--log-every": "log_every",
    "--eval-every": "eval_every",
    "--eval-clips": "eval_clips",
    "--eval-context": "eval_context",
    "--checkpoint-every": "checkpoint_every",
    "--keep-checkpoints": "keep_checkpoints",
    "--log-with": "log_with",
    "--push-to-hub": "push_to_hub",
    "--private": "private",
    "--revision": "hub_revision",
    "--card-notes": "card_notes",
}
FINETUNE_FLAGS = {
    "--env": "env",
    "--pretrained": "pretrained",
    "--pretrained-revision": "pretrained_revision",
    "--variant": "variant",
    "--reward-model": "reward_model",
    "--reward-class": "reward_class",
    "--steps": "total_env_steps",
    "--seed": "seed",
    "--num-envs": "num_envs",
    "--precision": "precision",
    "--log-every": "log_every",
    "--eval-every": "eval_every",
    "--eval-episodes": "eval_episodes",
    "--checkpoint-every": "checkpoint_every",
    "--log-with": "log_with",
    "--push-to-hub": "push_to_hub",
    "--private": "private",
    "--revision": "hub_revision",
    "--card-notes": "card_notes",
}
VIPER_FLAGS = {
    "--data": "data",
    "--weights": "weights",
    "--classes": "classes",
    "--num-workers": "num_workers",
    "--short-videos": "short_videos",
    "--resize": "resize",
    "--tokenizer-steps": "tokenizer_steps",
    "--prior-steps": "prior_steps",
    "--tokenizer-batch-size": "model.tokenizer.batch_size",
    "--prior-batch-size": "model.prior.batch_size",
    "--seed": "seed",
    "--precision": "precision",
    "--log-every": "log_every",
    "--eval-every": "eval_every",
    "--eval-clips": "eval_clips",
    "--checkpoint-every": "checkpoint_every",
    "--keep-checkpoints": "keep_checkpoints",
    "--stats-videos": "stats_videos",
    "--push-to-hub": "push_to_hub",
    "--private": "private",
    "--card-notes": "card_notes",
}


def run_parser(
    prog: str,
    description: str,
    config_class: type[Config],
    flags: dict[str, str],
    presets: str,
) -> argparse.ArgumentParser:
    """A trainer's parser: the run options every trainer has, then its config flags."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=fields_epilog(config_class, "Config keys for --set (defaults before presets):"),
    )
    run = parser.add_argument_group("run")
    run.add_argument("--out", metavar="RUN_DIR", help="folder of a new run")
    resumable = ", ".join(sorted(config_class.resumable_keys()))
    run.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help=f"continue the run in RUN_DIR with its saved config (only {resumable} may change)",
    )
    run.add_argument("--config", metavar="FILE", help="start a new run from a run_config.json")
    run.add_argument("--preset", help=presets)
    add_set_flag(run)
    run.add_argument("--print-config", action="store_true", help="print the config and exit")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    group = parser.add_argument_group("config keys (flags of common keys; --set reaches all)")
    add_config_flags(group, config_class, flags)
    return parser


def resolve_run(
    args: argparse.Namespace,
    config_class: type[Config],
    new_config: Callable[[dict[str, Any]], Config],
) -> tuple[Config, Path, bool]:
    """(config, run folder, resume?) from the command line. ``new_config(assignments)`` builds
    a new run's base config (a preset) and may consume assignments it applies itself."""
    assignments = config_assignments(args)
    if args.resume:
        extra = [f for f in ("out", "config", "preset") if getattr(args, f)]
        if extra:
            raise ConfigError(
                f"--resume continues a run with its saved config; drop --{', --'.join(extra)}"
            )
        run = Path(args.resume)
        saved = config_class.load(RunPaths(run).config) if RunPaths(run).config.is_file() else None
        if saved is None:
            raise ConfigError(f"--resume {run}: no run there (no {RunPaths(run).config.name})")
        return resume_config(saved, assignments, run), run, True
    if not args.out:
        raise ConfigError("--out RUN_DIR is required for a new run (or --resume RUN_DIR)")
    if args.config:
        if args.preset:
            raise ConfigError("--config holds a whole config; it excludes --preset")
        base = config_class.load(args.config)
    else:
        base = new_config(assignments)
    return base.override(assignments, from_text=True), Path(args.out), False


def print_config(config: Config) -> None:
    print(json.dumps(config.to_dict(), indent=2))


def run_trainer(
    prog: str,
    argv: Sequence[str] | None,
    parser: argparse.ArgumentParser,
    config_class: type[Config],
    new_config: Callable[[str | None], Callable[[dict[str, Any]], Config]],
    train: Callable[..., Any],
    extra: Callable[[argparse.Namespace], dict[str, Any]] | None = None,
) -> tuple[argparse.Namespace, Any]:
    """What every trainer command does: parse, resolve the config (new, --config or
    --resume), print it for --print-config, else train (with ``extra(args)`` as more keyword
    arguments) -> (arguments, the trainer's result or None when only printing)."""
    args = parser.parse_args(argv)
    config, out, resume = resolve_run(args, config_class, new_config(args.preset))
    if args.print_config:
        print_config(config)
        return args, None
    result = train(
        config,
        out,
        resume=resume,
        command=command_line(prog, argv),
        progress=not args.no_progress,
        **(extra(args) if extra else {}),
    )
    return args, result


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


# apv-pretrain ----------------------------------------------------------------------------------


def pretrain_parser() -> argparse.ArgumentParser:
    parser = run_parser(
        "apv-pretrain",
        "Action-free pre-training of an APV video model on video corpora. Run it with python, "
        "`accelerate launch` or `torchrun --nproc_per_node N`.",
        PretrainConfig,
        PRETRAIN_FLAGS,
        f"model preset: {', '.join(APVConfig.PRESETS)} (default small); excludes --init",
    )
    parser.add_argument(
        "--debug-dump",
        metavar="DIR",
        help="write per-process parameter digests and clip ids there (tests and debugging)",
    )
    return parser


def new_pretrain_config(preset: str | None) -> Callable[[dict[str, Any]], Config]:
    def build(assignments: dict[str, Any]) -> Config:
        if "data" not in assignments:
            raise ConfigError("--data is required: corpus folders, Hub dataset ids, or 'sample'")
        init = assignments.get("init")
        if init is not None and preset is not None:
            raise ConfigError("--preset and --init exclude each other: --init fixes the model")
        revision = assignments.get("init_revision")
        model = init_model_config(init, revision) if init else APVConfig.preset(preset or "small")
        return PretrainConfig(data=text_list(assignments["data"]), model=model)

    return build


def init_model_config(init: str, revision: str | None = None) -> APVConfig:
    """The APVConfig of the checkpoint (folder or repo id) a run starts from."""
    from apv_hub.hub import CONFIG_NAME, resolve_file

    path = resolve_file(init, CONFIG_NAME, revision=revision)
    try:
        data = read_json_object(path, what="a checkpoint config")
        return APVConfig.from_dict(data, complete=True, ignore=METADATA_KEYS)
    except ConfigError as e:
        message = str(e) if str(e).startswith(str(path)) else f"{path}: {e}"
        raise CheckpointError(message) from None


@command("apv-pretrain")
def pretrain_main(argv: Sequence[str] | None = None) -> int:
    """``apv-pretrain`` / ``python pretrain.py``: see ``--help``."""
    from apv_hub.training.pretrain import pretrain

    _, result = run_trainer(
        "apv-pretrain",
        argv,
        pretrain_parser(),
        PretrainConfig,
        new_pretrain_config,
        pretrain,
        extra=lambda args: {"debug_dump": args.debug_dump},
    )
    if result is not None and is_main_process():
        print(result.summary("pre-training finished"))
    return 0


# apv-finetune ----------------------------------------------------------------------------------


def finetune_parser() -> argparse.ArgumentParser:
    aliases = ", ".join(f"{k.replace('_', '-')}={v}" for k, v in VARIANT_ALIASES.items())
    parser = run_parser(
        "apv-finetune",
        "Fine-tune an APV agent (or a baseline) on an environment, from a pre-trained action-free "
        "video model. Launch with torchrun / accelerate launch for several processes. Variants: "
        f"{', '.join(VARIANTS)} (aliases: {aliases}).",
        FinetuneConfig,
        FINETUNE_FLAGS,
        "metaworld and dmc reproduce the paper (REFERENCE section 2), small is the Meta-world "
        "recipe at CPU scale, tiny is for tests (default: metaworld for metaworld/ "
        "environments, dmc otherwise)",
    )
    return parser


def new_finetune_config(preset: str | None) -> Callable[[dict[str, Any]], Config]:
    def build(assignments: dict[str, Any]) -> Config:
        env = assignments.get("env")
        if not env:
            raise ConfigError("--env is required for a new run (or --config FILE)")
        variant = assignments.get("variant", "apv")
        # Variant viper's preset is only valid with its reward model.
        reward_model = assignments.get("reward_model")
        return FinetuneConfig.preset(
            preset or default_preset(str(env)), str(variant), env=env, reward_model=reward_model
        )

    return build


@command("apv-finetune")
def finetune_main(argv: Sequence[str] | None = None) -> int:
    """``apv-finetune`` / ``python finetune.py``: see ``--help``."""
    from apv_hub.training.finetune import finetune

    _, folder = run_trainer(
        "apv-finetune", argv, finetune_parser(), FinetuneConfig, new_finetune_config, finetune
    )
    if folder is not None:
        print(f"fine-tuning finished: the agent and its card are in {folder}")
    return 0


# apv-viper-train -------------------------------------------------------------------------------


def viper_parser() -> argparse.ArgumentParser:
    from apv_hub.viper.config import VIPERConfig

    return run_parser(
        "apv-viper-train",
        "Train a VIPER video reward model (a frame tokenizer, then an autoregressive video prior) "
        "on expert videos from apv-hub corpora. Run it with python, `accelerate launch` or "
        "`torchrun --nproc_per_node N`. The final model/ scores videos with "
        "VIPERRewardModel.score, apv-viper-score, and apv-finetune --variant viper.",
        VIPERTrainConfig,
        VIPER_FLAGS,
        f"model preset: {', '.join(VIPERConfig.PRESETS)} (default dmc; tiny is for tests); "
        f"task classes come from the data (--classes {'/'.join(CLASS_MODES)})",
    )


def new_viper_config(preset: str | None) -> Callable[[dict[str, Any]], Config]:
    def build(assignments: dict[str, Any]) -> Config:
        from apv_hub.viper.config import VIPERConfig

        if "data" not in assignments:
            raise ConfigError("--data is required: corpus folders, Hub dataset ids, or 'sample'")
        model = VIPERConfig.preset(preset or "dmc")
        return VIPERTrainConfig(data=text_list(assignments["data"]), model=model)

    return build


@command("apv-viper-train")
def viper_train_main(argv: Sequence[str] | None = None) -> int:
    """``apv-viper-train`` / ``python viper_train.py``: see ``--help``."""
    from apv_hub.training.viper import train_viper

    _, result = run_trainer(
        "apv-viper-train", argv, viper_parser(), VIPERTrainConfig, new_viper_config, train_viper
    )
    if result is not None and is_main_process():
        print(result.summary("VIPER training finished"))
    return 0
