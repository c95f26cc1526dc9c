"""`mambakit convert` and load(dtype="auto"): transformers and native folders both ways, the
tokenizer carried along, the read-back check (and that it can fail), and bad arguments.

No shape letters: these tests run the command line on tiny models.
"""
import os

import pytest
import torch
from safetensors import safe_open

import mambakit
from mambakit.cli import main

transformers = pytest.importorskip("transformers")


def run(capsys, *args):
    rc = main(["convert", *args])
    return rc, capsys.readouterr().err


def _dtypes(folder) -> dict:
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        return {k: f.get_tensor(k).dtype for k in f.keys()}


def _hf_mamba2_bf16(path):
    cfg = transformers.Mamba2Config(vocab_size=100, hidden_size=64, num_hidden_layers=2, state_size=16, head_dim=16,
                                    num_heads=8, n_groups=2, expand=2, chunk_size=16)
    torch.manual_seed(0)
    hf = transformers.Mamba2ForCausalLM(cfg).to(torch.bfloat16).eval()
    hf.save_pretrained(path)
    (path / "tokenizer.json").write_text("{}")  # any file of that name: convert copies it, never reads it
    return hf


def test_transformers_folder_to_native_keeps_dtype_and_tokenizer(capsys, tmp_path):
    _hf_mamba2_bf16(tmp_path / "hf")
    rc, err = run(capsys, str(tmp_path / "hf"), str(tmp_path / "out"))
    assert rc == 0, err
    assert "bfloat16" in err and "also: generation_config.json, tokenizer.json" in err and "bit for bit" in err
    assert (tmp_path / "out" / "tokenizer.json").read_text() == "{}"
    dtypes = _dtypes(tmp_path / "out")
    # auto: the file's bf16 stays bf16; A_log and D stay fp32 (cast_keeping_fp32)
    assert {d for k, d in dtypes.items() if not k.endswith(("A_log", ".D"))} == {torch.bfloat16}
    model = mambakit.load(tmp_path / "out", dtype="auto")
    assert next(model.parameters()).dtype == torch.bfloat16
    assert mambakit.load(tmp_path / "hf", dtype="auto").config == model.config


def test_a_model_transformers_cannot_hold_is_refused(capsys, tmp_path):
    cfg = mambakit.ModelConfig.from_preset("mamba2-tiny", mamba2={"norm_before_gate": True})
    mambakit.LM(cfg).save(tmp_path / "src")
    rc, err = run(capsys, str(tmp_path / "src"), str(tmp_path / "hf"), "--to", "hf", "--no-check")
    assert rc == 2 and "norm_before_gate" in err and "--to native" in err and not (tmp_path / "hf").exists()


def test_new_folders_get_the_umask_mode(tmp_path):
    old = os.umask(0o027)
    try:
        mambakit.LM(mambakit.ModelConfig.from_preset("mamba-tiny")).save(tmp_path / "m")
    finally:
        os.umask(old)
    assert (tmp_path / "m").stat().st_mode & 0o777 == 0o750  # not mkdtemp's 0700


def test_native_to_transformers_loads_in_transformers(capsys, tmp_path):
    torch.manual_seed(1)
    model = mambakit.LM(mambakit.ModelConfig.from_preset("mamba2-tiny")).eval()
    model.save(tmp_path / "native")
    rc, err = run(capsys, str(tmp_path / "native"), str(tmp_path / "hf"), "--to", "hf", "--dtype", "float32")
    assert rc == 0, err
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    ids = torch.randint(0, model.config.vocab_size, (2, 20))
    with torch.no_grad():
        assert (hf(ids).logits[..., :model.config.vocab_size] - model(ids)).abs().max() < 1e-4


def test_a_lossy_write_is_reported(capsys, tmp_path, monkeypatch):
    import mambakit.convert.native as native
    mambakit.LM(mambakit.ModelConfig.from_preset("mamba-tiny")).save(tmp_path / "a")
    writer = native.from_mambakit

    def lossy(model):  # a writer that gets a config field the model depends on wrong
        raw, state = writer(model)
        return {**raw, "model": {**raw["model"], "norm_eps": 0.5}}, state

    mambakit.LM(mambakit.ModelConfig.from_preset("mamba-tiny")).save(tmp_path / "b")  # an earlier conversion
    before = {f.name: f.read_bytes() for f in (tmp_path / "b").iterdir()}
    monkeypatch.setattr(native, "from_mambakit", lossy)
    rc, err = run(capsys, str(tmp_path / "a"), str(tmp_path / "b"))
    assert rc == 1 and "CHECK FAILED" in err and "left as it was" in err
    assert {f.name: f.read_bytes() for f in (tmp_path / "b").iterdir()} == before  # DST untouched
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary folder left
    assert run(capsys, str(tmp_path / "a"), str(tmp_path / "c"), "--no-check")[0] == 0


@pytest.mark.parametrize("case,words", [("missing", "no such folder"), ("under_file", "is a file"),
                                        ("same", "the source folder"),
                                        ("around", "around the source folder"), ("llama", "--to native"),
                                        ("dst_file", "is a file"), ("not_checkpoint", "not a checkpoint folder")])
