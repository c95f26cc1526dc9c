"""metrics.jsonl and the progress bar.

No shape letters: this file handles scalars.

Each line of RUN_DIR/metrics.jsonl is one JSON object with "step" (optimizer steps done) and either
training fields (loss, lr, grad_norm, tokens, tokens_per_s, elapsed_s, and on CUDA max_mem_gib: the
rank's peak allocated memory) or validation fields
(val_loss, val_ppl). A resumed run first drops the lines past its checkpoint, so the file reads as
one uninterrupted run. A value that is not finite (a diverged loss, an infinite gradient norm) is
written as the string "nan", "inf" or "-inf", so the file stays strict JSON; read_metrics turns
these back into floats. elapsed_s is the run's wall time, carried over a resume by the checkpoint.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path


# MetricsLog.write stores these as strings (JSON has no NaN or infinity); every metric is a number,
# so on reading they are numbers again: a plot then shows a gap, not a string axis.
NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def _number(value):
    return NON_FINITE[value] if isinstance(value, str) and value in NON_FINITE else value


def read_metrics(run_dir) -> list[dict]:
    """The rows of RUN_DIR/metrics.jsonl, non-finite values as floats (nan, inf, -inf)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise ValueError(f"{path} does not exist; expected the folder of a training run (train's out_dir)")
    rows, lines = [], path.read_text().splitlines()
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if lineno == len(lines):
                break  # a line cut short by a kill: the run wrote it last, ignore it
            raise ValueError(f"{path}:{lineno}: not valid JSON") from None
        rows.append({k: _number(v) for k, v in row.items()} if isinstance(row, dict) else row)
    return rows


class MetricsLog:
    """Appends metric rows to RUN_DIR/metrics.jsonl (rank 0 only)."""

    def __init__(self, run_dir, enabled: bool, resume_step: int | None = None):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.enabled = enabled
        if enabled and resume_step is not None and self.path.exists():
            self._truncate(resume_step)
        elif enabled and resume_step is None and self.path.exists():
            self.path.unlink()  # a fresh run in an old folder starts a fresh log

    def _truncate(self, step: int) -> None:
        keep = []
        for line in self.path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if row.get("step", 0) <= step:  # an evaluation at the checkpoint's step came before it
                keep.append(line)
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(k + "\n" for k in keep))
        os.replace(tmp, self.path)

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        row = {k: (v if not isinstance(v, float) or math.isfinite(v) else str(v)) for k, v in row.items()}
        with open(self.path, "a") as fh:
            fh.write(json.dumps(row) + "\n")
            fh.flush()


class Progress:
    """A tqdm bar with loss and tokens/s (tqdm adds the ETA); silent when disabled or without tqdm."""

    def __init__(self, total: int, initial: int, enabled: bool):
        self.bar = None
        if enabled:
            try:
                from tqdm.auto import tqdm
            except ModuleNotFoundError:
                return
            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, desc="train")

    def update(self, loss: float, tokens_per_s: float, val_loss: float | None = None) -> None:
        if self.bar is None:
            return
        post = {"loss": f"{loss:.4f}", "tok/s": f"{tokens_per_s:,.0f}"}
        if val_loss is not None:
            post["val"] = f"{val_loss:.4f}"
        self.bar.set_postfix(post, refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
