"""The compiled CPU kernels (mambakit/ops/cpu_kernels.py) against the reference tiers.

Letters: b batch, l length, e inner width, n state dim, h heads, p head dim, g groups, c channels,
k conv width.
"""
import dataclasses

import pytest
import torch
import torch.nn.functional as F

import mambakit
from mambakit.ops import cpu_kernels
from mambakit.ops.selective_scan.reference import selective_scan_ref
from mambakit.ops.ssd.reference import ssd_ref

pytestmark = pytest.mark.skipif(not cpu_kernels.available(), reason="no C compiler: the CPU kernels are off")


def rel(a, b):
    return ((a.double() - b.double()).norm() / (b.double().norm() + 1e-30)).item()


@pytest.mark.parametrize("b,l,e,n,full,threads", [(1, 1, 16, 16, True, 1), (2, 7, 40, 16, True, 2),
                                                  (1, 63, 33, 5, False, 2), (2, 257, 24, 16, True, 3)])
def test_selective_scan_matches_reference(b, l, e, n, full, threads):
    g = torch.Generator().manual_seed(l + e)
    u, delta, z = (torch.randn(b, l, e, generator=g) for _ in range(3))
    A = -(torch.rand(e, n, generator=g) * 4 + 0.1)
    B, C = torch.randn(b, l, n, generator=g), torch.randn(b, l, n, generator=g)
    D, bias, h0 = torch.randn(e, generator=g), torch.randn(e, generator=g), torch.randn(b, e, n, generator=g)
    if not full:
        delta = delta.abs()
    kw = dict(D=D, z=z, delta_bias=bias) if full else {}
    y_ref, h_ref = selective_scan_ref(u.double(), delta.double(), A.double(), B.double(), C.double(),
                                      delta_softplus=full, initial_state=h0.double(),
                                      **{k: v.double() for k, v in kw.items()})
    h = h0.clone()
    y = cpu_kernels.selective_scan(u, delta, A, B, C, h, delta_softplus=full, threads=threads, **kw)
    assert rel(y, y_ref) < 1e-5 and rel(h, h_ref) < 1e-5
    # in place over u, with B and C strided views of one (b, l, 2n) tensor
    BC = torch.cat([B, C], dim=-1)
    h2, u2 = h0.clone(), u.clone()
    y2 = cpu_kernels.selective_scan(u2, delta, A, BC[..., :n], BC[..., n:], h2, delta_softplus=full, out=u2, **kw)
    assert y2.data_ptr() == u2.data_ptr() and torch.equal(y2, y) and torch.equal(h2, h)


def test_selective_scan_rejects_bad_rows():
    u = torch.randn(1, 4, 8)
    with pytest.raises(ValueError, match="contiguous last axis"):
        cpu_kernels.selective_scan(u, u, -torch.ones(8, 4), torch.randn(1, 4, 8)[..., ::2], torch.randn(1, 4, 4),
                                   torch.zeros(1, 8, 4))


def test_conv_step_matches_torch():
    g = torch.Generator().manual_seed(0)
    b, c, k = 2, 37, 4
    state, w, bias = torch.randn(b, c, k, generator=g), torch.randn(c, 1, k, generator=g), torch.randn(c, generator=g)
    x = torch.randn(b, 2 * c, generator=g)[:, :c]  # strided rows, as a slice of in_proj's output
    expected_state = torch.cat([state[:, :, 1:], x[:, :, None]], dim=2)
    expected = F.silu((expected_state * w.squeeze(1)).sum(-1) + bias)
    y = cpu_kernels.conv_step(x, state, w, bias)
    assert torch.allclose(y, expected, atol=1e-5) and torch.equal(state, expected_state)


@pytest.mark.parametrize("h,g,d_dims,limit", [(4, 1, 1, (0.0, float("inf"))), (6, 3, 2, (0.01, 0.5)), (2, 2, 0, (0.0, 1.0))])
def test_ssd_step_matches_reference(h, g, d_dims, limit):
    gen = torch.Generator().manual_seed(h * 10 + g)
    b, p, n = 2, 8, 12
    x, dt = torch.randn(b, h * p, generator=gen), torch.randn(b, h, generator=gen)
    B, C = torch.randn(b, g * n, generator=gen), torch.randn(b, g * n, generator=gen)
    A, bias = -(torch.rand(h, generator=gen) * 4 + 0.5), torch.randn(h, generator=gen)
    D = None if d_dims == 0 else torch.randn(h, generator=gen) if d_dims == 1 else torch.randn(h, p, generator=gen)
    s0 = torch.randn(b, h, p, n, generator=gen)
    y_ref, s_ref = ssd_ref(x.view(b, 1, h, p).double(), dt.view(b, 1, h).double(), A.double(),
                           B.view(b, 1, g, n).double(), C.view(b, 1, g, n).double(),
                           D=None if D is None else D.double(), dt_bias=bias.double(), dt_softplus=True,
                           dt_limit=limit, initial_state=s0.double())
    s = s0.clone()
    y = cpu_kernels.ssd_step(x, dt, A, B, C, s, D=D, dt_bias=bias, dt_softplus=True, dt_limit=limit)
    assert rel(y, y_ref.view(b, h * p)) < 1e-5 and rel(s, s_ref) < 1e-5


