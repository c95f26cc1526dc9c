"""Needle in a haystack, RULER style, generated locally: accuracy over context length x needle depth.

No shape letters: prompts are strings; generation.py runs the model.

Templates (the examples of a cell are drawn from numpy's PCG64 seeded by the values (seed, length,
depth), cell_rng: a cell's haystacks are the same on every machine and in every grid that has the cell):

ruler: RULER's niah_single_1 / niah_multikey_1 layout. The haystack is the "noise" line
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
    repeated (or the sentences of --haystack FILE), one a line; the needle is the line
    "One of the special magic numbers for {key} is: {value}." with a made-up word as key and a
    7-digit value; num_needles > 1 adds needles of other keys at random lines (distractors).
        A special magic number is hidden within the following text. Make sure to memorize it. I will quiz you about the number afterwards.
        {haystack lines with the needle(s)}
        What is the special magic number for {key} mentioned in the provided text? The special magic number for {key} mentioned in the provided text is
    Correct when the generated text contains the value (RULER's string match).
phonebook / phonebook-reversed: the format of the synthetic phonebook task (mambakit/tasks/phonebook.py),
    so phonebook-trained models can be read off a grid: "Phonebook:" and one "Name: number" line
    per entry (10 digits), two example questions about other entries, then the question; the
    queried entry is the needle and the other entries the haystack. -reversed asks first
    ("Find: {name}" before the book).
        Phonebook:
        Tavi Nodu: 8301925547
        ...
        Q: {other name}? A: {its number}     (twice)
        Q: {name}? A:
    Correct when the generated text contains the number. The entries are the haystack: a sentence
    file (haystack=) is refused, as are distractor needles (num_needles > 1).

Length is the prompt's length in tokens of the model's tokenizer: the most filler (lines or
entries) that keeps the prompt within it. Depth d in [0, 1] puts the needle after round(d * n) of
the n filler lines (ruler) or at entry round(d * (n - 1)) (phonebook): 0 at the start, 1 at the end.
"""
from __future__ import annotations

import itertools
import re
from pathlib import Path

import numpy as np

from .loglik import check_fits, model_device

TEMPLATES = ("ruler", "phonebook", "phonebook-reversed")
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
RULER_HEAD = ("A special magic number is hidden within the following text. Make sure to memorize it. "
              "I will quiz you about the number afterwards.\n")
RULER_NEEDLE = "One of the special magic numbers for {key} is: {value}."
RULER_QUESTION = ("\nWhat is the special magic number for {key} mentioned in the provided text? "
                  "The special magic number for {key} mentioned in the provided text is")
# syllables of made-up names and keys, the alphabet of tasks/phonebook.py
ONSETS = "bdfghklmnprstvz"
VOWELS = "aeiou"


def _word(rng, syllables: int) -> str:
    return "".join(ONSETS[rng.integers(len(ONSETS))] + VOWELS[rng.integers(len(VOWELS))] for _ in range(syllables))


def _distinct(rng, n: int, make) -> list[str]:
    out, seen = [], set()
    while len(out) < n:
        x = make(rng)
        if x not in seen:
            seen.add(x)
            out.append(x)
    return out


def _names(rng, n: int) -> list[str]:
    """n distinct names "Tavi Nodu" (two words of 2-3 syllables), drawn in bulk: a long haystack needs thousands."""
    out, seen = [], set()
    while len(out) < n:
        m = n - len(out)
        syl = rng.integers(2, 4, size=(m, 2))
        on = rng.integers(len(ONSETS), size=(m, 2, 3))
        vo = rng.integers(len(VOWELS), size=(m, 2, 3))
        for i in range(m):
            words = ["".join(ONSETS[on[i, w, k]] + VOWELS[vo[i, w, k]] for k in range(syl[i, w])).capitalize()
                     for w in range(2)]
            name = " ".join(words)
            if name not in seen:
                seen.add(name)
                out.append(name)
    return out


def _digits(rng, n: int, leading_nonzero: bool = False) -> str:
    first = str(rng.integers(1, 10)) if leading_nonzero else str(rng.integers(0, 10))
    return first + "".join(map(str, rng.integers(0, 10, size=n - 1)))


def haystack_sentences(path) -> list[str]:
    """The sentences of a text file (split after . ! ? followed by white space)."""
    text = " ".join(Path(path).read_text(encoding="utf-8").split())
    sentences = [s for s in re.split(r"(?<=[.!?])\s+", text) if s]
    if not sentences:
        raise ValueError(f"{path}: no sentences to build a haystack from")
    return sentences


