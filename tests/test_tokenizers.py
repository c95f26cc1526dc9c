"""Tokenizers: the byte tokenizer, the tokenizer.json wrapper, padding for generate, stream decoding.

Letters: b batch, l length.
"""
import json

import pytest
import torch

import mambakit
from mambakit.tokenizers import ByteTokenizer, HFTokenizer, StreamDecoder, load_tokenizer

TEXT = "Mamba says héllo, wörld: 日本語 ✓"


@pytest.fixture(scope="module")
def bpe_folder(tmp_path_factory):
    """A small byte-level BPE trained here, saved as tokenizer.json with a tokenizer_config.json."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<|endoftext|>", "<s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([TEXT * 5, "the quick brown fox jumps over the lazy dog " * 5], trainer)
    folder = tmp_path_factory.mktemp("bpe")
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"eos_token": {"content": "<|endoftext|>"}, "bos_token": "<s>", "pad_token": "<pad>"}))
    return folder


def test_byte_tokenizer_round_trips_any_text():
    tok = ByteTokenizer()
    ids = tok.encode(TEXT)
    assert ids == list(TEXT.encode("utf-8")) and max(ids) < tok.vocab_size == 256
    assert tok.decode(ids) == tok.decode(torch.tensor(ids)) == TEXT
    assert tok.eos_token_id is None
    assert tok.decode([104, 300, 105]) == "h\ufffdi"  # an id beyond the bytes of a larger model


def test_load_tokenizer_defaults_to_bytes():
    assert isinstance(load_tokenizer(), ByteTokenizer) and isinstance(load_tokenizer("byte"), ByteTokenizer)


@pytest.mark.parametrize("side", ["left", "right"])
def test_batch_encode_pads_and_masks(side):
    ids, mask = ByteTokenizer().batch_encode(["ab", "abcd", "é"], padding_side=side)
    assert ids.shape == mask.shape == (3, 4) and ids.dtype == torch.long
    assert mask.sum(1).tolist() == [2, 4, 2]
    row = ids[0][mask[0].bool()].tolist()
    assert row == [97, 98]
    assert mask[0].tolist() == ([0, 0, 1, 1] if side == "left" else [1, 1, 0, 0])


def test_batch_encode_feeds_generate():
    model = mambakit.LM(mambakit.ModelConfig.from_preset("mamba2-tiny")).eval()
    tok = ByteTokenizer()
    texts = ["hi", "a longer prompt"]
    ids, mask = tok.batch_encode(texts)
    out = mambakit.generate(model, ids, 4, attention_mask=mask)
    for i, text in enumerate(texts):
        alone = mambakit.generate(model, torch.tensor([tok.encode(text)]), 4)
        assert out[i, -4:].tolist() == alone[0, -4:].tolist()


def test_batch_encode_rejects_bad_input():
    tok = ByteTokenizer()
    with pytest.raises(ValueError, match="list of strings"):
        tok.batch_encode("one string")
    with pytest.raises(ValueError, match="at least one"):
        tok.batch_encode(["a", ""])
    with pytest.raises(ValueError, match="padding_side"):
        tok.batch_encode(["a"], padding_side="middle")
    for bad in (None, 5):  # not iterable: the same message, not a TypeError
        with pytest.raises(ValueError, match="list of strings"):
            tok.batch_encode(bad)


def _stream(tok, ids):
    decoder = tok.stream_decoder()
    pieces = [decoder.push(i) for i in ids]
    return pieces + [decoder.flush()]


def test_stream_decoder_never_splits_a_character():
    tok = ByteTokenizer()
    pieces = _stream(tok, tok.encode(TEXT))
    assert "".join(pieces) == TEXT
    assert all("\ufffd" not in p for p in pieces)  # each multi-byte character comes out whole
    assert "日" in pieces


def test_stream_decoder_flushes_an_unfinished_character():
    tok = ByteTokenizer()
    decoder = StreamDecoder(tok)
    assert decoder.push(list("é".encode())[:1]) == ""
    assert decoder.flush() == "\ufffd"


def test_stream_decoder_keeps_the_space_after_the_prompt(tmp_path):
    """A SentencePiece-style tokenizer (Metaspace) drops the space of a text's first word when
    decoding; seeded with the prompt, the stream keeps the space between prompt and continuation."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.Metaspace()
    raw.decoder = decoders.Metaspace()
    raw.train_from_iterator(["hello brown world " * 8], trainers.BpeTrainer(vocab_size=60))
    raw.save(str(tmp_path / "tokenizer.json"))
    tok = load_tokenizer(tmp_path / "tokenizer.json")
    prompt, rest = tok.encode("hello"), tok.encode("hello brown world")[len(tok.encode("hello")):]
    assert tok.decode(rest) == "brown world"  # decoded alone, the leading space is gone
    decoder = tok.stream_decoder(prompt_ids=prompt)
    streamed = "".join(decoder.push(i) for i in rest) + decoder.flush()
    assert "hello" + streamed == tok.decode(prompt + rest) == "hello brown world"