@pytest.mark.parametrize("preset", ["mamba-130m", "mamba2-130m"])
def test_model_with_kernels_equals_without(preset, monkeypatch):
    """Prefill + decode steps through the kernels give the PyTorch path's logits (and the full forward's)."""
    cfg = mambakit.ModelConfig.from_preset(preset)
    cfg = dataclasses.replace(cfg, n_layer=2, layer_pattern="MM", d_model=64, vocab_size=128)
    torch.manual_seed(0)
    model = mambakit.LM(cfg).eval()
    ids = torch.randint(0, 128, (2, 21))

    def run():
        with torch.inference_mode():
            cache = model.allocate_cache(2)
            out = [model(ids[:, :15], cache=cache)] + [model(ids[:, t:t + 1], cache=cache) for t in range(15, 21)]
            return torch.cat(out, dim=1), cache.layers[0]["ssm"].clone()

    on, state_on = run()
    monkeypatch.setenv("MAMBAKIT_CPU_KERNELS", "off")
    assert not cpu_kernels.available()
    off, state_off = run()
    with torch.inference_mode():
        full = model(ids)
    assert (on - off).abs().max() < 1e-5 and (on - full).abs().max() < 1e-5
    assert torch.allclose(state_on, state_off, rtol=1e-5, atol=1e-6)


def test_rms_norm_matches_torch_with_and_without_residual():
    g = torch.Generator().manual_seed(3)
    x, y, w = torch.randn(2, 3, 37, generator=g), torch.randn(2, 3, 37, generator=g), torch.randn(37, generator=g)
    out = cpu_kernels.rms_norm(x, w, 1e-5)
    assert torch.allclose(out, F.rms_norm(x, (37,), w, 1e-5), rtol=1e-5, atol=1e-6)
    x2 = x.clone()
    out2 = cpu_kernels.rms_norm(x2, w, 1e-5, residual=y)  # x2 += y first, in place
    assert torch.equal(x2, x + y)
    assert torch.allclose(out2, F.rms_norm(x + y, (37,), w, 1e-5), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="contiguous"):
        cpu_kernels.rms_norm(x.transpose(0, 1), w, 1e-5)


def test_mamba1_step_matches_the_split_kernels():
    """The one-call step (conv, x_proj, dt_proj, scan in C) against conv_step + torch projections + scan."""
    gen = torch.Generator().manual_seed(5)
    b, e, n, r, k = 2, 40, 16, 6, 4
    xz = torch.randn(b, 2 * e, generator=gen)
    conv0, conv_w, conv_b = torch.randn(b, e, k, generator=gen), torch.randn(e, 1, k, generator=gen), torch.randn(e, generator=gen)
    Wx, Wdt = torch.randn(r + 2 * n, e, generator=gen) * 0.2, torch.randn(e, r, generator=gen) * 0.3
    dt_bias, A, D = torch.randn(e, generator=gen), -(torch.rand(e, n, generator=gen) * 4 + 0.1), torch.randn(e, generator=gen)
    h0 = torch.randn(b, e, n, generator=gen)
    conv1, h1 = conv0.clone(), h0.clone()
    x = cpu_kernels.conv_step(xz[:, :e], conv1, conv_w, conv_b)
    xdbl = F.linear(x, Wx)
    y1 = cpu_kernels.selective_scan(x.unsqueeze(1), F.linear(xdbl[:, :r], Wdt).unsqueeze(1), A, xdbl[:, None, r:r + n],
                                    xdbl[:, None, r + n:], h1, D=D, z=xz[:, None, e:], delta_bias=dt_bias,
                                    delta_softplus=True).squeeze(1)
    conv2, h2 = conv0.clone(), h0.clone()
    y2 = cpu_kernels.mamba1_step(xz, conv2, conv_w, conv_b, Wx, Wdt, dt_bias, A, D, h2, threads=1)
    assert torch.equal(conv2, conv1)
    assert rel(y2, y1) < 1e-5 and rel(h2, h1) < 1e-5
    # split over threads (e = 40: ranges of 16, 16, 8 and an idle fourth): the same numbers exactly
    conv3, h3 = conv0.clone(), h0.clone()
    y3 = cpu_kernels.mamba1_step(xz, conv3, conv_w, conv_b, Wx, Wdt, dt_bias, A, D, h3, threads=4)
    assert torch.equal(y3, y2) and torch.equal(h3, h2) and torch.equal(conv3, conv2)


