"""Needle in a haystack: prompts fit their length with the needle at its depth, the grid scores
what the model generates, the heatmap is written, and impossible settings fail clearly.

No shape letters: prompts are strings.
"""
import re

import numpy as np
import pytest
import torch

import mambakit.generation
from conftest import tiny_model
from eval_helpers import limited_model
from mambakit.eval.needle import NOISE, evaluate_needle, make_example, plot_heatmaps
from mambakit.tokenizers import ByteTokenizer

TOK = ByteTokenizer()


@pytest.mark.parametrize("template", ["ruler", "phonebook", "phonebook-reversed"])
def test_prompt_fits_length_and_depth_moves_needle(template):
    length = 1500
    unit = len(NOISE) + 1 if template == "ruler" else 30  # a noise line / a phonebook entry at most
    where = []
    for depth in (0.0, 0.5, 1.0):
        prompt, answer = make_example(TOK, length, depth, np.random.default_rng(7), template)
        assert length - unit <= len(prompt.encode()) <= length
        assert prompt.count(answer) == 1
        where.append(prompt.index(answer) / len(prompt))
        if template == "ruler":
            assert prompt.startswith("A special magic number is hidden within the following text.")
            key = re.search(r"special magic number for (\w+) mentioned in the provided text is$", prompt).group(1)
            assert f"One of the special magic numbers for {key} is: {answer}." in prompt
        else:
            name = re.search(r"\nQ: ([A-Za-z ]+)\? A: $", prompt).group(1)
            assert f"\n{name}: {answer}\n" in prompt and re.fullmatch(r"\d{10}", answer)
            assert prompt.startswith(f"Find: {name}\nPhonebook:\n" if template.endswith("reversed") else "Phonebook:\n")
    assert where[0] < 0.15 and 0.35 < where[1] < 0.65 and where[2] > 0.7
    again = make_example(TOK, length, 0.5, np.random.default_rng(7), template)
    assert again == make_example(TOK, length, 0.5, np.random.default_rng(7), template)


def test_distractor_needles():
    prompt, answer = make_example(TOK, 2000, 0.5, np.random.default_rng(0), "ruler", num_needles=3)
    assert prompt.count("One of the special magic numbers for") == 3 and prompt.count(answer) == 1


def test_grid_scores_generated_text(monkeypatch, tmp_path):
    model = tiny_model("mamba2")
    real = evaluate_needle(model, TOK, [200, 300], [0.0, 1.0], num_examples=3, template="phonebook", batch_size=2)
    assert len(real["accuracy"]) == 2 and len(real["accuracy"][0]) == 2
    assert all(c["mean_prompt_tokens"] <= c["length"] for c in real["cells"])

    def oracle(model, ids, max_new, attention_mask=None, **kw):
        """Answers every question right: reads the number after the queried name in the prompt."""
        rows = []
        for row, mask in zip(ids, attention_mask):
            text = bytes(row[mask.bool()].tolist()).decode()
            name = re.search(r"Q: ([A-Za-z ]+)\? A: $", text).group(1)
            number = re.search(rf"\n{name}: (\d+)\n", text).group(1)
            rows.append(list(row.tolist()) + list(number.encode()) + [10] * (max_new - len(number)))
        return torch.tensor(rows)
    monkeypatch.setattr(mambakit.generation, "generate", oracle)
    perfect = evaluate_needle(model, TOK, [200, 300], [0.0, 1.0], num_examples=3, template="phonebook")
    assert perfect["accuracy"] == [[1.0, 1.0], [1.0, 1.0]] and perfect["mean_accuracy"] == 1.0
    png = plot_heatmaps([dict(real, name="random"), dict(perfect, name="oracle")], tmp_path / "grid.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_settings():
    with pytest.raises(ValueError, match="depth must be in"):
        make_example(TOK, 500, 1.5, np.random.default_rng(0))
    with pytest.raises(ValueError, match="too short for this template"):
        make_example(TOK, 100, 0.5, np.random.default_rng(0))
    with pytest.raises(ValueError, match="phonebook templates have one needle"):
        make_example(TOK, 500, 0.5, np.random.default_rng(0), "phonebook", num_needles=2)
    with pytest.raises(ValueError, match="template must be one of"):
        make_example(TOK, 500, 0.5, np.random.default_rng(0), "essay")
    with pytest.raises(ValueError, match="a 64-token haystack with 12 generated tokens needs 76 tokens, "
                                         "more than this model's context limit of 64"):
        evaluate_needle(limited_model(64), TOK, [64], [0.5], num_examples=1)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        evaluate_needle(limited_model(64), TOK, [40], [0.5], num_examples=1, batch_size=0)
    ran = []  # bad cells are refused before any generation
    model = tiny_model("mamba2")
    model.register_forward_hook(lambda *a: ran.append(1))
    for lengths, depths, match in (([400, 10], [0.5], "too short"), ([400], [0.0, 2.0], "depth must be in")):
        with pytest.raises(ValueError, match=match):
            evaluate_needle(model, TOK, lengths, depths, num_examples=1)
    assert ran == []
