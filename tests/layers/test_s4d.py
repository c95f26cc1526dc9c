"""S4D: convolution == recurrence == reference loop (outputs, states, gradients); the mixer trains
and decodes inside an LM."""
import math

import pytest
import torch

import mambakit
from mambakit.config import ModelConfig
from mambakit.layers.s4d import S4DMixer
from mambakit.ops.lti import discretize_zoh, kernel, lti_conv, lti_kernel, lti_ref, lti_step


def modes(e, n, complex_, dtype=torch.float64):
    A = -(torch.rand(e, n, dtype=dtype) + 0.05)
    if complex_:
        A = torch.complex(A, math.pi * torch.arange(n, dtype=dtype).repeat(e, 1))
    dt = torch.exp(torch.rand(e, dtype=dtype) * (math.log(0.5) - math.log(1e-3)) + math.log(1e-3))
    dtA, dB = discretize_zoh(A, dt)
    C = torch.randn(e, n, dtype=dtA.dtype)
    return dtA, C * dB


@pytest.mark.parametrize("complex_", [False, True])
@pytest.mark.parametrize("l", [1, 7, 63, 257])
def test_conv_equals_reference(complex_, l):
    b, e, n = 2, 5, 4
    dtA, W = modes(e, n, complex_)
    u, D = torch.randn(b, l, e, dtype=torch.float64), torch.randn(e, dtype=torch.float64)
    s0 = torch.randn(b, e, n, dtype=dtA.dtype)
    for init in (None, s0):
        y_ref, s_ref = lti_ref(u, dtA, W, D, initial_state=init)
        y, s = lti_conv(u, dtA, W, D, initial_state=init, return_final_state=True)
        torch.testing.assert_close(y, y_ref)
        torch.testing.assert_close(s, s_ref)
    assert lti_conv(u, dtA, W, D)[1] is None


@pytest.mark.parametrize("complex_", [False, True])
def test_recurrence_equals_reference(complex_):
    b, l, e, n = 3, 20, 4, 6
    dtA, W = modes(e, n, complex_)
    u, D = torch.randn(b, l, e, dtype=torch.float64), torch.randn(e, dtype=torch.float64)
    s0 = torch.randn(b, e, n, dtype=dtA.dtype)
    y_ref, s_ref = lti_ref(u, dtA, W, D, initial_state=s0)
    state = s0.clone()
    y = torch.stack([lti_step(u[:, t], state, dtA, W, D) for t in range(l)], dim=1)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(state, s_ref)


def test_recurrence_writes_through_real_pairs():
    dtA, W = modes(3, 2, True)
    pairs = torch.zeros(1, 3, 2, 2, dtype=torch.float64)
    u = torch.randn(1, 3, dtype=torch.float64)
    lti_step(u, torch.view_as_complex(pairs), dtA, W)
    torch.testing.assert_close(pairs[..., 0], u[..., None].expand(1, 3, 2))  # s = 0 * dA + u
    assert float(pairs[..., 1].abs().max()) == 0.0


@pytest.mark.parametrize("complex_", [False, True])
def test_packed_conv_equals_reference_and_separate_runs(complex_):
    e, n = 4, 3
    dtA, W = modes(e, n, complex_)
    seq_idx = torch.tensor([[0] * 5 + [1] * 9 + [2] * 1 + [3] * 6, [7] * 21])
    u = torch.randn(2, 21, e, dtype=torch.float64)
    s0 = torch.randn(2, e, n, dtype=dtA.dtype)
    y_ref, s_ref = lti_ref(u, dtA, W, initial_state=s0, seq_idx=seq_idx)
    y, s = lti_conv(u, dtA, W, initial_state=s0, seq_idx=seq_idx, return_final_state=True)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(s, s_ref)
    alone, _ = lti_conv(u[:1, 5:14], dtA, W)  # the second document of row 0, from a zero state
    torch.testing.assert_close(y[:1, 5:14], alone)


@pytest.mark.parametrize("complex_", [False, True])
def test_gradients_equal_reference(complex_):
    b, l, e, n = 2, 13, 3, 4
    dtA, W = modes(e, n, complex_)
    inputs = dict(u=torch.randn(b, l, e, dtype=torch.float64), dtA=dtA, W=W, D=torch.randn(e, dtype=torch.float64),
                  initial_state=torch.randn(b, e, n, dtype=dtA.dtype))
    grads = []
    for fn in (lti_ref, lambda **kw: lti_conv(**kw, return_final_state=True)):
        leaves = {k: v.detach().clone().requires_grad_() for k, v in inputs.items()}
        y, s = fn(**leaves)
        loss = (y * torch.linspace(-1, 1, l, dtype=torch.float64)[:, None]).sum() + torch.view_as_real(s).sum() \
            if s.is_complex() else (y * torch.linspace(-1, 1, l, dtype=torch.float64)[:, None]).sum() + s.sum()
        loss.backward()
        grads.append({k: v.grad for k, v in leaves.items()})
    for k in inputs:
        torch.testing.assert_close(grads[1][k], grads[0][k], msg=k)


