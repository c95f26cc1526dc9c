"""Perplexity: windows in Hugging Face's stride convention equal that convention computed directly;
the whole-document pass equals one forward; bits per byte and the bad-input errors.

Letters: l length, v vocabulary.
"""
import math
import re

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_model
from eval_helpers import bpe_tokenizer, forward_logprobs, limited_model
from mambakit.eval.perplexity import hf_windows, perplexity
from mambakit.tokenizers import ByteTokenizer, Tokenizer

TEXT = "Mamba keeps a state; attention keeps a cache. Both predict the next byte."


@torch.no_grad()
def hf_guide_nll(model, ids: list[int], max_length: int, stride: int) -> tuple[float, int]:
    """The loop of HF's "Perplexity of fixed-length models" guide, verbatim in spirit: labels -100
    outside the last trg_len tokens, the loss shifted inside the model (here: by hand)."""
    seq = torch.tensor([ids])
    nll_sum, n_tokens, prev_end = 0.0, 0, 0
    for begin in range(0, seq.size(1), stride):
        end = min(begin + max_length, seq.size(1))
        trg_len = end - prev_end
        input_ids = seq[:, begin:end]
        target_ids = input_ids.clone()
        target_ids[:, :-trg_len] = -100
        logits = model(input_ids)
        labels = target_ids[:, 1:]
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).double(), labels.reshape(-1),
                               ignore_index=-100, reduction="sum")
        nll_sum += float(loss)
        n_tokens += int((labels != -100).sum())
        prev_end = end
        if end == seq.size(1):
            break
    return nll_sum, n_tokens


def test_hf_windows_golden():
    assert hf_windows(10, 4, 2) == [(0, 4, 3), (2, 6, 2), (4, 8, 2), (6, 10, 2)]
    assert hf_windows(10, 4, 4) == [(0, 4, 3), (4, 8, 3), (8, 10, 1)]  # stride == context: window starts unscored
    assert hf_windows(3, 8, 4) == [(0, 3, 2)]
    for n, c, s in [(37, 8, 3), (37, 8, 7), (64, 16, 1)]:
        covered = sorted(p for b, e, k in hf_windows(n, c, s) for p in range(e - k, e))
        assert covered == list(range(1, n))  # stride < context: every token but the first, once


@pytest.mark.parametrize("kind", ["mamba2", "hybrid"])
@pytest.mark.parametrize("context,stride", [(16, 5), (16, 16), (9, 1)])
def test_strided_equals_hf_guide(kind, context, stride):
    model, tok = tiny_model(kind), ByteTokenizer()
    result = perplexity(model, tok, [("doc", TEXT)], context=context, stride=stride, batch_size=3)
    nll, n = hf_guide_nll(model, list(TEXT.encode()), context, stride)
    assert result.tokens == n
    assert result.nll == pytest.approx(nll, rel=1e-5, abs=1e-4)
    assert result.summary()["token_perplexity"] == pytest.approx(math.exp(nll / n), rel=1e-5)


def test_whole_document_equals_one_forward_and_bits_per_byte():
    model, tok = tiny_model("mamba2"), ByteTokenizer()
    docs = [("a", TEXT), ("b", "héllo wörld, ünïcode")]
    result = perplexity(model, tok, docs, chunk=7, batch_size=1)  # no context: the recurrent cache, 7 at a time
    direct = sum(-float(forward_logprobs(model, list(t.encode())).sum()) for _, t in docs)
    assert result.nll == pytest.approx(direct, rel=1e-5)
    nbytes = sum(len(t.encode()) for _, t in docs)
    assert result.tokens == result.bytes == nbytes - 2  # the byte tokenizer has no prefix: first bytes unscored
    s = result.summary()
    assert s["bits_per_byte"] == pytest.approx(math.log2(s["token_perplexity"]))
    with_prefix = perplexity(model, tok, docs, prefix=10)
    assert with_prefix.tokens == with_prefix.bytes == nbytes
    direct = sum(-float(forward_logprobs(model, [10] + list(t.encode())).sum()) for _, t in docs)
    assert with_prefix.nll == pytest.approx(direct, rel=1e-5)


