"""TrainConfig: everything a training run needs, read from TOML with `--section.key value` overrides.

Letters: b batch (sequences), l length (tokens per sequence), v vocabulary.

A config file has up to five tables and two top-level keys:

    out_dir = "runs/tiny"        # metrics.jsonl, checkpoints/, config.toml go here
    seed = 0
    [model]   preset = "mamba2-tiny" and/or any ModelConfig field (nested: [model.mamba2])
    [data]    path, tokenizer, val_fraction, ...             (DataConfig)
    [optim]   lr, weight_decay, betas, warmup_steps, ...     (OptimConfig)
    [train]   steps, batch_size, seq_len, precision, ...     (LoopConfig)
    [checkpoint] every, keep_last                            (CheckpointConfig)

Every key is checked; an unknown one is a ValueError naming the nearest valid key.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import ModelConfig, check_annotated, deep_merge, is_finite_number

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    try:
        import tomli as tomllib
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError("mambakit train reads TOML: on Python < 3.11 install `tomli`") from err

PRECISIONS = ("auto", "fp32", "bf16")
STRATEGIES = ("ddp", "fsdp")


@dataclass
class DataConfig:
    path: str | list[str] = ""  # text file, folder of text files, .jsonl file, or a list of these
    tokenizer: str = "byte"  # "byte" (token = byte value, v = 256) or a path to a tokenizer.json
    extensions: list[str] = field(default_factory=lambda: [".txt", ".md", ".rst", ".py"])  # in folders
    exclude: list[str] = field(default_factory=list)  # folder names / glob patterns skipped inside folders
    text_field: str = "text"  # the field of each jsonl record holding the document
    val_fraction: float = 0.05  # share of tokens held out for validation (whole files where possible)
    cache_dir: str = ""  # where the token files live; "" = $MAMBAKIT_CACHE or ~/.cache/mambakit/tokens
    pack: bool = True  # seq_idx per row so that no document sees another
    task: str = ""  # instead of text: a synthetic task of mambakit.tasks (selective_copying, mqar, ...)
    task_params: dict = field(default_factory=dict)  # its parameters, e.g. {length = 256, num_pairs = 8}


@dataclass
class OptimConfig:
    lr: float = 3e-3
    min_lr_ratio: float = 0.1  # the cosine ends at lr * min_lr_ratio
    warmup_steps: int = 10
    weight_decay: float = 0.1  # never on A_log, D, dt_bias, norms, biases, embeddings
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    grad_clip: float = 1.0  # max global grad norm; 0 = no clipping (the norm is still logged)


@dataclass
class LoopConfig:
    steps: int = 100  # optimizer steps
    batch_size: int = 8  # global batch: sequences per optimizer step, summed over ranks
    micro_batch_size: int = 0  # sequences per forward pass on one rank; 0 = batch_size / world size
    seq_len: int = 64
    precision: str = "auto"  # auto = bf16 autocast on CUDA, fp32 on the CPU; parameters stay fp32
    compile: bool = False  # torch.compile the model
    activation_checkpointing: bool = False  # recompute each block in the backward: less memory, ~1 more forward
    device: str = "auto"  # auto = cuda if available else cpu
    distributed: str = "ddp"  # under torchrun: "ddp" (DistributedDataParallel) or "fsdp" (FSDP2 fully_shard)
    threads: int = 0  # torch CPU threads per process; 0 = leave torch's default
    log_every: int = 1
    eval_every: int = 50  # 0 = only at the end
    eval_rows: int = 32  # validation sequences per evaluation (the same ones every time)
    progress: bool = True  # a tqdm bar on rank 0


@dataclass
class CheckpointConfig:
    every: int = 50  # steps between checkpoints (and one at the end); 0 = only at the end
    keep_last: int = 2


@dataclass
class TrainConfig:
    out_dir: str = "runs/default"
    seed: int = 0
    model: dict = field(default_factory=lambda: {"preset": "mamba2-tiny"})
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: LoopConfig = field(default_factory=LoopConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    # --- building -----------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        check_keys(d)
        sections = {"data": DataConfig, "optim": OptimConfig, "train": LoopConfig, "checkpoint": CheckpointConfig}
        kwargs = {k: copy.deepcopy(v) for k, v in d.items()}
        for name, section_cls in sections.items():
            if name in kwargs:
                if not isinstance(kwargs[name], dict):
                    raise ValueError(f"[{name}] must be a table of keys, got {kwargs[name]!r}")
                kwargs[name] = section_cls(**kwargs[name])
        cfg = cls(**kwargs)
        cfg.validate()
        return cfg

    @classmethod
    def from_toml(cls, path, overrides: list[str] | dict | None = None) -> "TrainConfig":
        p = Path(path)
        if not p.is_file():
            raise ValueError(f"config file {str(path)!r} does not exist (expected a TOML file)")
        try:
            d = tomllib.loads(p.read_text())
        except tomllib.TOMLDecodeError as err:
            raise ValueError(f"{p}: not valid TOML ({err})") from err
        if isinstance(overrides, list):
            overrides = parse_overrides(overrides)
        for key, value in (overrides or {}).items():
            set_dotted(d, key, value)
        return cls.from_dict(d)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_toml(self) -> str:
        return dump_toml(self.to_dict())

    # --- checks -------------------------------------------------------------------------------
    def validate(self) -> None:
        t, o, dc, ck = self.train, self.optim, self.data, self.checkpoint
        check_annotated(self, "", _TYPE_RULES)
        for name, section in (("data", dc), ("optim", o), ("train", t), ("checkpoint", ck)):
            check_annotated(section, name + ".", _TYPE_RULES)
        if not o.eps > 0:
            raise ValueError(f"optim.eps must be > 0, got {o.eps!r}")
        if Path(self.out_dir).exists() and not Path(self.out_dir).is_dir():
            raise ValueError(f"out_dir {self.out_dir!r} is a file; expected a folder for the run (new or existing)")
        positive = {"train.steps": t.steps, "train.batch_size": t.batch_size, "train.seq_len": t.seq_len,
                    "train.log_every": t.log_every, "train.eval_rows": t.eval_rows,
                    "checkpoint.keep_last": ck.keep_last}
        for name, v in positive.items():
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        for name, v in {"train.micro_batch_size": t.micro_batch_size, "train.eval_every": t.eval_every,
                        "train.threads": t.threads, "checkpoint.every": ck.every,
                        "optim.warmup_steps": o.warmup_steps, "seed": self.seed}.items():
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {v!r}")
        if t.precision not in PRECISIONS:
            raise ValueError(f"train.precision must be one of {PRECISIONS}, got {t.precision!r}")
        if t.distributed not in STRATEGIES:
            raise ValueError(f"train.distributed must be one of {STRATEGIES}, got {t.distributed!r}")
        if not (isinstance(o.lr, (int, float)) and o.lr > 0):
            raise ValueError(f"optim.lr must be a positive number, got {o.lr!r}")
        if not 0 <= o.min_lr_ratio <= 1:
            raise ValueError(f"optim.min_lr_ratio must be in [0, 1], got {o.min_lr_ratio!r}")
        if o.weight_decay < 0 or o.grad_clip < 0:
            raise ValueError("optim.weight_decay and optim.grad_clip must be >= 0")
        if len(o.betas) != 2 or not all(0 <= b < 1 for b in o.betas):
            raise ValueError(f"optim.betas must be two numbers in [0, 1), got {o.betas!r}")
        if not 0 <= dc.val_fraction < 1:
            raise ValueError(f"data.val_fraction must be in [0, 1), got {dc.val_fraction!r}")
        if not dc.path and not dc.task:
            raise ValueError("data.path is empty; expected a text file, a folder of text files or a .jsonl file "
                             "(or data.task, a synthetic task)")
        if not isinstance(self.model, dict):
            raise ValueError("[model] must be a table: preset = \"...\" and/or ModelConfig fields")

    def model_config(self, vocab_size: int):
        """The ModelConfig: the preset (if any) with the table's fields merged in; vocab from the tokenizer."""
        fields = dict(self.model)
        preset = fields.pop("preset", None)
        base = ModelConfig.from_preset(preset).to_dict() if preset else {}
        merged = deep_merge(base, fields)
        if "vocab_size" not in fields:
            merged["vocab_size"] = vocab_size  # a model trained from scratch fits its tokenizer
        elif fields["vocab_size"] < vocab_size:
            raise ValueError(f"model.vocab_size {fields['vocab_size']} is smaller than the tokenizer's "
                             f"vocabulary of {vocab_size}")
        if "n_layer" in fields and "layer_pattern" not in fields and set(base.get("layer_pattern") or "M") == {"M"}:
            merged.pop("layer_pattern", None)  # an all-SSM preset made deeper or shallower stays all-SSM
        return ModelConfig.from_dict(merged)


