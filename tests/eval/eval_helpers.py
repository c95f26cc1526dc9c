"""Shared by the eval tests: tiny models and the log-likelihood from one plain forward (the oracle).

Letters: l length, v vocabulary.
"""
import torch

import mambakit
from conftest import tiny_model


def limited_model(limit: int = 32) -> mambakit.LM:
    """A tiny Transformer with a hard context limit of `limit` tokens."""
    return tiny_model("transformer", attention={"n_heads": 4, "n_kv_heads": 2, "head_dim": 16,
                                                "rotary_fraction": 0.5, "max_seqlen": limit})


@torch.no_grad()
def forward_logprobs(model, ids: list[int]) -> torch.Tensor:
    """log p(ids[t] | ids[:t]) for t = 1 .. l-1, from one forward of the whole sequence."""
    logits = model(torch.tensor([ids[:-1]]))[0].double()  # (l - 1, v): the last token predicts nothing
    lp = logits.log_softmax(-1)
    return lp.gather(1, torch.tensor(ids[1:])[:, None]).squeeze(1)  # (l - 1,)


def forward_score(model, ctx: list[int], cont: list[int]) -> float:
    return float(forward_logprobs(model, ctx + cont)[len(ctx) - 1:].sum())


TRAIN_TEXT = "hello there, general mamba; the state keeps it all. héllo wörld, ünïcode 日本語 テキスト 😀 " * 4


def bpe_tokenizer(folder, kind: str = "bytelevel"):
    """A small BPE tokenizer trained here, saved as folder/tokenizer.json and loaded as mambakit's
    HFTokenizer. bytelevel: GPT-2's byte-level BPE, end-of-text token <|endoftext|> (the eos);
    metaspace: SentencePiece-style "▁" words with byte fallback (<0x00>..<0xFF>), eos </s>. Characters
    missing from TRAIN_TEXT come out as several tokens, one or more bytes each."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from mambakit.tokenizers import HFTokenizer
    if kind == "bytelevel":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=330, special_tokens=["<|endoftext|>"],
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    elif kind == "metaspace":
        tok = Tokenizer(models.BPE(byte_fallback=True))
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Metaspace()])
        trainer = trainers.BpeTrainer(vocab_size=340, special_tokens=["</s>"] + [f"<0x{i:02X}>" for i in range(256)])
    else:
        raise ValueError(f"kind must be bytelevel or metaspace, got {kind!r}")
    tok.train_from_iterator([TRAIN_TEXT], trainer)
    tok.save(str(folder / "tokenizer.json"))
    return HFTokenizer.from_file(folder)