def test_kernel_is_the_vandermonde_product_in_any_block_size(monkeypatch):
    dtA, W = modes(3, 4, True)
    dA = torch.exp(dtA)
    expected = torch.stack([(W * dA ** t).sum(-1).real for t in range(30)])  # (l, e)
    torch.testing.assert_close(lti_kernel(dtA, W, 30), expected)
    monkeypatch.setattr(kernel, "BLOCK_ELEMENTS", 7)  # blocks of 1 position
    torch.testing.assert_close(lti_kernel(dtA, W, 30), expected)
    u, s0 = torch.randn(2, 30, 3, dtype=torch.float64), torch.randn(2, 3, 4, dtype=dtA.dtype)
    torch.testing.assert_close(lti_conv(u, dtA, W, initial_state=s0, return_final_state=True),
                               lti_ref(u, dtA, W, initial_state=s0))


def test_zoh_is_the_integral_of_exp():
    A = torch.tensor([[-0.5 + 3.0j, -2.0 + 0.0j, -0.01 + 40.0j]], dtype=torch.complex128)
    dt = torch.tensor([0.07], dtype=torch.float64)
    dtA, dB = discretize_zoh(A, dt)
    tau = torch.linspace(0, 0.07, 20001, dtype=torch.float64)
    integral = torch.trapezoid(torch.exp(A[0, :, None] * tau), tau, dim=-1)  # int_0^dt exp(A tau) dtau
    torch.testing.assert_close(dB[0], integral, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(dtA, A * 0.07)


def s4d_config(init="real", **kw):
    return ModelConfig(d_model=16, n_layer=2, vocab_size=64, ssm_layer="s4d", layer_pattern="M-",
                       s4d=dict(d_state=8, init=init), mlp=dict(hidden_size=32), **kw)


@pytest.mark.parametrize("init", ["real", "lin"])
def test_init_and_state_layout(init):
    layer = S4DMixer(s4d_config(init), 0)
    with torch.no_grad():
        dtA, _ = layer.discrete()
        A = dtA / torch.exp(layer.log_dt)[:, None]
    if init == "real":
        torch.testing.assert_close(A[0], -torch.arange(1, 9, dtype=torch.float32))
        assert layer.allocate_state(2)["ssm"].shape == (2, 32, 8)
    else:
        torch.testing.assert_close(A[0], torch.complex(torch.full((4,), -0.5), math.pi * torch.arange(4.0)))
        assert layer.allocate_state(2)["ssm"].shape == (2, 32, 4, 2)
    dt = torch.exp(layer.log_dt.detach())
    assert float(dt.min()) >= 1e-3 and float(dt.max()) <= 0.1
    assert list(layer.buffers()) == []


def test_meta_build_loads_exactly():
    config = s4d_config("lin")
    layer = S4DMixer(config, 0)
    with torch.device("meta"):
        empty = S4DMixer(config, 0)
    empty = empty.to_empty(device="cpu")
    empty.load_state_dict(layer.state_dict())
    x = torch.randn(1, 6, 16)
    torch.testing.assert_close(empty(x), layer(x), rtol=0, atol=0)


@pytest.mark.parametrize("bad,match", [(dict(init="complex"), "init"), (dict(init="lin", d_state=7), "even"),
                                       (dict(dt_min=0.0), "dt_min")])
def test_bad_config(bad, match):
    with pytest.raises(ValueError, match=match):  # from the config (dt range) or the layer (init)
        S4DMixer(ModelConfig(d_model=16, n_layer=1, vocab_size=64, ssm_layer="s4d", s4d=bad), 0)


def s4d_model(init):
    model = mambakit.LM(s4d_config(init)).double().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("norm.weight", ".D")):
                p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("init", ["real", "lin"])
def test_model_decodes_like_forward(init):
    model = s4d_model(init)
    ids = torch.randint(0, 64, (2, 19))
    with torch.no_grad():
        full = model(ids)
        cache = model.allocate_cache(2)
        steps = [model(ids[:, :9], cache=cache)] + [model(ids[:, t:t + 1], cache=cache) for t in range(9, 19)]
        torch.testing.assert_close(torch.cat(steps, 1), full)
        cache = model.allocate_cache(2)
        chunks = [model(ids[:, a:b], cache=cache) for a, b in [(0, 4), (4, 5), (5, 19)]]
        torch.testing.assert_close(torch.cat(chunks, 1), full)
        lengths = [6, 1, 12]
        seq_idx = torch.cat([torch.full((1, n), i) for i, n in enumerate(lengths)], 1)
        packed = model(ids[:1], seq_idx=seq_idx)
        alone = torch.cat([model(d) for d in ids[:1].split(lengths, dim=1)], 1)
        torch.testing.assert_close(packed, alone)


