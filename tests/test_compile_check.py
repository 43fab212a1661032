"""The offline GPU compile check's own logic: parsing ptxas / SASS, occupancy, dedup keys, the
rules on synthetic rows, and one real capture + sm_90a compile of a tiny window attention (in a
subprocess: the check needs the kernels imported without Triton's interpreter)."""
import json
import os
import subprocess
import sys

import pytest
import torch

from xswin_fast.compile_check import TARGETS, config_key, occupancy, parse_ptxas, problems, sass_summary, tensor_core_dots

PTXAS_LOG = """ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'window_attention_bwd_kernel' for 'sm_90a'
ptxas info    : Function properties for window_attention_bwd_kernel
    200 bytes stack frame, 196 bytes spill stores, 204 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers, 200 bytes cumulative stack size
"""

SASS = """
        /*0110*/                   LDG.E.128.CONSTANT R4, desc[UR6][R2.64] ;
        /*0120*/                   LDG.E.U16 R8, desc[UR6][R6.64] ;
        /*0130*/              @!P0 LDG.E.U16 R9, desc[UR6][R6.64+0x2] ;
        /*0140*/                   LDGSTS.E.BYPASS.128 [R1], desc[UR4][R2.64] ;
        /*0150*/                   HGMMA.64x64x16.F32.BF16 R24, gdesc[UR8], R24 ;
        /*0160*/                   HMMA.16816.F32.BF16 R4, R8, R12, R4 ;
        /*0170*/                   LDG.E R3, desc[UR6][R4.64] ;
"""


def test_parse_ptxas_reads_registers_and_spills():
    assert parse_ptxas(PTXAS_LOG) == dict(regs=255, spill_stores=196, spill_loads=204, stack=200)
    assert parse_ptxas("ptxas info    : Used 40 registers")["spill_stores"] == 0


def test_sass_summary_counts_tensor_cores_and_load_widths():
    s = sass_summary(SASS)
    assert s["mma"] == {"HGMMA": 1, "HMMA": 1}
    assert s["loads"] == {"128": 2, "32": 1, "16": 2}


# tt.dot lines as Triton 3.7.1 prints them: the input precision only where it is not IEEE
TTIR_DOTS = """
    %z_12 = tt.dot %x_7, %y_11, %z : tensor<16x16xf32> * tensor<16x16xf32> -> tensor<16x16xf32> loc(#loc20)
    %z_13 = tt.dot %x_7, %y_11, %z, inputPrecision = ieee : tensor<16x16xf32> * tensor<16x16xf32> -> tensor<16x16xf32>
    %z_14 = tt.dot %x_7, %y_11, %z, inputPrecision = tf32 : tensor<16x16xf32> * tensor<16x16xf32> -> tensor<16x16xf32>
    %z_15 = tt.dot %x_7, %y_11, %z : tensor<64x32xbf16> * tensor<32x64xbf16> -> tensor<64x64xf32> loc(#loc3)
    %z_16 = tt.dot %x_7, %y_11, %z, inputPrecision = tf32 : tensor<64x32xf16> * tensor<32x64xf16> -> tensor<64x64xf32>
    %z_17 = tt.dot %x_7, %y_11, %z : tensor<16x16xf64> * tensor<16x16xf64> -> tensor<16x16xf64>
"""


def test_tensor_core_dots_are_16_bit_or_reduced_precision_fp32_not_ieee_fp32():
    # the tf32 fp32 dot and the two 16-bit dots; not the IEEE fp32 dots (printed with and without
    # the attribute) nor the fp64 one
    assert tensor_core_dots(TTIR_DOTS) == 3
    assert tensor_core_dots(TTIR_DOTS.splitlines()[1]) == 0
    assert tensor_core_dots("%r = tt.dot_scaled %a scale %s, %b : tensor<16x16xf8E4M3FN> * tensor<16x16xf8E4M3FN>") == 0


def test_occupancy_is_limited_by_registers_then_shared_memory():
    h100 = TARGETS[90]
    # 255 registers x 32 threads, rounded to 256 per warp: 8192 per warp -> 8 warps -> 2 blocks of 4
    assert occupancy(h100, 255, 0, 4) == 8 / 64
    # 40 registers: 1280 per warp -> 51 warps -> 12 blocks of 4; 32 registers: all 64 warps
    assert occupancy(h100, 40, 0, 4) == 48 / 64
    assert occupancy(h100, 32, 0, 4) == 1.0
    # 100 KiB of shared memory (+1 KiB reserved per block): 2 blocks
    assert occupancy(h100, 32, 100 * 1024, 4) == 8 / 64


