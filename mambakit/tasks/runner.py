"""Train a model on a task and evaluate it across the task's sweep (length, pairs, entries).

Letters: b batch, l length, c chunk length (tokens fed to the model at once), v vocabulary.

Training draws a fresh batch every step from the seeded generator (stream (seed, 0, step)) and
minimizes cross-entropy on the answer tokens only, with AdamW and linear warm-up then cosine
decay. Evaluation draws from another stream (seed, 1, point, batch), so the model never trained
on an evaluation example, and scores greedy predictions exactly (scoring.py).

Long examples (induction heads at 2^20 tokens) stream through the model's inference cache `c`
tokens at a time: an SSM carries only its fixed-size state from chunk to chunk, so memory is
bounded by b * c, whatever l. Chunks without an answer skip the output head (last_only).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from ..config import ModelConfig
from ..model import LM
from .base import IGNORE_INDEX, Task, TaskBatch
from .scoring import Score, score_predictions


# --- models ------------------------------------------------------------------------------------------
def parse_overrides(items: list[str] | None) -> dict:
    """["mamba2.d_state=32", "n_layer=4"] -> {"mamba2": {"d_state": 32}, "n_layer": 4} (values as JSON)."""
    import json
    out: dict = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"expected KEY=VALUE (e.g. mamba2.d_state=32), got {item!r}")
        key, raw = item.split("=", 1)
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw  # a bare word: a string such as s4d
        node = out
        *parents, leaf = key.strip().split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def _deep_merge(base: dict, extra: dict) -> dict:
    merged = dict(base)
    for k, v in extra.items():
        merged[k] = _deep_merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return merged


def build_model(spec: str, vocab_size: int, overrides: dict | None = None, seed: int = 0) -> LM:
    """A preset name (a fresh model, its vocabulary set to the task's) or a checkpoint folder."""
    from ..presets import PRESETS
    overrides = overrides or {}
    if spec in PRESETS:
        base = PRESETS[spec].to_dict()
        if "n_layer" in overrides and "layer_pattern" not in overrides and set(base["layer_pattern"]) == {"M"}:
            base["layer_pattern"] = None  # a pure SSM stack follows n_layer
        config = ModelConfig.from_dict(_deep_merge(base, {"vocab_size": vocab_size, **overrides}))
        torch.manual_seed(seed)
        return LM(config)
    if Path(spec).exists():
        if overrides:
            raise ValueError("--set changes the config of a new model from a preset, not of a loaded checkpoint")
        from ..convert import load
        model = load(spec)
        if model.config.vocab_size < vocab_size:
            raise ValueError(f"the model at {spec} has a vocabulary of {model.config.vocab_size} tokens but the task "
                             f"uses {vocab_size}")
        return model
    raise ValueError(f"--model {spec!r} is neither a preset ({', '.join(PRESETS)}) nor an existing folder")


# --- training ----------------------------------------------------------------------------------------
@dataclass
class TrainSettings:
    steps: int = 1000
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 0.1
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0

    def __post_init__(self):
        for name in ("steps", "batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if self.warmup_steps < 0 or self.weight_decay < 0 or self.grad_clip < 0:
            raise ValueError("warmup_steps, weight_decay and grad_clip must be >= 0")


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    # As the Mamba recipe: no decay on A_log, D, dt (marked by the mixers), norms, biases, embedding.
    decay, keep = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no = getattr(p, "_no_weight_decay", False) or p.dim() < 2 or name.startswith("embedding")
        (keep if no else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": keep, "weight_decay": 0.0}]


def lr_factor(step: int, s: TrainSettings) -> float:
    if step < s.warmup_steps:
        return (step + 1) / (s.warmup_steps + 1)
    t = (step - s.warmup_steps) / max(1, s.steps - s.warmup_steps)
    return s.min_lr_ratio + (1 - s.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def answer_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the answer tokens. logits (b, l, v), targets (b, l)."""
    asked = targets != IGNORE_INDEX  # (b, l)
    return F.cross_entropy(logits[asked].float(), targets[asked])  # over the asked positions only


def train(model: LM, task: Task, settings: TrainSettings,
          on_step: Callable[[int, float, float], None] | None = None) -> dict:
    """Train in place. on_step(step, loss, token_accuracy) after every step. Returns a summary whose
    history holds, per step, the loss and the token accuracy on that step's (training) batch."""
    opt = torch.optim.AdamW(_param_groups(model, settings.weight_decay), lr=settings.lr, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(step, settings))
    device = next(model.parameters()).device  # batches go where the model is
    model.train()
    history, t0 = {"step": [], "loss": [], "token_accuracy": []}, time.perf_counter()
    for step in range(settings.steps):
        batch = task.generate(settings.batch_size, (settings.seed, 0, step))
        ids, targets = batch.input_ids.to(device), batch.targets.to(device)
        logits = model(ids, validate=False)  # (b, l, v)
        loss = answer_loss(logits, targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if settings.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
        opt.step()
        sched.step()
        acc = score_predictions(logits.detach().argmax(-1), targets).token_accuracy
        for key, value in (("step", step + 1), ("loss", round(loss.item(), 5)), ("token_accuracy", round(acc, 5))):
            history[key].append(value)
        if on_step is not None:
            on_step(step + 1, loss.item(), acc)
    model.eval()
    last = history["loss"][-10:]
    return {"settings": asdict(settings), "seconds": round(time.perf_counter() - t0, 2),
            "final_loss": round(sum(last) / len(last), 5), "history": history}


# --- evaluation --------------------------------------------------------------------------------------
@torch.no_grad()
def predict(model: LM, batch: TaskBatch, chunk_len: int | None = None) -> torch.Tensor:
    """Greedy predictions (b, l) at the answer positions (-1 elsewhere), streamed c tokens at a time.
    The model may sit on any device; the predictions come back on the CPU, as the batch."""
    device = next(model.parameters()).device
    ids, targets = batch.input_ids, batch.targets
    b, l = ids.shape
    if chunk_len is None or l <= chunk_len:
        preds = model(ids.to(device)).argmax(-1).cpu()  # (b, l)
        return torch.where(targets != IGNORE_INDEX, preds, torch.full_like(preds, -1))
    preds = torch.full_like(targets, -1)
    cache = model.allocate_cache(b)
    for start in range(0, l, chunk_len):
        stop = min(l, start + chunk_len)
        asked = targets[:, start:stop] != IGNORE_INDEX  # (b, c)
        if asked.any():
            out = model(ids[:, start:stop].to(device), cache=cache).argmax(-1).cpu()  # (b, c)
            preds[:, start:stop] = torch.where(asked, out, -1)
        else:
            model(ids[:, start:stop].to(device), cache=cache, last_only=True)  # only advance the states
    return preds


def evaluate(model: LM, task: Task, values=None, num_examples: int = 256, batch_size: int = 64, seed: int = 0,
             chunk_len: int = 4096, max_batch_tokens: int = 2 ** 20, max_attention_length: int = 16384,
             token_budget: int | None = None, on_point: Callable[[dict], None] | None = None) -> list[dict]:
    """Score the model at each value of the task's sweep parameter; one dict per value.

    Batches shrink at long lengths so that a batch holds at most max_batch_tokens tokens. Models
    with attention layers skip lengths above max_attention_length (their cache grows with l).
    token_budget: at most this many tokens per point (fewer examples at long lengths), never fewer
    than 8 examples; each row records how many examples it scored.
    """
    values = list(values) if values is not None else list(task.default_sweep)
    has_attention = "*" in model.config.layer_pattern
    rows = []
    for i, value in enumerate(values):
        point = task.replace(**{task.sweep_param: value})
        length = point.sequence_length()
        row = {task.sweep_param: value, "length": length}
        limit = model.config.max_seqlen
        if has_attention and (length > max_attention_length or (limit is not None and length > limit)):
            row["skipped"] = f"attention model: {length} tokens is more than the limit of " \
                             f"{min(max_attention_length, limit or max_attention_length)} set for this evaluation"
            rows.append(row)
            if on_point:
                on_point(row)
            continue
        per_batch = max(1, min(batch_size, max_batch_tokens // length))
        wanted = num_examples if token_budget is None else min(num_examples, max(8, token_budget // length))
        score, done, j, t0, seen = Score(), 0, 0, time.perf_counter(), 0
        while done < wanted:
            n = min(per_batch, wanted - done)
            batch = point.generate(n, (seed, 1, i, j))
            score = score + score_predictions(predict(model, batch, chunk_len), batch.targets)
            seen += sum(batch.meta.get("lengths", [batch.input_ids.shape[1]] * n))
            done, j = done + n, j + 1
        row["length"] = round(seen / done)  # mean tokens per example (phonebook examples vary)
        row.update(score.as_dict())
        row["seconds"] = round(time.perf_counter() - t0, 2)
        rows.append(row)
        if on_point:
            on_point(row)
    return rows
