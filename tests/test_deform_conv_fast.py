"""The CPU fast path of DeformConv against torchvision.ops.deform_conv2d (the reference)."""

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import deform_conv2d

from galw_d2.modeling.alignps import deform_conv as dcmod
from galw_d2.modeling.alignps.deform_conv import DeformConv, deform_conv2d_cpu_fast


def _inputs(modulated, bias, dtype, seed=0, n=2, c=6, c_out=5, h=7, w=9, stride=1, padding=1, dilation=1):
    g = torch.Generator().manual_seed(seed)
    ho = (h + 2 * padding - (2 * dilation + 1)) // stride + 1
    wo = (w + 2 * padding - (2 * dilation + 1)) // stride + 1
    x = torch.randn(n, c, h, w, generator=g, dtype=dtype)
    weight = torch.randn(c_out, c, 3, 3, generator=g, dtype=dtype)
    # Offsets of up to ~+-6 px: many taps land between pixels, outside the image, or across its border.
    offset = torch.randn(n, 18, ho, wo, generator=g, dtype=dtype) * 3.0
    mask = torch.rand(n, 9, ho, wo, generator=g, dtype=dtype) * 2.0 if modulated else None
    b = torch.randn(c_out, generator=g, dtype=dtype) if bias else None
    return x, offset, weight, b, mask


def _rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("modulated", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_fast_forward_matches_torchvision(modulated, bias):
    x, offset, weight, b, mask = _inputs(modulated, bias, torch.float32)
    ref = deform_conv2d(x, offset, weight, b, padding=(1, 1), mask=mask)
    # max_chunk_bytes=1: one output channel per chunk, exercising the chunk loop and the concatenation.
    for chunk in (None, 1):
        got = deform_conv2d_cpu_fast(x, offset, weight, b, padding=1, mask=mask, max_chunk_bytes=chunk)
        assert got.shape == ref.shape == (2, 5, 7, 9)
        assert _rel_err(got, ref) < 1e-4
    # The test must be able to fail: the offsets really move the samples away from a plain conv,
    # and some samples fall entirely outside the image.
    assert _rel_err(F.conv2d(x, weight, b, padding=1), ref) > 0.1
    tap_y = offset[:, 0::2] + torch.arange(7.0).view(1, 1, 7, 1) - 1
    assert bool(((tap_y <= -1) | (tap_y >= 7)).any()) and bool(((tap_y > -1) & (tap_y < 7)).any())


@pytest.mark.parametrize("modulated", [False, True])
def test_fast_backward_matches_torchvision(modulated):
    x, offset, weight, b, mask = _inputs(modulated, True, torch.float64, seed=1)
    leaves = [t.requires_grad_() for t in (x, offset, weight, b) + ((mask,) if modulated else ())]
    ref = deform_conv2d(x, offset, weight, b, padding=(1, 1), mask=mask)
    got = deform_conv2d_cpu_fast(x, offset, weight, b, padding=1, mask=mask, max_chunk_bytes=1)
    upstream = torch.randn(ref.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    g_ref = torch.autograd.grad(ref, leaves, upstream)
    g_got = torch.autograd.grad(got, leaves, upstream)
    for name, a, r in zip(["x", "offset", "weight", "bias", "mask"], g_got, g_ref):
        assert r.abs().max() > 0, name
        assert _rel_err(a, r) < 1e-8, name


@pytest.mark.parametrize("stride,dilation", [(2, 1), (1, 2)])
def test_fast_forward_stride_dilation(stride, dilation):
    x, offset, weight, b, mask = _inputs(
        True, True, torch.float32, seed=3, h=10, w=11, stride=stride, padding=dilation, dilation=dilation
    )
    ref = deform_conv2d(
        x,
        offset,
        weight,
        b,
        stride=(stride, stride),
        padding=(dilation, dilation),
        dilation=(dilation, dilation),
        mask=mask,
    )
    got = deform_conv2d_cpu_fast(x, offset, weight, b, stride=stride, padding=dilation, dilation=dilation, mask=mask)
    assert got.shape == ref.shape
    assert _rel_err(got, ref) < 1e-4


def test_fast_rejects_unsupported_shapes():
    x, offset, weight, b, _ = _inputs(False, False, torch.float32)
    with pytest.raises(ValueError, match="offset shape"):
        deform_conv2d_cpu_fast(x, offset[:, :9], weight, padding=1)
    with pytest.raises(ValueError, match="input channels"):
        deform_conv2d_cpu_fast(x, offset, weight[:, :3], padding=1)


@pytest.mark.parametrize("modulated", [False, True])
def test_module_switch_selects_path_and_paths_agree(modulated, monkeypatch):
    torch.manual_seed(0)
    dc = DeformConv(4, 3, 3, padding=1, modulated=modulated)
    with torch.no_grad():  # non-zero offset (and mask) predictor
        dc.offset_conv.weight.normal_(std=0.5)
        dc.offset_conv.bias.normal_(std=1.0)
    x = torch.randn(2, 4, 6, 8)
    calls = []
    real = dcmod.deform_conv2d_cpu_fast
    monkeypatch.setattr(dcmod, "deform_conv2d_cpu_fast", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(dcmod, "FAST_CPU_DEFORM_CONV", True)
    fast = dc(x)
    assert len(calls) == 1
    monkeypatch.setattr(dcmod, "FAST_CPU_DEFORM_CONV", False)
    slow = dc(x)
    assert len(calls) == 1
    dc.fast_cpu = True  # the constructor flag overrides the module switch
    assert _rel_err(dc(x), slow) < 1e-4 and len(calls) == 2
    assert _rel_err(fast, slow) < 1e-4
    # Training through the fast path: gradients reach the offset predictor and equal torchvision's.
    dc.fast_cpu = True
    dc(x).square().sum().backward()
    g_fast = dc.offset_conv.weight.grad.clone()
    dc.zero_grad()
    dc.fast_cpu = False
    dc(x).square().sum().backward()
    g_ref = dc.offset_conv.weight.grad
    assert g_ref.abs().max() > 0
    assert _rel_err(g_fast, g_ref) < 1e-3
