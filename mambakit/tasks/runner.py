"""Train a model on a task and evaluate it across the task's sweep (length, pairs, entries).

Letters: b batch, l length, c chunk length (tokens fed to the model at once), v vocabulary.

Training draws a fresh batch every step from the seeded generator (stream (seed, 0, step)) and
minimizes cross-entropy on the answer tokens only, with AdamW and linear warm-up then cosine
decay. Evaluation draws from another stream (seed, 1, point, batch), so the model never trained
on an evaluation example, and scores greedy predictions exactly (scoring.py).

A run can also be bounded in time (TrainSettings.max_seconds, for a fixed slot on a GPU): the
cosine then follows whichever of steps and seconds runs out first, so the learning rate still
decays to its floor, and the summary records the steps actually taken. Batches can be made by
worker processes (`workers`): a tiny model on a GPU trains faster than Python writes phonebooks;
batch `step` is still generate(seed, 0, step), so the data are the same with or without them.

Long examples (induction heads at 2^20 tokens) stream through the model's inference cache `c`
tokens at a time: an SSM carries only its fixed-size state from chunk to chunk, so memory is
bounded by b * c, whatever l. Chunks without an answer skip the output head (last_only).
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from ..config import ModelConfig
from ..model import LM
from ..train.optim import WarmupCosine, no_decay_names, param_groups
from .base import IGNORE_INDEX, Task, TaskBatch
from .scoring import Score, score_predictions


# --- models ------------------------------------------------------------------------------------------
def parse_overrides(items: list[str] | None) -> dict:
    """["mamba2.d_state=32", "n_layer=4"] -> {"mamba2": {"d_state": 32}, "n_layer": 4} (values as JSON)."""
    out: dict = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"expected KEY=VALUE (e.g. mamba2.d_state=32), got {item!r}")
        key, raw = item.split("=", 1)
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:  # Python's spellings of the constants, else a bare word (a string such as s4d)
            value = {"True": True, "False": False, "None": None}.get(raw.strip(), raw)
        node = out
        *parents, leaf = key.strip().split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def build_model(spec: str, vocab_size: int, overrides: dict | None = None, seed: int = 0) -> LM:
    """A preset name (a fresh model, its vocabulary set to the task's) or a checkpoint folder."""
    from ..presets import PRESETS
    overrides = overrides or {}
    if spec in PRESETS:
        config = ModelConfig.from_preset(spec, **{"vocab_size": vocab_size, **overrides})
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
    max_seconds: float | None = None  # stop (and end the schedule) after this long; None: steps only

    def __post_init__(self):
        for name in ("steps", "batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if self.warmup_steps < 0 or self.weight_decay < 0 or self.grad_clip < 0:
            raise ValueError("warmup_steps, weight_decay and grad_clip must be >= 0")
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise ValueError(f"max_seconds must be > 0 seconds (or None for no time limit), got {self.max_seconds!r}")


def lr_factor(step: int, s: TrainSettings, time_fraction: float = 0.0) -> float:
    """`mambakit train`'s schedule (train.optim.WarmupCosine: linear warm-up whose last step is at the
    peak, then cosine down to min_lr_ratio at the last step); the cosine's progress is the larger of
    the steps done and time_fraction (the share of max_seconds used)."""
    return WarmupCosine(s.warmup_steps, s.steps, s.min_lr_ratio)(step, time_fraction)


def _make_batch(task: Task, batch_size: int, seed: tuple) -> TaskBatch:
    return task.generate(batch_size, seed)


def _worker_init() -> None:
    torch.set_num_threads(1)  # a worker only runs numpy and wraps arrays


class _Batches:
    """Training batches in step order, made here (workers=0) or by worker processes a few steps ahead."""

    def __init__(self, task: Task, settings: TrainSettings, workers: int):
        self.task, self.s, self.pool, self.ahead = task, settings, None, {}
        if workers > 0:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor
            # spawn: the parent may hold a CUDA context, which a forked child must not inherit
            self.pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                            initializer=_worker_init)
            self.depth = 2 * workers

    def get(self, step: int) -> TaskBatch:
        if self.pool is None:
            return self.task.generate(self.s.batch_size, (self.s.seed, 0, step))
        for ahead in range(step, min(self.s.steps, step + self.depth)):
            if ahead not in self.ahead:
                self.ahead[ahead] = self.pool.submit(_make_batch, self.task, self.s.batch_size, (self.s.seed, 0, ahead))
        return self.ahead.pop(step).result()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)


