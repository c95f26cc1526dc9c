"""Induction heads (Mamba paper, arXiv 2312.00752, Section 4.1.2 and Appendix E.1).

Letters: b batch, l length (tokens per example), v vocabulary.

An example is l random tokens in which a special token S (id v-1, nowhere else) appears once at a
random position, followed by a key token k; the last token is S again and the model must output
k there: it recalls "what followed S last time".

    inputs   4 9 S 6 2 11 0 ... 3 S
    targets  . . . . . .  . ... . 6

The paper trains 2-layer models of vocabulary 16 at length 256 and evaluates at lengths 2^6 to
2^20: Mamba stays at 100% up to 2^20 (4000x the training length); attention with positional
encodings fails beyond about twice the training length. Evaluation at long lengths streams the
example through the recurrent cache in chunks (runner.predict), so memory does not grow with l.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .base import IGNORE_INDEX, Seed, Task, TaskBatch, check_int, rng_for, to_batch


@dataclass(frozen=True)
class InductionHeads(Task):
    vocab_size: int = 16  # v-1 ordinary tokens and the special token
    length: int = 256

    name: ClassVar[str] = "induction_heads"
    description: ClassVar[str] = "after the special token, recall the token that followed it earlier"
    sweep_param: ClassVar[str] = "length"
    metric: ClassVar[str] = "token_accuracy"
    default_sweep: ClassVar[tuple[int, ...]] = tuple(2 ** i for i in range(6, 21))

    def __post_init__(self):
        check_int("induction_heads vocab_size", self.vocab_size, 3)
        check_int("induction_heads length", self.length, 3, why=" (S, the key and the final S)")

    @property
    def special_token(self) -> int:
        return self.vocab_size - 1

    def generate(self, batch_size: int, seed: Seed) -> TaskBatch:
        check_int("batch_size", batch_size, 1)
        rng = rng_for(seed)
        b, l = batch_size, self.length
        inputs = rng.integers(0, self.vocab_size - 1, size=(b, l))  # (b, l), never the special token
        rows = np.arange(b)
        first = rng.integers(0, l - 2, size=b)  # S at first, its key at first + 1 <= l - 2
        inputs[rows, first] = self.special_token
        inputs[:, -1] = self.special_token
        targets = np.full((b, l), IGNORE_INDEX, dtype=np.int64)
        targets[:, -1] = inputs[rows, first + 1]
        return to_batch(inputs, targets, trigger_positions=first)