@pytest.mark.parametrize("init", ["real", "lin"])
def test_model_trains(init):
    torch.manual_seed(0)
    model = mambakit.LM(s4d_config(init)).train()
    ids = torch.randint(0, 64, (4, 32))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        logits = model(ids[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 64), ids[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        losses.append(loss.item())
        opt.step()
    assert losses[-1] < losses[0] - 0.1, losses
    assert model.layers[0].mixer.A_log.grad is not None and model.layers[0].mixer.log_dt.grad.abs().sum() > 0


def test_conv_stays_fp32_under_autocast():
    """Under bf16 autocast (the trainer's) the Vandermonde einsums would run in bf16: the kernel, the
    state terms and so the prefill would drift from the fp32 recurrence of decoding."""
    torch.manual_seed(0)
    b, l, e, n = 2, 40, 8, 16
    dtA, W = (t.float() for t in modes(e, n, False))
    u, s0 = torch.randn(b, l, e), torch.randn(b, e, n)
    y_ref, s_ref = lti_conv(u, dtA, W, initial_state=s0, return_final_state=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, s = lti_conv(u, dtA, W, initial_state=s0, return_final_state=True)
        K = lti_kernel(dtA, W, l)
    assert K.dtype == torch.float32 and s.dtype == torch.float32
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(s, s_ref)


@pytest.mark.parametrize("bad,match", [
    (dict(W=torch.randn(3, dtype=torch.float64)), "W must have the shape"),
    (dict(D=torch.randn(1, dtype=torch.float64)), "D must have shape"),
    (dict(state=torch.zeros(2, 4, 3, dtype=torch.bfloat16)), "fp32 or fp64"),
])
def test_recurrence_rejects_bad_arguments(bad, match):
    dtA, W = modes(4, 3, False)
    args = dict(state=torch.zeros(2, 4, 3, dtype=torch.float64), W=W, D=None) | bad
    with pytest.raises(ValueError, match=match):
        lti_step(torch.randn(2, 4, dtype=torch.float64), args["state"], dtA, args["W"], args["D"])



def _zoh_series(A: torch.Tensor, dt: float) -> torch.Tensor:
    """(exp(dt A) - 1) / A as its series dt * sum_k (dt A)^k / (k+1)!: no quotient, no cancellation
    for small dt A (the oracle: terms to k = 30 are exact to fp64 for |dt A| <= 1)."""
    z = dt * A
    term, total = torch.ones_like(z), torch.zeros_like(z)
    for k in range(30):
        total = total + term
        term = term * z / (k + 2)
    return dt * total


@pytest.mark.parametrize("complex_", [False, True])
def test_zoh_limit_small_dt_A(complex_):
    """dB -> dt as dt A -> 0 (A = 0, the integrator: dB = dt exactly), and its A-gradient is the
    series' (dt^2 / 2 + ...) in fp32 as in fp64: the quotient expm1(dt A) / A gave NaN at A = 0 and,
    in fp32, an A-gradient off by ~90% at |dt A| = 1e-7 (exp(dt A) dt / A - expm1(dt A) / A^2 cancels)."""
    vals = [0.0, -1e-30, -1e-4, -1e-2, -1.0, -300.0]
    if complex_:
        vals = [complex(v, w) for v, w in zip(vals, [0.0, 0.0, 1e-4, 0.0, 3.0, 100.0])]
    dt = 1e-3
    for real in (torch.float32, torch.float64):
        cd = {torch.float32: torch.complex64, torch.float64: torch.complex128}[real] if complex_ else real
        A = torch.tensor([vals], dtype=cd, requires_grad=True)
        _, dB = discretize_zoh(A, torch.tensor([dt], dtype=real))
        A64 = A.detach().to(torch.complex128 if complex_ else torch.float64).requires_grad_()
        ref = _zoh_series(A64, dt)
        for out, leaf in ((dB, A), (ref, A64)):
            (torch.view_as_real(out).sum() if complex_ else out.sum()).backward()
        tol = dict(rtol=2e-6, atol=0) if real == torch.float32 else dict(rtol=1e-12, atol=0)
        torch.testing.assert_close(dB.detach().to(ref.dtype), ref.detach(), **tol)
        torch.testing.assert_close(A.grad.to(ref.dtype), A64.grad, **tol)


def test_bf16_load_keeps_the_s4d_kernel():
    """mambakit.load(..., dtype=torch.bfloat16) (and eval's model loading) casts with cast_keeping_fp32:
    the S4D kernel should move by about the bf16 rounding of C (~0.3%), not by the rounding of the
    step sizes and frequencies (log_dt ~ -4.6 has a bf16 spacing of 1/32, A_imag = pi n up to 97 one of 1/2)."""
    import copy

    from mambakit.convert.io import cast_keeping_fp32
    torch.manual_seed(0)
    config = ModelConfig(d_model=32, n_layer=1, vocab_size=64, ssm_layer="s4d", layer_pattern="M",
                         s4d=dict(d_state=64, init="lin"))
    model = mambakit.LM(config)
    low = cast_keeping_fp32(copy.deepcopy(model), torch.bfloat16)
    with torch.no_grad():
        K = lti_kernel(*model.layers[0].mixer.discrete(), 256)
        K16 = lti_kernel(*low.layers[0].mixer.discrete(), 256)
    rel = (K16 - K).norm(dim=0) / K.norm(dim=0)  # per channel
    assert float(rel.max()) < 0.02, f"kernel moved by up to {float(rel.max()):.1%} (median {float(rel.median()):.1%})"
