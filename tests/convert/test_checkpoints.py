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


def test_save_overwrites_atomically(tmp_path, monkeypatch):
    model = tiny_model("mamba2")
    model.save(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "tokenizer.json").write_text("{}")  # not the checkpoint's: kept by a save
    (tmp_path / "ckpt" / "pytorch_model.bin").write_bytes(b"stale")  # old weights: dropped by a save
    other = tiny_model("mamba2")
    other.save(tmp_path / "ckpt")
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]
    assert sorted(os.listdir(tmp_path / "ckpt")) == ["config.json", "model.safetensors", "tokenizer.json"]
    ids = torch.randint(0, 256, (1, 5))
    with torch.no_grad():
        assert torch.equal(mambakit.load(tmp_path / "ckpt")(ids), other(ids))

    # A save that fails half-way leaves the previous checkpoint as it was, and no temporary.
    import safetensors.torch

    def broken(*args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        model.save(tmp_path / "ckpt")
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]
    with torch.no_grad():
        assert torch.equal(mambakit.load(tmp_path / "ckpt")(ids), other(ids))


def test_a_tied_checkpoint_whose_head_differs_warns(tmp_path, caplog):
    model = tiny_model("mamba2")
    assert model.config.tie_embeddings
    path = _corrupt(tmp_path, edit_state=lambda s: s.update({"lm_head.weight": s["embedding.weight"] + 1}))
    with caplog.at_level("WARNING", logger="mambakit"):
        back = mambakit.load(path)
    assert "lm_head.weight differs" in caplog.text
    assert back.lm_head.weight is back.embedding.weight


def test_save_through_a_link_replaces_the_folder_it_points_to(tmp_path):
    model = tiny_model("mamba")
    model.save(tmp_path / "real")
    (tmp_path / "real" / "tokenizer.json").write_text("{}")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    other = tiny_model("mamba")
    other.save(tmp_path / "link")
    assert (tmp_path / "link").is_symlink() and (tmp_path / "real" / "tokenizer.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real"]  # no stray temporary or old folder
    ids = torch.randint(0, 256, (1, 5))
    with torch.no_grad():
        assert torch.equal(mambakit.load(tmp_path / "link")(ids), other(ids))


def test_a_tensor_saved_under_two_keys_is_named_by_the_key_that_is_wrong(tmp_path):
    """torch.save keeps one object for a tied embedding and head; a misshapen embedding is still
    reported under its own name."""
    model = tiny_model("mamba")
    _mamba_ssm_folder(tmp_path / "m", model, "Mamba1")
    f = tmp_path / "m" / "pytorch_model.bin"
    state = torch.load(f, weights_only=True)
    bad = torch.zeros(256, 3)
    state["backbone.embedding.weight"] = state["lm_head.weight"] = bad
    torch.save(state, f)
    with pytest.raises(CheckpointError, match=r"'backbone.embedding.weight' \(pytorch_model.bin; mambakit's "
                                              r"'embedding.weight'\) has shape \(256, 3\)"):
        mambakit.load(tmp_path / "m")


def test_save_refuses_a_file(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="notes.txt is a file; a checkpoint is a folder"):
        tiny_model("mamba").save(tmp_path / "notes.txt")
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("kind", ["mamba", "mamba2"])
def test_load_dtype_keeps_A_log_and_D_in_fp32(kind, tmp_path):
    model = tiny_model(kind)
    model.save(tmp_path / "c")
    low = mambakit.load(tmp_path / "c", dtype=torch.bfloat16)
    mixer = low.layers[0].mixer
    assert low.embedding.weight.dtype == mixer.in_proj.weight.dtype == torch.bfloat16
    assert mixer.A_log.dtype == mixer.D.dtype == torch.float32
    assert torch.equal(mixer.A_log, model.layers[0].mixer.A_log)  # not rounded through bf16
    assert low.lm_head.weight is low.embedding.weight  # still tied
    assert mambakit.load(tmp_path / "c", dtype=torch.float64).layers[0].mixer.A_log.dtype == torch.float64
    ids = torch.randint(0, 256, (1, 9))
    with torch.no_grad():
        full = low(ids)
        cache = low.allocate_cache(1)
        low(ids[:, :8], cache=cache)
        step = low(ids[:, 8:], cache=cache)  # the one-token step with fp32 A_log and D beside bf16 weights
    assert full.dtype == torch.bfloat16 and torch.isfinite(full).all()
    torch.testing.assert_close(step[:, -1].float(), full[:, -1].float(), rtol=0.05, atol=0.05)


