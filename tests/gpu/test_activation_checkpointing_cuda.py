"""LM.activation_checkpointing on CUDA, through the Triton kernels and under bf16 autocast: the
recomputed backward gives the plain backward's loss and gradients, with less memory held.

Letters: b batch, l length.
"""
import pytest
import torch

import mambakit

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _step(model, ids, seq_idx):
    model.zero_grad(set_to_none=True)
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits = model(ids, seq_idx=seq_idx)
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].float().flatten(0, 1), ids[:, 1:].flatten())
    held = torch.cuda.memory_allocated() - base  # what the forward leaves for the backward
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}, held


@pytest.mark.parametrize("preset", ["mamba2-tiny", "mamba-tiny", "hybrid-tiny"])
def test_checkpointed_backward_matches_on_cuda(preset):
    torch.manual_seed(0)
    model = mambakit.LM(mambakit.ModelConfig.from_preset(preset)).cuda().train()
    b, l = 2, 333  # not a multiple of any chunk
    ids = torch.randint(0, model.config.vocab_size, (b, l), device="cuda")
    seq_idx = torch.zeros(b, l, dtype=torch.int32, device="cuda")
    seq_idx[0, 150:] = 1  # a packed row
    plain_loss, plain, plain_held = _step(model, ids, seq_idx)
    model.activation_checkpointing = True
    loss, grads, held = _step(model, ids, seq_idx)
    # the recompute runs the same kernels on the same inputs: equal up to atomics' summation order
    torch.testing.assert_close(loss, plain_loss, rtol=1e-5, atol=1e-6)
    for name, g in plain.items():
        torch.testing.assert_close(grads[name], g, rtol=1e-3, atol=1e-5, msg=name)
    assert held < plain_held, (held, plain_held)
