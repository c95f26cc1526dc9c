"""Phonebook lookup (the 8B study, arXiv 2406.07887, Section 3.3): find a name's number in a list.

Letters: b batch, l length (bytes per example, padded to the longest of the batch), v vocabulary
(256: one token per byte, as mambakit's byte tokenizer).

A phonebook is `num_entries` lines "Name: number" with made-up names (syllables, unique within
the book) and random 10-digit numbers. Two few-shot questions about other entries, with their
answers, show the format; then the question about the query name, whose number is the answer.

standard (book first):                reversed (query first):
    Phonebook:                            Find: Rosa Kemil
    Tavi Nodu: 8301925547                 Phonebook:
    Rosa Kemil: 0447129853                Tavi Nodu: 8301925547
    ...                                   ...
    Q: Tavi Nodu? A: 8301925547           Q: Tavi Nodu? A: 8301925547
    Q: ...? A: ...                        Q: ...? A: ...
    Q: Rosa Kemil? A: 0447129853          Q: Rosa Kemil? A: 0447129853

The targets are the digits of every answer, the few-shot ones included (`score_examples`, the
default): each question is a lookup in the book and counts as one scored example (exact match =
all its digits right; a partly right number counts as a partial match, see scoring.py). With
score_examples=False only the last answer is a target: the study's setup for a pretrained model,
but a model trained from scratch on it sees 10 answer bytes in ~600 and does not learn (the first
GPU run: every model at the uniform loss ln 10). Training can draw each book's size uniformly
from [min_entries, num_entries] (smaller books teach the lookup sooner: a book of one entry is
only a copy; a book with fewer entries than num_examples + 1 questions is asked about each entry
once, at training and at evaluation);
evaluation points (`at`) use exactly num_entries. More questions per book (`num_examples`) give
more signal per byte. The format stays the one of eval/needle.py's phonebook templates.
The study found Transformers and the hybrid near 100% inside their training context, pure
Mamba-2 degrading with the size of the book and often giving partly right numbers, and the
reversed order helping the SSM (it knows what to keep).
Rows are padded on the right with byte 0: padding after the answer changes no causal prediction.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .base import IGNORE_INDEX, Seed, Task, TaskBatch, check_int, rng_for

VARIANTS = ("standard", "reversed")
ONSETS = ("b", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z")
VOWELS = ("a", "e", "i", "o", "u")
PAD = 0


@dataclass(frozen=True)
class Phonebook(Task):
    num_entries: int = 20
    variant: str = "standard"
    num_examples: int = 2  # few-shot questions before the real one
    digits: int = 10
    score_examples: bool = True  # the few-shot answers are targets (and scored questions) too
    min_entries: int | None = None  # training: each book has min_entries..num_entries entries

    name: ClassVar[str] = "phonebook"
    description: ClassVar[str] = "a list of 'Name: number' lines, then a name: output its number"
    sweep_param: ClassVar[str] = "num_entries"
    metric: ClassVar[str] = "exact_match"
    default_sweep: ClassVar[tuple[int, ...]] = (5, 10, 20, 40, 80, 160)
    range_param: ClassVar[str | None] = "min_entries"

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"phonebook variant must be one of {VARIANTS}, got {self.variant!r}")
        check_int("phonebook num_examples", self.num_examples, 0)
        check_int("phonebook num_entries", self.num_entries, 1)
        check_int("phonebook digits", self.digits, 1)
        if not isinstance(self.score_examples, bool):
            raise ValueError(f"phonebook score_examples must be true or false, got {self.score_examples!r}")
        if self.min_entries is not None:
            check_int("phonebook min_entries", self.min_entries, 1, self.num_entries, why=" (at most num_entries)")

    @property
    def vocab_size(self) -> int:
        return 256

    def sequence_length(self) -> int:
        """An upper bound on the bytes of one example (names are at most 6 syllables + a space)."""
        line = 13 + 2 + self.digits + 1
        question = 3 + 13 + 5 + self.digits + 1
        return 11 + 20 + self.num_entries * line + (self.num_examples + 1) * question

    def make_example(self, rng: np.random.Generator) -> tuple[str, str]:
        """(prompt text ending in 'A: ', answer digits)."""
        n = self.num_entries
        if self.min_entries is not None:
            n = int(rng.integers(self.min_entries, self.num_entries + 1))
        names: list[str] = []
        seen = set()
        while len(names) < n:
            name = _name(rng)
            if name not in seen:
                seen.add(name)
                names.append(name)
        numbers = ["".join(map(str, rng.integers(0, 10, size=self.digits))) for _ in names]
        # a training book smaller than the questions is asked about each entry once (a one-entry
        # book teaches copying a number first: the first digit found, the rest follow it)
        asked = rng.choice(n, size=min(n, self.num_examples + 1), replace=False)
        book = "Phonebook:\n" + "".join(f"{n}: {x}\n" for n, x in zip(names, numbers))
        shots = "".join(f"Q: {names[i]}? A: {numbers[i]}\n" for i in asked[:-1])
        query = int(asked[-1])
        head = f"Find: {names[query]}\n" if self.variant == "reversed" else ""
        return head + book + shots + f"Q: {names[query]}? A: ", numbers[query]

    def generate(self, batch_size: int, seed: Seed) -> TaskBatch:
        check_int("batch_size", batch_size, 1)
        rng = rng_for(seed)
        examples = [self.make_example(rng) for _ in range(batch_size)]
        # the answer is fed too (teacher forcing): the prediction at t is scored against byte t+1
        texts = [p + a + "\n" for p, a in examples]
        rows = [np.frombuffer(t.encode("ascii"), dtype=np.uint8) for t in texts]
        l = max(len(r) for r in rows)
        inputs = np.full((batch_size, l), PAD, dtype=np.int64)
        targets = np.full((batch_size, l), IGNORE_INDEX, dtype=np.int64)
        groups = np.full((batch_size, l), -1, dtype=np.int64)
        for i, (text, row) in enumerate(zip(texts, rows)):
            inputs[i, : len(row)] = row
            for j, start in enumerate(self.answer_starts(text)):
                # the byte before an answer (the space after 'A:') predicts its first digit
                targets[i, start - 1: start - 1 + self.digits] = row[start: start + self.digits]
                groups[i, start - 1: start - 1 + self.digits] = j
        import torch
        return TaskBatch(torch.from_numpy(inputs), torch.from_numpy(targets),
                         {"prompts": [p for p, _ in examples], "answers": [a for _, a in examples],
                          "lengths": [len(r) for r in rows]}, torch.from_numpy(groups))

    def answer_starts(self, text: str) -> list[int]:
        """Character offsets of the scored answers in an example's text (the few-shot ones first)."""
        starts, at = [], 0
        while (at := text.find("? A: ", at)) >= 0:
            at += len("? A: ")
            starts.append(at)
        return starts if self.score_examples else starts[-1:]


def _name(rng: np.random.Generator) -> str:
    def word(syllables: int) -> str:
        parts = [ONSETS[rng.integers(len(ONSETS))] + VOWELS[rng.integers(len(VOWELS))] for _ in range(syllables)]
        return "".join(parts).capitalize()
    return f"{word(int(rng.integers(2, 4)))} {word(int(rng.integers(2, 4)))}"


def decode(ids) -> str:
    """Token ids (bytes) -> text; byte 0 padding dropped."""
    return bytes(int(i) for i in ids if int(i) != PAD).decode("ascii", errors="replace")
