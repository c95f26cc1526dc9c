"""The scorer: log-likelihoods equal those summed from one full forward, whatever the batching.

Letters: l length, v vocabulary.
"""
import pytest
import torch

from conftest import tiny_model
from eval_helpers import forward_logprobs, forward_score, limited_model
from mambakit.eval.loglik import encode_pair, score_requests, score_texts
from mambakit.tokenizers import ByteTokenizer


def _requests(seed: int, n_contexts: int = 5, per_context: int = 3):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_contexts):
        ctx = torch.randint(0, 256, (int(torch.randint(1, 40, (1,), generator=g)),), generator=g).tolist()
        for _ in range(per_context):  # continuations of different lengths share the context
            n = int(torch.randint(1, 14, (1,), generator=g))
            out.append((ctx, torch.randint(0, 256, (n,), generator=g).tolist()))
    return out


@pytest.mark.parametrize("kind", ["mamba2", "mamba", "hybrid"])
def test_scores_equal_full_forward(kind):
    model = tiny_model(kind)
    requests = _requests(1)
    # batch 4 < 3 continuations x 5 contexts: contexts split across batches; chunk 3: several pieces
    got = score_requests(model, requests, batch_size=4, chunk=3)
    for (ctx, cont), (ll, _) in zip(requests, got):
        assert ll == pytest.approx(forward_score(model, ctx, cont), abs=2e-4)
    assert all(ll < 0 for ll, _ in got)


def test_greedy_flag():
    model = tiny_model("mamba2")
    ctx = list(b"The prompt")
    ids = ctx[:]
    with torch.no_grad():
        for _ in range(5):  # the greedy continuation, one token at a time
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    greedy_cont = ids[len(ctx):]
    other = greedy_cont[:2] + [(greedy_cont[2] + 1) % 256] + greedy_cont[3:]
    (ll_g, is_g), (ll_o, is_o) = score_requests(model, [(ctx, greedy_cont), (ctx, other)])
    assert is_g and not is_o
    assert ll_g > ll_o


def test_empty_continuation_and_order():
    model = tiny_model("mamba2")
    reqs = [([1, 2, 3], [4, 5]), ([7], []), ([1, 2, 3], [9])]
    got = score_requests(model, reqs, batch_size=1)
    assert got[1] == (0.0, True)
    assert got[0][0] == pytest.approx(forward_score(model, [1, 2, 3], [4, 5]), abs=1e-4)
    assert got[2][0] == pytest.approx(forward_score(model, [1, 2, 3], [9]), abs=1e-4)


def test_bad_requests():
    model = tiny_model("mamba2")
    with pytest.raises(ValueError, match="request 1: the context is empty"):
        score_requests(model, [([1], [2]), ([], [3])])
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 256\)"):
        score_requests(model, [([1, 300], [2])])
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        score_requests(model, [([1], [2])], batch_size=0)
    for bad in (0, -3):  # -3 crashed inside prefill, 0 ran as "the whole context"
        with pytest.raises(ValueError, match=f"prefill_chunk must be a positive int .*got {bad}"):
            score_requests(model, [([1], [2])], prefill_chunk=bad)
    limited = limited_model(32)
    score_requests(limited, [(list(range(20)), list(range(13)))])  # 32 positions: fits
    with pytest.raises(ValueError, match="request 0 .* needs 33 tokens, more than this model's context limit of 32"):
        score_requests(limited, [(list(range(20)), list(range(14)))])


def test_encode_pair_moves_trailing_space():
    tok = ByteTokenizer()
    assert encode_pair(tok, "Answer: ", "B") == (list(b"Answer:"), list(b" B"))
    model = tiny_model("mamba2")
    (ll, _), = score_texts(model, tok, [("Answer:", " B")])
    assert ll == pytest.approx(float(forward_logprobs(model, list(b"Answer: B"))[-2:].sum()), abs=1e-4)