# --- resume ---------------------------------------------------------------------------------------------
# Keys that decide which rows of the same data are trained on, in which order, and which are held
# out. The data position of a checkpoint is a count of samples consumed in the run's own order, so
# changing one of these on resume would repeat or skip rows, or (val_fraction) move trained-on tokens
# into validation: refused. seq_len: rows are cut anew, so sample k is another row; seed: another
# permutation of the rows (and other task examples and task validation rows); tokenizer: every token.
RESUME_REFUSED = ("seed", "train.seq_len", "data.val_fraction", "data.tokenizer")
# Keys that choose the data itself. Continuing on more or other data is a legitimate use of --resume,
# so these only warn, and only when the data really differs (the token file's key changed: a path
# spelled another way reads the same files).
RESUME_DATA = ("data.path", "data.extensions", "data.exclude", "data.text_field", "data.task", "data.task_params")
# Same rows and split, other document boundaries inside the rows: safe for the data position, but it
# changes what the model is taught, so it is named.
RESUME_WARNED = ("data.pack",)


def diff_dicts(old: dict, new: dict, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, old, new) for every leaf that differs; a key missing on one side reads as None."""
    out = []
    for key in sorted(set(old) | set(new), key=str):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += diff_dicts(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append((f"{prefix}{key}", a, b))
    return out


def format_changes(changes) -> str:
    return ", ".join(f"{key} {old!r} -> {new!r}" for key, old, new in changes)


def resume_changes(saved: dict, cfg: "TrainConfig", keys) -> list[tuple[str, Any, Any]]:
    """Which of `keys` (dotted) differ between a checkpoint's saved config and this one. A key the
    saved config lacks (written before the key existed) is not compared."""
    missing, now, out = object(), cfg.to_dict(), []
    for key in keys:
        old, new = saved, now
        for part in key.split("."):
            old = old.get(part, missing) if isinstance(old, dict) else missing
            new = new.get(part, missing) if isinstance(new, dict) else missing
        if old is not missing and old != new:
            out.append((key, old, new))
    return out


# --- key checking -------------------------------------------------------------------------------------
def valid_keys() -> list[str]:
    """Every dotted key a config may set."""
    keys = ["out_dir", "seed", "model.preset"]
    for section in ("data", "optim", "train", "checkpoint"):
        cls = {f.name: f for f in dataclasses.fields(TrainConfig)}[section].default_factory
        keys += [f"{section}.{f.name}" for f in dataclasses.fields(cls)]
    for f in dataclasses.fields(ModelConfig):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(default):
            keys += [f"model.{f.name}.{g.name}" for g in dataclasses.fields(default)]
        else:
            keys.append(f"model.{f.name}")
    return keys


def check_keys(d: dict, prefix: str = "") -> None:
    valid = valid_keys()
    tables = {k.rsplit(".", 1)[0] for k in valid if "." in k}
    for key, value in d.items():
        full = f"{prefix}{key}"
        if isinstance(value, dict) and full in tables:
            check_keys(value, full + ".")
        elif full in tables:  # "model = 5": a table's name given a plain value
            raise ValueError(f"[{full}] must be a table of keys (e.g. --{full}.KEY VALUE), got {value!r}")
        elif full not in valid:
            raise unknown_key(full, valid + sorted(tables))


def unknown_key(key: str, valid: list[str]) -> ValueError:
    near = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    if not near:  # a misspelled leaf in the right table: compare the last part only
        table, _, leaf = key.rpartition(".")
        same = [k for k in valid if k.rpartition(".")[0] == table]
        leaf_near = difflib.get_close_matches(leaf, [k.rpartition(".")[2] for k in same], n=1, cutoff=0.5)
        near = [f"{table}.{leaf_near[0]}" if table else leaf_near[0]] if leaf_near else []
    hint = f"; did you mean {near[0]!r}?" if near else ""
    return ValueError(f"unknown config key {key!r}{hint} (see docs/training.md for every key)")


# --- overrides ------------------------------------------------------------------------------------
def parse_value(text: str) -> Any:
    """A TOML literal (1e-3, true, [0.9, 0.95], "x") when it parses as one, else the plain string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """['--train.steps', '20', '--optim.lr=1e-3'] -> {'train.steps': 20, 'optim.lr': 0.001}."""
    out, i = {}, 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or len(arg) == 2:
            raise ValueError(f"expected an override --section.key VALUE, got {arg!r}")
        key = arg[2:]
        if "=" in key:
            key, value = key.split("=", 1)
            i += 1
        else:
            if i + 1 >= len(args):
                raise ValueError(f"override --{key} has no value; expected --{key} VALUE")
            value = args[i + 1]
            i += 2
        out[key.replace("-", "_") if "." not in key else key] = parse_value(value)
    return out


