"""The lm-evaluation-harness adapter, end to end and offline: local YAML tasks over local jsonl
files, run by lm_eval.simple_evaluate with model="mambakit"; its numbers equal mambakit's own.

Letters: l length, v vocabulary.
"""
import logging
import os

import pytest
import torch

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # nothing may be downloaded
os.environ.setdefault("HF_HUB_OFFLINE", "1")
lm_eval = pytest.importorskip("lm_eval")

from conftest import tiny_model  # noqa: E402
from eval_helpers import bpe_tokenizer, forward_logprobs, forward_score, limited_model  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window  # noqa: E402

import mambakit  # noqa: E402
from mambakit.eval.lm_eval_adapter import MambakitLM  # noqa: E402
from mambakit.eval.loglik import score_texts  # noqa: E402
from mambakit.tokenizers import ByteTokenizer  # noqa: E402

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "eval")

TASKS = {
    "mk_choice": """task: mk_choice
dataset_path: json
dataset_kwargs: {{data_files: {{test: {data}/mmlu_tiny_test.jsonl}}, cache_dir: {cache}}}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question.strip()}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list: [{{metric: acc}}, {{metric: acc_norm}}]
""",
    "mk_rolling": """task: mk_rolling
dataset_path: json
dataset_kwargs: {{data_files: {{test: {data}/docs.jsonl}}, cache_dir: {cache}}}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list: [{{metric: bits_per_byte}}]
""",
    "mk_gen": """task: mk_gen
dataset_path: json
dataset_kwargs: {{data_files: {{test: {data}/qa_tiny.jsonl}}, cache_dir: {cache}}}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs: {{until: ["o", "\\n"], max_gen_toks: 6, do_sample: false}}
metric_list: [{{metric: exact_match}}]
""",
}


def test_local_tasks_end_to_end(tmp_path):
    folder = tmp_path / "model"
    model = tiny_model("mamba2")
    model.save(folder)
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    for name, text in TASKS.items():
        (tasks / f"{name}.yaml").write_text(text.format(data=os.path.abspath(EXAMPLES), cache=tmp_path / "cache"))
    out = lm_eval.simple_evaluate(model="mambakit", model_args=f"path={folder},device=cpu", tasks=list(TASKS),
                                  task_manager=TaskManager(include_path=str(tasks), include_defaults=False),
                                  log_samples=True, batch_size=3, verbosity="ERROR")
    assert set(out["results"]) == set(TASKS)
    loaded = mambakit.load(folder).eval()
    tok = ByteTokenizer()
    # loglikelihood: the same numbers as mambakit's scorer and as one plain forward
    choice = out["samples"]["mk_choice"]
    assert len(choice) == 6
    pairs = [a for s in choice for a in s["arguments"]]
    ours = score_texts(loaded, tok, pairs)
    harness = [r[0] for s in choice for r in s["resps"]]
    assert [h[0] for h in harness] == pytest.approx([o[0] for o in ours], abs=1e-5)
    assert [bool(h[1]) for h in harness] == [o[1] for o in ours]
    ctx, cont = pairs[0]
    assert harness[0][0] == pytest.approx(forward_score(loaded, list(ctx.encode()), list(cont.encode())), abs=2e-4)
    # loglikelihood_rolling: the whole document after the prefix token (byte 0 for the byte tokenizer)
    for s in out["samples"]["mk_rolling"]:
        text = s["arguments"][0][0]
        assert s["resps"][0][0] == pytest.approx(float(forward_logprobs(loaded, [0] + list(text.encode())).sum()),
                                                 abs=2e-4)
    # generate_until: mambakit.generate's greedy text, cut before the first stop string
    for s in out["samples"]["mk_gen"]:
        prompt = s["arguments"][0][0]
        ids = torch.tensor([list(prompt.encode())])
        text = tok.decode(mambakit.generate(loaded, ids, 6)[0, ids.shape[1]:])
        assert s["resps"][0][0] == text.split("o")[0].split("\n")[0]


def test_batched_padding_hybrid_and_limited_rolling():
    hybrid = tiny_model("hybrid")
    lm = MambakitLM(model=hybrid, tokenizer="byte", batch_size=4)
    reqs = [("Question: which?\nAnswer:", " yes"), ("Q:", " no, not at all"), ("Question: which?\nAnswer:", " no"),
            ("", "starts empty")]
    got = lm.loglikelihood([Instance("loglikelihood", {}, r, i) for i, r in enumerate(reqs)], disable_tqdm=True)
    for (ctx, cont), (ll, _) in zip(reqs, got):
        c = list(ctx.encode()) or [0]  # an empty context becomes the prefix token
        assert ll == pytest.approx(forward_score(hybrid, c, list(cont.encode())), abs=2e-4)
    gens = lm.generate_until([Instance("generate_until", {}, (p, {"until": ["\n"], "max_gen_toks": 5}), i)
                              for i, p in enumerate(["a", "a much longer prompt"])], disable_tqdm=True)
    for p, g in zip(["a", "a much longer prompt"], gens):  # batched with left padding == alone
        ids = torch.tensor([list(p.encode())])
        assert g == ByteTokenizer().decode(mambakit.generate(hybrid, ids, 5)[0, ids.shape[1]:]).split("\n")[0]
    limited = limited_model(16)
    lm = MambakitLM(model=limited, tokenizer="byte")
    text = "a document longer than the sixteen-token limit"
    (ll,) = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)], disable_tqdm=True)
    windows = [make_disjoint_window(w) for w in get_rolling_token_windows(list(text.encode()), 0, 16, 1)]
    assert len(windows) > 2
    assert ll == pytest.approx(sum(forward_score(limited, c, t) for c, t in windows), abs=5e-4)


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown mambakit model_args"):
        MambakitLM(path="mamba2-tiny", pretrained="x")
    with pytest.raises(ValueError, match="give the model"):
        MambakitLM()
    lm = MambakitLM(path="mamba2-tiny", device="cpu")
    with pytest.raises(ValueError, match="unsupported generation_kwargs"):
        lm.generate_until([Instance("generate_until", {}, ("x", {"num_beams": 4}), 0)], disable_tqdm=True)


