"""Exact scorers: what counts as right, per answer token and per example.

Letters: b batch, l length, v vocabulary.

Every task marks its answer tokens in `targets` (b, l) (IGNORE_INDEX elsewhere). The model's
prediction at a position is the argmax of its logits there (greedy), and three numbers follow:

    token_accuracy  right answer tokens / answer tokens            (selective copying, induction,
                                                                    MQAR: the papers' accuracy)
    exact_match     examples whose answer tokens are all right / examples   (phonebook)
    partial_match   examples not all right but with at least `partial_threshold` (half) of their
                    answer tokens right / examples                  (phonebook's "partly correct")

An "example" is a row, or, when the batch has `groups` (b, l) (the question index of each answer
token, -1 elsewhere), one question of a row: a phonebook row asking four numbers counts four.

Predictions are teacher-forced: each answer token is predicted from the true tokens before it.
An example is then exactly right if and only if greedy decoding would write the whole answer,
so exact_match equals greedy generation's; token_accuracy and partial_match can differ from
what free generation would give after a first wrong token.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import IGNORE_INDEX

PARTIAL_THRESHOLD = 0.5


@dataclass
class Score:
    """Counts over one or more batches; add them with +."""
    tokens_right: int = 0
    tokens: int = 0
    examples_exact: int = 0
    examples_partial: int = 0
    examples: int = 0

    def __add__(self, other: "Score") -> "Score":
        return Score(self.tokens_right + other.tokens_right, self.tokens + other.tokens,
                     self.examples_exact + other.examples_exact, self.examples_partial + other.examples_partial,
                     self.examples + other.examples)

    @property
    def token_accuracy(self) -> float:
        return self.tokens_right / self.tokens if self.tokens else float("nan")

    @property
    def exact_match(self) -> float:
        return self.examples_exact / self.examples if self.examples else float("nan")

    @property
    def partial_match(self) -> float:
        return self.examples_partial / self.examples if self.examples else float("nan")

    def as_dict(self) -> dict:
        return {"token_accuracy": self.token_accuracy, "exact_match": self.exact_match,
                "partial_match": self.partial_match, "tokens_right": self.tokens_right, "tokens": self.tokens,
                "examples_exact": self.examples_exact, "examples_partial": self.examples_partial,
                "examples": self.examples}


def score_predictions(predictions: torch.Tensor, targets: torch.Tensor,
                      partial_threshold: float = PARTIAL_THRESHOLD, groups: torch.Tensor | None = None) -> Score:
    """predictions (b, l) token ids, targets (b, l) with IGNORE_INDEX where nothing is asked.

    Positions where targets is IGNORE_INDEX are not looked at (predictions there may be anything).
    A row (or, with groups (b, l), a question of a row) without any answer token is not counted.
    """
    if predictions.shape != targets.shape:
        raise ValueError(f"predictions {tuple(predictions.shape)} and targets {tuple(targets.shape)} "
                         "must have the same (batch, length) shape")
    asked = targets != IGNORE_INDEX  # (b, l)
    right = (predictions == targets) & asked  # (b, l)
    if groups is not None:
        if groups.shape != targets.shape:
            raise ValueError(f"groups {tuple(groups.shape)} must have the shape of targets {tuple(targets.shape)}")
        if bool((groups[asked] < 0).any()):
            raise ValueError("every answer token needs a question index >= 0 in groups")
        # one bucket per (row, question): row * q + question, for q questions at most per row
        q = int(groups.max()) + 1 if asked.any() else 1
        rows = torch.arange(targets.shape[0], device=targets.device).unsqueeze(1)  # (b, 1)
        key = (rows * q + groups.clamp(min=0))[asked]  # (answer tokens,)
        n_asked = torch.bincount(key, minlength=targets.shape[0] * q)  # (b * q,)
        n_right = torch.bincount(key, weights=right[asked].double(), minlength=targets.shape[0] * q).long()
    else:
        n_asked = asked.sum(1)  # (b,)
        n_right = right.sum(1)  # (b,)
    rows = n_asked > 0
    exact = rows & (n_right == n_asked)
    partial = rows & ~exact & (n_right >= partial_threshold * n_asked)
    return Score(int(n_right.sum()), int(n_asked.sum()), int(exact.sum()), int(partial.sum()), int(rows.sum()))


def score_logits(logits: torch.Tensor, targets: torch.Tensor, partial_threshold: float = PARTIAL_THRESHOLD,
                 groups: torch.Tensor | None = None) -> Score:
    """logits (b, l, v) -> Score against targets (b, l), greedy."""
    return score_predictions(logits.argmax(-1), targets, partial_threshold, groups)


@dataclass
class AnswerScore:
    exact: float  # 1.0 if the answer is the expected string, else 0.0
    chars_right: int  # positions where the answer has the expected character
    partial: bool  # not exact, but at least `partial_threshold` of the characters right


def score_answer(predicted: str, expected: str, partial_threshold: float = PARTIAL_THRESHOLD) -> AnswerScore:
    """A generated answer (e.g. a phone number) against the expected one, position by position.

    Whitespace around the answer is ignored; a longer answer is not exact, its extra characters
    count against nothing else.
    """
    if not isinstance(predicted, str) or not isinstance(expected, str) or not expected.strip():
        raise ValueError("score_answer expects two strings, the expected one not empty")
    p, e = predicted.strip(), expected.strip()
    right = sum(a == b for a, b in zip(p, e))
    exact = p == e
    return AnswerScore(1.0 if exact else 0.0, right, (not exact) and right >= partial_threshold * len(e))