def _fit(count_tokens, render, length: int, least: int, most: int) -> tuple[str, int]:
    """The largest n in [least, most] with count_tokens(render(n)) <= length -> (prompt, n)."""
    if count_tokens(render(least)) > length:
        raise ValueError(f"a context length of {length} tokens is too short for this template "
                         f"(its smallest prompt has {count_tokens(render(least))} tokens)")
    lo, hi = least, max(least, most)
    while lo < hi:  # invariant: render(lo) fits
        mid = (lo + hi + 1) // 2
        if count_tokens(render(mid)) <= length:
            lo = mid
        else:
            hi = mid - 1
    return render(lo), lo


def cell_rng(seed: int, length: int, depth: float) -> np.random.Generator:
    """The random generator of the cell (length, depth): seeded by the values, not by where the cell
    sits in the grid, so that adding or removing lengths and depths leaves the other cells' examples
    as they were (depths equal to 6 decimals share their examples)."""
    _check_seed(seed)
    return np.random.default_rng([seed, length, round(depth * 10**6)])


def _check_seed(seed) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")


def _check_options(template: str, num_needles: int, haystack) -> None:
    if template not in TEMPLATES:
        raise ValueError(f"template must be one of {', '.join(TEMPLATES)}, got {template!r}")
    if not isinstance(num_needles, int) or num_needles < 1:
        raise ValueError(f"num_needles must be a positive int, got {num_needles!r}")
    if template != "ruler" and num_needles != 1:
        raise ValueError("the phonebook templates have one needle (the other entries are the distractors); "
                         "leave num_needles at 1")
    if template != "ruler" and haystack is not None:
        raise ValueError("the phonebook templates fill the haystack with phonebook entries; a haystack of "
                         "sentences (--haystack FILE) is for the ruler template only")