def _spec(**params):
    return dict(module="m", qualname="k", kernel="k", arch=90, signature={"x": "*bf16", "n": "i32"},
                constexprs={(2,): params.get("BN", 64)}, attrs={(0,): [["tt.divisibility", 16]]},
                options={"num_warps": 4}, params=params)


def test_config_key_dedupes_identical_compile_inputs_only():
    assert config_key(_spec(BN=64)) == config_key(_spec(BN=64))
    assert config_key(_spec(BN=64)) != config_key(_spec(BN=32))
    other_arch = dict(_spec(BN=64), arch=80)
    assert config_key(other_arch) != config_key(_spec(BN=64))


def test_merge_specializations_keeps_the_most_launched_one_with_every_source():
    from xswin_fast.compile_check import merge_specializations

    aligned, unaligned, other = _spec(BN=64), dict(_spec(BN=64), attrs={}), _spec(BN=32)
    configs = {config_key(c): c for c in (aligned, unaligned, other)}
    sources = {config_key(aligned): {(0, 64), (1, 64)}, config_key(unaligned): {(2, 64)}, config_key(other): {(3, 64)}}
    merged, merged_sources = merge_specializations(configs, sources)
    assert set(merged) == {config_key(aligned), config_key(other)}
    assert merged_sources[config_key(aligned)] == {(0, 64), (1, 64), (2, 64)}


def _row(target=90, status="OK", regs=128, spill=0, preset_precisions=("bf16",), precisions=("bf16",), dots=0, mma=None,
         loads=(("128", 4),)):
    return dict(kernel="k", config="BN=64", pointers="bf16", num_warps=4, target=TARGETS[target].name, status=status,
                regs=regs, spill_stores=spill, spill_loads=spill, error="too big" if status != "OK" else None,
                preset_precisions=list(preset_precisions), precisions=list(precisions), tensor_core_dots=dots,
                mma=mma or {}, loads=dict(loads), occupancy=0.25)


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_rules_flag_16_bit_preset_spills_on_every_target(target):
    assert problems([_row(target)]) == []
    assert [rule for rule, *_ in problems([_row(target, spill=4)])] == ["half-spills"]
    # a sweep configuration (no preset) may spill at a high register count
    assert problems([_row(target, spill=4, preset_precisions=())]) == []


def test_rules_flag_a_register_collapse_of_any_dtype_and_anything_not_ok():
    fp32 = dict(preset_precisions=("fp32",), precisions=("fp32",))
    assert [rule for rule, *_ in problems([_row(regs=32, spill=21000, **fp32)])] == ["collapse"]
    # a bf16 sweep configuration at 32 registers with spill (a 16x16 window at d32 on sm_80, once)
    assert [rule for rule, *_ in problems([_row(80, regs=32, spill=31000, preset_precisions=())])] == ["collapse"]
    assert problems([_row(regs=255, spill=1000, **fp32)]) == []
    assert [rule for rule, *_ in problems([_row(status="NOFIT", **fp32), _row(target=80, status="FAIL")])] == ["fit", "fit"]
    assert [rule for rule, *_ in problems([], errors=[(("preset", "XSwin-S/2", 32, "bf16"), 64, "RuntimeError: boom")])] == ["fit"]


@pytest.mark.parametrize("target, opcode", [(80, "HMMA"), (86, "HMMA"), (89, "HMMA"), (90, "HGMMA"), (100, "UTCHMMA"),
                                            (120, "HMMA")])
def test_rules_require_the_targets_tensor_core_instructions_for_tensor_core_dots(target, opcode):
    assert problems([_row(target, dots=2, mma={opcode: 8})]) == []
    # an IEEE fp32 dot (no tensor-core precision) needs none
    assert problems([_row(target, dots=0)]) == []
    assert [rule for rule, *_ in problems([_row(target, dots=2)])] == ["tensor-cores"]
    # wgmma / tcgen05 are not the tensor cores of the other targets
    if target not in (90, 100):
        assert [rule for rule, *_ in problems([_row(target, dots=2, mma={"HGMMA": 8, "UTCHMMA": 2})])] == ["tensor-cores"]


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_rules_flag_a_binary_without_a_global_load(target):
    # what Triton left of the sm_100a one-pass backward of 256-key tiles: 4 registers and a trap
    found = problems([_row(target, regs=4, dots=5, loads=())])
    assert [rule for rule, *_ in found] == ["fit"]
    assert "compiled to no global load" in found[0][2]


