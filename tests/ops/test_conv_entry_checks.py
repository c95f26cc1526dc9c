"""causal_conv1d and causal_conv1d_update on the torch tier: a bias, weight or seq_idx of the wrong shape or
dtype, or integer inputs, raise a ValueError naming the argument (as the Triton wrapper does)."""
from __future__ import annotations

import pytest
import torch

from mambakit import ops


# --- causal_conv1d / causal_conv1d_update -------------------------------------------------------------

def _conv_inputs(b=2, l=5, c=4, k=3):
    torch.manual_seed(0)
    return torch.randn(b, l, c), torch.randn(c, k), torch.randn(c)


@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_conv_rejects_a_bias_of_the_wrong_shape(backend):
    x, w, _ = _conv_inputs()
    for bias in (torch.randn(1), torch.randn(3), torch.randn(2, 4)):
        with pytest.raises(ValueError, match="bias"):
            ops.causal_conv1d(x, w, bias, "silu", backend=backend)


def test_conv_rejects_bad_seq_idx():
    x, w, bias = _conv_inputs()
    with pytest.raises(ValueError, match="seq_idx"):
        ops.causal_conv1d(x, w, bias, "silu", seq_idx=torch.zeros(1, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="seq_idx"):
        ops.causal_conv1d(x, w, bias, "silu", seq_idx=torch.zeros(2, 5))  # float ids


def test_conv_rejects_integer_inputs():
    x, w, bias = _conv_inputs()
    with pytest.raises(ValueError, match="floating"):
        ops.causal_conv1d((x * 10).long(), w, bias)  # would truncate the weights to ints


def test_conv_update_rejects_a_weight_of_the_wrong_shape():
    x, w, bias = _conv_inputs()
    state = torch.zeros(2, 4, 3)
    with pytest.raises(ValueError, match="weight"):
        ops.causal_conv1d_update(x[:, 0], state, w[:1], bias, "silu")  # (1, k) broadcast over channels
    with pytest.raises(ValueError, match="bias"):
        ops.causal_conv1d_update(x[:, 0], state, w, bias[:1], "silu")


def test_conv_good_inputs_still_pass():
    x, w, bias = _conv_inputs()
    seq = torch.tensor([[0, 0, 1, 1, 1], [0, 0, 0, 0, 0]], dtype=torch.int32)
    y = ops.causal_conv1d(x, w, bias, "silu", seq_idx=seq)
    y2 = ops.causal_conv1d(x, w, bias, "silu", seq_idx=seq.long())
    torch.testing.assert_close(y, y2)
    assert ops.causal_conv1d_update(x[:, 0], torch.zeros(2, 4, 3), w, bias, "silu").shape == (2, 4)