def test_skips_and_limits():
    model, tok = tiny_model("mamba2"), ByteTokenizer()
    result = perplexity(model, tok, [("one byte", "x"), ("empty", ""), ("ok", "xy")])
    assert result.skipped == ["one byte", "empty"] and result.tokens == 1
    with pytest.raises(ValueError, match=r"prefix token 999 is outside this model's vocabulary \[0, 256\)"):
        perplexity(model, tok, [("d", TEXT)], prefix=999)
    with pytest.raises(ValueError, match="stride needs a context"):
        perplexity(model, tok, [("d", TEXT)], stride=4)
    with pytest.raises(ValueError, match=r"stride must be an int in \[1, context=8\]"):
        perplexity(model, tok, [("d", TEXT)], context=8, stride=9)
    limited = limited_model(32)
    r = perplexity(limited, tok, [("d", TEXT)])  # windows of the model's limit by default
    assert r.tokens == len(TEXT) - 1 and (r.context, r.stride) == (32, 16)  # what was used, for --out
    r = perplexity(limited, tok, [("d", TEXT)], stride=8)  # a stride alone: windows of the limit
    assert (r.context, r.stride) == (32, 8) and r.tokens == len(TEXT) - 1
    with pytest.raises(ValueError, match="context=64 needs 64 tokens, more than this model's context limit of 32"):
        perplexity(limited, tok, [("d", TEXT)], context=64)


def test_documents_that_are_empty_or_not_text_are_named(tmp_path):
    from mambakit.eval.data import load_documents
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(ValueError, match="empty.jsonl: no documents"):
        load_documents([tmp_path / "empty.jsonl"])
    (tmp_path / "bin.txt").write_bytes(b"ok\xff\xfe")
    with pytest.raises(ValueError, match="bin.txt: not UTF-8 text"):
        load_documents([tmp_path / "bin.txt"])
    (tmp_path / "bin.jsonl").write_bytes(b'{"text": "a"}\n\xff\n')
    with pytest.raises(ValueError, match="bin.jsonl: not UTF-8 text after line"):
        load_documents([tmp_path / "bin.jsonl"])
    # a JSON escape of half a UTF-16 pair (a cut emoji): valid JSON, but no text UTF-8 can encode;
    # named with its line when the files are read, before the model loads (it was a bare
    # "'utf-8' codec can't encode character" from the scorer)
    (tmp_path / "cut.jsonl").write_text('{"text": "fine"}\n{"text": "half an emoji \\ud83d here"}\n')
    with pytest.raises(ValueError, match=r"cut\.jsonl:2: field 'text' holds '\\ud83d'.*surrogate"):
        load_documents([tmp_path / "cut.jsonl"])
    from mambakit.eval.data import load_questions
    (tmp_path / "q.jsonl").write_text('{"question": "q", "choices": ["a", "b\\udc00"], "answer": 0, "subject": "s"}\n')
    with pytest.raises(ValueError, match=r"q\.jsonl:1: field 'choices' holds '\\udc00'"):
        load_questions(tmp_path / "q.jsonl")


# ß, ŵ and 🐍 are not in the tokenizers' training text: byte-level BPE splits them into byte tokens
# (so does the trained 😀 at times), the Metaspace tokenizer falls back to <0xNN> tokens.
MULTIBYTE = "Straße 😀😀 日本語 the end, héllo ŵ 🐍 テキスト"


