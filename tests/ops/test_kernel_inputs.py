"""The Triton wrappers' input checks, on the CPU (no interpreter): where tensors live, their dtypes,
and the backend choice. Everything here raises before any kernel could launch.

Letters: b batch, l length, e inner width, n state dim, h heads, p head dim, g groups, c conv
channels, k conv width.
"""
import pytest
import torch

pytest.importorskip("triton")

from mambakit import ops  # noqa: E402
from mambakit.ops.conv1d_triton import causal_conv1d_triton  # noqa: E402
from mambakit.ops.decode_mamba1_triton import mamba1_decode_step_triton  # noqa: E402
from mambakit.ops.decode_triton import mamba2_decode_step_triton  # noqa: E402
from mambakit.ops.norm_triton import gated_rms_norm_triton  # noqa: E402
from mambakit.ops.selective_scan.triton import selective_scan_triton  # noqa: E402
from mambakit.ops.ssd.triton import ssd_triton  # noqa: E402

b, l, e, n, h, p, g, k = 2, 5, 8, 4, 2, 4, 1, 4
c = h * p + 2 * g * n


def calls(**over):
    """Each wrapper with well-shaped inputs; `over` (name -> tensor) replaces one input by name."""
    z = torch.zeros
    specs = {
        "ssd_triton": (ssd_triton, dict(x=z(b, l, h, p), dt=z(b, l, h), A=-torch.ones(h), B=z(b, l, g, n),
                                        C=z(b, l, g, n))),
        "selective_scan_triton": (selective_scan_triton, dict(u=z(b, l, e), delta=z(b, l, e), A=-torch.ones(e, n),
                                                              B=z(b, l, n), C=z(b, l, n))),
        "causal_conv1d_triton": (causal_conv1d_triton, dict(x=z(b, l, c), weight=z(c, k))),
        "gated_rms_norm_triton": (gated_rms_norm_triton, dict(x=z(b, e), z=z(b, e), weight=torch.ones(e))),
        "mamba2_decode_step_triton": (mamba2_decode_step_triton, dict(
            xBC=z(b, c), dt=z(b, h), conv_state=z(b, c, k), ssm_state=z(b, h, p, n), conv_weight=z(c, k),
            conv_bias=None, A=-torch.ones(h), D=None, dt_bias=None, dt_softplus=True, dt_limit=(0.0, 1.0),
            ngroups=g, headdim=p)),
        "mamba1_decode_step_triton": (mamba1_decode_step_triton, dict(
            x=z(b, e), z=z(b, e), conv_state=z(b, e, k), ssm_state=z(b, e, n), conv_weight=z(e, k), conv_bias=None,
            x_proj_weight=z(1 + 2 * n, e), dt_proj_weight=z(e, 1), dt_proj_bias=None, A=-torch.ones(e, n), D=None,
            dt_rank=1)),
    }
    return {name: (fn, {**kw, **{a: v for a, v in over.get(name, {}).items()}}) for name, (fn, kw) in specs.items()}


OPS = list(calls())
FIRST = {"ssd_triton": "x", "selective_scan_triton": "u", "causal_conv1d_triton": "x",
         "gated_rms_norm_triton": "x", "mamba2_decode_step_triton": "xBC", "mamba1_decode_step_triton": "x"}


@pytest.fixture(autouse=True)
def no_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)


# fault -> (how the first activation is changed, the message expected); {op} and {name} are filled in
FAULTS = {
    "cpu": (lambda t: t, "{op}: the Triton kernels take CUDA tensors, got tensors on cpu"),
    "two_devices": (lambda t: t.to("meta"), "{op}: all tensors must be on one device, got .*{name} on meta"),
    "float64": (lambda t: t.double(), "{op}: {name} .*float64"),
}


@pytest.mark.parametrize("fault", list(FAULTS))
@pytest.mark.parametrize("op", OPS)
def test_device_and_dtype_faults_are_clear_errors(op, fault):
    fn, kw = calls()[op]
    change, message = FAULTS[fault]
    name = FIRST[op]
    kw[name] = change(kw[name])
    with pytest.raises(ValueError, match=message.format(op=op, name=name)):
        fn(**kw)