def set_dotted(d: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    for part in parts[:-1]:
        d = d.setdefault(part, {})
        if not isinstance(d, dict):
            raise ValueError(f"cannot set {key!r}: {part!r} is not a table")
    d[parts[-1]] = value


# What each annotation of the training config accepts (config.check_annotated): a command-line "no"
# for a bool or ".txt" for a list is refused, not read as true or split into characters.
_TYPE_RULES = {
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "int": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    "float": (is_finite_number, "a finite number"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "dict": (lambda v: isinstance(v, dict), "a table (e.g. {key = value})"),
    "list[str]": (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v), 'a list of strings (e.g. [".txt"])'),
    "list[float]": (lambda v: isinstance(v, list) and all(is_finite_number(x) for x in v), "a list of numbers"),
    "str | list[str]": (lambda v: isinstance(v, str) or (isinstance(v, list) and all(isinstance(x, str) for x in v)),
                        "a string or a list of strings"),
}


def dump_toml(d: dict, prefix: str = "") -> str:
    """A minimal TOML writer for the resolved config (strings, numbers, bools, lists, tables)."""
    scalars = [(k, v) for k, v in d.items() if not isinstance(v, dict)]
    tables = [(k, v) for k, v in d.items() if isinstance(v, dict)]
    lines = [f"{k} = {_toml_value(v)}" for k, v in scalars if v is not None]
    for k, v in tables:
        name = f"{prefix}{k}"
        lines.append(f"\n[{name}]")
        lines.append(dump_toml(v, name + ".").strip("\n"))
    return "\n".join(line for line in lines if line.strip() or line == "") + "\n"


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return {float("inf"): "inf", float("-inf"): "-inf"}.get(v, repr(v))
    if isinstance(v, (int,)):
        return str(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'