def _gpt2_byte_decoder() -> dict[str, int]:
    """GPT-2's bytes_to_unicode, inverted: the character of a byte-level token -> the byte it stands for."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:  # the bytes left out (control characters, space, ...) go to 256, 257, ...
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def _bytes_held(tok, kind: str, text: str, ids: list[int]) -> list[bytes]:
    """The bytes each token stands for, read off its vocabulary string (independently of mambakit)."""
    pieces = [tok.tokenizer.id_to_token(i) for i in ids]
    if kind == "bytelevel":
        table = _gpt2_byte_decoder()
        held = [bytes(table[c] for c in p) for p in pieces]
    else:
        held = [bytes([int(p[3:5], 16)]) if re.fullmatch(r"<0x[0-9A-F]{2}>", p) else p.replace("▁", " ").encode()
                for p in pieces]
        if not text.startswith(" ") and held[0].startswith(b" "):
            held[0] = held[0][1:]  # the "▁" Metaspace puts before the first word stands for no text
    assert b"".join(held) == text.encode()  # the oracle accounts for every byte, once
    return held


@pytest.mark.parametrize("kind", ["bytelevel", "metaspace"])
def test_bits_per_byte_counts_the_bytes_of_the_scored_tokens(tmp_path, kind):
    tok = bpe_tokenizer(tmp_path, kind)
    model = tiny_model("mamba2", vocab_size=tok.vocab_size)
    ids = tok.encode(MULTIBYTE, add_special_tokens=False)
    held = _bytes_held(tok, kind, MULTIBYTE, ids)
    # what the old count used, a token decoded alone, is wrong for some of these tokens: U+FFFD for
    # part of a character, no space for "▁the"
    assert any(len(tok.decode([i]).encode()) != len(h) for i, h in zip(ids, held))
    for context, stride, prefix in [(None, None, "none"), (2, 2, "none"), (5, 5, "auto"), (6, 4, "none"),
                                    (6, 3, "auto"), (None, None, "auto")]:
        r = perplexity(model, tok, [("d", MULTIBYTE)], context=context, stride=stride, prefix=prefix)
        first = 1 if prefix == "auto" else 0  # seq position of the document's first token
        n = len(ids) + first
        scored = range(1, n) if context is None else [p for _, e, k in hf_windows(n, context, stride)
                                                       for p in range(e - k, e)]
        expected = sum(len(held[p - first]) for p in scored)
        assert r.tokens == len(scored) and r.bytes == expected, (context, stride, prefix)
        assert r.summary()["bits_per_byte"] == pytest.approx(r.nll / math.log(2) / expected)
        if prefix == "auto" and (context is None or stride < context):
            assert r.bytes == len(MULTIBYTE.encode())  # every token scored: every byte, as lm-eval counts


class CharTokenizer(Tokenizer):
    """Latin-1 characters as tokens: a tokenizer of neither kind mambakit knows."""
    vocab_size = 256

    def encode(self, text, add_special_tokens=True):
        return [ord(c) for c in text]

    def decode(self, ids, skip_special_tokens=False):
        return "".join(chr(i) for i in ids)


def test_bits_per_byte_of_another_tokenizer():
    text = "héllo wörld, façade ünïcode"  # é, ö, ç, ü, ï: one token, two UTF-8 bytes
    r = perplexity(tiny_model("mamba2"), CharTokenizer(), [("d", text)], context=2, stride=2)
    scored = range(1, len(text), 2)  # windows of 2 moving by 2 score every second token
    assert r.tokens == len(scored) and r.bytes == sum(len(text[p].encode()) for p in scored)


def test_the_perplexity_module_is_reachable_by_its_path():
    # the package re-exported the function as `perplexity`, which hid the module of that name:
    # `import mambakit.eval.perplexity as m` gave the function (docs/evaluation.md names
    # mambakit.eval.perplexity.token_bytes)
    import types

    import mambakit.eval
    import mambakit.eval.perplexity as module
    assert isinstance(module, types.ModuleType) and mambakit.eval.perplexity is module
    assert callable(mambakit.eval.perplexity.token_bytes)
    assert mambakit.eval.evaluate_perplexity is perplexity
    assert all(hasattr(mambakit.eval, name) for name in mambakit.eval.__all__)
