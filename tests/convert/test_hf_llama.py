"""transformers LlamaForCausalLM <-> mambakit "*-" patterns: logits agree both ways (fp32, 1e-4)."""
import json

import pytest
import torch

import mambakit
from mambakit.config import ModelConfig

transformers = pytest.importorskip("transformers")


def hf_config(**kw):
    base = dict(vocab_size=120, hidden_size=64, intermediate_size=112, num_hidden_layers=3, num_attention_heads=4,
                num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-5, max_position_embeddings=256,
                rope_parameters={"rope_type": "default", "rope_theta": 500.0})
    return transformers.LlamaConfig(**{**base, **kw})


def randomize(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.2 * torch.randn_like(p))
    return model


def hf_logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("kw", [{}, {"attention_bias": True, "mlp_bias": True, "tie_word_embeddings": True},
                                {"num_key_value_heads": 4, "head_dim": None}])
def test_load_transformers_folder(tmp_path, kw):
    torch.manual_seed(0)
    hf = randomize(transformers.LlamaForCausalLM(hf_config(**kw)).eval())
    if kw.get("attention_bias"):
        with torch.no_grad():
            for name, p in hf.named_parameters():
                if name.endswith("bias"):
                    p.normal_(0, 0.1)
    hf.save_pretrained(tmp_path / "hf")
    model = mambakit.load(tmp_path / "hf")
    assert model.config.layer_pattern == "*-*-*-" and model.config.attention.rotary_fraction == 1.0
    assert model.config.attention.rope_theta == 500.0
    ids = torch.randint(0, 120, (2, 29))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), hf_logits(hf, ids), atol=1e-4, rtol=1e-4)
        # and decoding with the KV cache gives the same last logits
        cache = model.allocate_cache(2)
        model(ids[:, :20], cache=cache)
        for t in range(20, 29):
            last = model(ids[:, t:t + 1], cache=cache)
        torch.testing.assert_close(last[:, 0], hf_logits(hf, ids)[:, -1], atol=1e-4, rtol=1e-4)


def test_save_hf_then_transformers_reads_it(tmp_path):
    config = ModelConfig(d_model=64, n_layer=4, vocab_size=250, layer_pattern="*-*-", tie_embeddings=False,
                         attention=dict(n_heads=4, n_kv_heads=1, head_dim=16, rotary_fraction=1.0, rope_theta=10000.0),
                         mlp=dict(hidden_size=96, activation="swiglu"))
    model = randomize(mambakit.LM(config).eval())
    model.save(tmp_path / "out", format="hf")
    raw = json.loads((tmp_path / "out" / "config.json").read_text())
    assert raw["architectures"] == ["LlamaForCausalLM"] and raw["num_hidden_layers"] == 2
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "out").eval()
    ids = torch.randint(0, 250, (2, 33))
    with torch.no_grad():
        torch.testing.assert_close(hf_logits(hf, ids), model(ids), atol=1e-4, rtol=1e-4)
    again = mambakit.load(tmp_path / "out")
    with torch.no_grad():
        torch.testing.assert_close(again(ids), model(ids), rtol=0, atol=0)


@pytest.mark.parametrize("change,match", [
    ({"layer_pattern": "**--"}, "pairs"),
    ({"attention": {"n_heads": 4, "rotary_fraction": 0.5}}, "RoPE"),
    ({"mlp": {"activation": "relu2"}}, "SwiGLU"),
])
def test_unwritable_models_are_clear_errors(tmp_path, change, match):
    base = dict(d_model=32, n_layer=4, vocab_size=64, layer_pattern="*-*-",
                attention=dict(n_heads=4, rotary_fraction=1.0), mlp=dict(activation="swiglu"))
    model = mambakit.LM(ModelConfig.from_dict({**base, **change}))
    with pytest.raises(ValueError, match=match):
        model.save(tmp_path / "x", format="hf")


def test_scaled_rope_is_refused():
    from mambakit.convert import hf_llama
    raw = hf_config().to_dict()
    raw["rope_parameters"] = {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}
    with pytest.raises(ValueError, match="linear"):
        hf_llama.to_mambakit(raw, {})
