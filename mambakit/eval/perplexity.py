"""Perplexity and bits per byte of text documents, whole or through sliding windows.

No shape letters: token ids are lists here; loglik.py runs the model.

Each document is scored on its own. Its tokens are preceded by a prefix token when there is one
(`prefix="auto"`: the tokenizer's BOS, else its EOS; the byte tokenizer has neither), so every
token is predicted; without one the first token has nothing to be predicted from and is not scored.

context=None: the whole document in one pass through the recurrent cache (exact full-context
likelihood, memory bounded by `chunk`); for models without a context limit (pure SSMs) that is the
default. context=N: windows of at most N tokens moving by `stride`, in the convention of Hugging
Face's "Perplexity of fixed-length models" guide:

    for begin in range(0, L, stride):
        end = min(begin + N, L); trg_len = end - prev_end
        score the last trg_len tokens of seq[begin:end] (never its first: nothing predicts it)
        prev_end = end; stop once end == L

so each token is scored once, with between N - stride and N - 1 tokens of context (all before it
in the first window). With stride == N the first token of every window goes unscored, as in HF.

token perplexity = exp(total NLL / scored tokens); bits per byte = total NLL / ln 2 / UTF-8 bytes
of the scored tokens; byte perplexity = exp(total NLL / bytes). The bytes come from a partition of
the document's UTF-8 bytes among its tokens (token_bytes), so they are exact:
- every token scored (a prefix token, and stride < context or no windows: the defaults for a
  tokenizer with a BOS or EOS): every byte of the document, as lm-eval's bits_per_byte counts;
- some tokens unscored (no prefix: the first token; stride == context: the first token of every
  window): the document's bytes less those of the unscored tokens.
A token's bytes are its span of the text by the tokenizer's offsets (the byte tokenizer: one byte),
not its text decoded alone: that is U+FFFD (3 bytes) for a byte-level BPE token holding part of a
character, and "the" (3 bytes) for the Metaspace token "▁the", which stands for " the" (4).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from .loglik import Request, check_fits, score_requests


def hf_windows(n: int, context: int, stride: int) -> list[tuple[int, int, int]]:
    """Windows over a sequence of n tokens -> [(begin, end, scored)]: the last `scored` tokens of
    seq[begin:end] are scored."""
    if not isinstance(context, int) or context < 2:
        raise ValueError(f"context must be an int >= 2 (tokens per window), got {context!r}")
    if not isinstance(stride, int) or not 1 <= stride <= context:
        raise ValueError(f"stride must be an int in [1, context={context}], got {stride!r}")
    out, prev_end = [], 0
    for begin in range(0, n, stride):
        end = min(begin + context, n)
        scored = min(end - prev_end, end - begin - 1)
        if scored > 0:
            out.append((begin, end, scored))
        prev_end = end
        if end == n:
            break
    return out


@dataclass
class DocScore:
    name: str
    nll: float = 0.0  # nats, summed over the scored tokens
    tokens: int = 0  # tokens scored
    bytes: int = 0  # UTF-8 bytes of the scored tokens


@dataclass
class PerplexityResult:
    documents: list[DocScore] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # documents with no token to score
    context: int | None = None  # the window length used (None: each document whole)
    stride: int | None = None

    @property
    def nll(self) -> float:
        return sum(d.nll for d in self.documents)

    @property
    def tokens(self) -> int:
        return sum(d.tokens for d in self.documents)

    @property
    def bytes(self) -> int:
        return sum(d.bytes for d in self.documents)

    def summary(self, docs=None) -> dict:
        docs = self.documents if docs is None else docs
        nll, tokens, nbytes = sum(d.nll for d in docs), sum(d.tokens for d in docs), sum(d.bytes for d in docs)
        return {"documents": len(docs), "tokens": tokens, "bytes": nbytes, "nll_nats": nll,
                "token_perplexity": math.exp(nll / tokens) if tokens else None,
                "bits_per_byte": nll / math.log(2) / nbytes if nbytes else None,
                "byte_perplexity": math.exp(nll / nbytes) if nbytes else None}


def resolve_prefix(tokenizer, prefix="auto") -> int | None:
    if prefix == "auto":
        return next((t for t in (tokenizer.bos_token_id, tokenizer.eos_token_id) if t is not None), None)
    if prefix in (None, "none"):
        return None
    if isinstance(prefix, bool) or not isinstance(prefix, int) or prefix < 0:
        raise ValueError(f"prefix must be 'auto', 'none' or a token id, got {prefix!r}")
    return prefix


def document_requests(seq: list[int], context: int | None, stride: int | None) -> list[tuple[Request, range]]:
    """The scoring requests of one token sequence and, for each, the positions of seq it scores."""
    if context is None:
        return [((seq[:1], seq[1:]), range(1, len(seq)))] if len(seq) > 1 else []
    out = []
    for begin, end, scored in hf_windows(len(seq), context, stride if stride is not None else context):
        out.append(((seq[begin:end - scored], seq[end - scored:end]), range(end - scored, end)))
    return out


def perplexity(model, tokenizer, documents: list[tuple[str, str]], context: int | None = None,
               stride: int | None = None, prefix="auto", batch_size: int = 8, chunk: int = 2048,
               progress: bool = False) -> PerplexityResult:
    """documents [(name, text)] -> PerplexityResult. context None and a model with a context limit:
    windows of the limit. stride defaults to context // 2 (the HF guide's 1024 / 512)."""
    limit = model.config.max_seqlen
    if context is None and limit is not None:
        context = limit
    if context is None and stride is not None:
        raise ValueError("stride needs a context (the window length); give --context too")
    if context is not None:
        check_fits(model, context, f"a window of context={context}")
        if stride is None:
            stride = max(1, context // 2)
    prefix_id = resolve_prefix(tokenizer, prefix)
    if prefix_id is not None and prefix_id >= model.config.vocab_size:
        raise ValueError(f"prefix token {prefix_id} is outside this model's vocabulary [0, {model.config.vocab_size})")
    result = PerplexityResult(context=context, stride=stride)
    requests, owners = [], []
    for name, text in documents:
        ids, nbytes = token_bytes(tokenizer, text)
        seq = ([prefix_id] if prefix_id is not None else []) + ids
        doc_requests = document_requests(seq, context, stride)
        if not doc_requests:
            result.skipped.append(name)
            continue
        doc = DocScore(name)
        offset = len(seq) - len(ids)  # position p of seq is token p - offset of the document
        for request, positions in doc_requests:  # the positions of different requests never overlap
            requests.append(request)
            owners.append(doc)
            doc.tokens += len(positions)
            doc.bytes += sum(nbytes[positions.start - offset:positions.stop - offset])
        result.documents.append(doc)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(requests), desc="perplexity", unit="window", dynamic_ncols=True)
    scores = score_requests(model, requests, batch_size=batch_size, chunk=chunk,
                            on_done=bar.update if bar is not None else None)
    if bar is not None:
        bar.close()
    for doc, (ll, _) in zip(owners, scores):
        doc.nll -= ll
    return result


