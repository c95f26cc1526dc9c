"""The residual RMSNorm kernel on CUDA (cast to the weight's dtype and norm in one kernel, which
every block uses in inference on CUDA) against the torch form it replaces.

Letters: b batch, l length, d width. Run on the device machine: pytest -m cuda tests/gpu
"""
import pytest
import torch

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("xdt,wdt,shape", [(torch.float32, torch.bfloat16, (1, 1, 2048)),
                                           (torch.float32, torch.bfloat16, (3, 77, 2560)),
                                           (torch.float32, torch.float32, (2, 50, 768)),
                                           (torch.float16, torch.float16, (4, 9, 1000))])
def test_rms_norm_cast_matches_torch(xdt, wdt, shape):
    from mambakit.ops.norm import rms_norm
    from mambakit.ops.norm_triton import rms_norm_cast_triton
    gen = torch.Generator(device="cuda").manual_seed(5)
    x = (torch.randn(*shape, device="cuda", generator=gen) * 4).to(xdt)
    w = torch.randn(shape[-1], device="cuda", generator=gen).to(wdt)
    want = rms_norm(x.to(wdt), w, 1e-5)
    got = rms_norm_cast_triton(x, w, 1e-5)
    assert got.dtype == wdt and got.shape == x.shape
    tol = 1e-6 if wdt == torch.float32 else 2 ** -6  # about two units of the output dtype
    assert (got.float() - want.float()).abs().max().item() <= tol * want.float().abs().max().item()


def test_block_norm_uses_the_kernel_only_without_grad():
    """A block's norm in inference goes through the kernel, in training through torch (autograd)."""
    from mambakit.layers.norm import RMSNorm
    norm = RMSNorm(256).cuda().to(torch.bfloat16)
    x = torch.randn(2, 5, 256, device="cuda")
    with torch.no_grad():
        fused = norm.normalize_residual(x)
    plain = norm.normalize_residual(x)
    assert plain.requires_grad and not fused.requires_grad
    assert (fused.float() - plain.detach().float()).abs().max().item() <= 2 ** -6 * plain.abs().max().item()
