"""What every synthetic task shares: the batch it generates, seeding, and the base class.

Letters: b batch (examples), l length (tokens per example), v vocabulary.

A task is a small frozen dataclass of its parameters (vocabulary, length, ...). `generate(b, seed)`
returns a TaskBatch: `input_ids` (b, l) and `targets` (b, l), where targets hold the token the
model must predict at that position and IGNORE_INDEX (-100) everywhere else. The same targets
serve as the training labels (cross-entropy on the answer positions only) and as the answer key
of the exact scorers in scoring.py. Targets are aligned with the inputs (target[t] is predicted
from input[: t + 1]), so logits (b, l, v) compare with targets without a shift. A task whose
answers span several tokens and that asks several questions per example (phonebook) also sets
`groups` (b, l): the question each answer token belongs to (0, 1, ...; -1 elsewhere); the
scorers then count each question as one example (exact match = all its tokens right).

Some tasks train on a range of sizes (phonebook `min_entries`, MQAR `min_pairs`: each example
draws its size); `at(value)` is the task at one point of the evaluation sweep, every example
of that exact size.

Generation is numpy's PCG64 seeded by `seed` (an int or a tuple of ints, through SeedSequence):
the same seed gives the same batch on every machine, and (seed, 0, step) / (seed, 1, ...) give
training and evaluation streams that never share a generator. An int seed is a stream of its own,
not the tuple (seed,): SeedSequence pads its entropy with zeros, so (s,) is (s, 0, 0), the runner's
first training batch of seed s (see rng_for).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar, Sequence

import numpy as np
import torch

IGNORE_INDEX = -100
Seed = int | Sequence[int]


@dataclass
class TaskBatch:
    input_ids: torch.Tensor  # (b, l) long
    targets: torch.Tensor  # (b, l) long, IGNORE_INDEX where nothing is asked
    meta: dict = dataclasses.field(default_factory=dict)
    groups: torch.Tensor | None = None  # (b, l) long: question index of each answer token, -1 elsewhere

    @property
    def num_answer_tokens(self) -> int:
        return int((self.targets != IGNORE_INDEX).sum())


def rng_for(seed: Seed) -> np.random.Generator:
    """The generator of an int seed or a tuple of ints (non-negative).

    A tuple is SeedSequence(tuple): tuples of up to 4 ints that differ only by trailing zeros are one
    stream (numpy pads the entropy with zeros), which the streams the runner and the trainer use
    never do. An int s is SeedSequence(s) with a pool of 8 words instead of 4: its entropy alone is
    that of (s,), hence of (s, 0, 0), and task.generate(b, s) replayed the runner's first training
    batch of seed s. The pool size enters every word SeedSequence makes, so an int's stream equals a
    tuple's no more than two different tuples' streams do.
    """
    if isinstance(seed, (int, np.integer)):
        if seed < 0:
            raise ValueError(f"seeds must be non-negative ints, got {int(seed)}")
        return np.random.default_rng(np.random.SeedSequence(int(seed), pool_size=8))
    seed = [int(s) for s in seed]
    if any(s < 0 for s in seed):
        raise ValueError(f"seeds must be non-negative ints, got {seed}")
    return np.random.default_rng(np.random.SeedSequence(seed))


def check_int(name: str, value, lo: int, hi: int | None = None, why: str = "") -> None:
    """ValueError unless value is an int in [lo, hi]."""
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= lo
    if ok and hi is not None:
        ok = value <= hi
    if not ok:
        bound = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"{name} must be an int {bound}{why}, got {value!r}")


class Task:
    """Base of the task dataclasses. Subclasses set the class variables and `generate`."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    sweep_param: ClassVar[str] = "length"  # what the evaluation varies (a field of the dataclass)
    metric: ClassVar[str] = "token_accuracy"  # headline: token_accuracy or exact_match (scoring.py)
    default_sweep: ClassVar[tuple[int, ...]] = ()
    range_param: ClassVar[str | None] = None  # a field giving the lower end of a training range of sizes

    @property
    def vocab_size(self) -> int:  # pragma: no cover - every task defines it
        raise NotImplementedError

    def generate(self, batch_size: int, seed: Seed) -> TaskBatch:  # pragma: no cover
        raise NotImplementedError

    def replace(self, **changes) -> "Task":
        """A copy with some parameters changed (validated again)."""
        names = {f.name for f in dataclasses.fields(self)}
        for key in changes:
            if key not in names:
                raise ValueError(f"task {self.name} has no parameter {key!r} (it has: {', '.join(sorted(names))})")
        return dataclasses.replace(self, **changes)

    def at(self, value) -> "Task":
        """The task at one evaluation point: the sweep parameter set to value, no range of sizes."""
        changes = {self.sweep_param: value}
        if self.range_param:  # the lower end of a training range of sizes: none at an evaluation point
            changes[self.range_param] = None
        return self.replace(**changes)

    def params(self) -> dict:
        return dataclasses.asdict(self)

    def sequence_length(self) -> int:
        """Tokens per example (the longest, for tasks whose examples vary)."""
        return int(getattr(self, "length"))


def to_batch(inputs: np.ndarray, targets: np.ndarray, **meta) -> TaskBatch:
    return TaskBatch(torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.int64)),
                     torch.from_numpy(np.ascontiguousarray(targets, dtype=np.int64)), meta)
