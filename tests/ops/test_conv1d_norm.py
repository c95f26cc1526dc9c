import pytest
import torch
import torch.nn.functional as F

from mambakit.ops import causal_conv1d, causal_conv1d_update, gated_rms_norm, rms_norm


def _conv_ref(x, w, bias):  # x (b, l, c), w (c, k)
    c, k = w.shape
    y = F.conv1d(x.transpose(1, 2), w.unsqueeze(1), bias, padding=k - 1, groups=c)[..., : x.shape[1]]
    return y.transpose(1, 2)


@pytest.mark.parametrize("l", [1, 3, 7, 20])
def test_conv_matches_torch_conv1d(l):
    x, w, bias = torch.randn(2, l, 6), torch.randn(6, 4), torch.randn(6)
    torch.testing.assert_close(causal_conv1d(x, w, bias), _conv_ref(x, w, bias))
    torch.testing.assert_close(causal_conv1d(x, w, bias, "silu"), F.silu(_conv_ref(x, w, bias)))


def test_conv_pieces_and_steps_equal_full():
    x, w, bias = torch.randn(2, 13, 5), torch.randn(5, 4), torch.randn(5)
    full = causal_conv1d(x, w, bias, "silu")
    y1, state = causal_conv1d(x[:, :2], w, bias, "silu", return_final_state=True)
    y2, state = causal_conv1d(x[:, 2:9], w, bias, "silu", initial_state=state, return_final_state=True)
    steps = [causal_conv1d_update(x[:, t], state, w, bias, "silu") for t in range(9, 13)]
    torch.testing.assert_close(torch.cat([y1, y2, torch.stack(steps, 1)], 1), full)


def test_conv_seq_idx_equals_separate_documents():
    x, w = torch.randn(1, 10, 3), torch.randn(3, 4)
    seq_idx = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1, 2, 2]])
    packed = causal_conv1d(x, w, None, seq_idx=seq_idx)
    parts = [causal_conv1d(x[:, a:b], w) for a, b in [(0, 3), (3, 8), (8, 10)]]
    torch.testing.assert_close(packed, torch.cat(parts, 1))


def test_conv_bad_shapes():
    with pytest.raises(ValueError, match="weight must be"):
        causal_conv1d(torch.randn(1, 4, 3), torch.randn(4, 4))
    with pytest.raises(ValueError, match="initial_state"):
        causal_conv1d(torch.randn(1, 4, 3), torch.randn(3, 4), initial_state=torch.zeros(1, 3, 2))


def test_rms_norm():
    x, w = torch.randn(3, 8, dtype=torch.float64), torch.randn(8, dtype=torch.float64)
    ref = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * w
    torch.testing.assert_close(rms_norm(x, w), ref)


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_gated_rms_norm_groups(groups):
    x, z, w = torch.randn(2, 5, 8), torch.randn(2, 5, 8), torch.randn(8)
    g = (x * F.silu(z)).view(2, 5, groups, 8 // groups)
    ref = (g / torch.sqrt(g.pow(2).mean(-1, keepdim=True) + 1e-5)).view(2, 5, 8) * w
    torch.testing.assert_close(gated_rms_norm(x, z, w, group_size=8 // groups), ref)
    before = gated_rms_norm(x, z, w, group_size=8, norm_before_gate=True)
    torch.testing.assert_close(before, rms_norm(x, w) * F.silu(z))


def test_conv_of_no_tokens_passes_the_state_through():
    """l = 0: an empty output and the state as it was (the torch op returned a (b, c, k-1) one)."""
    from mambakit.ops.conv1d import causal_conv1d as conv_torch
    x, w, state = torch.randn(2, 0, 5), torch.randn(5, 4), torch.randn(2, 5, 4)
    for conv in (conv_torch, causal_conv1d):
        for seq_idx in (None, torch.zeros(2, 0, dtype=torch.long)):
            y, final = conv(x, w, None, "silu", initial_state=state, seq_idx=seq_idx, return_final_state=True)
            assert y.shape == (2, 0, 5) and torch.equal(final, state) and final.data_ptr() != state.data_ptr()
        y, final = conv(x, w, return_final_state=True)
        assert torch.equal(final, torch.zeros(2, 5, 4))
