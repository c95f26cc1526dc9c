"""ModelConfig: one dataclass for every model mambakit builds, with JSON round-trip and presets.

Letters: d model width, e inner width (expand * d), h heads, p head dim, n state dim, g groups,
k conv width, v vocabulary.

A model is a stack of residual blocks given by `layer_pattern`, one character per block, as
Megatron writes it: `M` the SSM mixer (`ssm_layer`: mamba2, mamba1 or s4d), `*` attention,
`-` MLP. Each kind has its own sub-config.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

PATTERN_CHARS = {"M": "ssm", "*": "attention", "-": "mlp"}
SSM_LAYERS = ("mamba1", "mamba2", "s4d")
MLP_ACTIVATIONS = ("swiglu", "gelu", "relu2")


@dataclass
class Mamba1Config:
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: int | str = "auto"  # "auto" = ceil(d / 16)
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4
    conv_bias: bool = True
    bias: bool = False


@dataclass
class Mamba2Config:
    d_state: int = 128
    d_conv: int = 4
    expand: int = 2
    headdim: int = 64
    ngroups: int = 1
    chunk_size: int = 256
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4
    dt_limit: tuple[float, float] = (0.0, float("inf"))
    A_init_range: tuple[float, float] = (1.0, 16.0)
    conv_bias: bool = True
    bias: bool = False
    norm_before_gate: bool = False


@dataclass
class AttentionConfig:
    n_heads: int = 12
    n_kv_heads: int | None = None  # None = n_heads (MHA); fewer = grouped-query attention
    head_dim: int | None = None  # None = d_model // n_heads
    rotary_fraction: float = 0.0  # share of head_dim rotated by RoPE; 0 = no position encoding
    rope_theta: float = 10000.0
    bias: bool = False
    max_seqlen: int | None = None  # a hard context limit, if the model has one

    def head_dim_for(self, d_model: int) -> int:
        """The width of one head: head_dim, else d_model // n_heads."""
        return self.head_dim or d_model // self.n_heads

    def rotary_dim_for(self, d_model: int) -> int:
        """The dims of a head RoPE rotates: rotary_fraction of it, rounded down to whole pairs."""
        return int(self.head_dim_for(d_model) * self.rotary_fraction) // 2 * 2


@dataclass
class MLPConfig:
    hidden_size: int | None = None  # None = 4 * d_model
    activation: str = "swiglu"  # swiglu (gated), gelu, relu2 (squared ReLU)
    bias: bool = False


@dataclass
class S4DConfig:
    d_state: int = 64
    init: str = "real"  # "real" (S4D-Real, A_n = -(n+1)) or "lin" (S4D-Lin, complex -1/2 + i pi n); layers/s4d.py
    dt_min: float = 0.001
    dt_max: float = 0.1
    expand: int = 2  # the S4D runs over e = expand * d_model channels


_SUB_CONFIGS = {"mamba1": Mamba1Config, "mamba2": Mamba2Config, "attention": AttentionConfig,
                "mlp": MLPConfig, "s4d": S4DConfig}


def _unknown_key_error(where: str, key: str, valid) -> ValueError:
    near = difflib.get_close_matches(key, list(valid), n=1)
    hint = f"; did you mean {near[0]!r}?" if near else ""
    return ValueError(f"unknown {where} field {key!r}{hint} (valid: {', '.join(sorted(valid))})")


