"""Multiple choice: the three MMLU formats build the documented prompts (golden strings), the
predictions are the argmax of the log-likelihoods from a full forward, and bad files fail clearly.

No shape letters: prompts are strings.
"""
import json

import pytest

from conftest import tiny_model
from eval_helpers import forward_score, limited_model
from mambakit.eval.choice import build_prompt, evaluate_choice
from mambakit.eval.data import Question, load_questions
from mambakit.eval.loglik import encode_pair
from mambakit.tokenizers import ByteTokenizer

SHOT = Question("What is 2 + 2?", ("3", "4", "5", "22"), 1, "elementary_mathematics")
Q = Question("  Which number is prime?\n", ("4", "6", "7", "9"), 2, "elementary_mathematics")

GOLDEN = {
    "standard": ("The following are multiple choice questions (with answers) about elementary mathematics.\n\n"
                 "What is 2 + 2?\nA. 3\nB. 4\nC. 5\nD. 22\nAnswer: B\n\n"
                 "Which number is prime?\nA. 4\nB. 6\nC. 7\nD. 9\nAnswer:",
                 [" A", " B", " C", " D"]),
    "choices": ("The following are multiple choice questions (with answers) about elementary mathematics.\n\n"
                "What is 2 + 2?\nA. 3\nB. 4\nC. 5\nD. 22\nAnswer: 4\n\n"
                "Which number is prime?\nA. 4\nB. 6\nC. 7\nD. 9\nAnswer:",
                [" 4", " 6", " 7", " 9"]),
    "cloze": ("The following are questions (with answers) about elementary mathematics.\n\n"
              "Question: What is 2 + 2?\nAnswer: 4\n\n"
              "Question: Which number is prime?\nAnswer:",
              [" 4", " 6", " 7", " 9"]),
}


@pytest.mark.parametrize("fmt", sorted(GOLDEN))
def test_golden_prompts(fmt):
    assert build_prompt(Q, fmt, [SHOT]) == GOLDEN[fmt]


def test_zero_shot_prompt():
    context, conts = build_prompt(Q, "cloze")
    assert context == "The following are questions (with answers) about elementary mathematics.\n\n" \
                      "Question: Which number is prime?\nAnswer:"
    with pytest.raises(ValueError, match="format must be one of standard, choices, cloze"):
        build_prompt(Q, "mc")


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


ROWS = [{"question": f"Q{i}: pick {i % 3}", "choices": ["zero", "one", "two three"], "answer": i % 3,
         "subject": "s_a" if i < 3 else "s_b"} for i in range(5)]


@pytest.mark.parametrize("fmt", ["standard", "choices", "cloze"])
def test_predictions_are_argmax_of_forward_scores(tmp_path, fmt):
    questions = load_questions(_write(tmp_path / "test.jsonl", ROWS))
    dev = load_questions(_write(tmp_path / "dev.jsonl", ROWS[::-1]))
    model, tok = tiny_model("mamba2"), ByteTokenizer()
    res = evaluate_choice(model, tok, questions, fmt, dev=dev, shots=1, batch_size=5)
    hits = {}
    for q, pred in zip(questions, res["predictions"]):
        # the first dev question of the subject that is not q itself (ROWS[4] is both)
        context, conts = build_prompt(q, fmt, [d for d in dev if d.subject == q.subject
                                               and d.question != q.question][:1])
        lls = [forward_score(model, *encode_pair(tok, context, c)) for c in conts]
        assert pred["loglikelihoods"] == pytest.approx(lls, abs=2e-4)
        assert pred["prediction"] == max(range(3), key=lambda j: lls[j])
        texts = ["A", "B", "C"] if fmt == "standard" else ["zero", "one", "two three"]
        assert pred["prediction_norm"] == max(range(3), key=lambda j: lls[j] / len(texts[j]))
        hits.setdefault(q.subject, []).append(pred["prediction"] == q.answer)
    for s, h in hits.items():
        assert res["subjects"][s]["n"] == len(h) and res["subjects"][s]["accuracy"] == sum(h) / len(h)
    assert res["accuracy"] == sum(sum(h) for h in hits.values()) / 5
    assert res["example_prompt"].startswith(GOLDEN[fmt][0][:40])


