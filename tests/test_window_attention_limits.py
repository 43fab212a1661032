"""What the Triton window attention accepts per GPU architecture (``unsupported_reason``), and what
``xswin_fast.ops.window_attention`` does outside it: ``backend=None`` falls back to the reference,
``backend="triton"`` raises ValueError naming the limit, the architecture and the dtype.

The architecture is emulated by patching ``kernels.device.capability``, the launchers' only
source of it (under the interpreter it is sm_90).
"""
import warnings

import pytest
import torch

from xswin_fast import ops
from xswin_fast.kernels import device
from xswin_fast.kernels import window_attention as wa
from xswin_fast.ops import reference

from helpers import assert_close

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


# the six targets of kernels.device.ARCHITECTURES, emulated the way the compile check does:
# capability and SM count, the launchers' only sources of them
TARGETS = list(device.ARCHITECTURES)


@pytest.fixture(params=TARGETS, ids=lambda cap: device.ARCHITECTURES[cap].name)
def target(request, monkeypatch):
    facts = device.ARCHITECTURES[request.param]
    monkeypatch.setattr(device, "capability", lambda dev: request.param)
    monkeypatch.setattr(device, "multiprocessors", lambda dev: facts.sms)
    return facts


def test_each_target_reads_its_own_limits(target):
    cpu = torch.device("cpu")
    assert device.architecture(cpu) is target and device.arch_reason(cpu) is None
    assert device.shared_memory_per_block(cpu) == target.smem_block
    assert target.smem_block == (99 if target.warps_sm == 48 else 163 if target.name == "sm_80" else 227) * 1024


@pytest.mark.parametrize("cap, limit", [((8, 7), 99), ((12, 1), 99), ((11, 0), 99), ((9, 0), 227), ((10, 3), 227)])
def test_an_unlisted_architecture_gets_the_least_shared_memory_of_its_family(monkeypatch, cap, limit):
    monkeypatch.setattr(device, "capability", lambda dev: cap)
    assert device.shared_memory_per_block(torch.device("cpu")) == limit * 1024


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("window, d", [((8, 8), 32), ((8, 8), 64), ((8, 8), 128), ((2, 2), 32), ((4, 4), 64), ((7, 7), 96)])
def test_16_bit_preset_windows_take_the_triton_path_on_every_target(target, window, d, dtype):
    q, k, v = (t.requires_grad_() for t in qkv(window, d, dtype))
    bias = torch.zeros(2, window[0] * window[1], window[0] * window[1], requires_grad=True)
    assert wa.unsupported_reason(q, k, v, window, (0, 0), bias, torch.zeros(2, requires_grad=True)) is None


def test_an_fp32_backward_over_99_kb_is_named_on_the_small_shared_memory_targets(target):
    # the fp32 backward of 8x8 windows at head dim 128 holds 128-160 KB (compiled, sm_90a / sm_80)
    q, k, v = (t.requires_grad_() for t in qkv((8, 8), 128, torch.float32))
    why = wa.unsupported_reason(q, k, v, (8, 8))
    if target.smem_block < 160 * 1024:
        assert why is not None and "backward" in why and "shared memory" in why and target.name[:5] in why
    else:
        assert why is None
    # its forward fits everywhere: inference stays on the Triton path
    assert wa.unsupported_reason(*(t.detach() for t in (q, k, v)), (8, 8)) is None


