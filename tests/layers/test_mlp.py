"""MLP: the three activations written out, names, init rescaling, no state."""
import math

import pytest
import torch

import mambakit
from mambakit.config import ModelConfig
from mambakit.layers.mlp import MLP


def make(activation, hidden_size=48, bias=False):
    config = ModelConfig(d_model=16, n_layer=1, vocab_size=16, layer_pattern="-",
                         mlp=dict(activation=activation, hidden_size=hidden_size, bias=bias))
    return MLP(config, 0).double()


@pytest.mark.parametrize("activation", ["gelu", "relu2", "swiglu"])
def test_matches_formula(activation):
    mlp = make(activation, bias=True)
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    up = x @ mlp.up_proj.weight.T + mlp.up_proj.bias
    if activation == "gelu":
        h = 0.5 * up * (1 + torch.erf(up / math.sqrt(2)))
    elif activation == "relu2":
        h = up.clamp(min=0) ** 2
    else:
        gate = x @ mlp.gate_proj.weight.T + mlp.gate_proj.bias
        h = gate * torch.sigmoid(gate) * up
    expected = h @ mlp.down_proj.weight.T + mlp.down_proj.bias
    torch.testing.assert_close(mlp(x, cache=object(), seq_idx=torch.zeros(2, 5)), expected)


def test_parameter_names_and_default_width():
    config = ModelConfig(d_model=16, n_layer=1, vocab_size=16, layer_pattern="-", mlp=dict(activation="relu2"))
    mlp = MLP(config, 0)
    assert sorted(mlp.state_dict()) == ["down_proj.weight", "up_proj.weight"]
    assert mlp.up_proj.weight.shape == (64, 16)
    assert sorted(make("swiglu").state_dict()) == ["down_proj.weight", "gate_proj.weight", "up_proj.weight"]
    assert mlp.allocate_state(3) == {}


def test_down_proj_is_rescaled_at_init():
    torch.manual_seed(0)
    config = ModelConfig(d_model=64, n_layer=16, vocab_size=16, layer_pattern="-" * 16,
                         mlp=dict(activation="gelu", hidden_size=256))
    model = mambakit.LM(config)
    up = torch.stack([b.mixer.up_proj.weight.detach().std() for b in model.layers]).mean()
    down = torch.stack([b.mixer.down_proj.weight.detach().std() for b in model.layers]).mean()
    # nn.Linear's default init has std 1/sqrt(3 fan_in); down_proj then gets / sqrt(16).
    assert float(up) == pytest.approx(1 / math.sqrt(3 * 64), rel=0.05)
    assert float(down) == pytest.approx(1 / math.sqrt(3 * 256) / 4, rel=0.05)


def test_bad_activation_is_an_error():
    with pytest.raises(ValueError, match="activation"):
        ModelConfig(d_model=16, n_layer=1, vocab_size=16, layer_pattern="-", mlp=dict(activation="silu"))