def answer_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the answer tokens. logits (b, l, v), targets (b, l)."""
    asked = targets != IGNORE_INDEX  # (b, l)
    return F.cross_entropy(logits[asked].float(), targets[asked])  # over the asked positions only


def train(model: LM, task: Task, settings: TrainSettings,
          on_step: Callable[[int, float, float], None] | None = None, workers: int = 0) -> dict:
    """Train in place. on_step(step, loss, token_accuracy) after every step. Returns a summary whose
    history holds, per step, the loss and the token accuracy on that step's (training) batch.

    With settings.max_seconds, training stops once that many seconds have passed since the end of
    the first step (which compiles the GPU kernels, so it is not counted), or after settings.steps,
    whichever comes first; `steps_done` and `stopped_by` say which. workers > 0: batches are made
    by that many processes, ahead of time (the same batches)."""
    if not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers must be an int >= 0, got {workers!r}")
    opt = torch.optim.AdamW(param_groups(model, settings.weight_decay, no_decay_names(model)), lr=settings.lr,
                            betas=(0.9, 0.95))
    device = next(model.parameters()).device  # batches go where the model is
    model.train()
    history, t0 = {"step": [], "loss": [], "token_accuracy": []}, time.perf_counter()
    clock, stopped_by, time_fraction = None, "steps", 0.0
    batches = _Batches(task, settings, workers)
    try:
        for step in range(settings.steps):
            if clock is not None and settings.max_seconds is not None:
                time_fraction = (time.perf_counter() - clock) / settings.max_seconds
                if time_fraction >= 1.0:
                    stopped_by = "time"
                    break
            for group in opt.param_groups:
                group["lr"] = settings.lr * lr_factor(step, settings, time_fraction)
            _step(model, opt, batches.get(step), device, settings, history, step, on_step)
            if clock is None:
                clock = time.perf_counter()
    finally:
        batches.close()
    model.eval()
    last = history["loss"][-10:]
    return {"settings": asdict(settings), "seconds": round(time.perf_counter() - t0, 2),
            "steps_done": len(history["step"]), "stopped_by": stopped_by,
            "final_loss": round(sum(last) / len(last), 5), "history": history}


def _step(model, opt, batch, device, settings, history, step, on_step) -> None:
    """One optimizer step on one batch; appends to history."""
    ids, targets = batch.input_ids.to(device), batch.targets.to(device)
    logits = model(ids, validate=False)  # (b, l, v)
    loss = answer_loss(logits, targets)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if settings.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
    opt.step()
    acc = score_predictions(logits.detach().argmax(-1), targets).token_accuracy
    for key, value in (("step", step + 1), ("loss", round(loss.item(), 5)), ("token_accuracy", round(acc, 5))):
        history[key].append(value)
    if on_step is not None:
        on_step(step + 1, loss.item(), acc)


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
             token_budget: int | None = None, on_point: Callable[[dict], None] | None = None,
             max_attention_scores: int = 2 ** 29, max_seconds: float | None = None) -> list[dict]:
    """Score the model at each value of the task's sweep parameter; one dict per value.

    Batches shrink at long lengths so that a batch holds at most max_batch_tokens tokens (on the
    host; predict streams only chunk_len tokens per example to the device at a time). Models
    with attention layers skip lengths above max_attention_length (their cache grows with l),
    and their batches also shrink so that b * heads * c * l <= max_attention_scores: the scores
    of one attention layer, should SDPA pick its math kernel that writes them out (2^29 fp32
    scores = 2 GiB, so several evaluations can share one GPU).
    token_budget: at most this many tokens per point (fewer examples at long lengths), never fewer
    than 8 examples; each row records how many examples it scored. max_seconds: a time slot for
    the whole evaluation; once it is used up, a point stops after its first 8 examples and the
    points not begun (but the first) are recorded as skipped, so a bounded run still writes every row.
    """
    values = list(values) if values is not None else list(task.default_sweep)
    has_attention = "*" in model.config.layer_pattern
    rows, start = [], time.perf_counter()

    def out_of_time() -> bool:
        return max_seconds is not None and time.perf_counter() - start > max_seconds
    for value in values:
        point = task.at(value)
        length = point.sequence_length()
        row = {task.sweep_param: value, "length": length}
        if rows and out_of_time():  # the first point is always begun
            row["skipped"] = f"the evaluation's time slot of {max_seconds} s was used up"
            rows.append(row)
            if on_point:
                on_point(row)
            continue
        limit = model.config.max_seqlen
        if has_attention and (length > max_attention_length or (limit is not None and length > limit)):
            row["skipped"] = f"attention model: {length} tokens is more than the limit of " \
                             f"{min(max_attention_length, limit or max_attention_length)} set for this evaluation"
            rows.append(row)
            if on_point:
                on_point(row)
            continue
        per_batch = max(1, min(batch_size, max_batch_tokens // length))
        if has_attention:
            heads = model.config.attention.n_heads
            per_batch = max(1, min(per_batch, max_attention_scores // (heads * length * min(length, chunk_len))))
        wanted = num_examples if token_budget is None else min(num_examples, max(8, token_budget // length))
        score, done, t0, seen = Score(), 0, time.perf_counter(), 0
        examples = _EvalExamples(point, seed, value)
        while done < wanted:
            n = min(per_batch, wanted - done)
            batch = examples.take(n)
            score = score + score_predictions(predict(model, batch, chunk_len), batch.targets, groups=batch.groups)
            seen += sum(batch.meta.get("lengths", [batch.input_ids.shape[1]] * n))
            done += n
            if done >= 8 and out_of_time():
                break  # scored fewer examples than asked: the row's "examples" says how many
        row["length"] = round(seen / done)  # mean tokens per example (phonebook examples vary)
        row["per_batch"] = per_batch
        row.update(score.as_dict())
        row["seconds"] = round(time.perf_counter() - t0, 2)
        rows.append(row)
        if on_point:
            on_point(row)
    return rows


EVAL_BLOCK = 8  # examples generated together; a point's n-th example is the same whatever the batch size


class _EvalExamples:
    """A point's evaluation examples as one stream: blocks of EVAL_BLOCK drawn from the seed
    (seed, 1, value, block) and cut into batches of any size. The examples scored thus depend on the
    seed and the point's value only, not on the batch size (which memory limits choose, and which
    differs between an SSM and an attention model in one run) nor on the value's place in the list."""

    def __init__(self, point, seed: int, value):
        # the value's JSON text as ints: a seed is non-negative ints, and a value may be a float or a string
        self.point, self.seed = point, (seed, 1, *json.dumps(value, sort_keys=True).encode())
        self.block, self.pending = 0, []

    def take(self, n: int):
        while sum(int(b.input_ids.shape[0]) for b in self.pending) < n:
            self.pending.append(self.point.generate(EVAL_BLOCK, (*self.seed, self.block)))
            self.block += 1
        batch = _cat_batches(self.pending)
        head, rest = _rows(batch, 0, n), _rows(batch, n, batch.input_ids.shape[0])
        self.pending = [rest] if rest.input_ids.shape[0] else []
        return head