def test_the_tile_plan_is_the_same_on_every_target_and_the_backward_split_follows_the_sm_count(target):
    cpu = torch.device("cpu")
    plan = wa._plan(64, 32, 32, (8, 8), (4, 4), 64)
    assert plan == wa._plan.__wrapped__(64, 32, 32, (8, 8), (4, 4), 64)
    assert (plan.BN, plan.BM, plan.num_warps, plan.num_stages) == (64, 64, 8, 1)
    assert wa.backward_passes(plan, 64, torch.bfloat16, need_dbias=True) == wa.SPLIT_BACKWARD
    assert wa._num_splits(cpu, plan.num_tiles, 4) == min(plan.num_tiles, 4 * target.sms // 4)


def test_the_16_bit_cosine_backward_of_64_token_windows_is_blocked_on_the_mma_sync_targets(target, monkeypatch):
    # the launcher reads the emulated target: there the 8x8 head-dim-64 cosine backward with a
    # bias gradient spilled in the split, and its blocked split gives the split's gradients
    launches, real = [], wa.window_attention_bwd_kernel

    class Spy:
        def __getitem__(self, grid):
            def launch(**kwargs):
                launches.append((grid, kwargs["QG"], kwargs["KB"], kwargs["STATS"]))
                return real[grid](**kwargs)
            return launch

    g = torch.Generator().manual_seed(0)
    q, k, v, do = (torch.randn(1, 8, 8, 1, 64, generator=g).to(torch.bfloat16) for _ in range(4))
    bias, ls = torch.randn(1, 64, 64, generator=g), torch.full((1,), 2.0)
    args = (do.flatten(-2), q, k, v, bias, ls, [8, 8], [0, 0], 1.0, True, True)
    split = wa.window_attention_bwd(*args, passes=wa.SPLIT_BACKWARD)
    monkeypatch.setattr(wa, "window_attention_bwd_kernel", Spy())
    got = wa.window_attention_bwd(*args)
    splits = wa._num_splits(torch.device("cpu"), 1, 1)
    if target.warp_mma:
        assert launches == [((splits * 4, 1), 4, 1, 1), ((splits, 1), 1, 2, 2)]
    else:
        assert launches == [((splits, 1), 1, 1, 0), ((splits, 1), 1, 1, 0)]
    for name, a, b in zip(["dq", "dk", "dv", "dbias", "dlogit_scale"], got, split):
        assert_close(name, a, b)


def test_the_small_backward_takes_8_warps_on_sm_80_sm_86_and_sm_89(target):
    # 4 warps spilled on sm_80 (a bias gradient at d = 32), 8 do not on sm_80, sm_86 and sm_89;
    # sm_120 spilled 4 B at 8 and none at 4; sm_90a and sm_100a keep the 4 they were checked with
    assert target.small_bwd_warps == (8 if target.name in ("sm_80", "sm_86", "sm_89") else 4)
    # the SMALL plan itself (and its forward's warps) is the same on every target
    plan = wa._plan(64, 32, 32, (2, 2), (0, 0), 32)
    assert (plan.path, plan.num_warps, plan.WPT) == (wa.KernelPath.SMALL, 4, 8)


def test_nothing_changes_on_sm90a_and_sm80():
    # the limits and SM counts the kernels were tuned and checked on before the other targets
    assert device.ARCHITECTURES[(9, 0)][:6] == ("sm_90a", "H100, H200, GH200", "H100 SXM5", 132, 232448, 233472)
    assert device.ARCHITECTURES[(8, 0)][:6] == ("sm_80", "A100, A800, A30", "A100 SXM4", 108, 166912, 167936)


class _OnCuda:
    """What the dispatcher reads of a tensor on a CUDA device (this machine has none)."""

    is_cuda = True


def _fallback_messages(caught):
    from xswin_fast.ops.dispatch import FallbackWarning

    return [str(w.message) for w in caught if issubclass(w.category, FallbackWarning)]


def test_a_fallback_on_a_cuda_device_warns_once_per_reason():
    from xswin_fast.ops.dispatch import use_triton

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        for _ in range(3):
            assert use_triton("window_attention", None, [_OnCuda()], lambda: "a 16x16 window needs 116 KB on sm_86") is False
        assert use_triton("window_attention", None, [_OnCuda()], lambda: "d = 160 exceeds 128 on sm_86") is False
        assert use_triton("window_attention", None, [_OnCuda()], lambda: None) is True
        assert use_triton("window_attention", "torch", [_OnCuda()], lambda: "never asked") is False
    messages = _fallback_messages(caught)
    assert len(messages) == 2, messages
    assert "window_attention runs on the PyTorch reference" in messages[0] and "116 KB on sm_86" in messages[0]
    assert "d = 160" in messages[1]


def test_a_fallback_warns_under_torch_compile_without_a_graph_break():
    from xswin_fast.ops.dispatch import use_triton

    def f(x):
        return x * 2 if use_triton("modulate", None, [_OnCuda()], lambda: "C = 9000 > 8192 on sm_120") else x + 1

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        out = torch.compile(f, backend="eager", fullgraph=True)(torch.ones(3))
    assert torch.equal(out, torch.full((3,), 2.0))
    assert ["C = 9000 > 8192 on sm_120" in m for m in _fallback_messages(caught)] == [True]


def test_cpu_tensors_never_warn(monkeypatch):
    # under the interpreter (CPU tensors) a call outside the limits runs on the reference silently:
    # the warning is about a GPU's slow path
    monkeypatch.setattr(device, "capability", lambda dev: (8, 6))
    q, k, v = qkv((16, 16), 128, torch.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ops.window_attention(q, k, v, (16, 16))
    assert _fallback_messages(caught) == []
