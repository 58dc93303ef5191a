"""What every console command shares: the error boundary, headless rendering, config flags.

``@command("apv-x")`` wraps a ``main(argv) -> int | None``: a known error (`ApvHubError`: bad
arguments, missing inputs, damaged checkpoints, a diverging run) is printed as one line
``apv-x: error: <message>`` and the command exits with the error's code; any other exception is
a bug and keeps its traceback; success exits 0.

Config-backed flags are generated from the config dataclasses (`add_config_flags`): a flag
names the dotted key it sets, and takes its type, help and default from the field, so flag and
field cannot disagree. ``--set KEY=VALUE`` reaches every other field (`apv_hub.config_base`).
"""

from __future__ import annotations

import argparse
import functools
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from typing import Any

from apv_hub.config_base import Config, parse_assignments
from apv_hub.errors import ApvHubError

Main = Callable[[Sequence[str] | None], int | None]


def command(prog: str) -> Callable[[Main], Callable[[Sequence[str] | None], int]]:
    """Make ``main(argv)`` a console command with apv-hub's error boundary (see module doc)."""

    def wrap(main: Main) -> Callable[[Sequence[str] | None], int]:
        @functools.wraps(main)
        def run(argv: Sequence[str] | None = None) -> int:
            headless_rendering()
            try:
                code = main(argv)
            except ApvHubError as e:
                print(f"{prog}: error: {one_line(e)}", file=sys.stderr)
                return e.exit_code
            except KeyboardInterrupt:
                print(f"{prog}: interrupted", file=sys.stderr)
                return 130
            return 0 if code is None else int(code)

        return run

    return wrap


def one_line(error: BaseException) -> str:
    """The message of ``error`` on one line (details that were listed on more lines are joined)."""
    return "; ".join(part.strip() for part in str(error).splitlines() if part.strip())


def headless_rendering() -> None:
    """Without a display, MuJoCo must render through EGL (GLFW needs a screen); a user's own
    MUJOCO_GL / PYOPENGL_PLATFORM settings are kept."""
    if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        os.environ.setdefault("MUJOCO_GL", "egl")
        os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])


def command_line(prog: str, argv: Sequence[str] | None) -> str:
    """The command as a person would type it again (for run records and model cards)."""
    if argv is not None:
        return shlex.join([prog, *argv])
    script = os.path.basename(sys.argv[0])
    prefix = ["python", script] if script.endswith(".py") else [prog]
    return shlex.join([*prefix, *sys.argv[1:]])


def add_config_flags(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    config_class: type[Config],
    flags: dict[str, str],
) -> None:
    """Add ``--flag`` for each ``{flag: dotted key}``; type, help and default come from the
    field. Parsed values land in ``args.config_flags`` as ``{dotted key: value}``."""
    fields = {key: (kind, default, text) for key, kind, default, text in config_class.fields_help()}
    for flag, key in flags.items():
        kind, default, text = fields[key]
        options: dict[str, Any] = {"dest": f"config_flag:{key}", "default": argparse.SUPPRESS}
        if kind == "bool":
            options["action"] = "store_true"
            help_text = f"{text} (sets {key}=true)"
        else:
            options["metavar"] = key.rsplit(".", 1)[-1].upper()
            options["type"] = float if "float" in kind else int if "int" in kind else str
            help_text = f"{text} ({key}; default {default})"
            if "list[" in kind or "tuple[" in kind:
                options["nargs"] = "+"
        parser.add_argument(flag, help=help_text.replace("%", "%%"), **options)


def add_set_flag(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set any config key, dotted for nested ones (e.g. --set model.lr=1e-4, "
        "--set agent.world_model.free_nats=1); VALUE is JSON or a bare string; repeatable",
    )


def config_assignments(args: argparse.Namespace) -> dict[str, Any]:
    """The config keys a command line sets: generated flags first, then ``--set`` items."""
    assignments = {
        name.split(":", 1)[1]: value
        for name, value in vars(args).items()
        if name.startswith("config_flag:")
    }
    assignments.update(parse_assignments(getattr(args, "set", [])))
    return assignments


def fields_epilog(config_class: type[Config], title: str) -> str:
    """A ``--help`` epilog listing every config key with its type and default."""
    rows = [
        f"  {key} = {default!r}  ({kind})" for key, kind, default, _ in config_class.fields_help()
    ]
    return f"{title}\n" + "\n".join(rows)