def token_bytes(tokenizer, text: str) -> tuple[list[int], list[int]]:
    """text -> (its token ids, as tokenizer.encode(text, add_special_tokens=False) gives them; the UTF-8
    bytes of the text each token stands for). The byte counts partition the text: they sum to
    len(text.encode()) exactly.

    Byte tokenizer: one byte a token. Hugging Face tokenizer: each token's span of the text by its
    offsets; characters no token covers (white space a pre-tokenizer drops) count with the token
    after them, and a character split over several tokens (byte-level BPE, byte fallback) is split
    by the bytes each token holds. Any other tokenizer: the text each token adds when the tokens are
    decoded in sequence (whole characters; a split character counts with the token completing it)."""
    from ..tokenizers import ByteTokenizer, HFTokenizer
    total = len(text.encode("utf-8"))
    if isinstance(tokenizer, HFTokenizer):
        enc = tokenizer.tokenizer.encode(text, add_special_tokens=False)
        return list(enc.ids), _offset_bytes(text, enc.offsets, enc.tokens, total)
    ids = list(tokenizer.encode(text, add_special_tokens=False))
    if isinstance(tokenizer, ByteTokenizer):
        return ids, [1] * len(ids)
    decoder = tokenizer.stream_decoder()
    counts = [len(decoder.push(t).encode("utf-8")) for t in ids]
    if counts:
        counts[-1] += len(decoder.flush().encode("utf-8"))
        # a decode that does not give the text back (a normalizer): the last tokens take the difference
        extra = total - sum(counts)
        for k in range(len(counts) - 1, -1, -1):
            take = max(extra, -counts[k])
            counts[k] += take
            extra -= take
            if extra == 0:
                break
    return ids, counts


_BYTE_FALLBACK = re.compile(r"<0x[0-9A-Fa-f]{2}>")


def _offset_bytes(text: str, offsets, tokens: list[str], total: int) -> list[int]:
    """Bytes per token from (start, end) character offsets into text (see token_bytes)."""
    if not tokens:
        return []
    from tokenizers.pre_tokenizers import ByteLevel
    byte_level = set(ByteLevel.alphabet())  # each of these characters in a byte-level token is one byte
    # character offset -> byte offset, for the offsets named only (a table of every character of a
    # book-long document would take tens of bytes a character)
    at, nbytes, prev = {}, 0, 0
    for i in sorted({i for span in offsets for i in span}):
        nbytes += len(text[prev:i].encode("utf-8"))
        at[i], prev = nbytes, i
    spans = [(at[a], at[b]) for a, b in offsets]
    counts, pos = [], 0  # pos: the bytes given to the tokens so far
    for k, (start, end) in enumerate(spans):
        start = max(pos, start)
        end = max(start, end)
        if k + 1 < len(spans) and spans[k + 1][0] < end:
            # The next token shares this token's last character: the offsets name only whole
            # characters, so the token's own bytes say where within the character it stops.
            piece = tokens[k]
            if _BYTE_FALLBACK.fullmatch(piece):
                end = min(end, start + 1)
            elif all(c in byte_level for c in piece):
                end = min(end, start + len(piece))
            else:  # e.g. Metaspace's "▁" put before the first word: the character goes to the next token
                end = max(start, spans[k + 1][0])
        counts.append(end - pos)
        pos = end
    counts[-1] += total - pos  # characters after the last token's span
    return counts
