"""Training data: text files, folders and jsonl, tokenized once into a memory-mapped token file,
packed into fixed-length rows with seq_idx, split into train and validation, read per rank.

Letters: b batch (rows), l length (tokens per row), v vocabulary.

The token file `<cache_dir>/<key>.bin` holds every document's tokens back to back (uint8, uint16
or uint32 by vocabulary size) and `<key>.docs.npy` the start offset of each document; `<key>.json`
is written last and marks the pair complete. The key hashes the file list (paths, sizes, mtimes),
the tokenizer and the jsonl field, so the same data is tokenized once and reused next time.

Row i of a split is tokens[i*l : i*l + l + 1]: inputs its first l tokens, targets the last l.
seq_idx numbers the documents inside the row from 0, so the model's SSM and conv state is reset at
every document start; a target that belongs to another document than its input is ignored (-100).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..tokenizers import check_text

IGNORE_INDEX = -100
FORMAT_VERSION = 1


# --- tokenizers --------------------------------------------------------------------------------------
class TokenEncoder:
    """mambakit.tokenizers' tokenizer plus what tokenizing a corpus needs: bytes in, an id array out,
    and a fingerprint for the cache key. A document ends with the end-of-text token when there is one."""

    def __init__(self, tokenizer, name: str):
        self.tokenizer, self.name = tokenizer, name
        self.vocab_size = tokenizer.vocab_size
        self.eos = getattr(tokenizer, "eos_token_id", None)

    def encode_bytes(self, raw: bytes) -> np.ndarray:
        if self.name == "byte":  # token = byte value: no need to decode and re-encode
            return np.frombuffer(raw, dtype=np.uint8)
        ids = self.tokenizer.encode(raw.decode("utf-8", errors="replace"), add_special_tokens=False)
        if self.eos is not None:
            ids = list(ids) + [self.eos]
        return np.asarray(ids, dtype=np.int64)

    def decode(self, ids) -> str:
        return self.tokenizer.decode([int(i) for i in ids])


def get_tokenizer(spec: str) -> TokenEncoder:
    """"byte" (token = byte value, v = 256) or a tokenizer.json file or a folder holding one."""
    from ..tokenizers import ByteTokenizer, load_tokenizer
    if spec == "byte":
        return TokenEncoder(ByteTokenizer(), "byte")
    p = Path(spec).expanduser()
    file = p / "tokenizer.json" if p.is_dir() else p
    if not file.is_file():
        raise ValueError(f"data.tokenizer {spec!r} is neither 'byte' nor a tokenizer.json file "
                         "(or a folder holding one)")
    return TokenEncoder(load_tokenizer(str(p)), "hf:" + hashlib.sha256(file.read_bytes()).hexdigest()[:16])


# --- sources -----------------------------------------------------------------------------------------
def collect_files(paths, extensions, exclude=()) -> list[Path]:
    """The files behind data.path: files as given, folders searched recursively by extension,
    skipping any file whose path below the folder has a part matching an `exclude` glob. A file
    reached more than once (a folder and a file in it, a path given twice) is read once: a second
    copy would be a second document, which the split could put in validation beside the first."""
    from fnmatch import fnmatch
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    exts = {e if e.startswith(".") else "." + e for e in extensions}
    files: list[Path] = []
    for entry in paths:
        p = Path(entry).expanduser()
        if not p.exists():
            raise ValueError(f"data.path {str(entry)!r} does not exist; expected a text file, a folder of "
                             "text files or a .jsonl file")
        if p.is_dir() and is_hf_dataset(p):
            files.append(p)  # a `datasets` save_to_disk folder: one source, read by load_from_disk
        elif p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and (f.suffix in exts or f.suffix == ".jsonl")
                           and not any(fnmatch(part, pat) for part in f.relative_to(p).parts for pat in exclude))
            # A training run's own folder (config.toml + metrics.jsonl) inside the data is not data: an
            # out_dir under data.path would otherwise have the next run train on its metrics.
            runs = {f.parent for f in found if f.name == "metrics.jsonl" and (f.parent / "config.toml").is_file()}
            found = [f for f in found if not any(r == f.parent or r in f.parents for r in runs)]
            if not found:
                raise ValueError(f"data.path {str(entry)!r} is a folder without files ending in "
                                 f"{sorted(exts | {'.jsonl'})} (data.extensions)")
            files += found
        else:
            files.append(p)
    unique, seen = [], set()
    for f in files:
        if f.resolve() not in seen:
            seen.add(f.resolve())
            unique.append(f)
    return unique


HF_DATASET_MARKERS = ("dataset_dict.json", "state.json")


def is_hf_dataset(folder: Path) -> bool:
    return any((folder / name).is_file() for name in HF_DATASET_MARKERS)


def _iter_hf_dataset(path: Path, text_field: str):
    try:
        import datasets
    except ModuleNotFoundError as err:
        raise ValueError(f"{path} is a Hugging Face `datasets` folder; reading it needs `pip install datasets`") from err
    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):  # the train split, else the first one
        ds = ds["train"] if "train" in ds else ds[next(iter(ds))]
    if text_field not in ds.column_names:
        raise ValueError(f"{path}: the dataset has no column {text_field!r} (data.text_field); "
                         f"its columns are {ds.column_names}")
    for rows in ds.iter(batch_size=1024):
        for text in rows[text_field]:
            yield str(text).encode("utf-8")


def iter_documents(path: Path, text_field: str):
    """Each document of one source as UTF-8 bytes: a whole text file, one jsonl record, or one row
    of a `datasets` folder."""
    if path.is_dir():
        yield from _iter_hf_dataset(path, text_field)
        return
    if path.suffix != ".jsonl":
        yield path.read_bytes()
        return
    with open(path, "rb") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({err})") from err
            if isinstance(record, str):
                text = record
            elif isinstance(record, dict) and isinstance(record.get(text_field), str):
                text = record[text_field]
            else:
                raise ValueError(f"{path}:{lineno}: expected a string or an object with a string field "
                                 f"{text_field!r} (data.text_field)")
            check_text(f"{path}:{lineno}", text_field, text)
            yield text.encode("utf-8")


# --- the token file ------------------------------------------------------------------------------------
def default_cache_dir() -> Path:
    return Path(os.environ.get("MAMBAKIT_CACHE", Path.home() / ".cache" / "mambakit" / "tokens"))


def cache_key(files: list[Path], tokenizer, text_field: str) -> str:
    h = hashlib.sha256(f"v{FORMAT_VERSION}|{tokenizer.name}|{text_field}".encode())
    for f in files:
        for g in sorted(f.rglob("*")) if f.is_dir() else [f]:  # a datasets folder: all of its files
            st = g.stat()
            h.update(f"|{g.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:24]


def token_dtype(vocab_size: int):
    return np.uint8 if vocab_size <= 256 else np.uint16 if vocab_size <= 65536 else np.uint32


@dataclass
class TokenFile:
    tokens: np.ndarray  # (total,) memory-mapped
    doc_starts: np.ndarray  # (n_docs,) int64, ascending, doc_starts[0] == 0
    key: str
    vocab_size: int

    @property
    def n_tokens(self) -> int:
        return int(self.tokens.shape[0])


def prepare_tokens(data_cfg, tokenizer, write: bool = True) -> TokenFile:
    """Tokenize data.path into the cache (unless already there) and memory-map it.

    With write=False (ranks other than 0) the file must already exist."""
    files = collect_files(data_cfg.path, data_cfg.extensions, data_cfg.exclude)
    key = cache_key(files, tokenizer, data_cfg.text_field)
    cache = Path(data_cfg.cache_dir).expanduser() if data_cfg.cache_dir else default_cache_dir()
    meta_path = cache / f"{key}.json"
    if not meta_path.exists():
        if not write:
            raise ValueError(f"token file {meta_path} is missing; rank 0 should have written it")
        _tokenize(files, tokenizer, data_cfg.text_field, cache, key)
    meta = json.loads(meta_path.read_text())
    n = meta["n_tokens"]
    if n == 0:  # said here: the row check would blame train.seq_len ("lower train.seq_len or add data")
        shown = data_cfg.path if isinstance(data_cfg.path, str) else ", ".join(data_cfg.path)
        raise ValueError(f"data.path {shown!r}: its {len(files)} file{'s' if len(files) != 1 else ''} hold"
                         f"{'s' if len(files) == 1 else ''} no text (0 tokens: every document is empty); "
                         "expected text to train on")
    tokens = np.memmap(cache / f"{key}.bin", dtype=np.dtype(meta["dtype"]), mode="r", shape=(n,))
    return TokenFile(tokens, np.load(cache / f"{key}.docs.npy"), key, meta["vocab_size"])


def _tokenize(files, tokenizer, text_field, cache: Path, key: str) -> None:
    cache.mkdir(parents=True, exist_ok=True)
    dtype = token_dtype(tokenizer.vocab_size)
    # Files in a fixed pseudo-random order, so that the held-out tail is a sample of all of them.
    order = np.random.default_rng(0).permutation(len(files))
    starts, total = [], 0
    tmp = cache / f".{key}.{os.getpid()}.tmp"
    # Files (with rate and ETA) and tokens as they go: a large corpus takes minutes once, later runs
    # read the cache. disable=None: shown on a terminal, silent in logs and tests.
    bar = tqdm(total=len(files), desc="tokenizing", unit=" files", disable=None, dynamic_ncols=True)
    try:
        with open(tmp, "wb") as out:
            for i in order:
                for doc in iter_documents(files[i], text_field):
                    ids = tokenizer.encode_bytes(doc)
                    if len(ids) == 0:
                        continue
                    starts.append(total)
                    out.write(np.asarray(ids).astype(dtype, copy=False).tobytes())
                    total += len(ids)
                bar.set_postfix(tokens=total, refresh=False)
                bar.update(1)
    except BaseException:  # a bad record or Ctrl-C: no orphaned partial file (its name has our pid)
        tmp.unlink(missing_ok=True)
        raise
    finally:
        bar.close()
    os.replace(tmp, cache / f"{key}.bin")
    np.save(cache / f".{key}.docs.tmp.npy", np.asarray(starts, dtype=np.int64))
    os.replace(cache / f".{key}.docs.tmp.npy", cache / f"{key}.docs.npy")
    meta = {"format": FORMAT_VERSION, "n_tokens": total, "n_docs": len(starts), "dtype": np.dtype(dtype).name,
            "vocab_size": tokenizer.vocab_size, "tokenizer": tokenizer.name, "files": [str(f) for f in files]}
    (cache / f".{key}.json.tmp").write_text(json.dumps(meta))
    os.replace(cache / f".{key}.json.tmp", cache / f"{key}.json")  # last: marks the pair complete


# --- splits and rows ------------------------------------------------------------------------------------
def split_point(tf: TokenFile, val_fraction: float) -> int:
    """Where validation starts: a document start near the cut when one is close, else the cut itself."""
    n = tf.n_tokens
    if val_fraction == 0:
        return n
    # a fraction asked for but rounding to no token still asks for validation: at least one token, so
    # that a split too small for a row is the validation split's clear error, not silently no validation
    want = max(1, int(round(n * val_fraction)))
    cut = n - want
    j = int(np.searchsorted(tf.doc_starts, cut))
    near = [int(tf.doc_starts[k]) for k in (j - 1, j) if 0 < k < len(tf.doc_starts)]
    near = [s for s in near if want / 2 <= n - s <= 2 * want]
    return min(near, key=lambda s: abs(s - cut)) if near else cut


class PackedRows:
    """Fixed-length rows over tokens[start:end]: row i -> (input_ids (l,), targets (l,), seq_idx (l,))."""

    def __init__(self, tf: TokenFile, start: int, end: int, seq_len: int, pack: bool = True, split: str = "train"):
        self.tf, self.start, self.seq_len, self.pack = tf, start, seq_len, pack
        n = end - start
        if n < seq_len + 1:
            raise ValueError(f"train.seq_len {seq_len} is larger than the data: the {split} split has {n} tokens "
                             f"and a row needs seq_len + 1 = {seq_len + 1}; lower train.seq_len or add data"
                             + (" (or raise data.val_fraction)" if split == "validation" else ""))
        self.n_rows = (n - 1) // seq_len

    def __len__(self) -> int:
        return self.n_rows

    def batch(self, rows) -> dict[str, torch.Tensor]:
        """Rows by index -> input_ids, targets, seq_idx: each (b, l) int64."""
        l = self.seq_len
        starts = [self.start + int(r) * l for r in rows]
        window = np.stack([np.asarray(self.tf.tokens[s:s + l + 1], dtype=np.int64) for s in starts])  # (b, l+1)
        out = {"input_ids": torch.from_numpy(window[:, :-1].copy()), "targets": torch.from_numpy(window[:, 1:].copy())}
        if self.pack:
            pos = np.asarray(starts)[:, None] + np.arange(l + 1)[None, :]  # (b, l+1) token positions
            doc = np.searchsorted(self.tf.doc_starts, pos, side="right") - 1  # document of each token
            seq_idx = doc[:, :-1] - doc[:, :1]  # (b, l) from 0 within each row
            crossing = doc[:, 1:] != doc[:, :-1]  # target starts the next document: nothing to predict
            out["targets"][torch.from_numpy(crossing)] = IGNORE_INDEX
            out["seq_idx"] = torch.from_numpy(seq_idx.astype(np.int64))
        return out


class RowSampler:
    """Sample k of the run -> a row: epoch k // n_rows, a fresh seeded permutation per epoch.

    The position in the data is just the number of samples consumed, so resuming is exact."""

    def __init__(self, n_rows: int, seed: int):
        self.n_rows, self.seed = n_rows, seed
        self._epoch, self._perm = -1, None

    def rows(self, first: int, count: int) -> list[int]:
        out = []
        for k in range(first, first + count):
            epoch, j = divmod(k, self.n_rows)
            if epoch != self._epoch:
                self._epoch = epoch
                self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.n_rows)
            out.append(int(self._perm[j]))
        return out


class TrainData:
    """Train and validation rows of one token file, and each rank's share of every step."""

    def __init__(self, tf: TokenFile, seq_len: int, val_fraction: float, seed: int, pack: bool = True):
        self.tf, self.key = tf, tf.key
        cut = split_point(tf, val_fraction)
        self.train = PackedRows(tf, 0, cut, seq_len, pack, "train")
        self.val = PackedRows(tf, cut, tf.n_tokens, seq_len, pack, "validation") if cut < tf.n_tokens else None
        self.sampler = RowSampler(len(self.train), seed)

    def step_batches(self, first: int, global_batch: int, micro: int, rank: int, world: int):
        """The micro-batches of one optimizer step that this rank computes, `first` being the samples
        consumed before it (not the step: a run resumed with another train.batch_size must go on at the
        next unseen sample): samples [first + rank*B/world, first + (rank+1)*B/world) in runs of `micro`."""
        per_rank = global_batch // world
        rows = self.sampler.rows(first + rank * per_rank, per_rank)
        return [self.train.batch(rows[i:i + micro]) for i in range(0, per_rank, micro)]

    def val_batches(self, n_rows: int, micro: int, rank: int, world: int):
        """The first n_rows validation rows (always the same), dealt round-robin to the ranks."""
        if self.val is None:
            return []
        mine = list(range(min(n_rows, len(self.val))))[rank::world]
        return [self.val.batch(mine[i:i + micro]) for i in range(0, len(mine), micro)]

    @property
    def n_val_rows(self) -> int:
        return len(self.val) if self.val is not None else 0