def test_a_rule_may_be_enforced_on_one_target():
    from xswin_fast.compile_check import enforced

    (finding,) = problems([_row(80, spill=4)])
    assert finding[:2] == ("half-spills", "sm_80")
    assert enforced("half-spills", "sm_80", ["fit", "half-spills"])
    assert not enforced("half-spills", "sm_80", ["fit", "half-spills@sm_90a"])
    assert enforced("half-spills", "sm_90a", ["fit", "half-spills@sm_90a"])


def test_the_six_targets_carry_the_device_facts():
    from xswin_fast.kernels.device import ARCHITECTURES

    assert sorted(TARGETS) == [80, 86, 89, 90, 100, 120]
    for (major, minor), a in ARCHITECTURES.items():
        t = TARGETS[10 * major + minor]
        assert (t.name, t.sms, t.smem_block, t.warps_sm, t.blocks_sm) == (a.name, a.sms, a.smem_block, a.warps_sm, a.blocks_sm)
    # the consumer and workstation cards: 99 KB a block, 48 warps an SM
    assert {TARGETS[a].smem_block for a in (86, 89, 120)} == {99 * 1024}
    assert occupancy(TARGETS[86], 32, 0, 2) == 16 * 2 / 48  # 16 blocks at most on sm_86
    assert occupancy(TARGETS[89], 32, 0, 2) == 1.0  # 24 on sm_89
    assert occupancy(TARGETS[120], 255, 0, 4) == 8 / 48  # 255 registers: 8 warps of the 48


def test_rules_flag_selects_what_check_enforces():
    from xswin_fast.compile_check import RULES, parse_args

    assert parse_args([]).rules == list(RULES)
    assert parse_args(["--rules", "fit,collapse"]).rules == ["fit", "collapse"]
    assert parse_args(["--rules", "fit,half-spills@sm_90a"]).rules == ["fit", "half-spills@sm_90a"]
    with pytest.raises(SystemExit):
        parse_args(["--rules", "half-spills@sm_75"])
    assert [t.name for t in parse_args(["--targets", "86,120"]).targets] == ["sm_86", "sm_120"]
    with pytest.raises(SystemExit):
        parse_args(["--targets", "75"])
    with pytest.raises(SystemExit):
        parse_args(["--rules", "fit,no-such-rule"])


CAPTURE_AND_COMPILE = """
import json, sys
from xswin_fast import compile_check as cc
window, kernels, arch, precision = tuple(json.loads(sys.argv[1])), sys.argv[2], int(sys.argv[3]), sys.argv[4]
calls = [(i, call, labels) for i, (call, labels) in enumerate(cc.sweep_calls([window], [16], [precision]).items())]
recorder = cc.LaunchRecorder()
rejected, errors = cc.replay(calls, [1], cc.TARGETS[arch], recorder, [])
specs = {k: s for k, s in recorder.configs.items() if s["kernel"].endswith(kernels)}
results = cc.compile_all(specs, 1, 300, None, progress=lambda line: None)
json.dump(dict(kernels=sorted(s["kernel"] for s in recorder.configs.values()), errors=errors,
               params=[{n: str(v) for n, v in s["params"].items()} for s in specs.values()],
               results=list(results.values()), problems=cc.problems(cc.build_rows(specs, results, {k: set() for k in specs},
                                                                                    calls))), sys.stdout)
"""


def _capture_and_compile(window, kernels, arch=90, precision="bf16", spill_free=True):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", CAPTURE_AND_COMPILE, json.dumps(window), kernels, str(arch), precision],
                          capture_output=True,
                          text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["errors"] == []
    assert out["results"] and all(r["status"] == "OK" for r in out["results"])
    assert all(r["regs"] > 0 and (r["spill_stores"] == 0 or not spill_free) for r in out["results"])
    return out


def test_capture_and_compile_a_tiny_window_attention_for_sm90():
    out = _capture_and_compile([4, 4], "fwd_kernel")
    # the forward and the backward of the self form (cosine, bias: its gradient partials are summed)
    assert any(k.endswith("fwd_kernel") for k in out["kernels"]) and any(k.endswith("bwd_kernel") for k in out["kernels"])
    # a real sm_90a cubin: the forward's tl.dot runs on tensor cores
    assert all(r["mma"] for r in out["results"])


