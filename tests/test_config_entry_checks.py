"""ModelConfig: values that validate must build a model; malformed pairs in a dict or JSON get the
field's ValueError, not a TypeError from inside from_dict."""
from __future__ import annotations

import pytest
import torch

from mambakit.config import ModelConfig
from mambakit.model import LM


@pytest.mark.parametrize("bad", [(1.0, float("inf")), (1.0, 1e300), (float("inf"), float("inf"))])
def test_a_init_range_must_be_finite_in_float32(bad):
    with pytest.raises(ValueError, match="A_init_range"):
        ModelConfig.from_preset("mamba2-tiny", mamba2={"A_init_range": bad})


def test_a_large_finite_a_init_range_still_builds():
    cfg = ModelConfig.from_preset("mamba2-tiny", mamba2={"A_init_range": (1.0, 1e6)})
    assert torch.isfinite(LM(cfg).layers[0].mixer.A_log).all()


@pytest.mark.parametrize("bad", [5, None, "0,1", ["x", "inf"], [0.0, 1.0, 2.0], [True, 1.0]])
def test_a_malformed_dt_limit_in_a_dict_names_the_field(bad):
    with pytest.raises(ValueError, match="dt_limit"):
        ModelConfig.from_dict({"mamba2": {"dt_limit": bad}})


def test_dt_limit_from_json_still_reads_inf():
    cfg = ModelConfig.from_json('{"d_model": 64, "n_layer": 2, "mamba2": {"dt_limit": [0.001, "inf"]}}')
    assert cfg.mamba2.dt_limit == (0.001, float("inf"))
    assert ModelConfig.from_json(cfg.to_json()) == cfg
