"""Results of task runs: the JSON record, a text table and a matplotlib plot.

No shape letters: this file handles numbers, not tensors.

The JSON holds, per model, its config, parameter count, training summary and one row per
evaluation point (the sweep value, tokens per example, token_accuracy, exact_match,
partial_match, counts), plus the machine and the command line, so every number can be traced
to the run that measured it. matplotlib is optional (`pip install mambakit[plot]`).
"""
from __future__ import annotations

import datetime
import json
import math
import os
import platform
import re
import sys
from pathlib import Path

import torch

PLOT_MISSING = ("matplotlib is not installed, so no plot was drawn (the JSON and the table are complete); "
                "install it with: pip install 'mambakit[plot]'  (or pip install matplotlib)")


def machine_info() -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "date": datetime.datetime.now().isoformat(timespec="seconds")}
    try:
        info["load_average_1min"] = round(os.getloadavg()[0], 2)  # the machine may be shared
    except OSError:  # pragma: no cover - not on every platform
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    commit = _git_commit()
    if commit:
        info["mambakit_commit"] = commit  # "-dirty": the working tree had uncommitted changes
    return info


def _git_commit() -> str | None:
    import subprocess
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=12"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def write_json(payload: dict, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(payload, indent=2, default=_jsonable)
    # lists of numbers (training curves) on one line each: readable, and a tenth of the size
    text = _NUMBER_LIST.sub(lambda m: "[" + " ".join(m.group(1).split()) + "]", text)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # written whole, then renamed: never half a file
    try:
        tmp.write_text(text + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


_NUMBER_LIST = re.compile(r"\[\s*((?:-?[\d.eE+-]+|null),(?:\s*(?:-?[\d.eE+-]+|null),?)*)\s*\]")


def _jsonable(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def command_line() -> str:
    return " ".join(["mambakit"] + sys.argv[1:]) if sys.argv and sys.argv[0].endswith("mambakit") \
        else " ".join(sys.argv)


def format_table(results: dict) -> str:
    """A markdown table: one row per sweep value, one column per model (the headline metric)."""
    metric, key = results["metric"], results["sweep_param"]
    models = results["models"]
    values = [row[key] for row in models[0]["eval"]] if models else []
    head = f"| {key} | " + " | ".join(m["name"] for m in models) + " |"
    lines = [head, "|" + "---|" * (len(models) + 1)]
    for i, value in enumerate(values):
        cells = []
        for m in models:
            row = m["eval"][i]
            if "skipped" in row:
                cells.append("skipped")
                continue
            cell = f"{100 * row[metric]:.1f}%"
            if metric == "exact_match":
                cell += f" ({100 * row['partial_match']:.0f}% partial)"
            cells.append(cell)
        lines.append(f"| {value} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results: dict, path: str | os.PathLike, title: str | None = None) -> Path | None:
    """Headline metric against the sweep value, a line per model. None (and a message) without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ModuleNotFoundError:
        print(PLOT_MISSING, file=sys.stderr)
        return None
    metric, key = results["metric"], results["sweep_param"]
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for m in results["models"]:
        pts = [(r[key], r[metric]) for r in m["eval"] if "skipped" not in r and r.get(metric) is not None]
        if not pts:
            continue
        xs, ys = zip(*pts)
        line, = ax.plot(xs, [100 * y for y in ys], marker="o", label=m["name"])
        if metric == "exact_match":
            part = [100 * r["partial_match"] for r in m["eval"] if "skipped" not in r]
            ax.plot(xs, part, marker="x", linestyle="--", color=line.get_color(), alpha=0.6,
                    label=f"{m['name']} (partial)")
    xs_all = [r[key] for m in results["models"] for r in m["eval"]]
    if len(set(xs_all)) > 1 and min(xs_all) > 0 and max(xs_all) / min(xs_all) >= 8:
        ax.set_xscale("log", base=2)
    ax.set_xlabel(key.replace("_", " "))
    ax.set_ylabel(metric.replace("_", " ") + " (%)")
    ax.set_ylim(-3, 103)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fixed = ", ".join(f"{k} {v}" for k, v in results["task_params"].items() if k != key)
    ax.set_title(title or f"{results['task'].replace('_', ' ')} ({fixed})", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