@pytest.mark.parametrize("op,name,value,message", [
    ("causal_conv1d_triton", "weight", torch.zeros(c + 1, k), r"weight must be \(16, k\)"),
    ("causal_conv1d_triton", "bias", torch.zeros(3), r"bias must be \(16,\)"),
    ("causal_conv1d_triton", "activation", "relu", "unknown activation 'relu'"),
    ("causal_conv1d_triton", "seq_idx", torch.zeros(b, l + 1, dtype=torch.long), r"seq_idx must be \(2, 5\)"),
    ("gated_rms_norm_triton", "group_size", 3, "not a multiple of group_size 3"),
    ("gated_rms_norm_triton", "weight", torch.ones(e + 1), r"weight must be \(8,\)"),
    ("gated_rms_norm_triton", "z", torch.zeros(b, e + 1), "z must have the shape of x"),
    ("mamba2_decode_step_triton", "ssm_state", torch.zeros(b, h, p, n, dtype=torch.float64), "contiguous float32"),
    ("mamba2_decode_step_triton", "conv_state", torch.zeros(b, c + 1, k), "conv_state must be a contiguous"),
    ("mamba2_decode_step_triton", "D", torch.zeros(h + 1), r"D must have shape \(2,\) or \(2, 4\)"),
    ("mamba2_decode_step_triton", "z", torch.zeros(b, h), r"z must have shape"),
    ("mamba1_decode_step_triton", "A", -torch.ones(e + 1, n), r"A has shape \(9, 4\), expected \(8, n\)"),
    ("mamba1_decode_step_triton", "ssm_state", torch.zeros(b, e, n + 1), "ssm_state must be contiguous fp32"),
    ("mamba1_decode_step_triton", "x_proj_weight", torch.zeros(3, e), "x_proj_weight has shape"),
    ("mamba1_decode_step_triton", "D", torch.zeros(e + 1), r"D has shape \(9,\)"),
    ("selective_scan_triton", "D", torch.zeros(e + 1), r"D has shape \(9,\)"),
    ("selective_scan_triton", "initial_state", torch.zeros(b, e, n + 1), r"initial_state has shape \(2, 8, 5\)"),
    ("selective_scan_triton", "seq_idx", torch.zeros(b, l), "seq_idx has dtype torch.float32"),
    ("ssd_triton", "cu_seqlens", torch.tensor([0, 2, 5]), "b must be 1"),
])
def test_bad_shapes_are_named(op, name, value, message):
    fn, kw = calls(**{op: {name: value}})[op]
    with pytest.raises(ValueError, match=message):
        fn(**kw)


def test_ssd_triton_refuses_seq_idx_with_cu_seqlens():
    fn, kw = calls()["ssd_triton"]
    with pytest.raises(ValueError, match="give seq_idx or cu_seqlens, not both"):
        fn(**kw, seq_idx=torch.zeros(b, l, dtype=torch.long), cu_seqlens=torch.tensor([0, l]))


def test_resolve_backend(monkeypatch):
    cpu = torch.zeros(1)
    monkeypatch.delenv("MAMBAKIT_BACKEND", raising=False)
    assert ops.resolve_backend(None, cpu, "op") == "chunked"  # auto on the CPU
    assert ops.resolve_backend("torch", cpu, "op") == "chunked"
    assert ops.resolve_backend("reference", cpu, "op") == "reference"
    monkeypatch.setenv("MAMBAKIT_BACKEND", "reference")
    assert ops.resolve_backend(None, cpu, "op") == "reference"  # the environment when no argument
    assert ops.resolve_backend("chunked", cpu, "op") == "chunked"  # the argument wins
    with pytest.raises(ValueError, match="unknown backend 'cuda' for op; expected one of"):
        ops.resolve_backend("cuda", cpu, "op")
    with pytest.raises(ValueError, match="backend 'triton' for op needs CUDA tensors"):
        ops.resolve_backend("triton", cpu, "op")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert ops.resolve_backend("triton", cpu, "op") == "triton"