class TaskData:
    """A synthetic task of mambakit.tasks as training data: the global batch that starts at sample
    `first` (samples consumed so far) is generated from the seed (seed, 0, first) and cut into the
    ranks' shares, validation from (seed, 1), so any number of processes sees the same examples, a
    resumed run the same ones it would have seen, and one resumed with another batch size never
    reuses a seed of the batches it already trained on (the position only grows)."""

    def __init__(self, name: str, params: dict, seed: int):
        from ..tasks import get_task
        self.task = get_task(name, **params)
        self.seed = seed
        self.key = f"task:{name}:{sorted(params.items())}"
        self.vocab_size = self.task.vocab_size
        self.n_val_rows = 1 << 30  # generated on demand: as many as asked for

    def _rows(self, batch) -> dict:
        return {"input_ids": batch.input_ids, "targets": batch.targets}

    def step_batches(self, first: int, global_batch: int, micro: int, rank: int, world: int):
        per_rank = global_batch // world
        whole = self.task.generate(global_batch, seed=(self.seed, 0, first))
        mine = slice(rank * per_rank, (rank + 1) * per_rank)
        x, y = whole.input_ids[mine], whole.targets[mine]  # (b, l) each
        return [{"input_ids": x[i:i + micro], "targets": y[i:i + micro]} for i in range(0, per_rank, micro)]

    def val_batches(self, n_rows: int, micro: int, rank: int, world: int):
        whole = self.task.generate(n_rows, seed=(self.seed, 1))
        x, y = whole.input_ids[rank::world], whole.targets[rank::world]
        return [{"input_ids": x[i:i + micro], "targets": y[i:i + micro]} for i in range(0, x.shape[0], micro)]