def make_example(tokenizer, length: int, depth: float, rng: np.random.Generator, template: str = "ruler",
                 num_needles: int = 1, sentences: list[str] | None = None) -> tuple[str, str]:
    """-> (prompt of at most `length` tokens, answer)."""
    _check_options(template, num_needles, sentences)
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be in [0, 1] (0 = start of the haystack, 1 = end), got {depth!r}")

    def count(text):
        return len(tokenizer.encode(text, add_special_tokens=False))
    if template == "ruler":
        keys = _distinct(rng, num_needles, lambda r: _word(r, 3))
        values = [_digits(rng, 7, leading_nonzero=True) for _ in keys]
        needles = [RULER_NEEDLE.format(key=k, value=v) for k, v in zip(keys, values)]
        filler = sentences or [NOISE]
        joiner = " " if sentences else "\n"
        spots = rng.random(num_needles - 1)  # distractor depths

        def render(n):
            lines = [filler[i % len(filler)] for i in range(n)]
            inserts = sorted([(int(depth * n + 0.5), 0)] + [(int(s * n + 0.5), j + 1) for j, s in enumerate(spots)], reverse=True)
            for at, j in inserts:
                lines.insert(at, needles[j])
            return RULER_HEAD + joiner.join(lines) + RULER_QUESTION.format(key=keys[0])
        return _fit(count, render, length, 0, length)[0], values[0]
    # More entries than can fit: a line takes at least half the tokens of a typical one.
    line = max(1, count("Tavi Nodu: 0123456789\n") // 2)
    pool = length // line + 8
    names = _names(rng, pool)
    numbers = ["".join(map(str, row)) for row in rng.integers(0, 10, size=(pool, 10))]
    others = [int(i) for i in rng.permutation(pool)]

    def render(n):
        q = int(depth * (n - 1) + 0.5)
        shots = list(itertools.islice((i for i in others if i < n and i != q), 2))
        book = "Phonebook:\n" + "".join(f"{names[i]}: {numbers[i]}\n" for i in range(n))
        asks = "".join(f"Q: {names[i]}? A: {numbers[i]}\n" for i in shots)
        head = f"Find: {names[q]}\n" if template == "phonebook-reversed" else ""
        return head + book + asks + f"Q: {names[q]}? A: "
    prompt, n = _fit(count, render, length, 3, pool)
    return prompt, numbers[int(depth * (n - 1) + 0.5)]


def evaluate_needle(model, tokenizer, lengths: list[int], depths: list[float], num_examples: int = 8,
                    template: str = "ruler", num_needles: int = 1, haystack: str | None = None,
                    seed: int = 0, batch_size: int = 8, prefill_chunk: int | None = 2048,
                    progress: bool = False) -> dict:
    """Accuracy for every (length, depth): greedy generation, correct when the answer appears."""
    import torch

    from ..generation import generate

    if not lengths or not depths:
        raise ValueError("give at least one context length and one depth")
    for name, values in (("lengths", list(lengths)), ("depths", [float(d) for d in depths])):
        if len(set(values)) != len(values):  # a repeated cell would be the same examples, run twice
            raise ValueError(f"{name} repeat a value: {values}; give each once")
    if not isinstance(num_examples, int) or num_examples < 1:
        raise ValueError(f"num_examples must be a positive int, got {num_examples!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int (haystacks per generate call), got {batch_size!r}")
    _check_options(template, num_needles, haystack)  # before the haystack file is read
    _check_seed(seed)  # before any work
    max_new = 12 if template == "ruler" else 11  # " 1234567." / "0123456789\n", a few tokens spare
    for length in lengths:
        if not isinstance(length, int) or length < 1:
            raise ValueError(f"context lengths must be positive ints, got {length!r}")
        check_fits(model, length + max_new, f"a {length}-token haystack with {max_new} generated tokens")
    sentences = haystack_sentences(haystack) if haystack else None
    # Every cell's settings checked before the first generation (a bad depth or a length too short
    # for the template failed after the good cells had run): one throwaway example each.
    for length in lengths:
        for depth in depths:
            make_example(tokenizer, length, float(depth), np.random.default_rng(0), template, num_needles, sentences)
    device = model_device(model)
    cells = []
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(lengths) * len(depths) * num_examples, desc="needle", unit="example", dynamic_ncols=True)
    for length in lengths:
        for depth in depths:
            rng = cell_rng(seed, length, float(depth))
            examples = [make_example(tokenizer, length, float(depth), rng, template, num_needles, sentences)
                        for _ in range(num_examples)]
            hits, tokens, outputs = 0, [], []
            for s in range(0, num_examples, batch_size):
                part = examples[s:s + batch_size]
                ids, mask = tokenizer.batch_encode([p for p, _ in part], add_special_tokens=False, device=device)
                tokens += mask.sum(1).tolist()
                with torch.inference_mode():
                    out = generate(model, ids, max_new, attention_mask=mask, eos_token_id=tokenizer.eos_token_id,
                                   prefill_chunk=prefill_chunk)
                for (_, answer), row in zip(part, out[:, ids.shape[1]:]):
                    text = tokenizer.decode(row.tolist())
                    hits += answer in text
                    outputs.append(text)
                if bar is not None:
                    bar.update(len(part))
            cells.append({"length": length, "depth": float(depth), "accuracy": hits / num_examples,
                          "n": num_examples, "mean_prompt_tokens": sum(tokens) / len(tokens),
                          "first_answer": examples[0][1], "first_output": outputs[0]})
    if bar is not None:
        bar.close()
    grid = [[next(c["accuracy"] for c in cells if c["length"] == L and c["depth"] == float(d)) for L in lengths]
            for d in depths]
    return {"template": template, "num_needles": num_needles, "lengths": list(lengths),
            "depths": [float(d) for d in depths], "num_examples": num_examples, "seed": seed,
            "accuracy": grid, "mean_accuracy": sum(map(sum, grid)) / (len(lengths) * len(depths)), "cells": cells}


def plot_heatmaps(results: list[dict], path, titles: list[str] | None = None) -> Path:
    """One heatmap per result (depth down, context length across), side by side, as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(results)
    fig, axes = plt.subplots(1, n, figsize=(1.2 + 0.9 * sum(len(r["lengths"]) for r in results) + 0.8 * n, 4.2),
                             squeeze=False)
    image = None
    for k, (ax, r) in enumerate(zip(axes[0], results)):
        grid = np.array(r["accuracy"], dtype=float)
        image = ax.imshow(grid, cmap="RdYlGn", vmin=0.0, vmax=1.0, aspect="auto")
        ax.set_xticks(range(len(r["lengths"])), [_short(L) for L in r["lengths"]])
        ax.set_yticks(range(len(r["depths"])), [f"{d:.0%}" for d in r["depths"]])
        ax.set_xlabel("context length (tokens)")
        if k == 0:
            ax.set_ylabel("needle depth")
        for i in range(grid.shape[0]):
            for j in range(grid.shape[1]):
                ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=8)
        title = titles[k] if titles else r.get("name", "")
        ax.set_title(f"{title}\n{r['template']}, {r['num_examples']} per cell".strip(), fontsize=9)
    fig.colorbar(image, ax=list(axes[0]), label="accuracy", shrink=0.85)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def _short(n: int) -> str:
    return f"{n // 1024}K" if n >= 1024 and n % 1024 == 0 else str(n)
