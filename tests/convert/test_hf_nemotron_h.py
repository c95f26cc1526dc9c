"""transformers NemotronHForCausalLM <-> mambakit: logits agree in both directions (fp32, 1e-4)."""
import json
import math

import pytest
import torch

import mambakit
from mambakit.config import ModelConfig
from mambakit.presets_hybrid import HYBRID_PRESETS

transformers = pytest.importorskip("transformers")

PATTERN = "M-*M*-M"  # every kind, attention after attention and after an MLP


def hf_config(**kw):
    base = dict(vocab_size=100, hidden_size=64, hybrid_override_pattern=PATTERN, num_attention_heads=4,
                num_key_value_heads=2, head_dim=16, intermediate_size=96, mamba_num_heads=8, mamba_head_dim=16,
                n_groups=2, ssm_state_size=16, chunk_size=16, expand=2, layer_norm_epsilon=1e-5)
    return transformers.NemotronHConfig(**{**base, **kw})


def randomize(model):
    """Move every parameter off its init (norms, D, A_log, dt_bias included) so no mapping hides."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("norm.weight", "norm_f.weight", ".D", "A_log")):
                p.add_(0.2 * torch.randn_like(p))
            elif name.endswith("dt_bias"):
                p.add_(0.5 * torch.randn_like(p))
    return model


def hf_logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("act", ["relu2", "gelu"])
def test_load_transformers_folder(tmp_path, act):
    torch.manual_seed(0)
    hf = randomize(transformers.NemotronHForCausalLM(hf_config(mlp_hidden_act=act)).eval())
    hf.save_pretrained(tmp_path / "hf")
    model = mambakit.load(tmp_path / "hf")
    assert model.config.layer_pattern == PATTERN and model.config.mlp.activation == act
    assert model.config.mamba2.ngroups == 2 and model.config.attention.rotary_fraction == 0.0
    ids = torch.randint(0, 100, (2, 37))  # not a multiple of the chunk of 16
    with torch.no_grad():
        torch.testing.assert_close(model(ids), hf_logits(hf, ids), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("limit", [(0.2, math.inf), (0.0, 0.01)])
def test_dt_clamp_of_transformers_is_kept(tmp_path, limit):
    # transformers' NemotronH clamps dt to time_step_limit; time_step_min is only dt's init range
    # (mambakit once took it for the clamp: 9e-4 off at (0.2, inf), 5e-5 at the stock config).
    torch.manual_seed(1)
    hf = randomize(transformers.NemotronHForCausalLM(hf_config(time_step_limit=limit, time_step_min=0.05)).eval())
    hf.save_pretrained(tmp_path / "hf")
    model = mambakit.load(tmp_path / "hf")
    assert model.config.mamba2.dt_limit == pytest.approx(limit) and model.config.mamba2.dt_min == pytest.approx(0.05)
    ids = torch.randint(0, 100, (1, 20))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), hf_logits(hf, ids), atol=1e-5, rtol=1e-5)
    model.save(tmp_path / "back", format="hf")  # and written back as it was read
    raw = json.loads((tmp_path / "back" / "config.json").read_text())
    assert [float(v) for v in raw["time_step_limit"]] == list(limit) and raw["time_step_min"] == pytest.approx(0.05)
    back = transformers.NemotronHForCausalLM.from_pretrained(tmp_path / "back").eval()
    with torch.no_grad():
        torch.testing.assert_close(hf_logits(back, ids), hf_logits(hf, ids), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("tie", [False, True])
def test_save_hf_then_transformers_reads_it(tmp_path, tie):
    config = ModelConfig.from_dict({**HYBRID_PRESETS["hybrid-tiny"].to_dict(), "vocab_size": 250,
                                    "tie_embeddings": tie, "mlp": {"hidden_size": 96, "activation": "relu2"}})
    model = randomize(mambakit.LM(config).eval())
    model.save(tmp_path / "out", format="hf")
    raw = json.loads((tmp_path / "out" / "config.json").read_text())
    assert raw["architectures"] == ["NemotronHForCausalLM"] and raw["hybrid_override_pattern"] == "M*-M-*"
    hf = transformers.NemotronHForCausalLM.from_pretrained(tmp_path / "out").eval()
    ids = torch.randint(0, 250, (2, 45))
    with torch.no_grad():
        torch.testing.assert_close(hf_logits(hf, ids), model(ids), atol=1e-4, rtol=1e-4)
    again = mambakit.load(tmp_path / "out")  # and back, bit for bit
    assert again.config.tie_embeddings == tie
    with torch.no_grad():
        torch.testing.assert_close(again(ids), model(ids), rtol=0, atol=0)


def test_old_style_config_keys(tmp_path):
    # Older NemotronH configs: mamba_* aliases and only hybrid_override_pattern, weights under backbone.
    torch.manual_seed(2)
    hf = randomize(transformers.NemotronHForCausalLM(hf_config()).eval())
    hf.save_pretrained(tmp_path / "hf")
    raw = json.loads((tmp_path / "hf" / "config.json").read_text())
    raw.pop("layers_block_type")
    raw["hybrid_override_pattern"] = PATTERN
    raw["mamba_n_groups"] = raw.pop("n_groups")
    raw["mamba_chunk_size"] = raw.pop("chunk_size")
    (tmp_path / "hf" / "config.json").write_text(json.dumps(raw))
    model = mambakit.load(tmp_path / "hf")
    assert model.config.mamba2.ngroups == 2 and model.config.mamba2.chunk_size == 16
    ids = torch.randint(0, 100, (1, 9))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), hf_logits(hf, ids), atol=1e-4, rtol=1e-4)


def test_unsupported_models_are_clear_errors(tmp_path):
    bad = mambakit.LM(HYBRID_PRESETS["transformer-tiny"].__class__.from_dict(
        {**HYBRID_PRESETS["hybrid-tiny"].to_dict(), "attention": {"n_heads": 4, "rotary_fraction": 0.5}}))
    with pytest.raises(ValueError, match="RoPE"):
        bad.save(tmp_path / "x", format="hf")
    swiglu = mambakit.LM(ModelConfig.from_dict({**HYBRID_PRESETS["hybrid-tiny"].to_dict(),
                                                 "mlp": {"activation": "swiglu"}}))
    with pytest.raises(ValueError, match="gated"):
        swiglu.save(tmp_path / "y", format="hf")
    from mambakit.convert import hf_nemotron_h
    with pytest.raises(ValueError, match="moe"):
        hf_nemotron_h.to_mambakit({"hidden_size": 8, "vocab_size": 8, "layers_block_type": ["mamba", "moe"]}, {})


def test_errors_spell_keys_as_a_model_prefixed_file_does(tmp_path):
    """Weights under "model." (transformers' module names) load; a misshapen one is named as the
    file spells it, not as the format would write it ("backbone.")."""
    from safetensors.torch import load_file, save_file
    torch.manual_seed(3)
    hf = transformers.NemotronHForCausalLM(hf_config()).eval()
    hf.save_pretrained(tmp_path / "hf")
    f = tmp_path / "hf" / "model.safetensors"
    state = {("model." + k[len("backbone."):] if k.startswith("backbone.") else k): v for k, v in load_file(f).items()}
    save_file(state, f)
    mambakit.load(tmp_path / "hf")
    state["model.layers.0.mixer.D"] = torch.ones(3)
    save_file(state, f)
    with pytest.raises(mambakit.CheckpointError,
                       match=r"'model.layers.0.mixer.D' \(model.safetensors; mambakit's 'layers.0.mixer.D'\) has shape"):
        mambakit.load(tmp_path / "hf")
