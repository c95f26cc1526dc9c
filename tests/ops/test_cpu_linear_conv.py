"""The C matrix-vector loop of CPU decoding (cpu_linear.linear, linear_module), the sequence
conv (cpu_kernels.conv_seq), and where they must not run: against F.linear and the torch conv.

Letters: b batch, l length, c channels, k conv width, m rows of x.
"""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

import mambakit
from mambakit.ops import cpu_kernels, cpu_linear

pytestmark = pytest.mark.skipif(not cpu_kernels.available(), reason="no C compiler: the CPU kernels are off")

@pytest.fixture
def linear_calls(monkeypatch):
    """The C loop's calls, recorded: (rows, out, in, weight pointer) each, then run as they were."""
    calls, c_fn = [], cpu_kernels._lib.linear_rows

    def spy(m, out, in_, x, sx, W, bias, y, sy, nthreads):
        calls.append((m, out, in_, W))
        return c_fn(m, out, in_, x, sx, W, bias, y, sy, nthreads)

    monkeypatch.setattr(cpu_kernels._lib, "linear_rows", spy)
    return calls


def close_to_linear(y, x, w, b):
    """y equals F.linear(x, w, b) up to 1e-5 of each element's magnitude (|x| |w|^T + |b|)."""
    expected = F.linear(x, w, b)
    scale = F.linear(x.abs(), w.abs(), None if b is None else b.abs())
    assert y.shape == expected.shape and y.dtype == torch.float32
    assert ((y - expected).abs() <= 1e-5 * scale + 1e-6).all(), (y - expected).abs().max().item()


