import json

import pytest

import mambakit
from mambakit import ModelConfig, PRESETS


def test_json_round_trip_every_preset():
    for name, cfg in PRESETS.items():
        back = ModelConfig.from_dict(json.loads(cfg.to_json()))
        assert back == cfg, name


def test_published_sizes():
    m = ModelConfig.from_preset("mamba-130m")
    assert (m.d_model, m.n_layer, m.ssm_layer, m.padded_vocab_size) == (768, 24, "mamba1", 50280)
    assert m.mamba1_dt_rank() == 48
    m2 = ModelConfig.from_preset("mamba2-8b")
    assert (m2.d_model, m2.n_layer, m2.mamba2.d_state, m2.mamba2.headdim, m2.mamba2.ngroups,
            m2.mamba2.chunk_size, m2.mamba2.expand) == (4096, 56, 128, 64, 8, 128, 2)
    for name, d, n in [("mamba-370m", 1024, 48), ("mamba-790m", 1536, 48), ("mamba-1.4b", 2048, 48),
                       ("mamba-2.8b", 2560, 64), ("mamba2-370m", 1024, 48), ("mamba2-780m", 1536, 48),
                       ("mamba2-1.3b", 2048, 48), ("mamba2-2.7b", 2560, 64)]:
        c = ModelConfig.from_preset(name)
        assert (c.d_model, c.n_layer) == (d, n), name


def test_mamba_130m_parameter_count():
    import torch
    with torch.device("meta"):
        model = mambakit.LM(ModelConfig.from_preset("mamba-130m"))
    assert 125e6 < model.num_parameters() < 135e6


def test_unknown_preset_suggests():
    with pytest.raises(ValueError, match="did you mean.*mamba-130m"):
        ModelConfig.from_preset("mamba-130")


def test_unknown_field_suggests():
    with pytest.raises(ValueError, match="did you mean 'd_model'"):
        ModelConfig.from_dict({"d_modle": 64})
    with pytest.raises(ValueError, match="mamba2 field 'head_dim'.*did you mean 'headdim'"):
        ModelConfig.from_dict({"mamba2": {"head_dim": 64}})


def test_invalid_mamba2_shapes():
    with pytest.raises(ValueError, match="not divisible by headdim"):
        ModelConfig(d_model=100, n_layer=1, mamba2={"headdim": 64})
    with pytest.raises(ValueError, match="not divisible by ngroups"):
        ModelConfig(d_model=64, n_layer=1, mamba2={"headdim": 16, "ngroups": 3})


@pytest.mark.parametrize("pattern,msg", [("MX-", "unknown characters"), ("", "non-empty"), ("M-", "n_layer is 3")])
def test_invalid_patterns(pattern, msg):
    with pytest.raises(ValueError, match=msg):
        ModelConfig(d_model=64, n_layer=3, layer_pattern=pattern, mamba2={"headdim": 16})


def test_preset_override_of_a_sub_config_keeps_its_other_fields():
    base = ModelConfig.from_preset("mamba2-tiny")
    c = ModelConfig.from_preset("mamba2-tiny", mamba2={"chunk_size": 16})
    assert c.mamba2.chunk_size == 16
    assert (c.mamba2.d_state, c.mamba2.headdim) == (base.mamba2.d_state, base.mamba2.headdim)
    h = ModelConfig.from_preset("hybrid-tiny", attention={"max_seqlen": 16})
    assert h.attention.max_seqlen == 16
    assert h.attention.n_heads == ModelConfig.from_preset("hybrid-tiny").attention.n_heads
    # A config object replaces the preset's sub-config whole.
    whole = type(base.mamba2)(chunk_size=16)
    assert ModelConfig.from_preset("mamba2-tiny", mamba2=whole).mamba2 == whole


def test_from_json_reads_a_saved_models_config_and_refuses_foreign_ones(tmp_path):
    model = mambakit.LM(ModelConfig.from_preset("mamba2-tiny"))
    model.save(tmp_path / "m")
    assert ModelConfig.from_json(tmp_path / "m" / "config.json") == model.config
    (tmp_path / "hf.json").write_text(json.dumps({"model_type": "mamba2", "hidden_size": 64}))
    with pytest.raises(ValueError, match="'mamba2' config of another library.*mambakit.load"):
        ModelConfig.from_json(tmp_path / "hf.json")
    (tmp_path / "bad.json").write_text(json.dumps({"mambakit_format": 1}))
    with pytest.raises(ValueError, match="under 'model'"):
        ModelConfig.from_json(tmp_path / "bad.json")