def test_bad_question_files(tmp_path):
    good = {"question": "q", "choices": ["a", "b"], "answer": 1, "subject": "s"}
    with pytest.raises(ValueError, match=r"bad\.jsonl:3: missing field 'subject'"):
        load_questions(_write(tmp_path / "bad.jsonl", [good, good, {k: v for k, v in good.items() if k != "subject"}]))
    with pytest.raises(ValueError, match=r":2: answer index 2 is out of range for 2 choices \(expected 0..1\)"):
        load_questions(_write(tmp_path / "bad.jsonl", [good, dict(good, answer=2)]))
    with pytest.raises(ValueError, match=r":1: answer 'C' is not one of the letters A..B"):
        load_questions(_write(tmp_path / "bad.jsonl", [dict(good, answer="C")]))
    assert load_questions(_write(tmp_path / "ok.jsonl", [dict(good, answer="b")]))[0].answer == 1
    (tmp_path / "broken.jsonl").write_text(json.dumps(good) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"broken\.jsonl:2: not valid JSON"):
        load_questions(tmp_path / "broken.jsonl")
    with pytest.raises(ValueError, match="'choices' must be a list of 2 to 26 strings"):
        load_questions(_write(tmp_path / "bad.jsonl", [dict(good, choices=["only one"])]))


def test_shots_and_context_limit(tmp_path):
    questions = load_questions(_write(tmp_path / "test.jsonl", ROWS))
    tok = ByteTokenizer()
    with pytest.raises(ValueError, match="need a dev split"):
        evaluate_choice(tiny_model("mamba2"), tok, questions, shots=1)
    dev = load_questions(_write(tmp_path / "dev.jsonl", ROWS[:3]))  # subject s_b has none
    with pytest.raises(ValueError, match="the dev split has 0 questions of subject 's_b'; 1-shot prompts need 1"):
        evaluate_choice(tiny_model("mamba2"), tok, questions, shots=1, dev=dev)
    with pytest.raises(ValueError, match=r"test\.jsonl:1: the 0-shot standard prompt .* needs 1\d\d tokens, "
                                         r"more than this model's context limit of 64"):
        evaluate_choice(limited_model(64), tok, questions)


@pytest.mark.parametrize("fmt", ["standard", "cloze"])
def test_a_question_is_never_its_own_shot(tmp_path, fmt):
    # Dev and test from one file (or a dev split that holds test questions): a question's k-shot
    # examples skip the question itself, as lm-eval's samplers do (its answer is not in its prompt).
    questions = load_questions(_write(tmp_path / "test.jsonl", ROWS))
    model, tok = tiny_model("mamba2"), ByteTokenizer()
    res = evaluate_choice(model, tok, questions, fmt, dev=questions, shots=1, batch_size=5)
    assert res["example_prompt"] == build_prompt(questions[0], fmt, [questions[1]])[0]
    for q, pred in zip(questions, res["predictions"]):
        shot = next(d for d in questions if d.subject == q.subject and d is not q)  # the first other one
        context, conts = build_prompt(q, fmt, [shot])
        lls = [forward_score(model, *encode_pair(tok, context, c)) for c in conts]
        assert pred["loglikelihoods"] == pytest.approx(lls, abs=2e-4)
    dev = load_questions(_write(tmp_path / "dev.jsonl", ROWS[:4]))  # s_b: only Q3, which is asked
    with pytest.raises(ValueError, match=r"test\.jsonl:4: the dev split has 0 questions of subject 's_b' "
                                         r"other than this one; 1-shot prompts need 1"):
        evaluate_choice(model, tok, questions, fmt, dev=dev, shots=1)