@pytest.mark.parametrize("d_in,d_out", [(7, 5), (33, 19), (768, 129)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_linear_matches_torch(d_in, d_out, with_bias, linear_calls):
    """Every row count up to LINEAR_MAX_ROWS (the 4-row block and the remainder), contiguous and
    strided x: the C loop runs and gives F.linear's numbers."""
    g = torch.Generator().manual_seed(d_in + d_out)
    w = torch.randn(d_out, d_in, generator=g)
    b = torch.randn(d_out, generator=g) if with_bias else None
    xs = [torch.randn(1, d_in, generator=g)]
    for rows in range(1, cpu_linear.LINEAR_MAX_ROWS + 1):
        wide = torch.randn(rows, 1, 2 * d_in, generator=g)
        xs += [torch.randn(rows, d_in, generator=g), torch.randn(rows, 1, d_in, generator=g),
               wide[..., :d_in], wide[:, 0, :d_in],  # row-strided views (xz[:, :e])
               wide[..., ::2], wide[:, 0, 1::2],  # stride(-1) = 2
               torch.randn(d_in, rows, generator=g).t(),  # a transposed x
               torch.randn(1, d_in, generator=g).expand(rows, d_in)]  # row stride 0
    xs += [torch.randn(2, 3, d_in, generator=g)[:, :2]]  # 4 rows no single stride reaches: a copy
    for x in xs:
        n = len(linear_calls)
        y = cpu_linear.linear(x, w, b)
        assert len(linear_calls) == n + 1, f"the C loop did not run for x {tuple(x.shape)} strides {x.stride()}"
        assert y.shape == (*x.shape[:-1], d_out) and y.is_contiguous()
        close_to_linear(y, x, w, b)


@pytest.mark.parametrize("rows", [1, 2, 3, 4])
def test_linear_same_bits_at_any_thread_count(rows):
    g = torch.Generator().manual_seed(rows)
    w, b = torch.randn(131, 768, generator=g), torch.randn(131, generator=g)  # 131 rows: uneven splits
    x = torch.randn(rows, 1536, generator=g)[:, :768]
    y1 = cpu_linear.linear(x, w, b, threads=1)
    for threads in (2, 3, None):
        assert torch.equal(cpu_linear.linear(x, w, b, threads=threads), y1)


def test_outputs_are_fp32_whatever_the_default_dtype():
    """The kernels' outputs are allocated fp32: under a float64 default dtype they were float64
    buffers read as fp32 (garbage)."""
    g = torch.Generator().manual_seed(5)
    x, w = torch.randn(2, 33, generator=g), torch.randn(19, 33, generator=g)
    xz, conv = torch.randn(1, 2 * 16, generator=g), torch.randn(1, 16, 4, generator=g)
    ref = F.linear(x, w)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        y = cpu_linear.linear(x, w)
        y_conv = cpu_kernels.conv_step(xz[:, :16], conv.clone(), torch.randn(16, 4, generator=g, dtype=torch.float32))
    finally:
        torch.set_default_dtype(previous)
    assert y.dtype == torch.float32 and y_conv.dtype == torch.float32
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)


@pytest.fixture
def onednn_calls(monkeypatch):
    """oneDNN's GEMM calls (cpu_linear.onednn_linear), recorded: x's shape each, then run."""
    calls, fn = [], cpu_linear._onednn_linear

    def spy(x, *args):
        calls.append(tuple(x.shape))
        return fn(x, *args)

    monkeypatch.setattr(cpu_linear, "_onednn_linear", spy)
    monkeypatch.setattr(cpu_linear, "ONEDNN_MIN_MACS", 0)  # the tests' small products count too
    return calls


def test_many_rows_run_onednn(onednn_calls, linear_calls, monkeypatch):
    """More than LINEAR_MAX_ROWS rows of fp32 inference: oneDNN's GEMM, within rounding of F.linear,
    for 2-d and 3-d x, with and without bias, x strided; MAMBAKIT_ONEDNN=0 gives F.linear's bits."""
    if not cpu_linear._onednn_on():
        pytest.skip("this torch has no working oneDNN linear")
    onednn_calls.clear()  # the first _onednn_on() checks the op with a call of its own
    g = torch.Generator().manual_seed(13)
    w, b = torch.randn(19, 33, generator=g), torch.randn(19, generator=g)
    many = cpu_linear.LINEAR_MAX_ROWS + 1
    cases = [(torch.randn(many, 33, generator=g), b), (torch.randn(2, 40, 33, generator=g), None),
             (torch.randn(3, many, 66, generator=g)[..., ::2], b)]
    with torch.no_grad():
        for x, bias in cases:
            torch.testing.assert_close(cpu_linear.linear(x, w, bias), F.linear(x, w, bias), rtol=1e-5, atol=1e-5)
        assert onednn_calls == [tuple(x.shape) for x, _ in cases] and not linear_calls
        monkeypatch.setenv("MAMBAKIT_ONEDNN", "0")
        x = cases[1][0]
        assert torch.equal(cpu_linear.linear(x, w), F.linear(x, w)) and len(onednn_calls) == len(cases)


def test_small_products_stay_on_f_linear(onednn_calls, monkeypatch):
    """Below ONEDNN_MIN_MACS multiply-adds oneDNN's fixed cost loses: F.linear runs, the same bits."""
    monkeypatch.setattr(cpu_linear, "ONEDNN_MIN_MACS", 1 << 22)
    x, w = torch.randn(8, 64), torch.randn(256, 64)  # 131,072 multiply-adds
    with torch.no_grad():
        assert torch.equal(cpu_linear.linear(x, w), F.linear(x, w))
        assert not onednn_calls
        cpu_linear.linear(torch.randn(5, 768), torch.randn(3072, 768))  # 11.8M: oneDNN
    assert onednn_calls[-1:] == [(5, 768)] or not cpu_linear._onednn_on()  # (the first call may check the op)


def test_many_rows_fall_back_to_torch(onednn_calls):
    """Autograd, another dtype, a bias F.linear broadcasts, a fake tensor: F.linear, not oneDNN."""
    g = torch.Generator().manual_seed(14)
    x, w, b = torch.randn(2, 8, 33, generator=g), torch.randn(19, 33, generator=g), torch.randn(19, generator=g)
    y = cpu_linear.linear(x, w.clone().requires_grad_(True), b)
    assert y.requires_grad and torch.equal(y.detach(), F.linear(x, w, b))
    # oneDNN would read a strided or expanded bias as if it were contiguous
    for args in ((x.double(), w.double(), b.double()), (x, w, torch.ones(1)), (x, w, torch.arange(38.0)[::2]),
                 (x, w, torch.tensor([5.0]).expand(19))):
        assert torch.equal(cpu_linear.linear(*args), F.linear(*args))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # autocast's dtype, as F.linear
        assert cpu_linear.linear(x, w, b).dtype == torch.bfloat16
    from torch._subclasses.fake_tensor import FakeTensorMode
    with torch.no_grad(), FakeTensorMode():
        assert cpu_linear.linear(torch.empty(2, 8, 33), torch.empty(19, 33)).shape == (2, 8, 19)
    assert not onednn_calls


def test_onednn_check_leaves_the_random_stream_and_the_caller_context_alone(monkeypatch):
    """The first oneDNN call checks the op on fixed values: the global random stream is untouched,
    and a float64 default dtype at that moment does not switch oneDNN off for the process."""
    monkeypatch.setattr(cpu_linear, "_onednn_state", None)
    monkeypatch.setattr(cpu_linear, "ONEDNN_MIN_MACS", 0)
    x, w = torch.randn(8, 16, dtype=torch.float32), torch.randn(4, 16, dtype=torch.float32)
    torch.manual_seed(5)
    want = torch.rand(3)
    torch.manual_seed(5)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        with torch.no_grad():
            cpu_linear.onednn_linear(x, w)
    finally:
        torch.set_default_dtype(default)
    assert torch.equal(torch.rand(3), want)
    assert cpu_linear._onednn_state is torch.backends.mkldnn.is_available()


def test_training_calls_the_module_so_its_backward_hooks_fire():
    model = mambakit.LM(mambakit.ModelConfig.from_preset("mamba2-tiny")).train()
    fired = []
    proj = model.layers[0].mixer.in_proj
    proj.register_full_backward_hook(lambda *a: fired.append("in_proj"))
    model(torch.randint(0, 100, (1, 12))).sum().backward()
    assert fired == ["in_proj"]


def test_linear_falls_back_to_torch(linear_calls):
    """Autograd, fp64, a strided weight or bias, no rows: F.linear itself, the same bits."""
    g = torch.Generator().manual_seed(11)
    w, b = torch.randn(19, 33, generator=g), torch.randn(19, generator=g)
    cases = [(torch.randn(2, 3, 33, generator=g).double(), w.double(), b.double()),
             (torch.randn(2, 33, generator=g).double(), w.double(), b.double()),
             (torch.randn(2, 33, generator=g), torch.randn(33, 19, generator=g).t(), b),  # weight.t()
             (torch.randn(2, 33, generator=g), w, torch.randn(38, generator=g)[::2]),
             (torch.randn(0, 33, generator=g), w, b)]
    for x, weight, bias in cases:
        y = cpu_linear.linear(x, weight, bias)
        assert y.dtype == x.dtype and torch.equal(y, F.linear(x, weight, bias))
    assert not linear_calls


@pytest.mark.parametrize("grad_of", ["x", "weight"])
def test_linear_under_autograd_gives_torch_gradients(grad_of, linear_calls):
    g = torch.Generator().manual_seed(12)
    x0, w0, b0 = torch.randn(2, 1, 33, generator=g), torch.randn(19, 33, generator=g), torch.randn(19, generator=g)
    grads = []
    for fn in (cpu_linear.linear, F.linear):
        x, w, b = x0.clone(), w0.clone(), b0.clone()
        leaves = [x] if grad_of == "x" else [w, b]
        for t in leaves:
            t.requires_grad_(True)
        y = fn(x, w, b)
        assert y.requires_grad
        (y * torch.arange(19.0)).sum().backward()
        grads.append([y.detach()] + [t.grad for t in leaves])
    assert all(torch.equal(a, e) for a, e in zip(*grads))
    assert not linear_calls
    with torch.no_grad():  # parameters that need grad, outside grad mode: the C loop
        cpu_linear.linear(x0, w0.requires_grad_(True), b0)
    assert len(linear_calls) == 1


def test_linear_module(linear_calls):
    g = torch.Generator().manual_seed(13)
    x = torch.randn(3, 1, 33, generator=g)
    for bias in (True, False):
        lin = torch.nn.Linear(33, 19, bias=bias)
        with torch.no_grad():
            n = len(linear_calls)
            close_to_linear(cpu_linear.linear_module(lin, x), x, lin.weight, lin.bias)
            assert len(linear_calls) == n + 1
        y = cpu_linear.linear_module(lin, x)  # grad mode, parameters needing grad: autograd works
        y.sum().backward()
        assert torch.equal(y, lin(x)) and lin.weight.grad is not None
    n = len(linear_calls)

    # hooks: the module is called, its hooks run (here one changes the output)
    lin, seen = torch.nn.Linear(33, 19), []
    lin.register_forward_pre_hook(lambda mod, args: seen.append("pre"))
    lin.register_forward_hook(lambda mod, args, out: seen.append("post") or out * 3)
    with torch.no_grad():
        y = cpu_linear.linear_module(lin, x)
        assert seen == ["pre", "post"] and torch.equal(y, F.linear(x, lin.weight, lin.bias) * 3)

    class Doubled(torch.nn.Linear):
        def forward(self, x):
            return 2 * super().forward(x)

    doubled, identity = Doubled(33, 19), torch.nn.Identity()
    parametrized = torch.nn.Linear(33, 19)
    torch.nn.utils.parametrize.register_parametrization(parametrized, "weight", Doubled(33, 33))  # W' = 2 (W A^T + c)
    with torch.no_grad():
        assert torch.equal(cpu_linear.linear_module(doubled, x), 2 * F.linear(x, doubled.weight, doubled.bias))
        assert cpu_linear.linear_module(identity, x) is x
        assert torch.equal(cpu_linear.linear_module(parametrized, x), parametrized(x))
    assert len(linear_calls) == n  # none of them through the C loop


DECODE_CASES = {"mamba1": ("mamba-tiny", {}), "mamba2": ("mamba2-tiny", {}), "hybrid": ("hybrid-tiny", {}),
                "hybrid-mamba1": ("hybrid-tiny", {"ssm_layer": "mamba1", "mamba1": {"d_state": 8}})}


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("case", list(DECODE_CASES))
def test_decode_steps_run_every_projection_through_linear(case, batch, linear_calls):
    """Prefill, then greedy one-token steps: each step's projections (in_proj, out_proj, attention's
    q/k/v/o, the MLP's, the LM head) go through the C loop, and the logits equal the full forward's."""
    name, overrides = DECODE_CASES[case]
    torch.manual_seed(2)
    model = mambakit.LM(mambakit.ModelConfig.from_preset(name, **overrides)).eval()
    ids = torch.randint(0, model.config.vocab_size, (batch, 7))
    with torch.inference_mode():
        cache = model.allocate_cache(batch)
        logits = [model(ids, cache=cache)]
        del linear_calls[:]
        for _ in range(4):
            ids = torch.cat([ids, logits[-1][:, -1:].argmax(-1)], dim=1)
            logits.append(model(ids[:, -1:], cache=cache))
        full = model(ids)
    assert (torch.cat(logits, 1) - full).abs().max() < 1e-4
    # every nn.Linear a step uses (x_proj and dt_proj run inside mamba1_step), batch rows each call
    names = {mod.weight.data_ptr(): n for n, mod in model.named_modules() if isinstance(mod, torch.nn.Linear)
             and not n.endswith(("x_proj", "dt_proj"))}
    assert {c[3] for c in linear_calls} == set(names), sorted(set(names.values()) - {names.get(c[3]) for c in linear_calls})
    assert {c[0] for c in linear_calls} == {batch}
    assert len(linear_calls) == 4 * len(names)


@pytest.mark.parametrize("b,l,c,k", [(1, 1, 16, 4), (2, 3, 40, 4), (1, 100, 33, 3), (3, 9, 17, 2), (2, 2, 48, 4)])
@pytest.mark.parametrize("with_state", [False, True])
def test_conv_seq_matches_torch_conv(b, l, c, k, with_state):
    """cpu_kernels.conv_seq == the torch causal conv: outputs, and the final state (the last k
    inputs, some from the old state when l < k); x a row-strided slice as in_proj's output."""
    from mambakit.ops.conv1d import causal_conv1d as conv_torch
    g = torch.Generator().manual_seed(b * 1000 + l * 10 + k)
    x = torch.randn(b, l, c + 7, generator=g)[..., 3:3 + c]  # row stride c + 7
    w, bias = torch.randn(c, k, generator=g), torch.randn(c, generator=g)
    state0 = torch.randn(b, c, k, generator=g) if with_state else None
    for act, bb in (("silu", bias), (None, None)):
        y_ref, s_ref = conv_torch(x, w, bb, act, initial_state=state0, return_final_state=True)
        state = state0.clone() if with_state else torch.zeros(b, c, k)
        y = cpu_kernels.conv_seq(x, w, bb, act == "silu", state=state)
        torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(state, s_ref, rtol=0, atol=0)
        if not with_state:  # no state given: zeros before t = 0, nothing written
            torch.testing.assert_close(cpu_kernels.conv_seq(x, w, bb, act == "silu"), y_ref, rtol=1e-5, atol=1e-6)
        # the dispatch point takes it for fp32 CPU inference, with the same results
        with torch.no_grad():
            y_op, s_op = mambakit.ops.causal_conv1d(x, w, bb, act, initial_state=state0, return_final_state=True)
        assert torch.equal(y_op, y) and torch.equal(s_op, state)
    y1 = cpu_kernels.conv_seq(x, w, bias, True, threads=1)
    assert torch.equal(y1, cpu_kernels.conv_seq(x, w, bias, True, threads=3))  # blocks split over threads


def test_conv_seq_rejects_bad_input():
    x = torch.randn(1, 4, 16)
    with pytest.raises(ValueError, match="state must be"):
        cpu_kernels.conv_seq(x, torch.randn(16, 4), state=torch.zeros(1, 16, 3))
    with pytest.raises(ValueError, match="contiguous last axis"):
        cpu_kernels.conv_seq(torch.randn(1, 16, 4).transpose(1, 2), torch.randn(16, 4))


class _Wrapped(torch.Tensor):
    """A tensor subclass, as quantized weights or DTensor are: no plain memory behind data_ptr()."""


def _forward_ad_linear(x, w):
    import torch.autograd.forward_ad as fwAD
    with fwAD.dual_level():
        dual = fwAD.make_dual(x, torch.ones_like(x))
        primal, tangent = fwAD.unpack_dual(cpu_linear.linear(dual, w))
        assert tangent is not None and torch.allclose(tangent, F.linear(torch.ones_like(x), w), atol=1e-5)
        return primal


@pytest.mark.parametrize("case", ["fake", "vmap", "forward_ad", "jit_trace", "subclass", "flop_counter"])
def test_linear_leaves_traced_and_transformed_calls_to_torch(case, linear_calls):
    """Tracing, dispatch modes and functorch transforms see through F.linear, not through a ctypes
    call on raw pointers (FakeTensorMode had segfaulted, jit.trace recorded only the empty buffer)."""
    g = torch.Generator().manual_seed(11)
    x, w = torch.randn(2, 24, generator=g), torch.randn(9, 24, generator=g)
    with torch.no_grad():
        if case == "fake":
            from torch._subclasses.fake_tensor import FakeTensorMode
            with FakeTensorMode():
                assert cpu_linear.linear(torch.empty(2, 24), torch.empty(9, 24)).shape == (2, 9)
        elif case == "vmap":
            y = torch.func.vmap(lambda r: cpu_linear.linear(r, w))(x)
            torch.testing.assert_close(y, F.linear(x, w))
        elif case == "forward_ad":
            torch.testing.assert_close(_forward_ad_linear(x, w), F.linear(x, w))
        elif case == "jit_trace":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # deprecation, and the shape checks as constants
                traced = torch.jit.trace(lambda a: cpu_linear.linear(a, w), (x,))
            x2 = torch.randn(2, 24, generator=g)
            torch.testing.assert_close(traced(x2), F.linear(x2, w))
        elif case == "subclass":
            y = cpu_linear.linear(x, w.as_subclass(_Wrapped))
            torch.testing.assert_close(y.as_subclass(torch.Tensor), F.linear(x, w))
        elif case == "flop_counter":
            from torch.utils.flop_counter import FlopCounterMode
            with FlopCounterMode(display=False) as counter:
                cpu_linear.linear(x, w)
            assert counter.get_total_flops() == 2 * 2 * 24 * 9
    if case != "jit_trace":  # jit.trace's own check runs the plain function once more, untraced
        assert not linear_calls


def test_linear_broadcast_bias_and_default_device(linear_calls):
    """A bias that F.linear broadcasts ((1,) or a scalar) is F.linear's; under a meta default
    device the CPU inputs still give CPU outputs (the buffers are allocated on the CPU)."""
    g = torch.Generator().manual_seed(12)
    x, w = torch.randn(1, 16, generator=g), torch.randn(5, 16, generator=g)
    with torch.no_grad():
        for bias in (torch.ones(1), torch.tensor(2.0)):
            torch.testing.assert_close(cpu_linear.linear(x, w, bias), F.linear(x, w, bias))
        assert not linear_calls
        with torch.device("meta"):
            y = cpu_linear.linear(x, w)
        assert y.device.type == "cpu" and linear_calls
        torch.testing.assert_close(y, F.linear(x, w), rtol=1e-5, atol=1e-5)


def test_linear_module_calls_patched_forward_and_global_hooks(linear_calls):
    lin = torch.nn.Linear(8, 3)
    x = torch.randn(1, 8)
    seen = []
    lin.forward = lambda inp: seen.append("patched") or F.linear(inp, lin.weight, lin.bias)
    with torch.no_grad():
        cpu_linear.linear_module(lin, x)
    assert seen == ["patched"] and not linear_calls
    del lin.forward
    handle = torch.nn.modules.module.register_module_forward_hook(lambda m, i, o: seen.append("global"))
    try:
        with torch.no_grad():
            cpu_linear.linear_module(lin, x)
    finally:
        handle.remove()
    assert seen == ["patched", "global"] and not linear_calls
    with torch.no_grad():
        cpu_linear.linear_module(lin, x)
    assert len(linear_calls) == 1  # neither left: the C loop again


def test_causal_conv1d_edge_shapes_keep_the_torch_behaviour():
    """No channels: empty outputs (as the torch op); no taps: the torch op's error, not silu(bias)."""
    with torch.no_grad():
        assert mambakit.ops.causal_conv1d(torch.randn(1, 4, 0), torch.randn(0, 4), None, "silu").shape == (1, 4, 0)
        with pytest.raises((ValueError, RuntimeError)):
            mambakit.ops.causal_conv1d(torch.randn(1, 4, 16), torch.randn(16, 0), torch.randn(16), "silu")


class _LowRankAdapter(torch.nn.Module):
    """A LoRA-like wrapper: base(x) + (x A^T) B^T. Not an nn.Linear, but it has .weight and .bias
    (the base layer's, as peft's wrappers expose them): a step reading those would drop the delta."""

    def __init__(self, base: torch.nn.Linear, rank: int = 2):
        super().__init__()
        self.base = base
        self.A = torch.nn.Parameter(torch.randn(rank, base.in_features) * 0.3)
        self.B = torch.nn.Parameter(torch.randn(base.out_features, rank) * 0.3)

    @property
    def weight(self):
        return self.base.weight

    @property
    def bias(self):
        return self.base.bias

    def forward(self, x):
        return self.base(x) + F.linear(F.linear(x, self.A), self.B)


@pytest.mark.parametrize("case", ["mamba1", "mamba2"])
@pytest.mark.parametrize("kernels", ["on", "off"])
def test_decode_steps_apply_adapters_on_the_projections(case, kernels, monkeypatch):
    """in_proj and out_proj wrapped by an adapter: prefill + steps equal the full forward (the
    prefill calls the modules; the steps must not read the base weights around them)."""
    if kernels == "off":
        monkeypatch.setenv("MAMBAKIT_CPU_KERNELS", "off")
    name, overrides = DECODE_CASES[case]
    torch.manual_seed(3)
    model = mambakit.LM(mambakit.ModelConfig.from_preset(name, **overrides)).eval()
    for block in model.layers:
        mixer = block.mixer
        mixer.in_proj, mixer.out_proj = _LowRankAdapter(mixer.in_proj), _LowRankAdapter(mixer.out_proj)
    ids = torch.randint(0, model.config.vocab_size, (2, 9))
    with torch.inference_mode():
        cache = model.allocate_cache(2)
        steps = [model(ids[:, :6], cache=cache)] + [model(ids[:, t:t + 1], cache=cache) for t in range(6, 9)]
        full = model(ids)
    assert (torch.cat(steps, 1) - full).abs().max() < 1e-4


@pytest.mark.parametrize("preset", ["mamba-tiny", "mamba2-tiny"])
def test_cpu_autocast_runs_the_torch_paths(preset):
    """Under CPU autocast the fp32-only kernels stand aside (the Mamba-1 scan had refused the bf16
    conv output): the logits come out in bf16, near the fp32 ones."""
    model = mambakit.LM(mambakit.ModelConfig.from_preset(preset)).eval()
    ids = torch.randint(0, 100, (2, 20), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = model(ids)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = model(ids)
    assert got.dtype == torch.bfloat16
    assert (got.float() - ref).abs().max() <= 0.05 * ref.abs().max()