def test_load_dtype_by_name_and_bad_dtype_or_device(tmp_path, monkeypatch):
    tiny_model("mamba2").save(tmp_path / "c")
    for name in ("bfloat16", "bf16", "torch.bfloat16"):
        assert mambakit.load(tmp_path / "c", dtype=name).embedding.weight.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="dtype 'bfloat' is not known; expected .*bfloat16"):
        mambakit.load(tmp_path / "c", dtype="bfloat")
    with pytest.raises(ValueError, match="dtype must be one of.*got torch.int8"):
        mambakit.load(tmp_path / "c", dtype=torch.int8)
    with pytest.raises(ValueError, match="device 'gpu' is not a device torch knows"):
        mambakit.load(tmp_path / "c", device="gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="device 'cuda'.*use device='cpu'"):
        mambakit.load(tmp_path / "c", device="cuda")


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
    with pytest.raises(CheckpointError, match=r"missing tensors 'layers.1.mixer.A_log' \(model.safetensors\)"):
        mambakit.load(path)


def test_unexpected_key(tmp_path):
    path = _corrupt(tmp_path, edit_state=lambda s: s.update(extra=torch.zeros(1)))
    with pytest.raises(CheckpointError, match=r"unexpected tensors 'extra' \(model.safetensors\)"):
        mambakit.load(path)


def test_misshapen_tensor(tmp_path):
    path = _corrupt(tmp_path, edit_state=lambda s: s.update({"layers.0.mixer.D": torch.ones(3)}))
    with pytest.raises(CheckpointError, match=r"'layers.0.mixer.D' \(model.safetensors\) has shape \(3,\)"):
        mambakit.load(path)


@pytest.mark.parametrize("kind,layer", [("mamba", "Mamba1"), ("mamba2", "Mamba2")])
def test_mamba_ssm_errors_name_the_file_and_its_keys(kind, layer, tmp_path):
    """Errors in a renamed format name the key as the file spells it, and the file."""
    model = tiny_model(kind)
    _mamba_ssm_folder(tmp_path / "m", model, layer)
    f = tmp_path / "m" / "pytorch_model.bin"
    good = torch.load(f, weights_only=True)

    def load_with(state):
        torch.save(state, f)
        return mambakit.load(tmp_path / "m")

    with pytest.raises(CheckpointError, match=r"missing tensors 'backbone.layers.1.mixer.D' \(pytorch_model.bin; "
                                              r"mambakit's 'layers.1.mixer.D'\)"):
        load_with({k: v for k, v in good.items() if k != "backbone.layers.1.mixer.D"})
    with pytest.raises(CheckpointError, match=r"unexpected tensors 'backbone.layers.0.mixer.extra' \(pytorch_model"):
        load_with({**good, "backbone.layers.0.mixer.extra": torch.zeros(2)})
    with pytest.raises(CheckpointError, match=r"'backbone.layers.0.mixer.out_proj.weight' \(pytorch_model.bin; "
                                              r"mambakit's 'layers.0.mixer.out_proj.weight'\) has shape \(3, 3\)"):
        load_with({**good, "backbone.layers.0.mixer.out_proj.weight": torch.zeros(3, 3)})
    # A short embedding is not padded into shape: it is reported (padding is for exactly vocab_size rows).
    short = dict(good)
    short["backbone.embedding.weight"] = good["backbone.embedding.weight"][:200]
    with pytest.raises(CheckpointError, match=r"'backbone.embedding.weight' \(pytorch_model.bin.*has shape \(200,"):
        load_with(short)
    f.write_bytes(f.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="pytorch_model.bin.*truncated or corrupt"):
        mambakit.load(tmp_path / "m")


def test_mamba_ssm_unknown_config_field(tmp_path):
    _mamba_ssm_folder(tmp_path / "m", tiny_model("mamba"), "Mamba1")
    raw = json.loads((tmp_path / "m" / "config.json").read_text())
    raw["d_modle"] = 3
    (tmp_path / "m" / "config.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match=r"m/config.json: .*fields mambakit does not know: \['d_modle'\]"):
        mambakit.load(tmp_path / "m")


@pytest.mark.parametrize("suffix", ["safetensors", "bin"])
def test_sharded_folder(suffix, tmp_path):
    """Weights split over two shards with an index, as save_pretrained writes large models."""
    from safetensors.torch import load_file, save_file
    model = tiny_model("mamba2")
    model.save(tmp_path / "c")
    state = load_file(tmp_path / "c" / "model.safetensors")
    (tmp_path / "c" / "model.safetensors").unlink()
    keys = sorted(state)
    names = [f"model-0000{i}-of-00002.{suffix}" for i in (1, 2)]
    weight_map = {}
    for name, part in zip(names, (keys[::2], keys[1::2])):
        shard = {k: state[k] for k in part}
        save_file(shard, tmp_path / "c" / name) if suffix == "safetensors" else torch.save(shard, tmp_path / "c" / name)
        weight_map.update(dict.fromkeys(part, name))
    index = "model.safetensors.index.json" if suffix == "safetensors" else "pytorch_model.bin.index.json"
    (tmp_path / "c" / index).write_text(json.dumps({"weight_map": weight_map}))
    if suffix == "bin":  # a download of the .bin shards alone keeps the safetensors index beside them
        (tmp_path / "c" / "model.safetensors.index.json").write_text(json.dumps(
            {"weight_map": {k: "model-00001-of-00002.safetensors" for k in keys}}))
    ids = torch.randint(0, 256, (1, 7))
    with torch.no_grad():
        assert torch.equal(mambakit.load(tmp_path / "c")(ids), model(ids))
    (tmp_path / "c" / names[1]).unlink()
    first = "model-00001-of-00002.safetensors" if suffix == "bin" else names[1]  # the first index's gap
    with pytest.raises(CheckpointError, match=f"{first}: missing; model.safetensors.index.json lists it"):
        mambakit.load(tmp_path / "c")


def test_unknown_config_field(tmp_path):
    path = _corrupt(tmp_path, edit_config=lambda r: r["model"].update(d_modell=3))
    with pytest.raises(CheckpointError, match="c/config.json: .*d_modell.*did you mean 'd_model'"):
        mambakit.load(path)


def test_bad_config_value_names_the_file(tmp_path):
    path = _corrupt(tmp_path, edit_config=lambda r: r["model"]["mamba2"].update(headdim=7))
    with pytest.raises(CheckpointError, match="c/config.json: .*headdim"):
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


@pytest.mark.parametrize("ssm_layer,pattern,what", [("s4d", "MM", "a stack of s4d layers"),
                                                     ("mamba1", "M*", "a mamba1 hybrid")])
def test_hf_save_of_a_model_no_hf_class_holds(ssm_layer, pattern, what, tmp_path):
    config = mambakit.ModelConfig(d_model=16, n_layer=2, vocab_size=32, ssm_layer=ssm_layer, layer_pattern=pattern,
                                  attention={"n_heads": 2})
    with pytest.raises(ValueError, match=f"no Hugging Face class holds {what}; save with format='native'"):
        mambakit.LM(config).save(tmp_path / "m", format="hf")
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("text,match", [
    ("[1, 2]", "expected a JSON object of config fields, got list"),
    ("null", "expected a JSON object of config fields, got NoneType"),
    ('{"mambakit_format": 1, "model": "abc"}', "'model' must be an object of ModelConfig fields, got str"),
    ('{"mambakit_format": 1, "model": {"mamba2": 5}}', "ModelConfig.mamba2 must be a Mamba2Config"),
    (b"\xff\xfe{", "not valid JSON"),
])
def test_a_corrupt_config_json_is_named(text, match, tmp_path):
    tiny_model("mamba2").save(tmp_path / "m")
    cfg = tmp_path / "m" / "config.json"
    cfg.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(CheckpointError, match=match):
        mambakit.load(tmp_path / "m")


def test_integer_weights_are_refused(tmp_path):
    from safetensors.torch import load_file, save_file
    tiny_model("mamba2").save(tmp_path / "m")
    f = tmp_path / "m" / "model.safetensors"
    state = load_file(str(f))
    state["norm_f.weight"] = state["norm_f.weight"].long()
    save_file(state, str(f))
    with pytest.raises(CheckpointError, match="'norm_f.weight'.*has dtype torch.int64; expected floating-point"):
        mambakit.load(tmp_path / "m")


def test_save_names_a_bad_path(tmp_path):
    (tmp_path / "file").write_text("x")
    model = tiny_model("mamba2")
    with pytest.raises(ValueError, match="file is a file, not a folder"):
        model.save(tmp_path / "file" / "sub")
    with pytest.raises(ValueError, match="a checkpoint path is a str or a Path, got NoneType"):
        model.save(None)


@pytest.mark.parametrize("text", ["[1, 2]", '"model.safetensors"', '{"weight_map": {"a": 5}}',
                                  '{"weight_map": {"a": ["x"]}}', b"\xff\xfe\x00{"])
def test_a_corrupt_shard_index_is_named_and_replaced_by_a_save(text, tmp_path):
    """A shard index that is JSON but not a weight_map of file names (or not text) is a CheckpointError
    naming it, not a TypeError; a save over the folder replaces it, as it does a broken one."""
    model = tiny_model("mamba2")
    model.save(tmp_path / "c")
    (tmp_path / "c" / "model.safetensors").rename(tmp_path / "c" / "model-00001-of-00001.safetensors")
    index = tmp_path / "c" / "model.safetensors.index.json"
    index.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(CheckpointError, match="model.safetensors.index.json: not a shard index"):
        mambakit.load(tmp_path / "c")
    model.save(tmp_path / "c")
    assert not index.exists()
    ids = torch.randint(0, 256, (1, 5))
    with torch.no_grad():
        assert torch.equal(mambakit.load(tmp_path / "c")(ids), model(ids))


@pytest.mark.parametrize("name", ["model.safetensors", "pytorch_model.bin"])
def test_a_git_lfs_pointer_is_named_as_one(name, tmp_path):
    """A repository cloned without git-lfs holds 130-byte pointer files in place of the weights:
    the error says so rather than 'header too large' or 'invalid load key'."""
    tiny_model("mamba2").save(tmp_path / "c")
    (tmp_path / "c" / "model.safetensors").unlink()
    (tmp_path / "c" / name).write_text("version https://git-lfs.github.com/spec/v1\noid sha256:"
                                       + "0" * 64 + "\nsize 1234567\n")
    with pytest.raises(CheckpointError, match=f"{name}: a Git LFS pointer, not the weights.*git lfs pull"):
        mambakit.load(tmp_path / "c")


@pytest.mark.parametrize("kind", ["mamba", "mamba2"])
def test_dt_init_range_survives_a_transformers_round_trip(kind, tmp_path):
    """The hf writers store dt's init range as time_step_min / max / floor; reading it back keeps it
    (a model built from the config again is initialized as the original was)."""
    sub = {"dt_min": 0.002, "dt_max": 0.05, "dt_init_floor": 2e-4}
    model = tiny_model(kind, mamba1=sub, mamba2=sub)
    model.save(tmp_path / "hf", format="hf")
    back = mambakit.load(tmp_path / "hf").config
    ssm = getattr(back, model.config.ssm_layer)
    assert {k: getattr(ssm, k) for k in sub} == sub


def test_a_swap_that_fails_puts_the_old_checkpoint_back(tmp_path, monkeypatch):
    # The new folder is renamed into place after the old one is moved aside: should that second
    # rename fail, the old checkpoint is moved back (not left under an aside name, nor deleted).
    model, other = tiny_model("mamba2"), tiny_model("mamba2")
    model.save(tmp_path / "ckpt")
    real_replace = os.replace

    def replace(src, dst):
        if ".tmp-" in str(src):  # the new folder going into place
            raise OSError("rename failed")
        real_replace(src, dst)
    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="rename failed"):
        other.save(tmp_path / "ckpt")
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]
    ids = torch.randint(0, 256, (1, 5))
    with torch.no_grad():
        assert torch.equal(mambakit.load(tmp_path / "ckpt")(ids), model(ids))


def test_a_config_json_that_cannot_be_read_is_named(tmp_path, capsys):
    # a folder named config.json (or one without read permission) was an IsADirectoryError traceback
    from mambakit.cli import main
    tiny_model("mamba2").save(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "config.json").unlink()
    (tmp_path / "ckpt" / "config.json").mkdir()
    with pytest.raises(CheckpointError, match="config.json: cannot read it"):
        mambakit.load(tmp_path / "ckpt")
    assert main(["generate", "--model", str(tmp_path / "ckpt"), "--prompt", "x", "--device", "cpu"]) != 0
    assert "config.json: cannot read it" in capsys.readouterr().err
