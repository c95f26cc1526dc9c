"""Loss and learning-rate curves of a run, from its metrics.jsonl, as PNG files.

No shape letters: this file draws scalars.

matplotlib is optional (pip install "mambakit[plot]"); without it plotting is a clear error and
nothing else in training needs it.
"""
from __future__ import annotations

from pathlib import Path

from .metrics import read_metrics


def _pyplot():
    try:
        import matplotlib
    except ModuleNotFoundError as err:
        raise ValueError('mambakit plot needs matplotlib: pip install matplotlib (or "mambakit[plot]")') from err
    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt
    return plt


def plot_run(run_dir, out_dir=None) -> list[Path]:
    """Write loss.png (training and validation loss against steps and tokens) and lr.png; return their paths."""
    rows = read_metrics(run_dir)
    train = [r for r in rows if "loss" in r]
    val = [r for r in rows if "val_loss" in r]
    if not train and not val:
        raise ValueError(f"{Path(run_dir) / 'metrics.jsonl'} holds no loss values yet")
    plt = _pyplot()
    out = Path(out_dir) if out_dir else Path(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = Path(run_dir).resolve().name

    fig, ax = plt.subplots(figsize=(7, 4.5))
    if train:
        ax.plot([r["step"] for r in train], [r["loss"] for r in train], lw=0.8, alpha=0.6, label="train loss")
    if val:
        ax.plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-", lw=1.6, ms=3,
                label="validation loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats / token)")
    ax.set_title(f"{name}: loss")
    ax.grid(alpha=0.3)
    ax.legend()
    if train and "tokens" in train[-1] and train[-1]["step"]:
        per_step = train[-1]["tokens"] / train[-1]["step"]
        top = ax.secondary_xaxis("top", functions=(lambda s: s * per_step, lambda t: t / per_step))
        top.set_xlabel("tokens")
    fig.tight_layout()
    loss_png = out / "loss.png"
    fig.savefig(loss_png, dpi=120)
    plt.close(fig)
    paths = [loss_png]

    if train and "lr" in train[0]:
        fig, ax = plt.subplots(figsize=(7, 3))
        ax.plot([r["step"] for r in train], [r["lr"] for r in train])
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("learning rate")
        ax.set_title(f"{name}: learning rate")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "lr.png", dpi=120)
        plt.close(fig)
        paths.append(out / "lr.png")
    return paths
