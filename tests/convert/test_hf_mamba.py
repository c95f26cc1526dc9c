"""Parity with transformers' MambaForCausalLM and Mamba2ForCausalLM on random-init models."""
import pytest
import torch

import mambakit

transformers = pytest.importorskip("transformers")


def _randomize(model):
    # transformers initializes norms to 1 and D to 1: perturb them so the test sees every parameter
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith((".D", "dt_bias")):
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def hf_mamba(**kw):
    args = dict(vocab_size=100, hidden_size=64, num_hidden_layers=2, state_size=8, expand=2)
    args.update(kw)
    cfg = transformers.MambaConfig(**args)
    return _randomize(transformers.MambaForCausalLM(cfg))


def hf_mamba2(**kw):
    args = dict(vocab_size=100, hidden_size=64, num_hidden_layers=2, state_size=16, head_dim=16, num_heads=8,
                n_groups=2, expand=2, chunk_size=16, tie_word_embeddings=False)
    args.update(kw)
    return _randomize(transformers.Mamba2ForCausalLM(transformers.Mamba2Config(**args)))


CASES = {
    "mamba": hf_mamba,
    "mamba-untied-vocab-not-multiple-of-8": lambda: hf_mamba(tie_word_embeddings=False, vocab_size=91),
    "mamba2-groups2": hf_mamba2,
    "mamba2-groups1-tied": lambda: hf_mamba2(n_groups=1, tie_word_embeddings=True),
    "mamba2-groups-per-head": lambda: hf_mamba2(n_groups=8),
}


def save_as_bin(hf, path):
    """A folder with pytorch_model.bin, as older transformers wrote it (transformers 5 writes
    safetensors even when asked not to)."""
    hf.save_pretrained(path)
    (path / "model.safetensors").unlink()
    torch.save(hf.state_dict(), path / "pytorch_model.bin")


@pytest.mark.parametrize("case,safe", [(c, True) for c in CASES] + [("mamba", False), ("mamba2-groups2", False)])
def test_logits_and_generation_match_transformers(case, safe, tmp_path):
    hf = CASES[case]()
    if safe:
        hf.save_pretrained(tmp_path)
    else:
        save_as_bin(hf, tmp_path)
        assert not (tmp_path / "model.safetensors").exists()
    ours = mambakit.load(tmp_path)
    vocab = hf.config.vocab_size
    ids = torch.randint(0, vocab, (2, 37))  # 37: not a multiple of the chunk (16)
    with torch.no_grad():
        ref = hf(ids).logits
        got = ours(ids)
    assert got.shape == ref.shape
    assert (got - ref).abs().max() <= 1e-4
    prompt = ids[:1, :8]
    hf_out = hf.generate(prompt, max_new_tokens=10, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert torch.equal(mambakit.generate(ours, prompt, max_new_tokens=10), hf_out)


@pytest.mark.parametrize("case", ["mamba", "mamba2-groups2"])
def test_save_hf_loads_in_transformers(case, tmp_path):
    hf = CASES[case]()
    hf.save_pretrained(tmp_path / "a")
    ours = mambakit.load(tmp_path / "a")
    ours.save(tmp_path / "b", format="hf")
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "b").eval()
    assert type(back) is type(hf)
    ids = torch.randint(0, hf.config.vocab_size, (2, 21))
    with torch.no_grad():
        assert (back(ids).logits - hf(ids).logits).abs().max() <= 1e-4


@pytest.mark.parametrize("case", ["mamba", "mamba2-groups2"])
def test_special_token_ids_survive_conversion(case, tmp_path):
    # Mamba2Config's own defaults (bos 0, eos 2, pad 1) would replace the checkpoint's ids otherwise,
    # and transformers' generate would stop at the wrong token.
    hf = CASES[case]()
    hf.config.bos_token_id, hf.config.eos_token_id, hf.config.pad_token_id = 3, [7, 9], -1  # -1: none
    hf.save_pretrained(tmp_path / "a")
    ours = mambakit.load(tmp_path / "a")
    assert ours.config.token_ids == {"bos_token_id": 3, "eos_token_id": [7, 9], "pad_token_id": None}
    ours.save(tmp_path / "native")
    assert mambakit.load(tmp_path / "native").config.token_ids == ours.config.token_ids
    ours.save(tmp_path / "b", format="hf")
    back = transformers.AutoConfig.from_pretrained(tmp_path / "b")
    # "no pad token" stays none, not the class default (Mamba2Config: 1)
    assert (back.bos_token_id, back.eos_token_id, back.pad_token_id) == (3, [7, 9], None)