def test_hf_tokenizer_json(bpe_folder):
    tok = load_tokenizer(bpe_folder)
    assert isinstance(tok, HFTokenizer) and tok.vocab_size > 256
    assert (tok.pad_token_id, tok.eos_token_id, tok.bos_token_id) == (0, 1, 2)
    ids = tok.encode(TEXT)
    assert len(ids) < len(TEXT.encode())  # merges learned
    assert tok.decode(ids) == TEXT
    assert load_tokenizer(bpe_folder / "tokenizer.json").encode(TEXT) == ids
    pieces = _stream(tok, ids)
    assert "".join(pieces) == TEXT and all("\ufffd" not in p for p in pieces)
    padded, mask = tok.batch_encode(["fox", TEXT])
    assert padded[0, 0] == tok.pad_token_id and mask[0, 0] == 0


def test_hf_tokenizer_guesses_eos_without_a_config(bpe_folder, tmp_path):
    (tmp_path / "tokenizer.json").write_text((bpe_folder / "tokenizer.json").read_text())
    tok = load_tokenizer(tmp_path)
    assert tok.eos_token_id == 1 and tok.pad_token_id is None


def test_hf_tokenizer_errors_are_clear(tmp_path, bpe_folder):
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a valid tokenizer.json"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text((bpe_folder / "tokenizer.json").read_text())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<nope>"}))
    with pytest.raises(ValueError, match="eos_token '<nope>'"):
        load_tokenizer(tmp_path)


@pytest.mark.parametrize("bad,match", [
    ([104.0], "must be ints, got 104.0"), ("hi", "got str"), (None, "got NoneType"),
    ([[104]], r"must be ints, got \[104\]"), (torch.tensor([1.0]), "integers, got a tensor of torch.float32"),
    ([True], "got the bool True"),
])
def test_decode_names_what_is_not_token_ids(bad, match):
    with pytest.raises(ValueError, match=match):
        ByteTokenizer().decode(bad)


def test_token_ids_of_every_integer_kind_decode_and_stream():
    import numpy as np
    tok = ByteTokenizer()
    for ids in ([104, 105], (104, 105), torch.tensor([[104, 105]]), np.array([104, 105])):
        assert tok.decode(ids) == "hi"
    dec = tok.stream_decoder(prompt_ids=np.array([32]))
    assert dec.push(np.int64(104)) + dec.push(torch.tensor(105)) + dec.flush() == "hi"
    with pytest.raises(ValueError, match="prompt_ids must be an int, a list"):
        tok.stream_decoder(prompt_ids="ab")
    ids, mask = tok.batch_encode(t for t in ["a", "bc"])  # an iterator, read once
    assert ids.shape == (2, 2) and mask.tolist() == [[0, 1], [1, 1]]
    with pytest.raises(ValueError, match="a tokenizer is None, 'byte', a Tokenizer or a path"):
        load_tokenizer(5)


def test_hf_decode_refuses_negative_ids(bpe_folder):
    with pytest.raises(ValueError, match="token ids must be >= 0, got -1"):
        HFTokenizer.from_file(bpe_folder).decode([5, -1])


def test_saved_padding_and_truncation_are_turned_off(bpe_folder, tmp_path):
    """Some exports save tokenizer.json with padding or truncation on: encode padded every text to a
    fixed length (batch_encode then masked the padding as prompt) and cut long prompts."""
    from tokenizers import Tokenizer
    raw = Tokenizer.from_file(str(bpe_folder / "tokenizer.json"))
    raw.enable_padding(length=16, pad_id=0)
    raw.enable_truncation(max_length=16)
    raw.save(str(tmp_path / "tokenizer.json"))
    tok, plain = load_tokenizer(tmp_path / "tokenizer.json"), load_tokenizer(bpe_folder)
    long = "the quick brown fox jumps over the lazy dog " * 6
    assert tok.encode("hi") == plain.encode("hi") and len(tok.encode(long)) > 16
    ids, mask = tok.batch_encode(["hi", "the quick brown fox"])
    assert int(mask[0].sum()) == len(plain.encode("hi")) and int(mask[0, 0]) == 0  # left-padded, masked


def test_decode_of_ids_past_the_tokenizer_and_bad_config_files(bpe_folder, tmp_path):
    tok = load_tokenizer(bpe_folder)
    ids = tok.encode("the fox")
    assert tok.decode(ids + [tok.vocab_size, 10 ** 12] + ids) == "the fox\ufffd\ufffdthe fox"  # as ByteTokenizer
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        (tmp_path / name).write_text("[1, 2]")
        (tmp_path / "tokenizer.json").write_text((bpe_folder / "tokenizer.json").read_text())
        with pytest.raises(ValueError, match="expected a JSON object"):
            load_tokenizer(tmp_path)
        (tmp_path / name).unlink()


def test_stream_text_wants_one_id_a_token():
    from mambakit.tokenizers import stream_text
    tok = ByteTokenizer()
    assert "".join(p for p, _, _ in stream_text(tok, [torch.tensor([104]), torch.tensor(105), 33])) == "hi!"
    for bad in (torch.tensor([104, 105]), torch.tensor([])):
        with pytest.raises(ValueError, match="each token must be one id"):
            list(stream_text(tok, [bad]))
