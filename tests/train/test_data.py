"""Data: tokenizing once into a cached token file, packing with seq_idx, splits, rank shards.

Letters: b batch (rows), l length, v vocabulary.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mambakit import LM, ModelConfig
from mambakit.train import data as D
from mambakit.train.config import DataConfig


def _prepare(tmp_path, path, **kw):
    cfg = DataConfig(path=str(path), cache_dir=str(tmp_path / "cache"), **kw)
    return D.prepare_tokens(cfg, D.get_tokenizer("byte"))


def test_tokenized_once_and_reused(tmp_path, corpus, monkeypatch):
    tf = _prepare(tmp_path, corpus)
    total = sum(f.stat().st_size for f in corpus.iterdir())
    assert tf.n_tokens == total and len(tf.doc_starts) == len(list(corpus.iterdir()))
    assert isinstance(tf.tokens, np.memmap)
    # every document's bytes appear whole at its offset
    ends = list(tf.doc_starts[1:]) + [tf.n_tokens]
    docs = {bytes(tf.tokens[s:e]) for s, e in zip(tf.doc_starts, ends)}
    assert docs == {f.read_bytes() for f in corpus.iterdir()}

    def fail(*a, **k):
        raise AssertionError("tokenized again although the cache holds this data")
    monkeypatch.setattr(D, "_tokenize", fail)
    again = _prepare(tmp_path, corpus)
    assert again.key == tf.key and again.n_tokens == tf.n_tokens


def test_changed_file_gets_new_token_file(tmp_path):
    folder = tmp_path / "c"
    folder.mkdir()
    (folder / "a.txt").write_text("hello world")
    first = _prepare(tmp_path, folder)
    (folder / "a.txt").write_text("hello there world")
    second = _prepare(tmp_path, folder)
    assert second.key != first.key and second.n_tokens == len("hello there world")


def test_jsonl_documents(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text(json.dumps({"text": "first doc"}) + "\n\n" + json.dumps("second") + "\n"
                 + json.dumps({"text": "третий"}) + "\n")
    tf = _prepare(tmp_path, f)
    assert len(tf.doc_starts) == 3 and tf.n_tokens == len("first doc") + len("second") + len("третий".encode())
    f.write_text(json.dumps({"body": "x"}) + "\n")
    with pytest.raises(ValueError, match=r"d\.jsonl:1: .*'text'"):
        _prepare(tmp_path, f)
    # half a UTF-16 pair escaped (a cut emoji): valid JSON, no UTF-8 text; named with its line
    f.write_text(json.dumps({"text": "fine"}) + '\n{"text": "half an emoji \\ud83d here"}\n')
    with pytest.raises(ValueError, match=r"d\.jsonl:2: field 'text' holds '\\ud83d'.*surrogate"):
        _prepare(tmp_path, f)


def test_missing_and_empty_paths(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        _prepare(tmp_path, tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "x.bin").write_bytes(b"123")
    with pytest.raises(ValueError, match="without files ending in"):
        _prepare(tmp_path, tmp_path / "empty")
    # files that hold no text: said so, not "train.seq_len 64 is larger than the data ... lower train.seq_len"
    (tmp_path / "empty" / "a.txt").write_text("")
    (tmp_path / "empty" / "b.jsonl").write_text('{"text": ""}\n\n')
    with pytest.raises(ValueError, match=r"data.path '.*empty': its 2 files hold no text \(0 tokens: every "
                                         r"document is empty\); expected text to train on"):
        _prepare(tmp_path, tmp_path / "empty")


def test_seq_len_larger_than_data(tmp_path, corpus):
    tf = _prepare(tmp_path, corpus)
    with pytest.raises(ValueError, match="seq_len 100000 is larger than the data"):
        D.TrainData(tf, seq_len=100_000, val_fraction=0.1, seed=0)
    with pytest.raises(ValueError, match="validation split .* raise data.val_fraction"):
        D.TrainData(tf, seq_len=4096, val_fraction=0.05, seed=0)
    # a fraction so small it rounds to no token: the same error, not a run without validation
    with pytest.raises(ValueError, match="validation split has 1 tokens .* raise data.val_fraction"):
        D.TrainData(tf, seq_len=32, val_fraction=1e-9, seed=0)
    assert D.TrainData(tf, seq_len=32, val_fraction=0.0, seed=0).val is None  # 0: no validation, as asked


def _docs_folder(tmp_path, lengths):
    folder = tmp_path / "docs"
    folder.mkdir()
    for i, n in enumerate(lengths):
        (folder / f"{i}.txt").write_bytes(bytes([65 + i]) * n)  # document i is the letter i repeated
    return folder


def test_packed_rows_seq_idx_and_targets(tmp_path):
    tf = _prepare(tmp_path, _docs_folder(tmp_path, [5, 9, 3, 20, 7, 11]))
    rows = D.PackedRows(tf, 0, tf.n_tokens, seq_len=8)
    batch = rows.batch(range(len(rows)))
    x, y, s = batch["input_ids"], batch["targets"], batch["seq_idx"]  # (b, l) each
    assert x.shape == y.shape == s.shape == (len(rows), 8)
    for r in range(len(rows)):
        for t in range(8):
            if t > 0:  # a new document id exactly where the letter changes
                assert (s[r, t] != s[r, t - 1]) == (x[r, t] != x[r, t - 1])
            nxt = tf.tokens[r * 8 + t + 1]
            assert y[r, t] == (nxt if nxt == x[r, t] else D.IGNORE_INDEX)  # no target from another document
        assert s[r, 0] == 0 and bool((s[r, 1:] >= s[r, :-1]).all())


def test_packed_documents_do_not_see_each_other(tmp_path, corpus):
    """Logits of a packed row equal those of each document run on its own."""
    tf = _prepare(tmp_path, corpus)
    rows = D.PackedRows(tf, 0, tf.n_tokens, seq_len=64)
    r = next(i for i in range(len(rows)) if rows.batch([i])["seq_idx"].max() >= 1)  # a row spanning documents
    batch = rows.batch([r])
    torch.manual_seed(0)
    model = LM(ModelConfig.from_preset("mamba2-tiny", mamba2={"d_state": 16, "headdim": 16, "chunk_size": 16}))
    packed = model(batch["input_ids"], seq_idx=batch["seq_idx"])  # (1, l, v)
    seq = batch["seq_idx"][0]
    for doc in seq.unique():
        span = (seq == doc).nonzero().flatten()
        alone = model(batch["input_ids"][:, span])
        torch.testing.assert_close(packed[:, span], alone, atol=1e-5, rtol=1e-5)


def test_split_and_sampler(tmp_path, corpus):
    tf = _prepare(tmp_path, corpus)
    data = D.TrainData(tf, seq_len=32, val_fraction=0.1, seed=3)
    cut = data.val.start
    assert cut in set(tf.doc_starts.tolist())  # whole files held out here
    assert 0.05 <= (tf.n_tokens - cut) / tf.n_tokens <= 0.2
    assert data.train.start + len(data.train) * 32 + 1 <= cut  # no training row reads validation tokens
    n = len(data.train)
    epoch = data.sampler.rows(0, n)
    assert sorted(epoch) == list(range(n)) and epoch != list(range(n))
    assert data.sampler.rows(n, n) != epoch and sorted(data.sampler.rows(n, n)) == list(range(n))


def test_rank_shards_cover_the_global_batch(tmp_path, corpus):
    tf = _prepare(tmp_path, corpus)
    data = D.TrainData(tf, seq_len=32, val_fraction=0.1, seed=0)
    for first in (0, 56):  # samples consumed before the step: steps 0 and 7 of 8
        whole = torch.cat([b["input_ids"] for b in data.step_batches(first, 8, 2, rank=0, world=1)])
        shards = [torch.cat([b["input_ids"] for b in data.step_batches(first, 8, 2, rank=r, world=2)]) for r in (0, 1)]
        assert torch.equal(torch.cat(shards), whole)
    val = [data.val_batches(6, 2, r, 2) for r in (0, 1)]
    assert sum(b["input_ids"].shape[0] for v in val for b in v) == 6


def test_task_data_is_sharded_like_one_process():
    data = D.TaskData("mqar", {"vocab_size": 64, "length": 32, "num_pairs": 4}, seed=0)
    whole = data.step_batches(24, 8, 4, rank=0, world=1)  # the batch after 24 samples (step 3 of 8)
    parts = [b for r in (0, 1) for b in data.step_batches(24, 8, 2, rank=r, world=2)]
    assert torch.equal(torch.cat([b["targets"] for b in whole]), torch.cat([b["targets"] for b in parts]))
    assert not torch.equal(whole[0]["input_ids"], data.step_batches(32, 8, 4, 0, 1)[0]["input_ids"])
    assert (whole[0]["targets"] != D.IGNORE_INDEX).any()


def test_hf_datasets_folder(tmp_path, monkeypatch):
    folder = tmp_path / "ds"
    try:
        import datasets
    except ModuleNotFoundError:
        datasets = None
    if datasets is not None:
        datasets.Dataset.from_dict({"text": ["alpha doc", "beta", "gamma gamma"]}).save_to_disk(str(folder))
        tf = _prepare(tmp_path, folder)
        assert len(tf.doc_starts) == 3 and tf.n_tokens == len("alpha docbetagamma gamma")
    else:
        folder.mkdir()
        (folder / "state.json").write_text("{}")
    monkeypatch.setitem(__import__("sys").modules, "datasets", None)  # as if not installed
    (folder / "state.json").touch()  # new mtime: a new cache key, so the folder is read again
    with pytest.raises(ValueError, match="needs `pip install datasets`"):
        _prepare(tmp_path, folder)


def test_a_failed_tokenization_leaves_no_partial_file(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text(json.dumps({"text": "a good first document"}) + "\nnot json\n")
    with pytest.raises(ValueError, match=r"d\.jsonl:2"):
        _prepare(tmp_path, f)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == []  # no .tmp left with our pid in its name


def test_a_run_folder_inside_the_data_is_not_data(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.txt").write_text("some text to train on")
    run = tmp_path / "data" / "runs" / "r1"
    run.mkdir(parents=True)
    (run / "config.toml").write_text("seed = 0\n")
    (run / "metrics.jsonl").write_text(json.dumps({"text": "step 1 loss 3.2"}) + "\n")
    assert D.collect_files(tmp_path / "data", [".txt"]) == [tmp_path / "data" / "a.txt"]


def test_a_file_reached_twice_is_read_once(tmp_path, corpus):
    # A folder and a file inside it, a path spelled twice: each file is one document of the data,
    # not two (the second copy could land in validation while the first is trained on).
    other = tmp_path / "other.txt"
    other.write_text("a document given by itself " * 20)
    paths = [str(corpus), str(corpus / "doc03.txt"), str(corpus / ".." / corpus.name), str(other), str(other)]
    tf = D.prepare_tokens(DataConfig(path=paths, cache_dir=str(tmp_path / "cache")), D.get_tokenizer("byte"))
    files = list(corpus.iterdir()) + [other]
    assert len(tf.doc_starts) == len(files) and tf.n_tokens == sum(f.stat().st_size for f in files)
    data = D.TrainData(tf, seq_len=32, val_fraction=0.1, seed=0)
    ends = list(tf.doc_starts[1:]) + [tf.n_tokens]
    docs = [bytes(tf.tokens[s:e]) for s, e in zip(tf.doc_starts, ends)]
    val = {d for s, d in zip(tf.doc_starts, docs) if s >= data.val.start}
    assert val and not val & {d for s, d in zip(tf.doc_starts, docs) if s < data.val.start}
