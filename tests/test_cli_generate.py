"""`mambakit generate`: presets with random weights, checkpoint folders with their tokenizer, errors.

No shape letters: these tests run the command line.
"""
import pytest

import mambakit
from mambakit.cli import main


def run(capsys, *args):
    rc = main(["generate", *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_preset_streams_text_and_reports_speed(capsys):
    rc, out, err = run(capsys, "--model", "mamba2-tiny", "--prompt", "Hello", "--max-new-tokens", "6",
                       "--device", "cpu")
    assert rc == 0
    assert out.startswith("Hello") and out.endswith("\n")
    assert "RANDOM weights" in err and "ByteTokenizer" in err
    assert "prefill 5 tokens" in err and "decode 5 tokens" in err and err.count("tok/s") == 2


def test_sampling_is_reproducible_by_seed(capsys):
    args = ["--model", "mamba2-tiny", "--prompt", "Hi", "--max-new-tokens", "12", "--temperature", "1.0",
            "--top-p", "0.95", "--device", "cpu"]
    a = run(capsys, *args, "--seed", "1")[1]
    b = run(capsys, *args, "--seed", "1")[1]
    c = run(capsys, *args, "--seed", "2")[1]
    assert a == b and a != c


def test_checkpoint_folder_uses_its_tokenizer(capsys, tmp_path):
    tok = _bpe_folder(tmp_path)
    rc, out, err = run(capsys, "--model", str(tmp_path), "--prompt", "hello there", "--max-new-tokens", "4",
                       "--device", "cpu")
    assert rc == 0 and out.startswith("hello there")
    n = len(tok.encode("hello there").ids)
    assert n < len("hello there")  # its merges, not bytes
    assert "RANDOM" not in err and "byte tokenizer" not in err and f"prefill {n} tokens" in err


def test_preset_with_a_tokenizer_file(capsys, tmp_path):
    """A preset's random model takes the vocabulary of the tokenizer it is given."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(["hello there, general mamba " * 4], trainers.BpeTrainer(
        vocab_size=297, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.save(str(tmp_path / "tokenizer.json"))
    rc, out, err = run(capsys, "--model", "mamba2-tiny", "--tokenizer", str(tmp_path / "tokenizer.json"),
                       "--prompt", "hello there", "--max-new-tokens", "3", "--device", "cpu")
    assert rc == 0 and out.startswith("hello there")
    assert f"vocabulary {tok.get_vocab_size()} to match it" in err


def test_folder_without_tokenizer_falls_back_to_bytes(capsys, tmp_path):
    mambakit.LM(mambakit.ModelConfig.from_preset("mamba2-tiny")).save(tmp_path)
    rc, out, err = run(capsys, "--model", str(tmp_path), "--prompt", "ab", "--max-new-tokens", "2",
                       "--device", "cpu")
    assert rc == 0 and "no tokenizer.json; using the byte tokenizer" in err


def test_zero_new_tokens(capsys):
    rc, out, err = run(capsys, "--model", "mamba2-tiny", "--prompt", "x", "--max-new-tokens", "0", "--device", "cpu")
    assert rc == 0 and out == "x\n" and "not run" in err


@pytest.mark.parametrize("args,match", [
    # the library's checks, named by the command's flags
    (["--model", "mamba2-tiny", "--prompt", "x", "--top-p", "1.5"], r"error: --top-p must be in \(0, 1\]"),
    (["--model", "mamba2-tiny", "--prompt", "x", "--max-new-tokens", "-1"], "--max-new-tokens"),
    (["--model", "mamba2-tiny", "--prompt", "x", "--repetition-penalty", "-1"], "error: --repetition-penalty must be"),
    (["--model", "mamba2-tiny", "--prompt", ""], "no tokens"),
    (["--model", "mamba2-tinyy", "--prompt", "x"], "neither an existing folder nor a preset"),
    (["--model", "mamba2-tiny", "--prompt", "x", "--tokenizer", "/no/such/file.json"], "no tokenizer file"),
    (["--model", "mamba2-tiny", "--prompt", "x", "--stop", ""], "--stop needs a non-empty text"),
])
def test_bad_arguments_are_clear_errors(capsys, args, match):
    import re
    rc, _, err = run(capsys, *args, "--device", "cpu")
    assert rc == 2 and re.search(match, err), err


def _bpe_folder(tmp_path):
    """A mamba2-tiny folder with a BPE tokenizer.json whose end-of-text token is the eos."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(["hello there, general mamba " * 4], trainers.BpeTrainer(
        vocab_size=270, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    mambakit.LM(mambakit.ModelConfig.from_preset("mamba2-tiny", vocab_size=tok.get_vocab_size())).save(tmp_path)
    tok.save(str(tmp_path / "tokenizer.json"))
    return tok


def _generate_writing(capsys, folder, monkeypatch, token_ids):
    """`mambakit generate` on the model in `folder` whose stream "writes" token_ids -> (rc, stdout, the
    eos_token_id the command gave the stream)."""
    import torch
    seen = {}

    def fake_stream(model, input_ids, max_new_tokens, **kw):
        seen["eos"] = kw["eos_token_id"]
        for t in token_ids:
            yield torch.tensor([t])

    monkeypatch.setattr(mambakit, "stream", fake_stream)
    rc, out, _ = run(capsys, "--model", str(folder), "--prompt", "general ", "--max-new-tokens", "9", "--device", "cpu")
    return rc, out, seen.get("eos")


def test_eos_ends_the_text_without_being_printed(capsys, tmp_path, monkeypatch):
    tok = _bpe_folder(tmp_path)
    eos = tok.token_to_id("<|endoftext|>")
    word = tok.encode("hello").ids
    rc, out, seen_eos = _generate_writing(capsys, tmp_path, monkeypatch, [*word, eos, *word])  # hello, eos, hello
    assert rc == 0 and seen_eos == eos
    assert out == "general hello\n", out  # neither "<|endoftext|>" nor what came after it


def test_a_model_with_a_context_limit_caps_new_tokens(capsys, tmp_path):
    config = mambakit.ModelConfig.from_preset("hybrid-tiny", attention={"max_seqlen": 16})
    mambakit.LM(config).save(tmp_path)
    rc, out, err = run(capsys, "--model", str(tmp_path), "--prompt", "hello", "--device", "cpu")  # default 64 new
    assert rc == 0 and "--max-new-tokens 64 capped at 11" in err and "decode 10 tokens" in err, err
    rc, _, err = run(capsys, "--model", str(tmp_path), "--prompt", "x" * 16, "--device", "cpu")
    assert rc == 2 and "the prompt is 16 tokens; this model reads at most 16 tokens" in err, err


def test_stop_strings_end_the_text_without_being_printed(capsys, monkeypatch):
    """A stop string spread over several tokens (bytes here) ends the text; the earliest of several wins,
    and the stream is read no further than the token that completes it."""
    import torch
    read = []

    def fake_stream(model, input_ids, max_new_tokens, **kw):
        for t in " one, two. three".encode():
            read.append(t)
            yield torch.tensor([t])

    monkeypatch.setattr(mambakit, "stream", fake_stream)
    rc, out, err = run(capsys, "--model", "mamba2-tiny", "--prompt", "Hi", "--max-new-tokens", "16",
                       "--stop", "three", "--stop", "two", "--device", "cpu")
    assert rc == 0 and out == "Hi one, \n", out
    assert bytes(read) == b" one, two" and "decode 8 tokens" in err
    # two stop strings completed by the same token: the one that starts first cuts
    read.clear()
    rc, out, _ = run(capsys, "--model", "mamba2-tiny", "--prompt", "Hi", "--max-new-tokens", "16",
                     "--stop", "two", "--stop", "one, two", "--device", "cpu")
    assert rc == 0 and out == "Hi \n", out


def test_ctrl_c_prints_the_text_held_back_for_a_stop_string(capsys, monkeypatch):
    """Ctrl-C while a token is being made ends the text there: what was held back because it could
    still start a stop string is printed, and the run says it was interrupted."""
    import torch

    def fake_stream(model, input_ids, max_new_tokens, **kw):
        for t in " hello wor".encode():
            yield torch.tensor([t])
        raise KeyboardInterrupt

    monkeypatch.setattr(mambakit, "stream", fake_stream)
    rc, out, err = run(capsys, "--model", "mamba2-tiny", "--prompt", "Hi", "--max-new-tokens", "16",
                       "--stop", "world!", "--device", "cpu")
    assert rc == 0 and out == "Hi hello wor\n" and "interrupted" in err, (out, err)


def test_end_of_text_from_the_checkpoint_config(tmp_path):
    """Tokenizer files that name no end-of-text token: the checkpoint config's eos_token_id is used."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from mambakit.eval.data import load_model
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(["hello there " * 4], trainers.BpeTrainer(
        vocab_size=270, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    config = mambakit.ModelConfig.from_preset("mamba2-tiny", vocab_size=tok.get_vocab_size(),
                                              token_ids={"eos_token_id": [5, 6]})
    mambakit.LM(config).save(tmp_path)
    tok.save(str(tmp_path / "tokenizer.json"))
    model, loaded, notes = load_model(tmp_path, device="cpu")
    assert loaded.eos_token_id == 5 and any("end of text: id 5" in n for n in notes)
    (tmp_path / "tokenizer_config.json").write_text('{"eos_token": "e"}')  # the tokenizer's own wins
    model, loaded, notes = load_model(tmp_path, device="cpu")
    assert loaded.eos_token_id == tok.token_to_id("e") != 5


def test_every_end_of_text_id_of_the_checkpoint_ends_the_text(capsys, tmp_path, monkeypatch):
    """A config listing several end-of-text ids (Llama 3 instruct: end_of_text, eom, eot) ends the text
    at any of them, as transformers' generate does, not only at the tokenizer's one."""
    tok = _bpe_folder(tmp_path)
    eos = tok.token_to_id("<|endoftext|>")  # the tokenizer's end of text (its guess)
    other = tok.encode("mamba").ids[0]  # a second end-of-text id of the checkpoint
    config = mambakit.ModelConfig.from_preset("mamba2-tiny", vocab_size=tok.get_vocab_size(),
                                              token_ids={"eos_token_id": [eos, other]})
    mambakit.LM(config).save(tmp_path)
    word = tok.encode("hello").ids
    rc, out, seen_eos = _generate_writing(capsys, tmp_path, monkeypatch, [*word, other, *word])
    assert rc == 0 and sorted(seen_eos) == sorted([eos, other]), seen_eos
    assert out == "general hello\n", out