@pytest.mark.parametrize("arch", [86, 100, 120])
def test_an_8x8_window_attention_forward_runs_on_the_targets_tensor_cores(arch):
    # ptxas (sm_86) and ptxas-blackwell (sm_100a, sm_120) from the triton wheel: the forward's two
    # bf16 tl.dots become the target's tensor-core instructions, and nothing spills
    out = _capture_and_compile([8, 8], "fwd_kernel", arch)
    expected = set(TARGETS[arch].tensor_cores)
    assert all(r["tensor_core_dots"] == 2 and set(r["mma"]) & expected for r in out["results"]), out["results"]


def test_an_fp32_window_attention_forward_is_an_ieee_cuda_core_product_that_breaks_no_rule():
    # torch's default fp32 matmul (allow_tf32 False): the kernel's dots are IEEE fp32, FFMA not HMMA
    assert not torch.backends.cuda.matmul.allow_tf32
    out = _capture_and_compile([4, 4], "fwd_kernel", 80, "fp32")
    assert out["params"] and all(p["PREC"] == "ieee" and p["ACC"] == "fp32" for p in out["params"]), out["params"]
    assert all(r["tensor_core_dots"] == 0 and not r["mma"] for r in out["results"]), out["results"]
    assert out["problems"] == []


def test_windows_of_more_than_64_tokens_compile_for_sm90():
    # 12x12 windows: query blocks of 64 rows inside the tile loop, cosine included (a loop-carried
    # variable that changed shape there failed Triton's code generation; the interpreter runs it).
    # Outside every preset, their 256-key tiles spill (docs/gpu_fitness.md).
    out = _capture_and_compile([12, 12], "_kernel", spill_free=False)
    assert {p["NUM_QB"] for p in out["params"]} == {"3"} and "True" in {p["COSINE"] for p in out["params"]}
    assert {"window_attention_fwd_kernel", "window_attention_bwd_kernel"} <= set(out["kernels"])


def test_small_windows_compile_to_the_small_kernels_for_sm90():
    # 2x2 windows take the SMALL path: CUDA-core products, forward and backward, no spill
    out = _capture_and_compile([2, 2], "_kernel")
    assert {k for k in out["kernels"] if "window" in k} == {"window_attention_small_fwd_kernel", "window_attention_small_bwd_kernel"}
    assert not any(r["mma"] for r in out["results"])


CHANNELS_FIRST_MODULATE = """
import json, sys
import torch
from xswin_fast import compile_check as cc
from xswin_fast.kernels import adaln
# a bf16 (B, C, 8, 8) conv map seen as (B, H, W, C): tokens contiguous. At batch 64 on 132 SMs
# each program gets 8 tokens (TPP = 8, not a multiple of 16)
x = torch.empty(64, 384, 8, 8, dtype=torch.bfloat16).movedim(1, -1)
shift, scale = torch.empty(2, 64, 384, dtype=torch.bfloat16).unbind(0)
recorder = cc.LaunchRecorder()
with cc.emulated_gpu(cc.TARGETS[90]), recorder.active(cc.TARGETS[90]):
    assert adaln._plan(64, 64, 384, x.device).TPP == 8
    adaln.modulate_bwd(x, shift, scale, torch.empty_like(x))
specs = {k: s for k, s in recorder.configs.items() if s["kernel"] == "modulate_bwd_kernel"}
json.dump(list(cc.compile_all(specs, 1, 300, None, progress=lambda line: None).values()), sys.stdout)
"""


def test_modulate_backward_reads_a_channels_first_map_in_vectors_on_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", CHANNELS_FIRST_MODULATE], capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (result,) = json.loads(proc.stdout)
    assert result["status"] == "OK" and result["spill_stores"] == 0, result
    # x and do: 8 bf16 tokens a load (128 bits); scalar 16-bit loads meant an unproven alignment
    assert "16" not in result["loads"] and result["loads"].get("128", 0) >= 2, result["loads"]


def test_a_preset_call_outside_the_kernel_limits_is_rejected_up_front_not_a_crash():
    # DiffiT-latent-XL/2 attends over its whole 16x16 token grid at head dim 72: the backward
    # kernel would not fit, so on a GPU that call runs on the reference and the check lists it
    from xswin_fast import compile_check as cc

    calls, seen = cc.record_preset("DiffiT-latent-XL/2", [1], ["bf16"])
    indexed = [(i, call, labels) for i, (call, labels) in enumerate(calls.items())]
    rejected, errors = cc.replay(indexed, [None], cc.TARGETS[90], cc.LaunchRecorder(), [])
    assert errors == []
    assert rejected and all(msg.startswith("sm_90a: ") and "window_attention" in msg and "shared memory" in msg
                            for _, _, msg in rejected)


