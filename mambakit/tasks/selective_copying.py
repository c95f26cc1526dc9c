"""Selective copying (Mamba paper, arXiv 2312.00752, Section 3.1 and Appendix E.1).

Letters: b batch, l length (tokens per example), m data tokens per example, v vocabulary.

An example is `length` tokens: the first `length - m` hold m data tokens at random positions
(kept in order) among noise tokens, the last m are marker tokens. At the i-th marker the model
must output the i-th data token. Token ids, as in the state-spaces copying generator:

    0 = noise,  1 .. v-2 = data,  v-1 = marker

    inputs   3 0 0 7 0 5 0 0 | M M M      (v = 16, m = 3, length = 11)
    targets  . . . . . . . . | 3 7 5

A time-invariant model (S4, a convolution) sees the data tokens at spacings that change from one
example to the next and cannot learn where to look; a selective model can skip the noise. The
paper: vocabulary 16, 16 data tokens, length 4096; 2-layer S4 18.3%, Mamba 99.8% (token accuracy).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .base import IGNORE_INDEX, Seed, Task, TaskBatch, check_int, rng_for, to_batch


@dataclass(frozen=True)
class SelectiveCopying(Task):
    vocab_size: int = 16  # noise + data tokens + marker
    num_tokens: int = 16  # data tokens to copy (m)
    length: int = 4096  # total tokens per example, the m markers included

    name: ClassVar[str] = "selective_copying"
    description: ClassVar[str] = "copy the data tokens scattered among noise, in order, after the markers"
    sweep_param: ClassVar[str] = "length"
    metric: ClassVar[str] = "token_accuracy"
    default_sweep: ClassVar[tuple[int, ...]] = (256, 512, 1024, 2048, 4096)

    def __post_init__(self):
        check_int("selective_copying vocab_size", self.vocab_size, 3, why=" (noise, marker and at least one data token)")
        check_int("selective_copying num_tokens", self.num_tokens, 1)
        check_int("selective_copying length", self.length, 2 * self.num_tokens,
                  why=f" (room for {self.num_tokens} data tokens and as many markers)")

    @property
    def noise_token(self) -> int:
        return 0

    @property
    def marker_token(self) -> int:
        return self.vocab_size - 1

    def generate(self, batch_size: int, seed: Seed) -> TaskBatch:
        check_int("batch_size", batch_size, 1)
        rng = rng_for(seed)
        b, m, l = batch_size, self.num_tokens, self.length
        content = l - m
        data = rng.integers(1, self.vocab_size - 1, size=(b, m))  # (b, m) ids in 1 .. v-2
        # m distinct positions per row, in increasing order: the first m of a random permutation
        positions = np.sort(np.argsort(rng.random((b, content)), axis=1)[:, :m], axis=1)  # (b, m)
        inputs = np.zeros((b, l), dtype=np.int64)
        np.put_along_axis(inputs, positions, data, axis=1)
        inputs[:, content:] = self.marker_token
        targets = np.full((b, l), IGNORE_INDEX, dtype=np.int64)
        targets[:, content:] = data
        return to_batch(inputs, targets, data_positions=positions)
