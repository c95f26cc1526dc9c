"""Multiple-choice scoring by log-likelihood, in the 8B study's three MMLU formats.

No shape letters: prompts are strings; loglik.py runs the model.

The formats (arXiv 2406.07887 evaluates MMLU all three ways). Templates follow lm-evaluation-harness's
`mmlu` (standard) and `mmlu_continuation` (cloze) tasks; `{subject}` is the subject with "_" read as
a space, the question is stripped, examples are separated by a blank line, and every continuation
starts with one space (the harness's target delimiter):

standard: choices in the prompt, the answer letter scored; continuations " A", " B", ...

    The following are multiple choice questions (with answers) about {subject}.
    (blank line)
    {shot question}
    A. {choice 0}
    B. {choice 1}
    ...
    Answer: {letter of the shot's answer}
    (blank line)
    {question}
    A. {choice 0}
    ...
    Answer:

choices: the same prompt, the answer text scored; continuations " {choice}", and each shot ends
    in "Answer: {its answer text}" instead of the letter.
cloze: the question alone, each answer text scored; continuations " {choice}"

    The following are questions (with answers) about {subject}.
    (blank line)
    Question: {shot question}
    Answer: {its answer text}
    (blank line)
    Question: {question}
    Answer:

k-shot examples are the first k questions of the same subject in the dev split, in file order
(MMLU's dev split has five a subject), skipping the question asked should the dev split hold it
(as lm-eval's samplers do: its answer would be in its own prompt). The prediction is the choice
of highest log-likelihood (accuracy); accuracy_norm divides each log-likelihood by the choice's
length in characters (the harness's acc_norm), which matters when answer texts differ in length
(choices, cloze).
"""
from __future__ import annotations

from collections import defaultdict

from .data import Question
from .loglik import check_fits, encode_pair, score_requests

FORMATS = ("standard", "choices", "cloze")
HEADERS = {"standard": "The following are multiple choice questions (with answers) about {subject}.\n\n",
           "choices": "The following are multiple choice questions (with answers) about {subject}.\n\n",
           "cloze": "The following are questions (with answers) about {subject}.\n\n"}


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")


def _body(q: Question, fmt: str) -> str:
    """The question as the prompt shows it, up to and including 'Answer:'."""
    if fmt == "cloze":
        return f"Question: {q.question.strip()}\nAnswer:"
    lines = [q.question.strip()] + [f"{letter}. {c}" for letter, c in zip(q.letters, q.choices)]
    return "\n".join(lines) + "\nAnswer:"


def answer_texts(q: Question, fmt: str) -> list[str]:
    """The texts scored, one per choice, without the leading space."""
    return list(q.letters) if fmt == "standard" else list(q.choices)


def build_prompt(q: Question, fmt: str, shots: list[Question] = ()) -> tuple[str, list[str]]:
    """-> (context, continuations): the prompt and one continuation per choice (each with its space)."""
    _check_format(fmt)
    parts = [f"{_body(s, fmt)} {answer_texts(s, fmt)[s.answer]}" for s in shots]
    context = HEADERS[fmt].format(subject=q.subject.replace("_", " ")) + "".join(p + "\n\n" for p in parts) + _body(q, fmt)
    return context, [" " + t for t in answer_texts(q, fmt)]


def select_shots(questions: list[Question], dev: list[Question] | None, k: int) -> dict[str, list[Question]]:
    """subject -> its dev questions in file order (shots_for takes the first k of them); a ValueError
    if a subject has fewer than k."""
    if not isinstance(k, int) or k < 0:
        raise ValueError(f"the number of shots must be an int >= 0, got {k!r}")
    if k == 0:
        return defaultdict(list)
    if not dev:
        raise ValueError(f"{k}-shot prompts need a dev split (--dev FILE) to take the examples from")
    by_subject: dict[str, list[Question]] = defaultdict(list)
    for q in dev:
        by_subject[q.subject].append(q)
    for subject in sorted({q.subject for q in questions}):
        have = len(by_subject.get(subject, []))
        if have < k:
            raise ValueError(f"the dev split has {have} question{'s' if have != 1 else ''} of subject "
                             f"{subject!r}; {k}-shot prompts need {k}")
    return dict(by_subject)


def _same(a: Question, b: Question) -> bool:
    return (a.question, a.choices, a.answer, a.subject) == (b.question, b.choices, b.answer, b.subject)


def shots_for(q: Question, pool: list[Question], k: int) -> list[Question]:
    """The first k questions of pool that are not q itself (a dev split holding test questions, or the
    test file given as --dev, would otherwise show q with its answer in its own prompt)."""
    shots = [s for s in pool if not _same(s, q)][:k]
    if len(shots) < k:
        raise ValueError(f"{q.where}: the dev split has {len(shots)} question{'s' if len(shots) != 1 else ''} of "
                         f"subject {q.subject!r} other than this one; {k}-shot prompts need {k}")
    return shots


def evaluate_choice(model, tokenizer, questions: list[Question], fmt: str = "standard",
                    dev: list[Question] | None = None, shots: int = 0, batch_size: int = 16,
                    prefill_chunk: int | None = None, progress: bool = False) -> dict:
    """Accuracy (and length-normalized accuracy) per subject and overall, with every prediction."""
    _check_format(fmt)
    if not questions:
        raise ValueError("no questions to evaluate")
    examples = select_shots(questions, dev, shots)
    requests, spans, prompts = [], [], []
    for q in questions:
        context, continuations = build_prompt(q, fmt, shots_for(q, examples[q.subject], shots))
        pairs = [encode_pair(tokenizer, context, c) for c in continuations]
        if not pairs[0][0]:
            raise ValueError(f"{q.where}: the prompt encodes to no token")
        longest = max(len(c) + len(t) - 1 for c, t in pairs)
        check_fits(model, longest, f"{q.where}: the {shots}-shot {fmt} prompt with its longest answer")
        spans.append(range(len(requests), len(requests) + len(pairs)))
        requests += pairs
        prompts.append(context)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(requests), desc=f"{fmt} {shots}-shot", unit="choice", dynamic_ncols=True)
    scores = score_requests(model, requests, batch_size=batch_size, prefill_chunk=prefill_chunk,
                            on_done=bar.update if bar is not None else None)
    if bar is not None:
        bar.close()
    per_subject: dict[str, list[tuple[bool, bool]]] = defaultdict(list)
    predictions = []
    for q, span in zip(questions, spans):
        lls = [scores[i][0] for i in span]
        lengths = [len(t) for t in answer_texts(q, fmt)]
        pred = max(range(len(lls)), key=lambda j: lls[j])
        pred_norm = max(range(len(lls)), key=lambda j: lls[j] / max(lengths[j], 1))
        per_subject[q.subject].append((pred == q.answer, pred_norm == q.answer))
        predictions.append({"where": q.where, "subject": q.subject, "answer": q.answer, "prediction": pred,
                            "prediction_norm": pred_norm, "loglikelihoods": lls})
    subjects = {s: _accuracy(v) for s, v in sorted(per_subject.items())}
    overall = _accuracy([x for v in per_subject.values() for x in v])
    overall["accuracy_macro"] = sum(s["accuracy"] for s in subjects.values()) / len(subjects)
    return {"format": fmt, "shots": shots, **overall, "subjects": subjects, "predictions": predictions,
            "example_prompt": prompts[0]}


def _accuracy(hits: list[tuple[bool, bool]]) -> dict:
    n = len(hits)
    return {"n": n, "accuracy": sum(a for a, _ in hits) / n, "accuracy_norm": sum(b for _, b in hits) / n}
