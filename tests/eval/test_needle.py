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


def _record_prompts(monkeypatch) -> list[str]:
    """Replaces generate by one that writes no token and keeps the prompts it was given."""
    prompts = []

    def record(model, ids, max_new, attention_mask=None, **kw):
        prompts.extend(bytes(row[mask.bool()].tolist()).decode() for row, mask in zip(ids, attention_mask))
        return torch.cat([ids, torch.zeros(ids.shape[0], max_new, dtype=ids.dtype)], 1)
    monkeypatch.setattr(mambakit.generation, "generate", record)
    return prompts


@pytest.mark.parametrize("template", ["ruler", "phonebook"])
def test_a_cell_has_the_same_examples_in_any_grid(monkeypatch, template):
    """Examples are seeded by (seed, length, depth): the cell (500, 0.5) alone and inside a larger
    grid, where it is not the first length nor the first depth, gets the same haystacks."""
    prompts = _record_prompts(monkeypatch)
    model = tiny_model("mamba2")
    alone = evaluate_needle(model, TOK, [500], [0.5], num_examples=2, template=template, seed=3)
    cell_alone = prompts[:]
    prompts.clear()
    grid = evaluate_needle(model, TOK, [400, 500], [0.0, 0.5], num_examples=2, template=template, seed=3)
    assert len(prompts) == 8 and prompts[6:] == cell_alone  # the cells run length by length, depth by depth
    assert grid["cells"][3]["first_answer"] == alone["cells"][0]["first_answer"]
    assert len(set(prompts)) == 8  # and the other cells differ from it and each other
    prompts.clear()
    evaluate_needle(model, TOK, [500], [0.5], num_examples=2, template=template, seed=4)
    assert prompts != cell_alone  # the seed still matters


def test_bad_settings():
    with pytest.raises(ValueError, match="depth must be in"):
        make_example(TOK, 500, 1.5, np.random.default_rng(0))
    with pytest.raises(ValueError, match="too short for this template"):
        make_example(TOK, 100, 0.5, np.random.default_rng(0))
    with pytest.raises(ValueError, match="phonebook templates have one needle"):
        make_example(TOK, 500, 0.5, np.random.default_rng(0), "phonebook", num_needles=2)
    with pytest.raises(ValueError, match="template must be one of"):
        make_example(TOK, 500, 0.5, np.random.default_rng(0), "essay")
    with pytest.raises(ValueError, match="seed must be a non-negative int, got -1"):
        evaluate_needle(tiny_model("mamba2"), TOK, [400], [0.5], num_examples=1, seed=-1)
    with pytest.raises(ValueError, match="a 64-token haystack with 12 generated tokens needs 76 tokens, "
                                         "more than this model's context limit of 64"):
        evaluate_needle(limited_model(64), TOK, [64], [0.5], num_examples=1)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        evaluate_needle(limited_model(64), TOK, [40], [0.5], num_examples=1, batch_size=0)
    ran = []  # bad cells are refused before any generation
    model = tiny_model("mamba2")
    model.register_forward_hook(lambda *a: ran.append(1))
    for lengths, depths, match in (([400, 10], [0.5], "too short"), ([400], [0.0, 2.0], "depth must be in"),
                                   ([400, 400], [0.5], r"lengths repeat a value: \[400, 400\]"),
                                   ([400], [0.5, 0.5], "depths repeat a value")):
        with pytest.raises(ValueError, match=match):
            evaluate_needle(model, TOK, lengths, depths, num_examples=1)
    assert ran == []


def test_phonebook_refuses_a_haystack_file(tmp_path):
    """--template phonebook --haystack FILE ran as if the file had not been given."""
    (tmp_path / "hay.txt").write_text("A sentence of hay. Another one!")
    for template in ("phonebook", "phonebook-reversed"):
        with pytest.raises(ValueError, match="phonebook templates fill the haystack with phonebook entries; "
                                             r"a haystack of sentences \(--haystack FILE\) is for the ruler"):
            evaluate_needle(tiny_model("mamba2"), TOK, [400], [0.5], num_examples=1, template=template,
                            haystack=str(tmp_path / "hay.txt"))
        with pytest.raises(ValueError, match="phonebook templates fill the haystack"):
            make_example(TOK, 400, 0.5, np.random.default_rng(0), template, sentences=["A sentence of hay."])
    prompt, _ = make_example(TOK, 400, 0.5, np.random.default_rng(0), "ruler", sentences=["A sentence of hay."])
    assert "A sentence of hay." in prompt  # the ruler template takes it
