"""LM.activation_checkpointing: the same loss and gradients as a plain backward, far fewer bytes
kept for the backward, and nothing changed where autograd records nothing or a cache is used.

Letters: b batch, l length.
"""
import pytest
import torch

from conftest import tiny_model


def _loss_and_grads(model, ids, seq_idx=None):
    model.zero_grad(set_to_none=True)
    logits = model(ids, seq_idx=seq_idx)
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _saved_bytes(model, ids) -> int:
    """Bytes of the tensors autograd keeps for the backward of one forward (each storage once)."""
    seen = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(ids).sum()
    return sum(seen.values())


@pytest.mark.parametrize("kind", ["mamba", "mamba2", "hybrid-tiny"])
def test_gradients_equal_the_plain_backward(kind):
    torch.manual_seed(0)
    model = tiny_model(kind.removesuffix("-tiny")).double().train()
    b, l = 2, 37  # a length no chunk size divides
    ids = torch.randint(0, model.config.vocab_size, (b, l))
    seq_idx = torch.tensor([[0] * 20 + [1] * 17, [0] * l])  # packed documents go through the recompute too
    plain_loss, plain = _loss_and_grads(model, ids, seq_idx)
    model.activation_checkpointing = True
    loss, grads = _loss_and_grads(model, ids, seq_idx)
    assert grads.keys() == plain.keys() and len(grads) > 0
    torch.testing.assert_close(loss, plain_loss, rtol=1e-12, atol=0)
    for name in plain:
        torch.testing.assert_close(grads[name], plain[name], rtol=1e-10, atol=1e-12, msg=name)


def test_far_fewer_bytes_are_kept_for_the_backward():
    torch.manual_seed(0)
    model = tiny_model("mamba2", n_layer=6).train()
    ids = torch.randint(0, model.config.vocab_size, (2, 64))
    plain = _saved_bytes(model, ids)
    model.activation_checkpointing = True
    kept = _saved_bytes(model, ids)
    # per block only its (b, l, d) input instead of every activation inside it
    assert kept < plain / 4, (kept, plain)


def test_no_effect_without_autograd_or_with_a_cache():
    torch.manual_seed(0)
    model = tiny_model("mamba2")
    ids = torch.randint(0, model.config.vocab_size, (1, 12))
    with torch.no_grad():
        want = model(ids)
    want_cached = model(ids, cache=model.allocate_cache(1)).detach()  # autograd on (CPU inference kernels off)
    model.activation_checkpointing = True
    with torch.no_grad():
        assert torch.equal(model(ids), want)
    cache = model.allocate_cache(1)
    got = model(ids, cache=cache)  # autograd on, but a cache is read and advanced: the plain path
    assert torch.equal(got.detach(), want_cached)
    assert cache.seqlen_offset == 12