BATCH_REPLAYS = """
import json, sys
from xswin_fast import compile_check as cc
calls = {}
for preset in ("XSwin-digits", "XSwin-S/2", "DiT-digits"):
    calls.update(cc.record_preset(preset, [1], ["bf16", "fp32"])[0])
indexed = [(i, call, labels) for i, (call, labels) in enumerate(calls.items())]
keys, kernels = {}, set()
for batch in (1, 3, 64, 256):
    recorder = cc.LaunchRecorder()
    rejected, errors = cc.replay(indexed, [batch], cc.TARGETS[90], recorder, [])
    assert not rejected and not errors, (rejected, errors)
    # sum_partials fits its tile to the number of partials, which follows the batch
    keys[batch] = sorted(key for key, spec in recorder.configs.items() if spec["kernel"] != "sum_partials_kernel")
    kernels |= {spec["kernel"] for spec in recorder.configs.values()}
json.dump(dict(keys=keys, kernels=sorted(kernels)), sys.stdout)
"""


def test_the_batch_changes_no_window_attention_or_adaln_compile_input():
    # batch 1 to 256 changes the grids and the runtime bounds NWIN, TILES and TPP, not the
    # binaries: the kernels keep those ints out of Triton's specialisation (== 1 became a
    # constexpr, and a divisibility attribute another compile), so every batch launches exactly
    # the configurations batch 1 launches, pointer alignment included
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", BATCH_REPLAYS], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    # XSwin-digits' 2x2 windows take the SMALL pair, XSwin-S/2's 8x8 windows the tensor-core one
    assert {"window_attention_fwd_kernel", "window_attention_bwd_kernel", "window_attention_small_fwd_kernel",
            "window_attention_small_bwd_kernel", "modulate_fwd_kernel", "gated_residual_bwd_kernel",
            "sum_partials_kernel"} <= set(out["kernels"]), out["kernels"]
    assert all(keys == out["keys"]["1"] for keys in out["keys"].values())


HUGE_REPLAY = """
import json, sys
import torch
from xswin_fast import compile_check as cc
from xswin_fast.op_calls import MODEL_BATCH, OpCall
# a bf16 (B, 1024, 1024, 64) map: 34 GB at batch 256, more than this machine (or CI's) holds;
# the launcher's output of the same size is allocated inside the kernel's custom op
x = torch.empty(MODEL_BATCH, 1024, 1024, 64, dtype=torch.bfloat16, device="meta").requires_grad_()
shift, scale = (torch.empty(MODEL_BATCH, 64, dtype=torch.bfloat16, device="meta").requires_grad_() for _ in range(2))
call = OpCall.of("modulate", (x, shift, scale), {}, grad=torch.empty(x.shape, dtype=x.dtype, device="meta"))
recorder = cc.LaunchRecorder()
rejected, errors = cc.replay([(0, call, {("sweep", "huge modulate", None, "bf16")})], [256], cc.TARGETS[90], recorder, [])
json.dump(dict(rejected=rejected, errors=errors, kernels=sorted(s["kernel"] for s in recorder.configs.values())), sys.stdout)
"""


def test_a_replay_larger_than_memory_allocates_nothing():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", HUGE_REPLAY], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["errors"] == [] and out["rejected"] == []
    assert {"modulate_fwd_kernel", "modulate_bwd_kernel"} <= set(out["kernels"]), out["kernels"]


def test_a_constant_first_built_while_recording_op_calls_holds_real_values():
    # op_calls' NoCompute gives big ops uninitialised outputs; the shared constant cache must not
    # keep such an output (LatentDiffiT's forward asks for its sin-cos embedding while recorded)
    from xswin_fast.layers.embed import _build_sincos_2d, sincos_2d
    from xswin_fast.op_calls import NoCompute

    dim, H, W = 1024, 9, 8  # 73,728 elements: over NoCompute's small-op limit, a size no model uses
    assert dim * H * W > NoCompute.SMALL
    with NoCompute():
        sincos_2d(dim, H, W)
    torch.testing.assert_close(sincos_2d(dim, H, W), _build_sincos_2d(dim, H, W), rtol=0, atol=0)
