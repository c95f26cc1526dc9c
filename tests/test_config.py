import json
import re

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


@pytest.mark.parametrize("preset,override,match", [
    ("mamba2-tiny", dict(mamba2={"headdim": 0}), "mamba2.headdim must be a positive int, got 0"),
    ("mamba2-tiny", dict(mamba2={"ngroups": 0}), "mamba2.ngroups must be a positive int"),
    ("mamba2-tiny", dict(mamba2={"d_state": -4}), "mamba2.d_state must be a positive int"),
    ("mamba2-tiny", dict(mamba2={"chunk_size": 0}), "mamba2.chunk_size must be a positive int"),
    ("mamba2-tiny", dict(mamba2={"headdim": "16"}), "mamba2.headdim must be a positive int, got '16'"),
    ("mamba2-tiny", dict(mamba2={"expand": 1.5}), "mamba2.expand must be a positive int"),
    ("mamba2-tiny", dict(mamba2={"dt_limit": (1.0, 0.0)}), r"dt_limit must be \(lo, hi\) with 0 <= lo < hi"),
    ("mamba2-tiny", dict(mamba2={"A_init_range": (-2.0, -1.0)}), "A_init_range must be"),
    ("mamba2-tiny", dict(mamba2={"conv_bias": "yes"}), "mamba2.conv_bias must be true or false"),
    ("mamba-tiny", dict(mamba1={"d_conv": 0}), "mamba1.d_conv must be a positive int"),
    ("mamba-tiny", dict(mamba1={"d_state": 0}), "mamba1.d_state must be a positive int"),
    ("mamba-tiny", dict(mamba1={"dt_rank": 0}), "mamba1.dt_rank must be a positive int"),
    ("mamba-tiny", dict(mamba1={"dt_min": 0.5, "dt_max": 0.1}), "need 0 < dt_min <= dt_max"),
    ("mamba-tiny", dict(mamba1={"dt_min": 0.0}), "need 0 < dt_min <= dt_max"),
    ("hybrid-tiny", dict(attention={"n_heads": 0}), "attention.n_heads must be a positive int"),
    ("hybrid-tiny", dict(attention={"n_kv_heads": 0}), "attention.n_kv_heads must be a positive int"),
    ("hybrid-tiny", dict(attention={"max_seqlen": -5}), "attention.max_seqlen must be a positive int"),
    ("hybrid-tiny", dict(attention={"rope_theta": 0.0}), "rope_theta must be > 0"),
    ("hybrid-tiny", dict(attention={"rotary_fraction": "0.5"}), "rotary_fraction must be a finite number"),
    ("transformer-tiny", dict(attention={"rotary_fraction": 0.02}), "rotates no pair of dims"),
    ("hybrid-tiny", dict(mlp={"hidden_size": 0}), "mlp.hidden_size must be a positive int"),
    ("mamba2-tiny", dict(vocab_size=True), "ModelConfig.vocab_size must be a positive int, got True"),
    ("mamba2-tiny", dict(norm_eps=-1.0), "ModelConfig.norm_eps must be a finite number >= 0"),
    ("mamba2-tiny", dict(norm_eps=0.0), "ModelConfig.norm_eps must be > 0"),
    ("mamba2-tiny", dict(tie_embeddings="no"), "ModelConfig.tie_embeddings must be true or false"),
    ("mamba2-tiny", dict(mamba2=5), "ModelConfig.mamba2 must be a Mamba2Config or a dict of its fields, got int"),
])
def test_bad_sizes_and_rates_are_named(preset, override, match):
    with pytest.raises(ValueError, match=match):
        ModelConfig.from_preset(preset, **override)


def test_unused_sub_configs_are_not_checked():
    # A Mamba-2 stack does not build attention layers: their sub-config may hold anything.
    assert ModelConfig.from_preset("mamba2-tiny", attention={"n_heads": 0}).attention.n_heads == 0


def test_from_json_takes_text_a_file_or_a_folder_and_names_a_missing_path(tmp_path):
    config = ModelConfig.from_preset("mamba2-tiny")
    mambakit.LM(config).save(tmp_path / "m")
    assert ModelConfig.from_json(tmp_path / "m") == config
    assert ModelConfig.from_json(config.to_json()) == config
    with pytest.raises(ValueError, match="nope/config: no such file"):
        ModelConfig.from_json(str(tmp_path / "nope" / "config"))
    with pytest.raises(ValueError, match="built from a dict of its fields, got list"):
        ModelConfig.from_dict([1, 2])
    with pytest.raises(ValueError, match="a preset is named by a string"):
        ModelConfig.from_preset(None)


@pytest.mark.parametrize("token_ids,message", [
    ({"eos": 0}, "unknown ModelConfig.token_ids field 'eos'"),
    ({"eos_token_id": -1}, "an id >= 0, a non-empty list of them or None"),
    ({"eos_token_id": []}, "an id >= 0, a non-empty list of them or None"),
    ({"bos_token_id": [1, 2]}, "must be an id >= 0"),
    ({"pad_token_id": True}, "must be an id >= 0"),
    ([0], "must be a dict"),
])
def test_bad_token_ids_are_refused(token_ids, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        mambakit.ModelConfig(token_ids=token_ids)
    ok = mambakit.ModelConfig(token_ids={"eos_token_id": [0, 5], "pad_token_id": 0, "bos_token_id": None})
    assert mambakit.ModelConfig.from_json(ok.to_json()).token_ids == ok.token_ids
    # none named: the key is left out of the JSON, which mambakit before the field can read
    assert "token_ids" not in json.loads(mambakit.ModelConfig().to_json())
