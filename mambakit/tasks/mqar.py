"""Multi-query associative recall, MQAR (Zoology, arXiv 2312.04927; used by Mamba-2, arXiv 2405.21060).

Letters: b batch, l length (tokens per example), q key-value pairs (= queries), v vocabulary.

An example starts with q key-value pairs `k1 v1 k2 v2 ...` (keys from the lower half of the
vocabulary, values from the upper half, distinct within an example). The rest of the sequence
holds every key once more as a query, at random positions; at a query the model must output the
value that was paired with that key. Following Zoology's generator: queries sit at even offsets
of the query region, drawn without replacement with probability ~ gap^(power_a - 1) (so most
queries come soon after the pairs, a few far), and the other positions are random tokens.

    inputs   k1 v1 k2 v2 k3 v3 | k2  x  x  x k1  x  k3 ...
    targets   .  .  .  .  .  . | v2  .  .  .  v1  .  v3 ...

Zoology's defaults: vocabulary 8192, length 64 to 512, 4 to 64 pairs, trained for many epochs.
A tiny model trained for minutes learns a small vocabulary far sooner (every key and value id is
seen more often), and Zoology trains on a mixture of sizes: `min_pairs` draws each example's
number of pairs uniformly from [min_pairs, num_pairs] for training; evaluation points (`at`) use
exactly num_pairs. Every query's value is a target. Accuracy is the share of queries answered right.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .base import IGNORE_INDEX, Seed, Task, TaskBatch, check_int, rng_for, to_batch


@dataclass(frozen=True)
class MQAR(Task):
    vocab_size: int = 8192
    length: int = 256
    num_pairs: int = 16
    power_a: float = 0.01
    random_non_queries: bool = True  # False: the non-query positions of the query region are 0
    min_pairs: int | None = None  # training: each example has min_pairs..num_pairs pairs

    name: ClassVar[str] = "mqar"
    description: ClassVar[str] = "key-value pairs, then every key again as a query: output its value"
    sweep_param: ClassVar[str] = "num_pairs"
    metric: ClassVar[str] = "token_accuracy"
    default_sweep: ClassVar[tuple[int, ...]] = (4, 8, 16, 32, 64)
    range_param: ClassVar[str | None] = "min_pairs"

    def __post_init__(self):
        check_int("mqar vocab_size", self.vocab_size, 4)
        check_int("mqar num_pairs", self.num_pairs, 1, self.vocab_size // 2 - 1,
                  why=" (keys are distinct ids of the lower half of the vocabulary, 0 excluded)")
        check_int("mqar length", self.length, 4 * self.num_pairs,
                  why=" (2 tokens per pair, and a query region of 2 tokens per query: 4 x num_pairs)")
        if isinstance(self.power_a, bool) or not isinstance(self.power_a, (int, float)) \
                or not 0.0 < self.power_a <= 1.0:
            raise ValueError(f"mqar power_a must be a number in (0, 1], got {self.power_a!r}")
        if not isinstance(self.random_non_queries, bool):  # a string "False" would be truthy
            raise ValueError(f"mqar random_non_queries must be true or false, got {self.random_non_queries!r}")
        if self.min_pairs is not None:
            check_int("mqar min_pairs", self.min_pairs, 1, self.num_pairs, why=" (at most num_pairs)")

    def generate(self, batch_size: int, seed: Seed) -> TaskBatch:
        check_int("batch_size", batch_size, 1)
        rng = rng_for(seed)
        b, l = batch_size, self.length
        if self.min_pairs is None:
            counts = np.full(b, self.num_pairs)
        else:
            counts = rng.integers(self.min_pairs, self.num_pairs + 1, size=b)  # (b,) pairs per example
        inputs = np.zeros((b, l), dtype=np.int64)
        targets = np.full((b, l), IGNORE_INDEX, dtype=np.int64)
        query_pos = np.full((b, self.num_pairs), -1, dtype=np.int64)  # (b, q), -1 past an example's pairs
        for q in np.unique(counts):  # the rows of one size at once
            rows = np.flatnonzero(counts == q)
            inputs[rows], targets[rows], query_pos[rows, :q] = self._rows(rng, len(rows), int(q))
        return to_batch(inputs, targets, query_positions=query_pos)

    def _rows(self, rng: np.random.Generator, b: int, q: int):
        """b examples of q pairs: inputs (b, l), targets (b, l), query positions (b, q)."""
        l, v = self.length, self.vocab_size
        half = v // 2
        # q distinct keys in 1 .. half-1 and q distinct values in half .. v-1 per row
        keys = 1 + np.argsort(rng.random((b, half - 1)), axis=1)[:, :q]  # (b, q)
        values = half + np.argsort(rng.random((b, v - half)), axis=1)[:, :q]  # (b, q)
        context = 2 * q
        space = (l - context) // 2
        # q distinct gaps in 0 .. space-1, without replacement, p ~ gap^(a-1): Gumbel top-q of log p
        log_p = (self.power_a - 1.0) * np.log(np.arange(1, space + 1))  # (space,)
        scores = log_p[None, :] - np.log(-np.log(rng.random((b, space))))  # (b, space)
        gaps = np.argsort(-scores, axis=1)[:, :q]  # (b, q)
        if self.random_non_queries:
            inputs = rng.integers(0, v, size=(b, l))  # (b, l)
        else:
            inputs = np.zeros((b, l), dtype=np.int64)
        inputs[:, 0:context:2] = keys
        inputs[:, 1:context:2] = values
        query_pos = context + 2 * gaps  # (b, q)
        np.put_along_axis(inputs, query_pos, keys, axis=1)
        targets = np.full((b, l), IGNORE_INDEX, dtype=np.int64)
        np.put_along_axis(targets, query_pos, values, axis=1)
        return inputs, targets, query_pos
