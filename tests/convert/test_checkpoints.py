"""Native and mamba_ssm folders, and every way a checkpoint can be wrong."""
import json
import os

import pytest
import torch

import mambakit
from mambakit import CheckpointError
from conftest import tiny_model


@pytest.mark.parametrize("kind", ["mamba", "mamba2"])
def test_native_round_trip(kind, tmp_path):
    model = tiny_model(kind)
    model.save(tmp_path / "ckpt")
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]  # no temporary left behind
    back = mambakit.load(tmp_path / "ckpt")
    assert back.config == model.config
    ids = torch.randint(0, 256, (1, 9))
    with torch.no_grad():
        torch.testing.assert_close(back(ids), model(ids), rtol=0, atol=0)


def test_save_overwrites_atomically(tmp_path):
    model = tiny_model("mamba2")
    model.save(tmp_path / "ckpt")
    model.save(tmp_path / "ckpt")
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]


def test_load_dtype(tmp_path):
    tiny_model("mamba2").save(tmp_path / "c")
    assert mambakit.load(tmp_path / "c", dtype=torch.bfloat16).embedding.weight.dtype == torch.bfloat16


def _mamba_ssm_folder(path, model, layer):
    """A folder as mamba_ssm's MambaLMHeadModel.save_pretrained writes it."""
    path.mkdir()
    c = model.config
    sub = c.mamba1 if layer == "Mamba1" else c.mamba2
    ssm_cfg = {"d_state": sub.d_state, "expand": sub.expand}
    if layer == "Mamba2":
        ssm_cfg.update(layer="Mamba2", headdim=sub.headdim, chunk_size=sub.chunk_size, ngroups=sub.ngroups)
    raw = {"d_model": c.d_model, "d_intermediate": 0, "n_layer": c.n_layer, "vocab_size": c.vocab_size,
           "ssm_cfg": ssm_cfg, "attn_layer_idx": [], "attn_cfg": {}, "rms_norm": True, "residual_in_fp32": True,
           "fused_add_norm": True, "pad_vocab_size_multiple": 8, "tie_embeddings": True}
    (path / "config.json").write_text(json.dumps(raw))
    state = {("backbone." + k.replace("embedding.", "embedding.", 1)) if k != "lm_head.weight" else k: v
             for k, v in model.state_dict().items()}
    torch.save(state, path / "pytorch_model.bin")


@pytest.mark.parametrize("kind,layer", [("mamba", "Mamba1"), ("mamba2", "Mamba2")])
def test_mamba_ssm_folder(kind, layer, tmp_path):
    model = tiny_model(kind)
    _mamba_ssm_folder(tmp_path / "m", model, layer)
    back = mambakit.load(tmp_path / "m")
    ids = torch.randint(0, 256, (1, 9))
    with torch.no_grad():
        torch.testing.assert_close(back(ids), model(ids))


def _corrupt(tmp_path, edit_state=None, edit_config=None):
    model = tiny_model("mamba2")
    model.save(tmp_path / "c")
    from safetensors.torch import load_file, save_file
    if edit_state:
        state = load_file(tmp_path / "c" / "model.safetensors")
        edit_state(state)
        save_file(state, tmp_path / "c" / "model.safetensors")
    if edit_config:
        raw = json.loads((tmp_path / "c" / "config.json").read_text())
        edit_config(raw)
        (tmp_path / "c" / "config.json").write_text(json.dumps(raw))
    return tmp_path / "c"


def test_missing_key(tmp_path):
    path = _corrupt(tmp_path, edit_state=lambda s: s.pop("layers.1.mixer.A_log"))
    with pytest.raises(CheckpointError, match=r"missing keys \['layers.1.mixer.A_log'\]"):
        mambakit.load(path)


def test_unexpected_key(tmp_path):
    path = _corrupt(tmp_path, edit_state=lambda s: s.update(extra=torch.zeros(1)))
    with pytest.raises(CheckpointError, match="unexpected keys.*extra"):
        mambakit.load(path)


def test_misshapen_tensor(tmp_path):
    path = _corrupt(tmp_path, edit_state=lambda s: s.update({"layers.0.mixer.D": torch.ones(3)}))
    with pytest.raises(CheckpointError, match=r"layers.0.mixer.D.*shape \(3,\)"):
        mambakit.load(path)


def test_unknown_config_field(tmp_path):
    path = _corrupt(tmp_path, edit_config=lambda r: r["model"].update(d_modell=3))
    with pytest.raises(ValueError, match="d_modell.*did you mean 'd_model'"):
        mambakit.load(path)


def test_truncated_weights(tmp_path):
    path = tmp_path / "c"
    tiny_model("mamba2").save(path)
    f = path / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="model.safetensors.*truncated or corrupt"):
        mambakit.load(path)


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="not a checkpoint folder"):
        mambakit.load(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="config.json: missing"):
        mambakit.load(tmp_path / "empty")
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(CheckpointError, match="unrecognized checkpoint"):
        mambakit.load(tmp_path / "odd")