def _warnings(caplog, text: str) -> int:
    return sum(text in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def test_loglikelihood_longer_than_the_limit_is_cut_from_the_left(caplog):
    """As lm-eval's HF model: (context + continuation)[-(max_length + 1):], one warning; the run went on."""
    limited = limited_model(32)
    lm = MambakitLM(model=limited, tokenizer="byte")
    ctx = "a context of more than thirty-two bytes, cut from the left"
    reqs = [(ctx, " yes"), (ctx, " no, not at all"), ("short", " fits whole")]
    with caplog.at_level(logging.WARNING):
        got = lm.loglikelihood([Instance("loglikelihood", {}, r, i) for i, r in enumerate(reqs)], disable_tqdm=True)
    for (c, t), (ll, _) in zip(reqs, got):
        kept = list((c + t).encode())[-33:]
        n = len(t.encode())
        assert ll == pytest.approx(forward_score(limited, kept[:-n], kept[-n:]), abs=2e-4)
    assert _warnings(caplog, "cut from the left") == 1  # two requests cut, one warning
    with pytest.raises(ValueError, match="continuation of 40 tokens is longer than this model's context limit of 32"):
        lm.loglikelihood([Instance("loglikelihood", {}, ("x", "y" * 40), 0)], disable_tqdm=True)
    lm = MambakitLM(model=tiny_model("mamba2"), tokenizer="byte")  # no limit: nothing is cut
    (ll, _), = lm.loglikelihood([Instance("loglikelihood", {}, (ctx * 3, " yes"), 0)], disable_tqdm=True)
    assert ll == pytest.approx(forward_score(lm.model, list((ctx * 3).encode()), list(b" yes")), abs=2e-4)


def test_generation_longer_than_the_limit_is_cut(monkeypatch, caplog):
    """The prompt keeps its last max_length - max_gen_toks tokens and max_gen_toks (the harness's
    default 256 here) is clipped to max_length - 1, as lm-eval's HF model does; the run went on."""
    limited = limited_model(32)
    lm = MambakitLM(model=limited, tokenizer="byte")
    calls, real = [], mambakit.stream

    def spy(model, ids, max_new, attention_mask=None, **kw):
        calls.append(([row[m.bool()].tolist() for row, m in zip(ids, attention_mask)], max_new))
        return real(model, ids, max_new, attention_mask=attention_mask, **kw)
    monkeypatch.setattr(mambakit, "stream", spy)
    prompt = "a prompt of more than thirty-two bytes, cut from the left"
    ids = list(prompt.encode())
    with caplog.at_level(logging.WARNING):
        gens = lm.generate_until([Instance("generate_until", {}, (prompt, {"until": ["\n"]}), 0),
                                  Instance("generate_until", {}, (prompt, {"until": ["\n"], "max_gen_toks": 8}), 1),
                                  Instance("generate_until", {}, ("short", {"until": ["\n"], "max_gen_toks": 8}), 2)],
                                 disable_tqdm=True)
    assert calls == [([ids[-1:]], 31), ([ids[-24:], list(b"short")], 8)]
    for g, p in zip(gens[1:], [ids[-24:], list(b"short")]):
        out = mambakit.generate(limited, torch.tensor([p]), 8)[0, len(p):]
        assert g == ByteTokenizer().decode(out).split("\n")[0]
    assert _warnings(caplog, "generating at most 31 tokens") == 1
    assert _warnings(caplog, "keep their last max_length - max_gen_toks tokens") == 1


def test_text_held_back_at_eos_is_kept(tmp_path, monkeypatch):
    """A row ending by EOS in the middle of a character: the stream decoder's held-back bytes come out
    (as U+FFFD, as decoding the generated tokens does) instead of being dropped."""
    tok = bpe_tokenizer(tmp_path, "bytelevel")
    lm = MambakitLM(model=tiny_model("mamba2", vocab_size=tok.vocab_size), tokenizer=str(tmp_path))
    word = tok.encode("ok 🐍", add_special_tokens=False)[:-1]  # 🐍 is several byte tokens: cut inside it
    assert tok.decode(word).endswith("\ufffd") and lm.tok.eos_token_id is not None
    eos, bang = lm.tok.eos_token_id, tok.encode("!", add_special_tokens=False)[0]
    rows = [word + [eos] * 3, word + [bang] * 3]  # the tokens after an EOS are ignored

    class Stream:  # what the model "generates": row 0 ends by EOS, row 1 runs to max_gen_toks
        def __init__(self, *args, **kwargs):
            self.steps = iter(torch.tensor(list(step)) for step in zip(*rows))

        def __iter__(self):
            return self.steps

        def close(self):
            pass
    monkeypatch.setattr(mambakit, "stream", Stream)
    gens = lm.generate_until([Instance("generate_until", {}, (p, {"until": ["\n"], "max_gen_toks": len(rows[1])}), i)
                              for i, p in enumerate(["a longer prompt", "x"])], disable_tqdm=True)
    assert gens == [tok.decode(word), tok.decode(rows[1])] and gens[0].endswith("\ufffd")
