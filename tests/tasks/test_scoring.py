"""The exact scorers on hand-made answers."""
import pytest
import torch

from mambakit.tasks import IGNORE_INDEX, score_answer, score_predictions

X = IGNORE_INDEX


def test_right_answer_scores_one():
    s = score_answer("0447129853", "0447129853")
    assert s.exact == 1.0 and s.chars_right == 10 and not s.partial


def test_one_wrong_digit_scores_zero_and_is_partial():
    s = score_answer("0447129854", "0447129853")
    assert s.exact == 0.0 and s.chars_right == 9 and s.partial


def test_wrong_number_is_not_partial():
    s = score_answer("9999999999", "0447129853")
    assert s.exact == 0.0 and not s.partial
    assert score_answer(" 0447129853\n", "0447129853").exact == 1.0  # whitespace around is ignored
    assert score_answer("04471298531", "0447129853").exact == 0.0  # a longer answer is not exact
    with pytest.raises(ValueError):
        score_answer("1", "")


def test_token_scorer_counts_tokens_exact_and_partial_rows():
    targets = torch.tensor([[X, 3, 4, 5, 6],    # all right
                            [X, 3, 4, 5, 6],    # one wrong: partial
                            [X, 3, 4, 5, 6],    # all wrong
                            [X, X, X, X, X]])   # nothing asked: not an example
    preds = torch.tensor([[9, 3, 4, 5, 6],
                          [9, 3, 4, 5, 7],
                          [9, 1, 1, 1, 1],
                          [1, 1, 1, 1, 1]])
    s = score_predictions(preds, targets)
    assert (s.tokens_right, s.tokens, s.examples) == (7, 12, 3)
    assert s.exact_match == pytest.approx(1 / 3) and s.partial_match == pytest.approx(1 / 3)
    assert s.token_accuracy == pytest.approx(7 / 12)
    total = s + s
    assert (total.tokens_right, total.examples_exact) == (14, 2)


def test_token_scorer_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="same"):
        score_predictions(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 4, dtype=torch.long))


def test_groups_make_each_question_an_example():
    targets = torch.tensor([[X, 1, 2, X, 3, 4, X, 5, 6],
                            [X, 1, 2, X, 3, 4, X, X, X]])
    groups = torch.tensor([[-1, 0, 0, -1, 1, 1, -1, 2, 2],
                           [-1, 0, 0, -1, 1, 1, -1, -1, -1]])
    preds = torch.tensor([[0, 1, 2, 0, 3, 9, 0, 9, 9],     # right, partial, wrong
                          [0, 1, 2, 0, 3, 4, 0, 0, 0]])    # right, right
    s = score_predictions(preds, targets, groups=groups)
    assert (s.examples, s.examples_exact, s.examples_partial) == (5, 3, 1)
    assert (s.tokens_right, s.tokens) == (7, 10)
    assert score_predictions(preds, targets).examples == 2  # without groups, rows
    with pytest.raises(ValueError, match="question index"):
        score_predictions(preds, targets, groups=torch.full_like(targets, -1))
    with pytest.raises(ValueError, match="shape"):
        score_predictions(preds, targets, groups=groups[:, :3])
