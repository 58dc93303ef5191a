"""The README's shell commands are accepted by the parsers they reach: a renamed flag, a removed
command or a typo in the documentation fails here instead of on a user's first try.

Commands are parsed, not run (they name runs, corpora and Hub repos that exist only on a user's
machine); `tests/test_pretrain.py`, `tests/test_finetune.py` and the others run them.
"""

from __future__ import annotations

import argparse
import importlib
import re
import shlex
from collections.abc import Callable
from importlib.metadata import distribution
from pathlib import Path

import pytest

from apv_hub.convert import build_parser as convert_parser
from apv_hub.evaluation.episodes import build_parser as evaluate_parser
from apv_hub.evaluation.probe import build_parser as probe_parser
from apv_hub.evaluation.report import build_parser as report_parser
from apv_hub.predict import build_parser as predict_parser
from apv_hub.training.commands import finetune_parser, pretrain_parser, viper_parser
from apv_hub.viper.score import build_parser as score_parser

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"

PARSERS: dict[str, Callable[[], argparse.ArgumentParser]] = {
    "apv-pretrain": pretrain_parser,
    "apv-finetune": finetune_parser,
    "apv-viper-train": viper_parser,
    "apv-predict": predict_parser,
    "apv-evaluate": evaluate_parser,
    "apv-convert": convert_parser,
    "apv-report": report_parser,
    "apv-probe": probe_parser,
    "apv-viper-score": score_parser,
}
# The root scripts (for `accelerate launch`) call the same mains as these console scripts.
ROOT_SCRIPTS = {
    "pretrain.py": "apv-pretrain",
    "finetune.py": "apv-finetune",
    "viper_train.py": "apv-viper-train",
}
LAUNCHERS = ("python", "accelerate launch", "torchrun --nproc_per_node 2")


def readme_commands() -> list[list[str]]:
    """Every command line of the README's bash blocks -> argv lists (continuations joined,
    comments dropped; lines that elide their arguments with ``...`` skipped)."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            argv = shlex.split(line, comments=True)
            if argv and "..." not in argv:
                commands.append(argv)
    return commands


def console_form(argv: list[str]) -> list[str]:
    """``accelerate launch pretrain.py ARGS`` -> ``apv-pretrain ARGS``, alike for the others."""
    line = " ".join(argv)
    for launcher in LAUNCHERS:
        if line.startswith(launcher + " "):
            argv = argv[len(launcher.split()) :]
            break
    return [ROOT_SCRIPTS.get(argv[0], argv[0]), *argv[1:]]


COMMANDS = [console_form(argv) for argv in readme_commands()]


def test_the_readme_shows_every_console_script_and_nothing_unknown():
    scripts = {e.name for e in distribution("apv-hub").entry_points if e.group == "console_scripts"}
    assert scripts == set(PARSERS), "the console scripts and this test's parsers differ"
    shown = {argv[0] for argv in COMMANDS}
    unknown = {n for n in shown if n.startswith("apv-") or n.endswith(".py")} - set(PARSERS)
    unknown = {n for n in unknown if not n.startswith("dataset_scripts/")}
    assert not unknown, f"README commands that do not exist: {sorted(unknown)}"
    assert scripts <= shown, f"console scripts the README never shows: {sorted(scripts - shown)}"


@pytest.mark.parametrize(
    "argv", [a for a in COMMANDS if a[0] in PARSERS], ids=lambda argv: " ".join(argv)[:60]
)
def test_readme_command_parses(argv, capsys):
    try:
        PARSERS[argv[0]]().parse_args(argv[1:])
    except SystemExit as exit_:
        pytest.fail(f"{' '.join(argv)}: {capsys.readouterr().err.strip()} (exit {exit_.code})")


@pytest.mark.parametrize(
    "script", sorted({a[0] for a in COMMANDS if a[0].startswith("dataset_scripts/")})
)
def test_readme_dataset_script_shows_its_help(script, capsys):
    assert (ROOT / script).is_file(), f"{script} is named in the README but does not exist"
    module = importlib.import_module(script.removesuffix(".py").replace("/", "."))
    with pytest.raises(SystemExit) as exit_:
        module.main(["--help"])
    assert exit_.value.code == 0
    assert "--out" in capsys.readouterr().out