@dataclass
class ModelConfig:
    d_model: int = 768
    n_layer: int = 24
    vocab_size: int = 50277
    pad_vocab_size_multiple: int = 8
    layer_pattern: str | None = None  # None = "M" * n_layer
    ssm_layer: str = "mamba2"
    tie_embeddings: bool = True
    norm_eps: float = 1e-5
    residual_in_fp32: bool = True
    initializer_range: float = 0.02
    mamba1: Mamba1Config = field(default_factory=Mamba1Config)
    mamba2: Mamba2Config = field(default_factory=Mamba2Config)
    attention: AttentionConfig = field(default_factory=AttentionConfig)
    mlp: MLPConfig = field(default_factory=MLPConfig)
    s4d: S4DConfig = field(default_factory=S4DConfig)
    # The special tokens a checkpoint's config names (bos_token_id, eos_token_id: an id or a list,
    # pad_token_id), kept so that a conversion hands them on: the model itself never reads them.
    token_ids: dict = field(default_factory=dict)

    def __post_init__(self):
        for name, cls in _SUB_CONFIGS.items():
            value = getattr(self, name)
            if isinstance(value, dict):
                setattr(self, name, _sub_from_dict(cls, value, name))
            elif not isinstance(value, cls):
                raise ValueError(f"ModelConfig.{name} must be a {cls.__name__} or a dict of its fields, "
                                 f"got {type(value).__name__}")
        if isinstance(self.mamba2.dt_limit, list):
            self.mamba2.dt_limit = tuple(self.mamba2.dt_limit)
        if isinstance(self.mamba2.A_init_range, list):
            self.mamba2.A_init_range = tuple(self.mamba2.A_init_range)
        if self.layer_pattern is None:
            self.layer_pattern = "M" * self.n_layer
        self.validate()

    # --- derived sizes -------------------------------------------------------------------------
    @property
    def padded_vocab_size(self) -> int:
        m = self.pad_vocab_size_multiple
        return int(math.ceil(self.vocab_size / m) * m) if m > 1 else self.vocab_size

    @property
    def max_seqlen(self) -> int | None:
        """The longest sequence the model accepts, or None: SSM-only models have no limit."""
        return self.attention.max_seqlen if "*" in self.layer_pattern else None

    def mamba1_dt_rank(self) -> int:
        r = self.mamba1.dt_rank
        return math.ceil(self.d_model / 16) if r == "auto" else int(r)

    # --- checks ----------------------------------------------------------------------------------
    def validate(self) -> None:
        check_annotated(self, "ModelConfig.", _MODEL_RULES, skip=_SUB_CONFIGS)
        if not self.norm_eps > 0:
            raise ValueError(f"ModelConfig.norm_eps must be > 0, got {self.norm_eps!r}")
        if self.ssm_layer not in SSM_LAYERS:
            raise ValueError(f"ModelConfig.ssm_layer must be one of {SSM_LAYERS}, got {self.ssm_layer!r}")
        pattern = self.layer_pattern
        if not isinstance(pattern, str) or not pattern:
            raise ValueError("ModelConfig.layer_pattern must be a non-empty string of 'M', '*' and '-'")
        bad = sorted(set(pattern) - set(PATTERN_CHARS))
        if bad:
            raise ValueError(f"ModelConfig.layer_pattern has unknown characters {bad}; "
                             "expected 'M' (SSM), '*' (attention) and '-' (MLP)")
        if len(pattern) != self.n_layer:
            raise ValueError(f"ModelConfig.layer_pattern has {len(pattern)} layers but n_layer is {self.n_layer}")
        # The sub-configs the stack uses: every size a positive int, every rate a number in range.
        used = ({self.ssm_layer} if "M" in pattern else set()) | {PATTERN_CHARS[ch] for ch in set(pattern) - {"M"}}
        for name in sorted(used):
            check_annotated(getattr(self, name), name + ".", _MODEL_RULES)
        if "M" in pattern and self.ssm_layer in ("mamba1", "mamba2", "s4d"):
            sub = getattr(self, self.ssm_layer)
            if not 0 < sub.dt_min <= sub.dt_max:
                raise ValueError(f"{self.ssm_layer}: need 0 < dt_min <= dt_max, got dt_min={sub.dt_min}, "
                                 f"dt_max={sub.dt_max}")
        if "M" in pattern and self.ssm_layer == "mamba2":
            m2 = self.mamba2
            lo, hi = m2.dt_limit
            if not 0 <= lo < hi:
                raise ValueError(f"mamba2: dt_limit must be (lo, hi) with 0 <= lo < hi, got {m2.dt_limit}")
            lo, hi = m2.A_init_range
            if not 0 < lo <= hi < 3.4e38:  # drawn in fp32 (uniform_ refuses bounds beyond its range)
                raise ValueError(f"mamba2: A_init_range must be (lo, hi) with 0 < lo <= hi, both finite in fp32 "
                                 f"(A = -uniform(lo, hi)), got {m2.A_init_range}")
            e = m2.expand * self.d_model
            if e % m2.headdim:
                raise ValueError(f"mamba2: expand*d_model = {e} is not divisible by headdim {m2.headdim}")
            h = e // m2.headdim
            if h % m2.ngroups:
                raise ValueError(f"mamba2: {h} heads are not divisible by ngroups {m2.ngroups}")
        if "*" in pattern:
            a = self.attention
            kv = a.n_kv_heads or a.n_heads
            if a.n_heads % kv:
                raise ValueError(f"attention: n_heads {a.n_heads} is not divisible by n_kv_heads {kv}")
            if a.head_dim is None and self.d_model % a.n_heads:
                raise ValueError(f"attention: d_model {self.d_model} is not divisible by n_heads {a.n_heads}; set head_dim")
            if not 0.0 <= a.rotary_fraction <= 1.0:
                raise ValueError(f"attention: rotary_fraction must be in [0, 1], got {a.rotary_fraction}")
            hd = a.head_dim_for(self.d_model)
            if a.rotary_fraction > 0 and a.rotary_dim_for(self.d_model) == 0:
                raise ValueError(f"attention: rotary_fraction {a.rotary_fraction} of head_dim {hd} rotates no pair "
                                 f"of dims (no position encoding at all); use 0 for none or at least {2 / hd:.3g}")
            if not a.rope_theta > 0:
                raise ValueError(f"attention: rope_theta must be > 0, got {a.rope_theta}")
        check_token_ids(self.token_ids)
        if "-" in pattern and self.mlp.activation not in MLP_ACTIVATIONS:
            raise ValueError(f"mlp: activation must be one of {MLP_ACTIVATIONS}, got {self.mlp.activation!r}")

    # --- serialization ---------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        if not d["token_ids"]:  # as configs written before the field: older mambakit reads them
            del d["token_ids"]
        d["mamba2"]["dt_limit"] = [_finite_or_str(v) for v in self.mamba2.dt_limit]
        d["mamba2"]["A_init_range"] = list(self.mamba2.A_init_range)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        if not isinstance(d, dict):
            raise ValueError(f"a ModelConfig is built from a dict of its fields, got {type(d).__name__}")
        valid = {f.name for f in dataclasses.fields(cls)}
        for key in d:
            if key not in valid:
                raise _unknown_key_error("ModelConfig", key, valid)
        d = dict(d)
        if isinstance(d.get("mamba2"), dict) and isinstance(d["mamba2"].get("dt_limit"), (list, tuple)):
            # JSON writes an infinite bound as "inf": read it back; anything else is left to validate()
            d["mamba2"] = dict(d["mamba2"], dt_limit=tuple(_float_or_keep(v) for v in d["mamba2"]["dt_limit"]))
        return cls(**d)

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_json(cls, path_or_text: str | Path) -> "ModelConfig":
        """From JSON text, a JSON file, or a checkpoint folder (its config.json, mambakit's own format)."""
        if isinstance(path_or_text, str) and path_or_text.lstrip().startswith("{"):
            text = path_or_text
        else:
            p = Path(path_or_text)
            if p.is_dir():
                p = p / "config.json"
            if not p.is_file():
                raise ValueError(f"{p}: no such file; from_json takes JSON text, a JSON file or a checkpoint folder")
            text = p.read_text(encoding="utf-8")
        raw = json.loads(text)
        if isinstance(raw, dict) and "mambakit_format" in raw:  # a saved model's config.json
            if not isinstance(raw.get("model"), dict):
                raise ValueError("a mambakit config.json holds the ModelConfig under 'model'; this one has none")
            raw = raw["model"]
        elif isinstance(raw, dict) and ("model_type" in raw or "ssm_cfg" in raw):
            kind = raw.get("model_type", "mamba_ssm")
            raise ValueError(f"this is a {kind!r} config of another library, not a ModelConfig; "
                             "mambakit.load(folder) converts such checkpoints")
        if not isinstance(raw, dict):
            raise ValueError(f"a ModelConfig JSON must be an object, got {type(raw).__name__}")
        return cls.from_dict(raw)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "ModelConfig":
        from .presets import PRESETS
        if not isinstance(name, str):
            raise ValueError(f"a preset is named by a string (known: {', '.join(PRESETS)}), got {type(name).__name__}")
        if name not in PRESETS:
            near = difflib.get_close_matches(name, list(PRESETS), n=3)
            hint = f"; did you mean {', '.join(near)}?" if near else ""
            raise ValueError(f"unknown preset {name!r}{hint} (known: {', '.join(PRESETS)})")
        base = PRESETS[name].to_dict()
        if "n_layer" in overrides and "layer_pattern" not in overrides and set(base["layer_pattern"]) == {"M"}:
            base["layer_pattern"] = None  # a pure SSM stack follows n_layer
        # A sub-config given as a dict changes only the fields it names (mamba2={"chunk_size": 16}
        # keeps the preset's d_state); given as a config object it replaces the preset's.
        return cls.from_dict(deep_merge(base, overrides))


