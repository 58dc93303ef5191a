"""Report many fine-tuning runs (variants x tasks x seeds) as the APV paper and rliable do.

```bash
apv-report runs/ft-* --out report                   # every run folder the glob matches
apv-report runs/sweep --out report --baseline dreamerv2 --reps 5000
apv-report runs/dmc-* --out report --normalize 0:1000   # DMC returns lie in [0, 1000]
```

A run folder holds ``run_config.json`` (the fine-tuning config: ``env``, ``variant``, ``seed``,
``pretrained``, ...) and ``eval.json`` (its evaluation curve: one row per evaluation with
``env_steps``, ``return_mean`` and, on Meta-world, ``success_rate``); a folder whose subfolders
are runs stands for all of them. Runs are grouped by variant (and pre-trained model, where one
variant was fine-tuned from several) and task.

The score of a run at an evaluation is its success rate where every run of every task reports
one, else its mean return (``--metric`` forces either), optionally normalised per task to
``(score - min) / (max - min)`` (``--normalize``). Runs are aligned at the evaluation points all
of them reached; "final" is the last of those. The report holds, per variant, the interquartile
mean (IQM), mean, median and optimality gap of the final scores over the tasks every variant
ran, the IQM at every evaluation point (sample-efficiency curve), the performance profile, the
probability of improvement over a baseline variant, and per-task finals. Every statistic and
interval is rliable's (`apv_hub.evaluation.aggregate`): a stratified percentile bootstrap over
seeds; rliable needs the same number of seeds on every task, so where a variant has more on
some tasks its aggregates use the lowest seeds of each (a note names the runs left out). rliable
evaluates each statistic once per resample in Python: thousands of resamples over many
evaluation points or tasks take a minute or more. Output in ``--out``: ``report.json``,
``report.md`` and the PNG figures named in `PLOTS`.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from apv_hub.cli import command
from apv_hub.errors import ApvHubError
from apv_hub.evaluation import plots
from apv_hub.evaluation.aggregate import (
    AGGREGATES,
    aggregate_metrics,
    iqm_curve,
    mean_interval,
    performance_profile,
    probability_of_improvement,
)
from apv_hub.io import write_atomic, write_json

CONFIG_FILE = "run_config.json"
EVAL_FILE = "eval.json"
# What the trainer wrote before the run layer of issue 10 (same contents, older names).
LEGACY_FILES = {CONFIG_FILE: "config.json", EVAL_FILE: "curve.json"}
METRICS = {"success": "success_rate", "return": "return_mean"}
PLOTS = {
    "sample_efficiency": "sample_efficiency.png",
    "aggregates": "aggregates.png",
    "performance_profile": "performance_profile.png",
    "probability_of_improvement": "probability_of_improvement.png",
    "per_task": "per_task.png",
}
DEFAULT_BASELINE = "dreamerv2"
PROFILE_POINTS = 101


class ReportError(ApvHubError, ValueError):
    """Runs that cannot be reported, with what is wrong and where (exit code 2, like a bad
    argument: the runs named on the command line are the command's input)."""

    exit_code = 2


@dataclass
class Run:
    """One fine-tuning run: its folder, config (run_config.json) and evaluation rows."""

    path: Path
    config: dict[str, Any]
    rows: list[dict[str, Any]]
    label: str = ""

    @property
    def variant(self) -> str:
        return str(self.config["variant"])

    @property
    def env(self) -> str:
        return str(self.config["env"])

    @property
    def seed(self) -> int:
        return int(self.config["seed"])

    @property
    def env_steps(self) -> list[int]:
        return [int(row["env_steps"]) for row in self.rows]

    def has(self, column: str) -> bool:
        return bool(self.rows) and all(column in row for row in self.rows)

    def scores(self, column: str) -> dict[int, float]:
        """env_steps -> score (NaN where the row holds null, a non-number or nothing)."""
        out = {}
        for row in self.rows:
            value = row.get(column)
            valid = isinstance(value, int | float) and not isinstance(value, bool)
            out[int(row["env_steps"])] = float(value) if valid else math.nan
        return out


# Reading runs ---------------------------------------------------------------------------------


def _missing_file_error(folder: Path, name: str) -> ReportError:
    message = f"{folder} is not a fine-tuning run folder: {folder / name} is missing"
    legacy = LEGACY_FILES[name]
    if (folder / legacy).is_file():
        message += (
            f" ({folder} has {legacy} from an older trainer: rename it to {name}, the run "
            "layout apv-report reads)"
        )
    elif name == EVAL_FILE:
        message += " (the run has not finished an evaluation yet)"
    return ReportError(message)


def find_run_dirs(paths: Sequence[str | Path]) -> list[Path]:
    """Run folders named by ``paths``: run folders, folders whose subfolders are runs, or glob
    patterns of either (for shells that pass them unexpanded). Each folder appears once."""
    found: list[Path] = []
    for item in paths:
        text = str(item)
        matches = [Path(text)]
        if not Path(text).exists() and glob.has_magic(text):
            matches = [Path(m) for m in sorted(glob.glob(text))]
            if not matches:
                raise ReportError(f"no folder matches {text!r}")
        for path in matches:
            if not path.is_dir():
                raise ReportError(f"{path} is not a folder (expected a fine-tuning run folder)")
            if (path / CONFIG_FILE).is_file():
                found.append(path)
                continue
            children = sorted(p for p in path.iterdir() if (p / CONFIG_FILE).is_file())
            if not children:
                raise _missing_file_error(path, CONFIG_FILE)
            found.extend(children)
    unique: dict[Path, Path] = {}
    for path in found:
        unique.setdefault(path.resolve(), path)
    return list(unique.values())


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ReportError(f"{path} is not valid JSON: {e}") from e


def load_run(folder: str | Path) -> Run:
    """Read one run folder (``run_config.json`` + ``eval.json``), naming what is missing."""
    folder = Path(folder)
    for name in (CONFIG_FILE, EVAL_FILE):
        if not (folder / name).is_file():
            raise _missing_file_error(folder, name)
    config = _read_json(folder / CONFIG_FILE)
    if not isinstance(config, dict):
        raise ReportError(f"{folder / CONFIG_FILE} must hold a JSON object")
    missing = [key for key in ("env", "variant", "seed") if key not in config]
    if missing:
        raise ReportError(f"{folder / CONFIG_FILE} has no {', '.join(missing)}")
    rows = _read_json(folder / EVAL_FILE)
    if not isinstance(rows, list) or not all(
        isinstance(row, dict) and isinstance(row.get("env_steps"), int) for row in rows
    ):
        raise ReportError(
            f"{folder / EVAL_FILE} must be a JSON list of evaluation rows, each with an integer "
            "env_steps"
        )
    if not rows:
        raise ReportError(f"{folder / EVAL_FILE} has no evaluation rows yet")
    steps = [row["env_steps"] for row in rows]
    if steps != sorted(set(steps)):
        raise ReportError(f"{folder / EVAL_FILE}: env_steps must increase strictly, got {steps}")
    return Run(folder, config, rows)


# Grouping and alignment -----------------------------------------------------------------------


def assign_labels(runs: list[Run]) -> list[str]:
    """Label each run by its variant, adding the pre-trained model where runs of one variant
    were fine-tuned from different ones; returns notes saying so."""
    notes = []
    for variant in sorted({r.variant for r in runs}):
        mine = [r for r in runs if r.variant == variant]
        sources = sorted({str(r.config.get("pretrained")) for r in mine})
        for run in mine:
            pretrained = str(run.config.get("pretrained"))
            run.label = variant if len(sources) == 1 else f"{variant}[{pretrained}]"
        if len(sources) > 1:
            notes.append(
                f"variant {variant} was fine-tuned from {len(sources)} pre-trained models "
                f"({', '.join(sources)}): reported as separate labels"
            )
    return notes


def check_duplicates(runs: list[Run]) -> None:
    """Two folders holding the same (label, env, seed) would count one run twice."""
    seen: dict[tuple[str, str, int], Path] = {}
    for run in runs:
        key = (run.label, run.env, run.seed)
        if key in seen:
            raise ReportError(
                f"duplicate runs: {seen[key]} and {run.path} are both {run.label} on {run.env} "
                f"with seed {run.seed}; pass only one of them"
            )
        seen[key] = run.path


def choose_metric(runs: list[Run], metric: str) -> str:
    """The eval.json column to score: success_rate where every run has it (``auto``)."""
    if metric not in ("auto", *METRICS):
        raise ReportError(f"--metric must be auto, success or return, got {metric!r}")
    if metric == "auto":
        return METRICS["success"] if all(r.has("success_rate") for r in runs) else "return_mean"
    column = METRICS[metric]
    lacking = [str(r.path) for r in runs if not r.has(column)]
    if lacking:
        raise ReportError(f"{column} is missing from the evaluations of {', '.join(lacking)}")
    return column


def parse_normalization(specs: Sequence[str]) -> dict[str | None, tuple[float, float]]:
    """``["0:1000", "dmc/hopper-hop=0:500"]`` -> {None: (0, 1000), "dmc/hopper-hop": (0, 500)};
    the ``None`` entry applies to every task without one of its own."""
    out: dict[str | None, tuple[float, float]] = {}
    for spec in specs:
        env, sep, bounds = spec.rpartition("=")
        low, colon, high = bounds.partition(":")
        try:
            pair = (float(low), float(high))
        except ValueError:
            pair = None
        if not colon or pair is None or not pair[1] > pair[0]:
            raise ReportError(
                f"--normalize {spec!r} must look like MIN:MAX or ENV=MIN:MAX with MAX > MIN"
            )
        out[env if sep else None] = pair
    return out


def common_steps(runs: list[Run], notes: list[str]) -> list[int]:
    """The evaluation points every run reached, noting the points some runs had beyond them."""
    common = set(runs[0].env_steps)
    for run in runs[1:]:
        common &= set(run.env_steps)
    if not common:
        spans = "; ".join(f"{r.path}: {r.env_steps[0]}..{r.env_steps[-1]}" for r in runs)
        raise ReportError(
            f"the runs share no evaluation point (env_steps), so they cannot be aligned: {spans}"
        )
    steps = sorted(common)
    longer = [r for r in runs if set(r.env_steps) - common]
    if longer:
        notes.append(
            f"runs evaluated at different points: aligned at the {len(steps)} points all "
            f"{len(runs)} runs reached (up to {steps[-1]} env steps); {len(longer)} run(s) "
            "had other points, left out"
        )
    return steps


def score_matrix(
    runs: list[Run],
    steps: list[int],
    column: str,
    normalization: dict[str | None, tuple[float, float]],
) -> np.ndarray:
    """Scores [runs, steps] at the aligned points, normalised where asked."""
    matrix = np.array([[r.scores(column)[s] for s in steps] for r in runs], np.float64)
    for i, run in enumerate(runs):
        bounds = normalization.get(run.env, normalization.get(None))
        if bounds is not None:
            matrix[i] = (matrix[i] - bounds[0]) / (bounds[1] - bounds[0])
    return matrix


def drop_nonfinite(
    runs: list[Run], steps: list[int], matrix: np.ndarray, notes: list[str]
) -> tuple[list[int], np.ndarray]:
    """Leave out the evaluation points where any run's score is not a finite number."""
    bad = ~np.isfinite(matrix)
    if not bad.any():
        return steps, matrix
    for i in np.flatnonzero(bad.any(axis=1)):
        at = [steps[j] for j in np.flatnonzero(bad[i])]
        notes.append(f"{runs[i].path} has non-finite scores at env steps {at}")
    keep = ~bad.any(axis=0)
    if not keep.any():
        raise ReportError("no evaluation point has a finite score in every run")
    notes.append(
        f"{int((~keep).sum())} evaluation point(s) with a non-finite score left out for every "
        f"run; final = {steps[int(np.flatnonzero(keep)[-1])]} env steps"
    )
    return [s for s, k in zip(steps, keep, strict=True) if k], matrix[:, keep]


def label_scores(
    label: str,
    runs: list[Run],
    by_group: dict[tuple[str, str], list[int]],
    tasks: list[str],
    matrix: np.ndarray,
    notes: list[str],
) -> np.ndarray:
    """The scores of ``label`` in rliable's layout [seeds, tasks, steps].

    rliable needs the same number of runs on every task: where ``label`` has more seeds on some
    tasks, the aggregates use the lowest ``n`` seeds of each task (``n``: the fewest any task
    has) and a note says which runs only the per-task rows use.
    """
    members = [sorted(by_group[(label, env)], key=lambda i: runs[i].seed) for env in tasks]
    n = min(len(m) for m in members)
    left_out = [runs[i] for m in members for i in m[n:]]
    if left_out:
        named = ", ".join(f"{r.env} seed {r.seed}" for r in left_out)
        notes.append(
            f"{label} has {n} to {max(len(m) for m in members)} seeds per task; rliable's "
            f"aggregates need the same number on every task, so they use the lowest {n} seeds "
            f"of each task (left out of the aggregates, kept in the per-task rows: {named})"
        )
    return np.stack([matrix[m[:n]] for m in members], axis=1)


# The report -----------------------------------------------------------------------------------


def build_report(
    run_dirs: Sequence[str | Path],
    out: str | Path,
    *,
    metric: str = "auto",
    baseline: str | None = None,
    reps: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
    normalize: Sequence[str] = (),
    figures: bool = True,
) -> dict[str, Any]:
    """Read the runs of ``run_dirs`` (see `find_run_dirs`), write ``report.json``,
    ``report.md`` and (with ``figures``) the PNG figures of `PLOTS` into ``out``, and return the
    report.

    ``baseline`` is the variant (label) the others are compared with by probability of
    improvement (default: ``dreamerv2`` where present); ``reps`` bootstrap resamples seeded by
    ``seed`` give intervals of coverage ``confidence``.
    """
    if reps < 1:
        raise ReportError(f"--reps must be a positive number of resamples, got {reps}")
    if not 0.0 < confidence < 1.0:
        raise ReportError(f"--confidence must lie strictly between 0 and 1, got {confidence}")
    runs = [load_run(p) for p in find_run_dirs(run_dirs)]
    if not runs:
        raise ReportError("no run folders given")
    notes = assign_labels(runs)
    check_duplicates(runs)
    column = choose_metric(runs, metric)
    normalization = parse_normalization(normalize)
    unknown = sorted(k for k in normalization if k is not None and k not in {r.env for r in runs})
    if unknown:
        raise ReportError(f"--normalize names task(s) without runs: {', '.join(unknown)}")
    steps = common_steps(runs, notes)
    matrix = score_matrix(runs, steps, column, normalization)
    steps, matrix = drop_nonfinite(runs, steps, matrix, notes)
    labels = sorted({r.label for r in runs})
    baseline = resolve_baseline(labels, baseline, notes)
    envs = sorted({r.env for r in runs})
    by_group = {
        (label, env): [i for i, r in enumerate(runs) if r.label == label and r.env == env]
        for label in labels
        for env in envs
    }
    tasks = [env for env in envs if all(by_group[(label, env)] for label in labels)]
    for env in envs:
        if env not in tasks:
            absent = [label for label in labels if not by_group[(label, env)]]
            notes.append(
                f"{env} left out of the aggregates: no runs of {', '.join(absent)} on it "
                "(its per-task scores are still reported)"
            )
    if not tasks:
        raise ReportError(
            "no task was run by every variant, so the variants cannot be compared; report them "
            "separately"
        )
    if column == "return_mean" and len(tasks) > 1 and not normalization:
        notes.append(
            "aggregates pool raw returns of several tasks: tasks with larger returns weigh more "
            "(pass --normalize MIN:MAX or ENV=MIN:MAX to put them on one scale)"
        )
    for (label, env), members in by_group.items():
        if len(members) == 1:
            notes.append(
                f"{label} on {env} has one seed: its intervals are a single point, not an "
                "uncertainty estimate"
            )
    normalized = column == METRICS["success"] or bool(normalization)
    bootstrap = dict(reps=reps, confidence=confidence, seed=seed)
    scores = {label: label_scores(label, runs, by_group, tasks, matrix, notes) for label in labels}

    report: dict[str, Any] = {
        "metric": column,
        "normalization": {str(k): list(v) for k, v in normalization.items()} or None,
        "confidence": confidence,
        "reps": reps,
        "seed": seed,
        "labels": labels,
        "tasks": tasks,
        "env_steps": steps,
        "final_env_steps": steps[-1],
        "runs": [
            {
                "path": str(r.path),
                "label": r.label,
                "variant": r.variant,
                "env": r.env,
                "seed": r.seed,
                "pretrained": r.config.get("pretrained"),
                "last_env_steps": r.env_steps[-1],
            }
            for r in runs
        ],
    }
    names = [n for n in AGGREGATES if n != "optimality_gap" or normalized]
    report["aggregates"] = {
        label: {
            name: interval.as_dict()
            for name, interval in aggregate_metrics(
                scores[label][..., -1], names, **bootstrap
            ).items()
        }
        for label in labels
    }
    report["curves"] = {}
    for label in labels:
        curve = iqm_curve(scores[label], **bootstrap)
        report["curves"][label] = {
            "iqm": curve.point.tolist(),
            "ci_low": curve.low.tolist(),
            "ci_high": curve.high.tolist(),
        }
    report["per_task"] = {
        label: {
            env: {
                "seeds": [runs[i].seed for i in by_group[(label, env)]],
                "final": matrix[by_group[(label, env)], -1].tolist(),
                **mean_interval(matrix[by_group[(label, env)], -1], **bootstrap).as_dict(),
            }
            for env in envs
            if by_group[(label, env)]
        }
        for label in labels
    }
    finals = matrix[:, -1]
    taus = (
        np.linspace(0.0, 1.0, PROFILE_POINTS)
        if normalized
        else np.linspace(finals.min(), finals.max(), PROFILE_POINTS)
    )
    report["performance_profile"] = {"taus": taus.tolist(), "fraction_above": {}}
    for label in labels:
        profile = performance_profile(scores[label][..., -1], taus, **bootstrap)
        report["performance_profile"]["fraction_above"][label] = {
            "point": profile.point.tolist(),
            "ci_low": profile.low.tolist(),
            "ci_high": profile.high.tolist(),
        }
    report["probability_of_improvement"] = improvement_section(
        baseline, {label: s[..., -1] for label, s in scores.items()}, tasks, bootstrap
    )
    report["notes"] = notes
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report["plots"] = write_plots(report, runs, matrix, out) if figures else {}
    write_json(out / "report.json", report)
    write_atomic(out / "report.md", markdown(report).encode())
    return report


def resolve_baseline(labels: list[str], baseline: str | None, notes: list[str]) -> str | None:
    """The label the others are compared with: ``baseline``, else dreamerv2 where present
    among several labels, else None (no probabilities of improvement)."""
    if baseline is not None:
        if baseline not in labels:
            raise ReportError(f"--baseline {baseline!r} has no runs; labels: {', '.join(labels)}")
        return baseline if len(labels) > 1 else None
    if DEFAULT_BASELINE in labels and len(labels) > 1:
        return DEFAULT_BASELINE
    if len(labels) > 1:
        notes.append(
            f"no {DEFAULT_BASELINE} runs: pass --baseline to get probabilities of improvement"
        )
    return None


def improvement_section(
    baseline: str | None, finals: dict[str, np.ndarray], tasks: list[str], bootstrap: dict
) -> dict[str, Any] | None:
    """P(label > baseline) of the final scores ``finals[label]`` [runs, tasks] for every other
    label, or None without a baseline."""
    if baseline is None:
        return None
    results = {
        label: probability_of_improvement(x, finals[baseline], **bootstrap).as_dict()
        for label, x in finals.items()
        if label != baseline
    }
    return {"baseline": baseline, "tasks": tasks, "results": results}


# Output ---------------------------------------------------------------------------------------


def fmt(value: float) -> str:
    """A score as the Markdown tables print it (4 significant digits)."""
    return f"{value:.4g}"


def _with_ci(entry: dict[str, Any]) -> str:
    low, high = entry["ci"]
    return f"{fmt(entry['point'])} [{fmt(low)}, {fmt(high)}]"


AGGREGATE_TITLES = {
    "iqm": "IQM",
    "mean": "mean",
    "median": "median",
    "optimality_gap": "optimality gap",
}


def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown tables (every number is also in report.json)."""
    pct = round(report["confidence"] * 100)
    labels, tasks = report["labels"], report["tasks"]
    count = {label: sum(r["label"] == label for r in report["runs"]) for label in labels}
    lines = [
        "# Run report",
        "",
        f"- score: `{report['metric']}`"
        + (f", normalised by {report['normalization']}" if report["normalization"] else ""),
        f"- {len(report['runs'])} runs, {len(labels)} variant(s), final at "
        f"{report['final_env_steps']} env steps ({len(report['env_steps'])} aligned points)",
        f"- intervals: {pct}% stratified percentile bootstrap over seeds, {report['reps']} "
        f"resamples, seed {report['seed']}",
        "",
        f"## Final scores aggregated over {len(tasks)} task(s): {', '.join(tasks)}",
        "",
    ]
    names = list(next(iter(report["aggregates"].values())))
    header = ["variant", "runs"] + [AGGREGATE_TITLES[n] for n in names]
    lines += [_row(header), _row(["---"] * len(header))]
    for label in labels:
        cells = [_with_ci(report["aggregates"][label][n]) for n in names]
        lines.append(_row([label, str(count[label]), *cells]))
    poi = report["probability_of_improvement"]
    if poi:
        lines += ["", f"## Probability of improvement over {poi['baseline']} (final scores)", ""]
        lines += [_row(["variant", f"P(variant > {poi['baseline']})"]), _row(["---", "---"])]
        lines += [_row([label, _with_ci(e)]) for label, e in poi["results"].items()]
    lines += ["", "## Final score per task (mean over seeds)", ""]
    lines += [_row(["task", "variant", "seeds", "mean", "per seed"]), _row(["---"] * 5)]
    for label in labels:
        for env, entry in report["per_task"][label].items():
            per_seed = ", ".join(fmt(v) for v in entry["final"])
            lines.append(_row([env, label, str(len(entry["seeds"])), _with_ci(entry), per_seed]))
    lines += ["", "## IQM at every aligned evaluation point", ""]
    lines += [_row(["env steps", *labels]), _row(["---"] * (len(labels) + 1))]
    for i, step in enumerate(report["env_steps"]):
        cells = []
        for label in labels:
            c = report["curves"][label]
            cells.append(f"{fmt(c['iqm'][i])} [{fmt(c['ci_low'][i])}, {fmt(c['ci_high'][i])}]")
        lines.append(_row([str(step), *cells]))
    if report["notes"]:
        lines += ["", "## Notes", ""] + [f"- {note}" for note in report["notes"]]
    if report["plots"]:
        lines += ["", "## Figures", ""]
        lines += [f"![{name}]({file})" for name, file in report["plots"].items()]
    return "\n".join(lines) + "\n"


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def write_plots(
    report: dict[str, Any], runs: list[Run], matrix: np.ndarray, out: Path
) -> dict[str, str]:
    """The figures of `PLOTS` -> {name: file name in ``out``}."""
    labels, steps = report["labels"], np.asarray(report["env_steps"])
    palette = plots.colours(labels)
    score_name = report["metric"] + (" (normalised)" if report["normalization"] else "")
    written = {}

    fig, axes = plots.new_figure()
    ax = axes[0, 0]
    for label in labels:
        c = report["curves"][label]
        plots.line_with_band(
            ax, steps, c["iqm"], c["ci_low"], c["ci_high"], label=label, colour=palette[label]
        )
    ax.set(xlabel="env steps", ylabel=f"IQM {score_name}", title="Sample efficiency")
    ax.legend()
    written["sample_efficiency"] = plots.save_figure(fig, out / PLOTS["sample_efficiency"]).name

    names = list(next(iter(report["aggregates"].values())))
    fig, axes = plots.new_figure(len(names), 1, panel=(3.2, 0.6 + 0.5 * len(labels)))
    for ax, name in zip(axes[0], names, strict=True):
        entries = [report["aggregates"][label][name] for label in labels]
        plots.interval_bars(ax, labels, entries, palette)
        ax.set_title(AGGREGATE_TITLES[name])
        if ax is not axes[0, 0]:
            ax.set_yticks([])
    fig.suptitle(f"Final {score_name} at {report['final_env_steps']} env steps")
    written["aggregates"] = plots.save_figure(fig, out / PLOTS["aggregates"]).name

    profile = report["performance_profile"]
    fig, axes = plots.new_figure()
    ax = axes[0, 0]
    for label in labels:
        p = profile["fraction_above"][label]
        plots.line_with_band(
            ax,
            profile["taus"],
            p["point"],
            p["ci_low"],
            p["ci_high"],
            label=label,
            colour=palette[label],
        )
    ax.set(xlabel=f"final {score_name} threshold", ylabel="fraction of runs above")
    ax.set_title("Performance profile")
    ax.legend()
    written["performance_profile"] = plots.save_figure(fig, out / PLOTS["performance_profile"]).name

    poi = report["probability_of_improvement"]
    if poi:
        others = list(poi["results"])
        entries = [poi["results"][label] for label in others]
        fig, axes = plots.new_figure(panel=(5.0, 0.8 + 0.5 * len(others)))
        ax = axes[0, 0]
        plots.interval_bars(ax, others, entries, palette)
        ax.axvline(0.5, color="grey", linestyle="--")
        ax.set(xlim=(0, 1), xlabel=f"P(variant > {poi['baseline']})")
        ax.set_title("Probability of improvement")
        name = PLOTS["probability_of_improvement"]
        written["probability_of_improvement"] = plots.save_figure(fig, out / name).name

    envs = sorted({r.env for r in runs})
    columns = min(3, len(envs))
    rows = math.ceil(len(envs) / columns)
    fig, axes = plots.new_figure(columns, rows, panel=(4.2, 3.0))
    for k, env in enumerate(envs):
        ax = axes.flat[k]
        for label in labels:
            members = [i for i, r in enumerate(runs) if r.label == label and r.env == env]
            if not members:
                continue
            for i in members:
                ax.plot(steps, matrix[i], color=palette[label], alpha=0.25, linewidth=1)
            ax.plot(steps, matrix[members].mean(0), color=palette[label], label=label, lw=2)
        ax.set(title=env, xlabel="env steps", ylabel=score_name)
    for ax in axes.flat[len(envs) :]:
        ax.set_visible(False)
    axes.flat[0].legend()
    written["per_task"] = plots.save_figure(fig, out / PLOTS["per_task"]).name
    return written


# Command line ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="apv-report",
        description="Aggregate fine-tuning runs (variants x tasks x seeds) as the APV paper and "
        "rliable report them: interquartile mean (IQM), mean, median and optimality gap of the "
        "final scores, IQM at every evaluation point (sample efficiency), performance profiles "
        "and probability of improvement over a baseline, each with a stratified bootstrap "
        "confidence interval over seeds. Writes report.json, report.md and PNG figures.",
        epilog="A run folder holds run_config.json and eval.json (written by apv-finetune). "
        "Runs are aligned at the evaluation points all of them reached; 'final' is the last one.",
    )
    parser.add_argument(
        "runs",
        nargs="+",
        metavar="RUN_DIR",
        help="run folders, folders whose subfolders are runs, or glob patterns of either",
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument(
        "--metric",
        choices=("auto", *METRICS),
        default="auto",
        help="score: success rate or mean return (auto: success where every run reports it)",
    )
    parser.add_argument(
        "--baseline",
        default=None,
        help=f"variant the others are compared with (default: {DEFAULT_BASELINE} if present)",
    )
    parser.add_argument("--reps", type=int, default=2000, help="bootstrap resamples (2000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (0)")
    parser.add_argument("--confidence", type=float, default=0.95, help="interval coverage (0.95)")
    parser.add_argument(
        "--normalize",
        action="append",
        default=[],
        metavar="[ENV=]MIN:MAX",
        help="map scores to (score - MIN) / (MAX - MIN), for every task or for ENV; repeat for "
        "several tasks (e.g. 0:1000 for DMC returns; success rates need none)",
    )
    parser.add_argument("--no-figures", action="store_true", help="write the tables only")
    return parser


@command("apv-report")
def main(argv: Sequence[str] | None = None) -> int:
    """The ``apv-report`` command: 0 on success, 2 when the runs cannot be reported."""
    args = build_parser().parse_args(argv)
    report = build_report(
        args.runs,
        args.out,
        metric=args.metric,
        baseline=args.baseline,
        reps=args.reps,
        seed=args.seed,
        confidence=args.confidence,
        normalize=args.normalize,
        figures=not args.no_figures,
    )
    for note in report["notes"]:
        print(f"note: {note}", file=sys.stderr)
    for label in report["labels"]:
        entry = report["aggregates"][label]["iqm"]
        print(f"{label}: final IQM {report['metric']} {_with_ci(entry)}", file=sys.stderr)
    print(f"wrote {Path(args.out) / 'report.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