@pytest.mark.parametrize("g,norm_before_gate,d_dims", [(1, False, 1), (2, False, 2), (2, True, 1)])
def test_mamba2_step_matches_the_split_kernels(g, norm_before_gate, d_dims):
    """The one-call step (conv, SSD step, gated norm in C) against conv_step + ssd_step + torch's gated norm."""
    from mambakit.ops.norm import gated_rms_norm
    gen = torch.Generator().manual_seed(7 + g)
    b, h, p, n, k = 2, 4, 8, 12, 4
    e, c = h * p, h * p + 2 * g * n
    zxbcdt = torch.randn(b, e + c + h, generator=gen)
    conv0, conv_w, conv_b = torch.randn(b, c, k, generator=gen), torch.randn(c, 1, k, generator=gen), torch.randn(c, generator=gen)
    dt_bias, A = torch.randn(h, generator=gen), -(torch.rand(h, generator=gen) * 4 + 0.5)
    D = torch.randn(h, generator=gen) if d_dims == 1 else torch.randn(h, p, generator=gen)
    norm_w, s0 = torch.randn(e, generator=gen), torch.randn(b, h, p, n, generator=gen)
    conv1, s1 = conv0.clone(), s0.clone()
    z, xBC, dt = torch.split(zxbcdt, [e, c, h], dim=-1)
    xBC = cpu_kernels.conv_step(xBC, conv1, conv_w, conv_b)
    y = cpu_kernels.ssd_step(xBC[:, :e], dt, A, xBC[:, e:e + g * n], xBC[:, e + g * n:], s1, D=D, dt_bias=dt_bias,
                             dt_softplus=True, dt_limit=(0.0, 0.8))
    y1 = gated_rms_norm(y, z, norm_w, 1e-5, group_size=e // g, norm_before_gate=norm_before_gate)
    conv2, s2 = conv0.clone(), s0.clone()
    y2 = cpu_kernels.mamba2_step(zxbcdt, conv2, conv_w, conv_b, dt_bias, (0.0, 0.8), A, D, s2, g, norm_w, 1e-5,
                                 e // g, norm_before_gate, threads=1)
    assert torch.equal(conv2, conv1) and torch.equal(s2, s1)
    assert rel(y2, y1) < 1e-5
    conv3, s3 = conv0.clone(), s0.clone()  # heads and channels split over 3 threads: the same numbers
    y3 = cpu_kernels.mamba2_step(zxbcdt, conv3, conv_w, conv_b, dt_bias, (0.0, 0.8), A, D, s3, g, norm_w, 1e-5,
                                 e // g, norm_before_gate, threads=3)
    assert torch.equal(y3, y2) and torch.equal(s3, s2) and torch.equal(conv3, conv2)


@pytest.mark.parametrize("preset,name", [("mamba-130m", "x_proj"), ("mamba2-130m", "conv1d")])
def test_decode_with_a_strided_weight_takes_the_general_path(preset, name, monkeypatch):
    """A weight that is a strided view (as some checkpoints load) goes through the split kernels: same logits."""
    cfg = dataclasses.replace(mambakit.ModelConfig.from_preset(preset), n_layer=1, layer_pattern="M", d_model=32,
                              vocab_size=64)
    torch.manual_seed(1)
    model = mambakit.LM(cfg).eval()
    mod = getattr(model.layers[0].mixer, name)
    w = mod.weight.detach()
    mod.weight = torch.nn.Parameter(w.transpose(0, -1).contiguous().transpose(0, -1))  # same values, strided
    assert not mod.weight.is_contiguous()
    ids = torch.randint(0, 64, (1, 9))

    def run():
        with torch.inference_mode():
            cache = model.allocate_cache(1)
            return torch.cat([model(ids[:, :5], cache=cache)] + [model(ids[:, t:t + 1], cache=cache) for t in range(5, 9)], 1)

    on = run()
    monkeypatch.setenv("MAMBAKIT_CPU_KERNELS", "off")
    assert (on - run()).abs().max() < 1e-5


@pytest.mark.parametrize("group_size,norm_before_gate", [(64, False), (192, False), (64, True)])
def test_gated_norm_in_place_matches_torch(group_size, norm_before_gate):
    """The prefill's gated norm (in place on y, z a strided column slice of in_proj's output)."""
    from mambakit.ops.norm import gated_rms_norm
    g = torch.Generator().manual_seed(5)
    zx = torch.randn(2, 9, 500, generator=g)
    z = zx[:, :, 7:199]  # (b, l, e) rows 500 apart
    y, w = torch.randn(2, 9, 192, generator=g), torch.randn(192, generator=g)
    ref = gated_rms_norm(y, z, w, 1e-5, group_size=group_size, norm_before_gate=norm_before_gate)
    out = y.clone()
    assert cpu_kernels.gated_norm_(out, z, w, 1e-5, group_size, norm_before_gate) is out
    assert rel(out, ref) < 1e-6
    with pytest.raises(ValueError, match="contiguous"):
        cpu_kernels.gated_norm_(y.transpose(0, 1), z, w, 1e-5, group_size, norm_before_gate)