def test_bad_arguments_are_named(capsys, tmp_path, case, words):
    preset = "transformer-tiny" if case == "llama" else "mamba2-tiny"
    mambakit.LM(mambakit.ModelConfig.from_preset(preset)).save(tmp_path / "src")
    (tmp_path / "file").write_text("x")
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "config.json").write_text('{"an": "app"}')  # somebody's folder, not a checkpoint
    src = tmp_path / ("nope" if case == "missing" else "src")
    dst = {"same": src, "around": tmp_path, "dst_file": tmp_path / "file", "not_checkpoint": tmp_path / "app",
           "under_file": tmp_path / "file" / "sub"}.get(case, tmp_path / "dst")
    rc, err = run(capsys, str(src), str(dst), *(["--to", "hf"] if case == "llama" else []))
    assert rc == 2 and words in err, err
    assert (tmp_path / "app" / "config.json").read_text() == '{"an": "app"}'


def test_files_beside_the_weights_come_from_src(capsys, tmp_path):
    for name in ("a", "b"):
        mambakit.LM(mambakit.ModelConfig.from_preset("mamba2-tiny")).save(tmp_path / name)
        (tmp_path / name / "tokenizer.json").write_text(name)
    (tmp_path / "a" / "README.md").write_text("model card")
    (tmp_path / "a" / "extra").mkdir()
    (tmp_path / "a" / "extra" / "notes.txt").write_text("notes")
    assert run(capsys, str(tmp_path / "a"), str(tmp_path / "dst"))[0] == 0
    assert (tmp_path / "dst" / "extra" / "notes.txt").read_text() == "notes"  # folders too
    (tmp_path / "dst").chmod(0o750)
    rc, err = run(capsys, str(tmp_path / "b"), str(tmp_path / "dst"))  # over the first conversion
    assert rc == 0, err
    assert (tmp_path / "dst" / "tokenizer.json").read_text() == "b"  # SRC's wins over DST's
    assert (tmp_path / "dst" / "README.md").read_text() == "model card"  # DST's other files stay
    assert (tmp_path / "dst").stat().st_mode & 0o777 == 0o750  # and so does its mode
    for _ in range(2):  # inside SRC: fine, and a second time it does not copy the first into itself
        assert run(capsys, str(tmp_path / "a"), str(tmp_path / "a" / "hf"), "--to", "hf")[0] == 0
    assert (tmp_path / "a" / "hf" / "README.md").read_text() == "model card"
    assert not (tmp_path / "a" / "hf" / "hf").exists()


def test_load_names_auto_among_the_dtypes_it_takes():
    with pytest.raises(ValueError, match="dtype 'automatic' is not known.*'auto'"):
        mambakit.load("/nonexistent", dtype="automatic")


def test_a_hugging_face_cache_snapshot_converts_with_real_files(capsys, tmp_path):
    """A cache snapshot's files are relative links into ../../blobs: the conversion holds the files
    themselves, not links that would dangle there."""
    blobs, snap = tmp_path / "blobs", tmp_path / "snapshots" / "abc"
    blobs.mkdir()
    snap.mkdir(parents=True)
    mambakit.LM(mambakit.ModelConfig.from_preset("mamba2-tiny")).save(tmp_path / "model")
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        src = tmp_path / "model" / name if name != "tokenizer.json" else None
        (blobs / name).write_bytes(src.read_bytes() if src else b'{"tok": 1}')
        (snap / name).symlink_to(os.path.join("..", "..", "blobs", name))
    rc, err = run(capsys, str(snap), str(tmp_path / "conv"))
    assert rc == 0, err
    tok = tmp_path / "conv" / "tokenizer.json"
    assert not tok.is_symlink() and tok.read_text() == '{"tok": 1}'


def test_save_refuses_a_folder_that_is_not_a_checkpoint(tmp_path, monkeypatch):
    model = mambakit.LM(mambakit.ModelConfig.from_preset("mamba2-tiny"))
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "config.json").write_text('{"my": "app settings"}')
    (proj / "model.pt").write_bytes(b"user weights")
    with pytest.raises(ValueError, match="holds files and is not a checkpoint folder"):
        model.save(proj)
    assert (proj / "config.json").read_text() == '{"my": "app settings"}' and (proj / "model.pt").exists()
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    for path in (".", "..", "sub/.."):  # replaced by a rename, it would leave the process in a deleted folder
        with pytest.raises(ValueError, match="the current working folder or one around it"):
            model.save(path)
    model.save("sub/../ckpt")  # a path through "..": resolved first
    assert mambakit.load(here / "ckpt").config == model.config and sorted(p.name for p in here.iterdir()) == ["ckpt"]


def test_a_failed_swap_leaves_dst_as_it_was(capsys, tmp_path, monkeypatch):
    # convert moves the old DST aside and renames the new folder in: if that rename fails, DST is
    # put back (it used to be deleted along with the work folder).
    torch.manual_seed(0)
    old, new = (mambakit.LM(mambakit.ModelConfig.from_preset("mamba-tiny")).eval() for _ in range(2))
    old.save(tmp_path / "dst")
    new.save(tmp_path / "src")
    real_replace = os.replace

    def replace(src, dst):
        if ".convert-" in str(src) and os.fspath(dst) == os.fspath(tmp_path / "dst"):  # the new DST going in
            raise OSError("rename failed")
        real_replace(src, dst)
    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="rename failed"):
        main(["convert", str(tmp_path / "src"), str(tmp_path / "dst")])
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["dst", "src"]
    ids = torch.randint(0, 100, (1, 6))
    with torch.no_grad():
        assert torch.equal(mambakit.load(tmp_path / "dst")(ids), old(ids))
