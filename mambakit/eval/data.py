"""Reading evaluation inputs: jsonl files (errors name the file and line), text documents,
multiple-choice questions, and a model with its tokenizer from a folder or a preset.

No shape letters: this file handles files and options.

Multiple-choice jsonl, one question a line (MMLU's fields as the `cais/mmlu` data set has them):
    {"question": "...", "choices": ["...", "...", ...], "answer": 1, "subject": "anatomy"}
`answer` is the index of the right choice (0-based) or its letter ("B"). Text documents for
perplexity: a .txt file is one document; a .jsonl file holds one document a line under "text"
(or the field given).
"""
from __future__ import annotations

import json
import string
from dataclasses import dataclass
from pathlib import Path

from ..tokenizers import check_text

QUESTION_FIELDS = ("question", "choices", "answer", "subject")
LETTERS = string.ascii_uppercase


def _lines(f, p: Path):
    """(line number, line) of a text file, a non-UTF-8 byte named with the file and line."""
    lineno = 0
    try:
        for lineno, line in enumerate(f, start=1):
            yield lineno, line
    except UnicodeDecodeError as err:
        raise ValueError(f"{p}: not UTF-8 text after line {lineno} ({err.reason})") from None


def read_jsonl(path, required: tuple[str, ...] = ()) -> list[tuple[int, dict]]:
    """-> [(line number, record)], blank lines skipped. A bad line is a ValueError naming path:line."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no such file: {p}")
    rows = []
    with p.open(encoding="utf-8", errors="strict") as f:
        for lineno, line in _lines(f, p):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{p}:{lineno}: not valid JSON ({err.msg}); expected one JSON object a line") from None
            if not isinstance(record, dict):
                raise ValueError(f"{p}:{lineno}: expected a JSON object, got {type(record).__name__}")
            missing = [k for k in required if k not in record]
            if missing:
                raise ValueError(f"{p}:{lineno}: missing field{'s' if len(missing) > 1 else ''} "
                                 f"{', '.join(repr(m) for m in missing)} (each line needs {', '.join(required)})")
            rows.append((lineno, record))
    return rows


@dataclass(frozen=True)
class Question:
    question: str
    choices: tuple[str, ...]
    answer: int  # index into choices
    subject: str
    where: str = ""  # "file:line", for error messages

    @property
    def letters(self) -> tuple[str, ...]:
        return tuple(LETTERS[: len(self.choices)])


def load_questions(path) -> list[Question]:
    """Multiple-choice questions from a jsonl file, every field checked."""
    out = []
    for lineno, r in read_jsonl(path, QUESTION_FIELDS):
        where = f"{path}:{lineno}"
        if not isinstance(r["question"], str):
            raise ValueError(f"{where}: 'question' must be a string, got {type(r['question']).__name__}")
        if not isinstance(r["subject"], str) or not r["subject"]:
            raise ValueError(f"{where}: 'subject' must be a non-empty string, got {r['subject']!r}")
        choices = r["choices"]
        if not isinstance(choices, list) or not 2 <= len(choices) <= len(LETTERS) \
                or not all(isinstance(c, str) for c in choices):
            raise ValueError(f"{where}: 'choices' must be a list of 2 to {len(LETTERS)} strings, got {choices!r}")
        for field in ("question", "choices", "subject"):
            check_text(where, field, r[field])
        out.append(Question(r["question"], tuple(choices), _answer_index(r["answer"], len(choices), where),
                            r["subject"], where))
    if not out:
        raise ValueError(f"{path}: no questions (the file is empty)")
    return out


def _answer_index(answer, n: int, where: str) -> int:
    letters = LETTERS[:n]
    if isinstance(answer, bool) or not isinstance(answer, (int, str)):
        raise ValueError(f"{where}: 'answer' must be a choice index (0..{n - 1}) or a letter ({letters[0]}..{letters[-1]}), "
                         f"got {answer!r}")
    if isinstance(answer, str):
        if len(answer) == 1 and answer.upper() in letters:
            return letters.index(answer.upper())
        raise ValueError(f"{where}: answer {answer!r} is not one of the letters {letters[0]}..{letters[-1]} "
                         f"of its {n} choices")
    if not 0 <= answer < n:
        raise ValueError(f"{where}: answer index {answer} is out of range for {n} choices (expected 0..{n - 1})")
    return answer


def load_documents(paths, text_field: str = "text") -> list[tuple[str, str]]:
    """-> [(name, text)]: a .jsonl file gives one document a line (field `text_field`), any other file one."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    if not paths:
        raise ValueError("no data files given; expected .txt or .jsonl files")
    docs = []
    for path in paths:
        p = Path(path)
        if p.suffix == ".jsonl":
            records = read_jsonl(p, (text_field,))
            if not records:
                raise ValueError(f"{p}: no documents (every line is blank); expected one JSON object a line")
            for lineno, r in records:
                if not isinstance(r[text_field], str):
                    raise ValueError(f"{p}:{lineno}: field {text_field!r} must be a string, "
                                     f"got {type(r[text_field]).__name__}")
                check_text(f"{p}:{lineno}", text_field, r[text_field])
                docs.append((f"{p}:{lineno}", r[text_field]))
        else:
            if not p.is_file():
                raise FileNotFoundError(f"no such file: {p}")
            try:
                docs.append((str(p), p.read_text(encoding="utf-8")))
            except UnicodeDecodeError as err:
                raise ValueError(f"{p}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    return docs


# --- models ------------------------------------------------------------------------------------------
def load_model(spec, tokenizer=None, device="auto", dtype="auto", seed: int = 0):
    """-> (model in eval mode, tokenizer, notes). spec: a checkpoint folder, a preset name (random
    weights, seeded), or an LM already built. tokenizer: None (the folder's tokenizer.json, else
    bytes), "byte", a tokenizer.json path, or a Tokenizer."""
    import torch

    import mambakit
    from mambakit.convert.io import cast_keeping_fp32
    from mambakit.placement import resolve_device, resolve_dtype
    from mambakit.tokenizers import end_of_text_ids, load_tokenizer

    notes = []
    if device == "auto" or device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = resolve_device(device)
    if dtype in ("auto", None):
        dtype = "bfloat16" if device.type == "cuda" else "float32"
    dtype = resolve_dtype(dtype)
    if isinstance(spec, mambakit.LM):
        tok = load_tokenizer(tokenizer)
        return spec.eval(), tok, notes
    path = Path(str(spec))
    if path.exists():
        if tokenizer is None:
            tokenizer = path if (path / "tokenizer.json").is_file() else "byte"
            if tokenizer == "byte":
                notes.append(f"{path} has no tokenizer.json; using the byte tokenizer (pass a tokenizer to choose one)")
        tok = load_tokenizer(tokenizer)
        model = mambakit.load(path, dtype=dtype, device=device)
        eos = end_of_text_ids(tok, model.config) if getattr(tok, "eos_token_id", 0) is None else []
        eos = next((i for i in eos if i < tok.vocab_size), None)
        if eos is not None:
            # tokenizer files that name no end-of-text token: the checkpoint's config.json may (else
            # generation would run to max_tokens)
            tok.eos_token_id = eos
            notes.append(f"end of text: id {eos}, from {path}'s config (its tokenizer files name none)")
    elif str(spec) in mambakit.PRESETS:
        tok = load_tokenizer(tokenizer)
        overrides = {}
        if mambakit.PRESETS[str(spec)].vocab_size != tok.vocab_size:
            overrides["vocab_size"] = tok.vocab_size  # random weights: sized to the tokenizer
        torch.manual_seed(seed)
        model = mambakit.LM(mambakit.ModelConfig.from_preset(str(spec), **overrides))
        # cast before the move (the device holds the weights once, in their dtype); A_log and D stay
        # fp32 as in a loaded checkpoint
        model = cast_keeping_fp32(model, dtype).to(device=device)
        extra = f", vocabulary {model.config.vocab_size} to match it" if overrides else ""
        notes.append(f"preset {spec!r}: RANDOM weights (seed {seed}, {model.num_parameters() / 1e6:.1f}M "
                     f"parameters) and the {type(tok).__name__}{extra}; its outputs are those of an untrained model")
    else:
        near = [p for p in mambakit.PRESETS if str(spec).split("-")[0] in p][:5]
        raise ValueError(f"model {str(spec)!r} is neither an existing folder nor a preset name"
                         + (f" (presets like it: {', '.join(near)})" if near
                            else f" (presets: {', '.join(mambakit.PRESETS)})"))
    if tok.vocab_size > model.config.vocab_size:
        notes.append(f"the tokenizer has {tok.vocab_size} ids but the model only {model.config.vocab_size}; "
                     "prompts using the extra ids will be refused")
    return model.eval(), tok, notes
