"""What the Triton window attention accepts per GPU architecture (``unsupported_reason``), and what
``xswin_fast.ops.window_attention`` does outside it: ``backend=None`` falls back to the reference,
``backend="triton"`` raises ValueError naming the limit, the architecture and the dtype.

The architecture is emulated by patching ``kernels.device.capability``, the launchers' only
source of it (under the interpreter it is sm_90).
"""
import pytest
import torch

from xswin_fast import ops
from xswin_fast.kernels import device
from xswin_fast.kernels import window_attention as wa
from xswin_fast.ops import reference

ARCHS = {"sm_80": (8, 0), "sm_90": (9, 0)}
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


@pytest.fixture(params=list(ARCHS))
def arch(request, monkeypatch):
    monkeypatch.setattr(device, "capability", lambda dev: ARCHS[request.param])
    return request.param


def qkv(window, d, dtype, heads=2):
    return [torch.zeros(1, window[0], window[1], heads, d, dtype=dtype) for _ in range(3)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("window, d", [((8, 8), 32), ((8, 8), 64), ((2, 2), 32), ((7, 7), 128), ((16, 16), 16)])
def test_preset_windows_are_supported_on_every_arch(arch, window, d, dtype):
    q, k, v = (t.requires_grad_() for t in qkv(window, d, dtype))
    assert wa.unsupported_reason(q, k, v, window, (0, 0), torch.zeros(2, window[0] * window[1], window[0] * window[1]),
                                 torch.zeros(2)) is None


def test_a_window_over_the_shared_memory_limit_falls_back_or_raises(monkeypatch):
    # 16x16 windows at head dim 128 in fp32: about 320 KB forward (measured), over any GPU's limit
    monkeypatch.setattr(device, "capability", lambda dev: (8, 0))
    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(3, 1, 16, 16, 1, 128, generator=g).unbind(0)
    why = wa.unsupported_reason(q, k, v, (16, 16))
    assert why is not None and "sm_80" in why and "torch.float32" in why and "shared memory" in why
    # the forward alone of 16x16 windows at head dim 32 in fp32 fits the A100, its backward not
    q32, k32, v32 = qkv((16, 16), 32, torch.float32)
    assert wa.unsupported_reason(q32, k32, v32, (16, 16)) is None
    assert "backward" in wa.unsupported_reason(q32.requires_grad_(), k32, v32, (16, 16))
    assert torch.equal(ops.window_attention(q, k, v, (16, 16)), reference.window_attention(q, k, v, (16, 16)))
    with pytest.raises(ValueError, match="backend='triton' cannot run window_attention: .*shared memory.*sm_80"):
        ops.window_attention(q, k, v, (16, 16), backend="triton")


def test_older_architectures_are_named():
    q, k, v = qkv((2, 2), 16, torch.float16)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(device, "capability", lambda dev: (7, 5))
        why = wa.unsupported_reason(q, k, v, (2, 2))
    assert why is not None and "sm_75" in why and "sm_80" in why
