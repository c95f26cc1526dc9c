"""The decode-step GEMV on CUDA (ops/gemv_triton.py) against an fp32 product, and a model's decode
logits with MAMBAKIT_GEMV=on against off.

Letters: m rows, k input width, o output width, v vocabulary. Run on the device: pytest -m cuda tests/gpu
"""
import pytest
import torch

import mambakit
from mambakit.config import ModelConfig

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("m,o,k,bias", [(1, 8480, 2048, False), (1, 77, 300, True), (3, 2048, 4096, True),
                                        (16, 1000, 512, False)])
def test_gemv_matches_fp32_product(m, o, k, bias):
    from mambakit.ops.gemv_triton import gemv_triton
    gen = torch.Generator(device="cuda").manual_seed(m + o)
    x = torch.randn(m, k, device="cuda", generator=gen).bfloat16()
    w = (torch.randn(o, k, device="cuda", generator=gen) / k ** 0.5).bfloat16()
    b = torch.randn(o, device="cuda", generator=gen).bfloat16() if bias else None
    exact = x.float() @ w.float().t() + (b.float() if bias else 0)
    got = gemv_triton(x, w, b).float()
    ref = torch.nn.functional.linear(x, w, b).float()
    # no worse than cuBLAS's own bf16 result, give or take one rounding of the output
    assert (got - exact).abs().max() <= 2 * (ref - exact).abs().max() + 2 ** -8 * exact.abs().max()


@pytest.mark.parametrize("family", ["mamba2", "mamba1"])
def test_decode_logits_with_gemv(monkeypatch, family):
    cfg = ModelConfig.from_preset("mamba2-130m" if family == "mamba2" else "mamba-130m")
    cfg.n_layer, cfg.vocab_size = 2, 1000
    torch.manual_seed(0)
    model = mambakit.LM(cfg).cuda().to(torch.bfloat16).eval()
    ids = torch.randint(0, 1000, (2, 9), device="cuda")
    outs = {}
    for mode in ("off", "on"):
        monkeypatch.setenv("MAMBAKIT_GEMV", mode)
        cache = model.allocate_cache(2, device="cuda")
        with torch.inference_mode():
            model(ids[:, :8], cache=cache)
            outs[mode] = model(ids[:, 8:], cache=cache).float()  # the decode step: 2 rows
    scale = outs["off"].abs().max()
    assert (outs["on"] - outs["off"]).abs().max() <= 3e-2 * scale
