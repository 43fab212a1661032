"""Offline GPU compile check: every Triton kernel configuration the package launches, compiled on a
machine without a GPU for sm_80 (A100), sm_86 (RTX 3090, A6000), sm_89 (RTX 4090, L40S),
sm_90a (H100, H200), sm_100a (B200) and sm_120 (RTX 5090), with its resource use.

    python -m xswin_fast.compile_check                 # table + one-line summary
    python -m xswin_fast.compile_check --check         # exit 1 and list what breaks the rules
    python -m xswin_fast.compile_check --out DIR       # also DIR/compile_check.{md,json}
    python -m xswin_fast.compile_check --quick         # XSwin-S/2, XSwin-B/2, DiT-S/2 at 256 px, batch 64
    python -m xswin_fast.compile_check --list          # count the configurations, compile nothing
    python -m xswin_fast.compile_check --kernels window_attention_bwd_kernel   # compile one kernel's only

Method (docs/gpu_fitness.md):
 1. Launches are captured where Triton launches them: ``JITFunction.run`` is replaced by a
    recorder that runs Triton's own launch-time argument binder for the CUDA backend of the target
    (signature, divisibility specialisation, constexprs, options) and executes nothing. Any
    ``@triton.jit`` function launched is captured, whatever its name.
 2. The launches come from the public ops with ``backend="triton"`` on CPU tensors
    (``ops.dispatch.interpreter_active`` patched to True, ``TRITON_INTERPRET`` unset so the kernels
    take their GPU constants). The GPU is emulated through ``torch.cuda.get_device_properties`` /
    ``get_device_capability`` with the facts of ``kernels.device.ARCHITECTURES`` (a named card's
    SM count per target: 132 for sm_90a, 108 for sm_80, ...).
 3. Public-op calls are recorded by driving every preset forward and backward (fp32, and bf16 /
    fp16 under ``torch.autocast`` like the trainer) at the native latent size, 2x and 4x, under
    ``NoCompute``: big aten ops run on the meta device only, so an XL model at 4x costs about a
    second. Each distinct call is then replayed at every batch of ``--batches`` on each target;
    a sweep of window-attention calls covers the op's accepted range (``sweep_calls``).
 4. Each distinct configuration (exact compile input) is compiled once with
    ``triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))`` in parallel worker
    processes: ``ptxas -v`` gives registers and spills, the metadata the shared memory,
    ``nvdisasm`` the tensor-core instructions and global-load widths (``ptxas-blackwell`` for
    sm_100a and sm_120, as Triton chooses). A configuration whose
    shared memory exceeds the block limit cannot launch; it stops before ptxas (status NOFIT).
    Results are cached on disk by compile input + kernel source hash + Triton version.

Modules: ``targets`` (the GPUs and their emulation), ``recording`` (steps 1-3), ``compiling``
(step 4), ``report`` (rows, rules, tables), ``cli`` (the command).
"""
from .cli import DEFAULT_BATCHES, main, parse_args, run_check
from .compiling import (CHECK_VERSION, cache_key, compile_all, compile_config, default_cache_dir, parse_ptxas, sass_summary,
                        tensor_core_dots)
from .recording import (LaunchRecorder, config_key, merge_specializations, model_calls, record_preset, record_presets,
                        replay, replay_all, replay_chunk, sweep_calls)
from .report import RULES, build_rows, enforced, kernel_summary, markdown, problems, rejected_table, summary, target_summary
from .targets import SMEM_RESERVED_PER_BLOCK, TARGETS, TENSOR_CORE_OPCODES, Target, emulated_gpu, occupancy, triton_on_cpu

__all__ = [
    "CHECK_VERSION", "DEFAULT_BATCHES", "RULES", "SMEM_RESERVED_PER_BLOCK", "TARGETS", "LaunchRecorder", "Target",
    "build_rows", "cache_key", "compile_all", "compile_config", "config_key", "default_cache_dir", "emulated_gpu", "enforced",
    "kernel_summary", "main", "markdown", "merge_specializations", "model_calls", "occupancy", "parse_args",
    "parse_ptxas", "problems", "rejected_table", "target_summary", "TENSOR_CORE_OPCODES", "record_preset", "record_presets", "replay", "replay_all", "replay_chunk", "run_check",
    "sass_summary", "summary", "sweep_calls", "tensor_core_dots", "triton_on_cpu",
]