def _rows(batch, a: int, b: int):
    meta = {k: v[a:b] if isinstance(v, list) else v for k, v in batch.meta.items()}
    width = max(meta["lengths"]) if meta.get("lengths") else batch.input_ids.shape[1]
    cut = (slice(a, b), slice(0, width))  # a slice of variable-length rows needs no more padding than they
    return TaskBatch(batch.input_ids[cut], batch.targets[cut], meta,
                     None if batch.groups is None else batch.groups[cut])


def _cat_batches(batches):
    """Stack TaskBatches along the rows; variable-length rows (phonebook) are right-padded to the widest
    with 0 (its padding), IGNORE_INDEX targets and -1 groups: a causal model's predictions at the real
    positions are unchanged by what follows them."""
    if len(batches) == 1:
        return batches[0]
    width = max(b.input_ids.shape[1] for b in batches)

    def pad(t, value):
        return torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value)
    meta = {}
    for k, v in batches[0].meta.items():
        meta[k] = [x for b in batches for x in b.meta[k]] if isinstance(v, list) else v
    groups = None if batches[0].groups is None else torch.cat([pad(b.groups, -1) for b in batches])
    return TaskBatch(torch.cat([pad(b.input_ids, 0) for b in batches]),
                     torch.cat([pad(b.targets, IGNORE_INDEX) for b in batches]), meta, groups)