def deep_merge(base: dict, extra: dict) -> dict:
    """base with extra's entries; where both hold a dict, merged recursively (neither is modified)."""
    out = dict(base)
    for k, v in extra.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _float_or_keep(v):
    """A number, or one spelled as a string ("inf", as to_dict writes it), as a float; other values unchanged."""
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return v
    return v


def _finite_or_str(v: float):
    return v if math.isfinite(v) else ("inf" if v > 0 else "-inf")


def is_finite_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_annotated(obj, prefix: str, rules: dict, skip=()) -> None:
    """Each field of a config dataclass against the rule for its annotation: rules maps an
    annotation (as written, e.g. "int | None") to (accepts(value), what it must be, in words).
    None passes where the annotation allows it; fields without a rule are not checked here."""
    for f in dataclasses.fields(obj):
        kind, v = str(f.type), getattr(obj, f.name)
        rule = rules.get(kind)
        if f.name in skip or rule is None or (v is None and "None" in kind):
            continue
        if not rule[0](v):
            raise ValueError(f"{prefix}{f.name} must be {rule[1]}, got {v!r}")


TOKEN_ID_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id")


def _is_token_id(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def check_token_ids(token_ids) -> None:
    """ModelConfig.token_ids: a dict of TOKEN_ID_KEYS to ids >= 0 (eos_token_id may be a list of them)
    or None (the checkpoint's config has the key and sets no token: kept so that a writer says so too)."""
    if not isinstance(token_ids, dict):
        raise ValueError(f"ModelConfig.token_ids must be a dict like {{'eos_token_id': 0}}, got {token_ids!r}")
    for key, v in token_ids.items():
        if key not in TOKEN_ID_KEYS:
            raise _unknown_key_error("ModelConfig.token_ids", key, TOKEN_ID_KEYS)
        ok = v is None or _is_token_id(v) or (key == "eos_token_id" and isinstance(v, list) and v and all(map(_is_token_id, v)))
        if not ok:
            what = "an id >= 0, a non-empty list of them or None" if key == "eos_token_id" else "an id >= 0 or None"
            raise ValueError(f"ModelConfig.token_ids[{key!r}] must be {what}, got {v!r}")


def _is_size(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1  # bools are not ints here


# ModelConfig's fields: ints are positive sizes, floats finite numbers >= 0 (rates, scales;
# validate adds the stricter bounds), "int | str" (dt_rank) allows "auto".
_MODEL_RULES = {
    "int": (_is_size, "a positive int"),
    "int | None": (_is_size, "a positive int"),
    "int | str": (lambda v: v == "auto" or _is_size(v), "a positive int"),
    "float": (lambda v: is_finite_number(v) and v >= 0, "a finite number >= 0"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "tuple[float, float]": (lambda v: isinstance(v, tuple) and len(v) == 2
                            and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v),
                            "a pair of numbers (lo, hi)"),
}


def _sub_from_dict(cls, d: dict, where: str):
    valid = {f.name for f in dataclasses.fields(cls)}
    for key in d:
        if key not in valid:
            raise _unknown_key_error(where, key, valid)
    return cls(**d)
