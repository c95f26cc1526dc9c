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
