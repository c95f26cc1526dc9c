"""Trainer: the training loop behind `mambakit train`.

Letters: b batch (rows per micro-batch), l length (train.seq_len), v vocabulary.

One optimizer step consumes train.batch_size rows (the global batch), split evenly over the ranks
and, on each rank, into micro-batches of train.micro_batch_size (gradient accumulation). The loss
is the mean over every non-ignored target of the global batch: each micro-batch contributes
sum(token losses) / (tokens in the global batch), times the world size because DDP and FSDP2
average gradients over ranks. So 1 process and N processes with the same global batch compute the
same gradient, up to the order of floating-point sums.
"""
from __future__ import annotations

import contextlib
import logging
import math
import shutil
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from . import checkpoint as ckpt
from . import distributed as D
from .config import (RESUME_DATA, RESUME_REFUSED, RESUME_WARNED, TrainConfig, diff_dicts, format_changes,
                     resume_changes)
from .data import IGNORE_INDEX, TaskData, TrainData, get_tokenizer, prepare_tokens
from .metrics import MetricsLog, Progress
from .optim import apply_config_on_resume, build_optimizer, build_scheduler, no_decay_names

logger = logging.getLogger("mambakit.train")


class Trainer:
    def __init__(self, config: TrainConfig, resume: str | None = None):
        """resume: None (fresh run), "latest" (newest complete checkpoint of out_dir) or a checkpoint path."""
        from ..model import LM
        config.validate()
        self.cfg = cfg = config
        t = cfg.train
        if t.threads:
            torch.set_num_threads(t.threads)
        self.dist = info = D.setup(t.device)
        self.run_dir = Path(cfg.out_dir)
        if info.world > 1 and t.batch_size % info.world:
            raise ValueError(f"train.batch_size {t.batch_size} is not divisible by the {info.world} processes")
        per_rank = t.batch_size // info.world
        self.micro = t.micro_batch_size or per_rank
        if per_rank % self.micro:
            raise ValueError(f"train.batch_size / processes = {per_rank} is not a multiple of "
                             f"train.micro_batch_size {self.micro}")
        self.accum = per_rank // self.micro

        # Data: rank 0 tokenizes (once, cached), the others then map the same file.
        if cfg.data.task:
            self.data = TaskData(cfg.data.task, cfg.data.task_params, cfg.seed)
            vocab = self.data.vocab_size
        else:
            tokenizer = get_tokenizer(cfg.data.tokenizer)
            if info.is_main:
                tokens = prepare_tokens(cfg.data, tokenizer)
            D.barrier(info)
            if not info.is_main:
                tokens = prepare_tokens(cfg.data, tokenizer, write=False)
            self.data = TrainData(tokens, t.seq_len, cfg.data.val_fraction, cfg.seed, cfg.data.pack)
            vocab = tokenizer.vocab_size

        # Model: the same seed on every rank gives the same initial weights.
        self.model_config = cfg.model_config(vocab)
        limit = self.model_config.max_seqlen
        if limit is not None and t.seq_len > limit:
            raise ValueError(f"train.seq_len {t.seq_len} exceeds the model's context limit of {limit}")
        torch.manual_seed(cfg.seed)
        self.model = LM(self.model_config).to(info.device)
        self.model.activation_checkpointing = t.activation_checkpointing
        no_decay = no_decay_names(self.model)
        if info.world > 1 and t.distributed == "fsdp":
            # FSDP2 warns on every forward that LM returns a view (the vocabulary slice of the logits);
            # nothing here writes into the logits in place, so the warning says nothing about this run.
            warnings.filterwarnings("ignore", message=".*returned a view tensor.*")
        self.step_module = D.wrap(self.model, t.distributed, info)
        self.optimizer = build_optimizer(self.model, cfg.optim, no_decay)
        self.scheduler = build_scheduler(self.optimizer, cfg.optim, t.steps)
        if t.compile:
            self.step_module.compile()

        use_cuda = info.device.type == "cuda"
        bf16 = t.precision == "bf16" or (t.precision == "auto" and use_cuda)
        self.autocast = (lambda: torch.autocast(info.device.type, dtype=torch.bfloat16)) if bf16 \
            else contextlib.nullcontext
        self.step = self.samples = self.tokens = 0
        self.elapsed_before, self._fit_start = 0.0, None  # wall time of the run before this process; fit's start
        if resume:
            self._resume(resume)
        elif ckpt.list_checkpoints(self.run_dir):
            raise ValueError(f"out_dir {str(self.run_dir)!r} already holds checkpoints of a run; continue it "
                             "with --resume, or choose another out_dir")
        if info.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.toml").write_text(cfg.to_toml())
        self.metrics = MetricsLog(self.run_dir, info.is_main, self.step if resume else None)

    # --- resume -----------------------------------------------------------------------------------------
    def _resume(self, resume: str) -> None:
        path = ckpt.latest_checkpoint(self.run_dir) if resume == "latest" else Path(resume)
        if path is None:
            raise ValueError(f"--resume: no complete checkpoint in {ckpt.checkpoints_root(self.run_dir)}; "
                             "start without --resume")
        state = ckpt.read(path, self.dist.rank)
        saved = state["config"].get("model")
        if saved != self.model_config.to_dict():
            changed = diff_dicts(saved if isinstance(saved, dict) else {}, self.model_config.to_dict(), "model.")
            raise ValueError(f"--resume: {path} holds a different model than this config describes "
                             f"({format_changes(changed)}; checkpoint -> this config); "
                             "resume with the config the run started with")
        trainer = state["trainer"]
        self._check_config(path, trainer)
        model_state = dict(state["model_state"])
        if self.model_config.tie_embeddings:
            model_state["lm_head.weight"] = model_state["embedding.weight"]
        D.load_full_state(self.model, self.optimizer, model_state, state["optim_state"])
        self.scheduler.load_state_dict(trainer["scheduler"])
        # Loading brought back the saved run's schedule, lr, weight decay, betas and eps; this config
        # governs from here (the same values when resuming an interrupted run, a longer cosine when
        # extending train.steps, the new values when the user changed them).
        changed = apply_config_on_resume(self.optimizer, self.scheduler, self.cfg.optim, self.cfg.train.steps)
        self.step, self.samples = int(trainer["step"]), int(trainer["samples"])
        if self.step >= self.cfg.train.steps:
            raise ValueError(f"--resume: {path} is at step {self.step} and train.steps is {self.cfg.train.steps}: "
                             f"nothing to train; set train.steps above {self.step} to go on")
        self.tokens = int(trainer.get("tokens", 0))
        self.elapsed_before = float(trainer.get("elapsed_s", 0.0))
        if state["rng"] is not None:
            ckpt.set_rng_state(state["rng"])
        if self.dist.is_main:
            self._set_aside_abandoned_branch()
            print(f"resumed from {path} at step {self.step}", flush=True)
            if changed:
                print(f"resume: {', '.join(changed)}; the new values apply from step {self.step + 1} "
                      "(AdamW's moment estimates are kept)", flush=True)
        D.barrier(self.dist)

    def _check_config(self, path: Path, trainer: dict) -> None:
        """Refuse a resume whose config would change the split or the order of the data (the checkpoint's
        sample count would then point at other rows); warn about other data and about data.pack."""
        saved = trainer.get("config")
        saved = saved if isinstance(saved, dict) else {}  # {}: a checkpoint without it; nothing to compare
        refused = resume_changes(saved, self.cfg, RESUME_REFUSED)
        if refused:
            raise ValueError(f"--resume from {path}: {format_changes(refused)} (checkpoint -> this config) would "
                             "change the split or the order of the data, in which the run's position (samples "
                             "consumed) is counted: training rows would be repeated or skipped, or trained-on "
                             "tokens moved into validation; resume with the checkpoint's values, or start a new "
                             "run in another out_dir")
        if trainer.get("data_key") != self.data.key:
            changed = resume_changes(saved, self.cfg, RESUME_DATA)
            why = f" ({format_changes(changed)})" if changed else " (the same settings, but the files changed)"
            logger.warning("resuming on different data than the checkpoint was trained on%s: the sample "
                           "position goes on in the new data, and its validation split is another one (%s)", why, path)
        warned = resume_changes(saved, self.cfg, RESUME_WARNED)
        if warned:
            logger.warning("resuming with %s (checkpoint -> this config): the same rows, with other document "
                           "boundaries inside them (%s)", format_changes(warned), path)

    def _set_aside_abandoned_branch(self) -> None:
        """Resuming from an older checkpoint abandons the steps after it: their step-* folders are moved
        aside with a copy of the metrics log as it was, before MetricsLog drops the rows past this step."""
        dest, steps = ckpt.set_aside_newer(self.run_dir, self.step)
        if dest is None:
            return
        log = self.run_dir / "metrics.jsonl"
        if log.is_file():
            shutil.copy2(log, dest / "metrics.jsonl")
        which = f"step {steps[0]}" if len(steps) == 1 else f"steps {', '.join(map(str, steps))}"
        print(f"resume: the checkpoints of {which} belong to the branch this resume abandons; moved them "
              f"to {dest}, with its metrics.jsonl (delete the folder when no longer needed)", flush=True)

    def _elapsed(self) -> float:
        """Wall time of the whole run: earlier processes (from the checkpoint) plus this one's fit so far."""
        now = time.perf_counter()
        return self.elapsed_before + (now - self._fit_start if self._fit_start is not None else 0.0)

    # --- one step -------------------------------------------------------------------------------------
    def _loss_sum(self, batch: dict) -> torch.Tensor:
        dev = self.dist.device
        seq_idx = batch["seq_idx"].to(dev) if "seq_idx" in batch else None
        with self.autocast():
            logits = self.step_module(batch["input_ids"].to(dev), seq_idx=seq_idx, validate=False)  # (b, l, v)
        return F.cross_entropy(logits.float().flatten(0, 1), batch["targets"].to(dev).flatten(),
                               ignore_index=IGNORE_INDEX, reduction="sum")

    def train_step(self) -> dict:
        t, info = self.cfg.train, self.dist
        # the data position is the samples consumed, not the step: batch_size may differ on resume
        batches = self.data.step_batches(self.samples, t.batch_size, self.micro, info.rank, info.world)
        local = sum(int((b["targets"] != IGNORE_INDEX).sum()) for b in batches)
        n_targets = float(D.all_reduce_sum(torch.tensor(float(local), device=info.device), info))
        scale = info.world / max(n_targets, 1.0)
        loss_sum = torch.zeros((), device=info.device)
        self.model.train()
        for i, batch in enumerate(batches):
            with D.set_grad_sync(self.step_module, i == len(batches) - 1):
                loss = self._loss_sum(batch)
                (loss * scale).backward()
            loss_sum += loss.detach()
        clip = self.cfg.optim.grad_clip or float("inf")
        grad_norm = D.full_norm(torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip))
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.samples += t.batch_size
        step_tokens = t.batch_size * batches[0]["input_ids"].shape[1]  # (b, l): every rank's rows are l long
        self.tokens += step_tokens
        loss = float(D.all_reduce_sum(loss_sum, info)) / max(n_targets, 1.0)
        return {"loss": loss, "lr": lr, "grad_norm": grad_norm, "targets": n_targets, "tokens": step_tokens}

    @torch.no_grad()
    def evaluate(self) -> dict | None:
        """Mean loss over the same validation rows every time; every rank runs the same number of batches."""
        info = self.dist
        # The same rows at any process count (a run resumed on other ranks logs a comparable curve):
        # rank 0 gets the most, ceil(n_rows / world); a rank with fewer batches runs the first row
        # again, uncounted, since every rank must run as many forwards (FSDP gathers in each).
        n_rows = min(self.cfg.train.eval_rows, self.data.n_val_rows)
        if n_rows == 0:
            return None
        batches = list(self.data.val_batches(n_rows, self.micro, info.rank, info.world))
        counted = len(batches)
        rank0_rows = -(-n_rows // info.world)  # ceil
        most = -(-rank0_rows // self.micro)  # rank 0's batches
        if counted < most:
            batches += self.data.val_batches(1, 1, 0, 1) * (most - counted)
        module = self.model  # under DDP the bare module: no gradient hooks needed
        self.model.eval()
        total = torch.zeros(2, device=info.device, dtype=torch.float64)
        for i, batch in enumerate(batches):
            dev = info.device
            seq_idx = batch["seq_idx"].to(dev) if "seq_idx" in batch else None
            with self.autocast():
                logits = module(batch["input_ids"].to(dev), seq_idx=seq_idx, validate=False)
            if i >= counted:
                continue  # a filler forward
            targets = batch["targets"].to(dev).flatten()
            total[0] += F.cross_entropy(logits.float().flatten(0, 1), targets, ignore_index=IGNORE_INDEX,
                                        reduction="sum").double()
            total[1] += (targets != IGNORE_INDEX).sum()
        self.model.train()
        total = D.all_reduce_sum(total, info)
        val = float(total[0] / total[1].clamp(min=1))
        return {"val_loss": val, "val_ppl": math.exp(min(val, 50.0))}

    # --- checkpoints ----------------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        info, run = self.dist, self.run_dir
        model_state, optim_state = D.full_state(self.model, self.optimizer)
        if info.is_main:
            ckpt.begin(run, self.step)
        D.barrier(info)
        tmp = ckpt.tmp_dir(run, self.step)
        ckpt.write_rng(tmp, info.rank)
        if info.is_main:
            trainer = {"step": self.step, "samples": self.samples, "tokens": self.tokens,
                       "scheduler": self.scheduler.state_dict(), "data_key": self.data.key, "world_size": info.world,
                       "config": self.cfg.to_dict(), "elapsed_s": self._elapsed()}
            ckpt.write_main(tmp, self.model_config, model_state, optim_state, trainer)
            if not self.cfg.data.task:
                ckpt.write_tokenizer(tmp, self.cfg.data.tokenizer)
        D.barrier(info)
        if info.is_main:
            ckpt.commit(run, self.step, self.cfg.checkpoint.keep_last)
        D.barrier(info)
        return ckpt.final_dir(run, self.step)

    # --- the loop ---------------------------------------------------------------------------------------
    def fit(self) -> dict:
        """Train to train.steps; returns the last metrics. Evaluates and checkpoints on schedule."""
        t, info = self.cfg.train, self.dist
        progress = Progress(t.steps, self.step, t.progress and info.is_main)
        last, val = {}, None
        if self.step == 0 and t.eval_every:
            val = self.evaluate()
            if val:
                self.metrics.write({"step": 0, **val})
        # tokens/s counts training steps only: evaluations and checkpoints are not in the window
        # elapsed_s goes on from the checkpoint's: a resumed run's curve against wall time is one curve
        self._fit_start, window_s, window_tokens = time.perf_counter(), 0.0, 0
        try:
            while self.step < t.steps:
                t0 = time.perf_counter()
                out = self.train_step()
                now = time.perf_counter()
                window_s += now - t0
                window_tokens += out["tokens"]
                tok_s = window_tokens / max(window_s, 1e-9)
                if self.step % t.log_every == 0 or self.step == t.steps:
                    last = {"step": self.step, "loss": out["loss"], "lr": out["lr"], "grad_norm": out["grad_norm"],
                            "tokens": self.tokens, "tokens_per_s": tok_s,
                            "elapsed_s": self._elapsed()}
                    if info.device.type == "cuda":  # this rank's peak, so a sharded run shows its saving
                        last["max_mem_gib"] = torch.cuda.max_memory_allocated(info.device) / 2**30
                    self.metrics.write(last)
                    window_s, window_tokens = 0.0, 0
                if (t.eval_every and self.step % t.eval_every == 0) or self.step == t.steps:
                    val = self.evaluate()
                    if val:
                        self.metrics.write({"step": self.step, **val})
                        last.update(val)
                every = self.cfg.checkpoint.every
                if (every and self.step % every == 0) or self.step == t.steps:
                    self.save_checkpoint()
                progress.update(out["loss"], tok_s, val["val_loss"] if val else None)
        finally:
            progress.close()
        return last

    def close(self) -> None:
        D.cleanup(self.dist)


def train(config: TrainConfig, resume: str | None = None) -> dict:
    """Build a Trainer, run it to the end, release the process group."""
    trainer = Trainer(config, resume=resume)
    try:
        return trainer.fit()
    finally:
        trainer.close()
