"""Recording: the public-op calls of every preset (and of the window-attention sweep), replayed at
each batch on each target, with every Triton launch captured by Triton's own argument binder."""
import contextlib
import hashlib
import os
import tempfile
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Dict, Optional, Sequence, Tuple

import torch

from ..op_calls import MODEL_BATCH, PRECISIONS, NoCompute, OpCall, TensorLayout, drive_model
from .targets import TARGETS, Target, emulated_gpu, triton_on_cpu


def init_worker(triton_cache: str) -> None:
    os.environ["TRITON_CACHE_DIR"] = triton_cache
    torch.set_num_threads(1)


def model_calls(preset: str, latent: int, precision: str, calls: Dict[OpCall, set], recorder: "LaunchRecorder") -> None:
    """Drive ``preset`` forward and backward at ``latent`` on an emulated sm_90a with automatic
    dispatch, as on a GPU (a call outside a kernel's limits runs on the reference): its public-op
    calls go to ``calls`` (every one: the replay with ``backend="triton"`` lists those outside the
    limits as rejected up front), its launches at the model batch to ``recorder``."""
    label = ("preset", preset, latent, precision)
    recorder.label = (label, None)
    with triton_on_cpu(), emulated_gpu(TARGETS[90]), recorder.active(TARGETS[90]):
        drive_model(preset, latent, precision, calls, backend=None)


def _window_call(form: str, window: Tuple[int, int], d: int, dtype: torch.dtype, heads: int = 2) -> OpCall:
    """A window-attention call in the models' layouts: "self" = SwinV2 (q, k, v views of one qkv
    projection, a (heads, N, N) permuted-view bias and the logit scale in fp32, cosine, shifted),
    "cross" = XSwin skip (q alone, k, v views of one kv projection, dot product, not shifted); on
    a 2x2-window map plus one token (padded edge windows)."""
    wh, ww = window
    H, W = 2 * wh + 1, 2 * ww + 1
    N = wh * ww
    if form == "self":
        qkv = torch.empty(MODEL_BATCH, H, W, 3, heads, d, dtype=dtype)
        q, k, v = (qkv[..., i, :, :] for i in range(3))
        bias = torch.empty(N, N, heads).permute(2, 0, 1)
        kwargs = dict(shift_size=(wh // 2, ww // 2), bias=TensorLayout.of(bias)._replace(requires_grad=True),
                      logit_scale=TensorLayout((heads,), (1,), 0, torch.float32, True))
    else:
        q = torch.empty(MODEL_BATCH, H, W, heads, d, dtype=dtype)
        kv = torch.empty(MODEL_BATCH, H, W, 2, heads, d, dtype=dtype)
        k, v = kv[..., 0, :, :], kv[..., 1, :, :]
        kwargs = {}
    args = tuple(TensorLayout.of(t)._replace(requires_grad=True) for t in (q, k, v)) + (window,)
    grad = TensorLayout((MODEL_BATCH, H, W, heads * d), (H * W * heads * d, W * heads * d, heads * d, 1), 0, dtype, False)
    return OpCall("window_attention", args, tuple(sorted(kwargs.items())), None, grad)


def sweep_calls(windows: Sequence[Tuple[int, int]], head_dims: Sequence[int], dtypes: Sequence[str]) -> Dict[OpCall, set]:
    """Window attention across the op's accepted range: every window and head dim listed, self and
    cross form, q, k, v in each precision."""
    calls = {}
    for window in windows:
        for d in head_dims:
            for form in ("self", "cross"):
                for precision in dtypes:
                    dtype = PRECISIONS[precision] or torch.float32
                    call = _window_call(form, window, d, dtype)
                    calls.setdefault(call, set()).add(("sweep", f"{form} {window[0]}x{window[1]} d{d}", None, precision))
    return calls


class LaunchRecorder:
    """Replaces ``JITFunction.run`` while active: each launch is specialised by Triton's own binder
    for ``target`` and recorded in ``configs[key] = spec`` and ``sources[key] -> labels``;
    nothing executes."""

    def __init__(self):
        self.configs: Dict[str, dict] = {}
        self.sources: Dict[str, set] = defaultdict(set)
        self.target: Optional[Target] = None
        self.label: Optional[tuple] = None
        self._binders = {}
        self._backends = {}

    @contextlib.contextmanager
    def active(self, target: Target):
        from triton.runtime.jit import JITFunction

        saved, recorder = JITFunction.run, self

        def run(fn, *args, grid, warmup, **kwargs):
            recorder.record(fn, args, kwargs)

        JITFunction.run, self.target = run, target
        try:
            yield self
        finally:
            JITFunction.run, self.target = saved, None

    def _bind(self, fn, args, kwargs):
        from triton import knobs
        from triton.backends.compiler import GPUTarget
        from triton.compiler import make_backend
        from triton.runtime.jit import create_function_from_signature

        arch = self.target.arch
        if arch not in self._backends:
            self._backends[arch] = make_backend(GPUTarget("cuda", arch, 32))
        backend = self._backends[arch]
        if (fn, arch) not in self._binders:
            self._binders[(fn, arch)] = create_function_from_signature(fn.signature, fn.params, backend)
        kwargs = dict(kwargs, debug=kwargs.get("debug", fn.debug) or knobs.runtime.debug,
                      instrumentation_mode=knobs.compilation.instrumentation_mode)
        bound, specialization, options = self._binders[(fn, arch)](*args, **kwargs)
        return fn._pack_args(backend, kwargs, bound, specialization, options)

    def record(self, fn, args, kwargs) -> None:
        options, signature, constexprs, attrs = self._bind(fn, args, kwargs)
        declared = {p.num: p.name for p in fn.params if p.is_constexpr}
        spec = dict(
            module=fn.module, qualname=fn.fn.__qualname__, kernel=fn.fn.__name__, arch=self.target.arch,
            signature=dict(signature), constexprs=dict(sorted(constexprs.items())), attrs=dict(sorted(attrs.items())),
            options=dict(sorted(vars(options).items())),
            params={declared[p[0]]: v for p, v in constexprs.items() if len(p) == 1 and p[0] in declared},
        )
        key = config_key(spec)
        self.configs.setdefault(key, spec)
        self.sources[key].add(self.label)


def config_key(spec: dict, specialization: bool = True) -> str:
    """What makes two launches one compile: the kernel, target and every compile input; without
    ``specialization``, all but the divisibility-by-16 attributes of pointers and ints."""
    attrs = [(k, repr(v)) for k, v in spec["attrs"].items()] if specialization else []
    parts = (spec["module"], spec["qualname"], spec["arch"], sorted(spec["signature"].items()),
             [(k, repr(v)) for k, v in spec["constexprs"].items()], attrs,
             [(k, repr(v)) for k, v in spec["options"].items()])
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:24]


def merge_specializations(configs: Dict[str, dict], sources: Dict[str, set]) -> Tuple[Dict[str, dict], Dict[str, set]]:
    """One configuration per compile input up to divisibility: the most launched specialisation
    represents its group (alignment changes load widths, rarely the register budget), with the
    sources of the whole group."""
    groups = defaultdict(list)
    for key, spec in configs.items():
        groups[config_key(spec, specialization=False)].append(key)
    merged_configs, merged_sources = {}, {}
    for keys in groups.values():
        best = max(keys, key=lambda k: (len(sources[k]), k))
        merged_configs[best] = configs[best]
        merged_sources[best] = set().union(*(sources[k] for k in keys))
    return merged_configs, merged_sources


def replay(calls: Sequence[Tuple[int, OpCall, set]], batches: Sequence[Optional[int]], target: Target,
           recorder: LaunchRecorder, consulted: list) -> Tuple[list, list]:
    """Run every (index, call, labels) at every batch on ``target``, launches recorded with the
    source (index, batch); returns (rejected up front, errors) as (label, batch, message) lists, each
    message starting with the target's name.
    A ValueError from the op is a rejection up front."""
    rejected, errors = [], []
    with triton_on_cpu(), emulated_gpu(target, consulted), NoCompute(), recorder.active(target):
        for index, call, labels in calls:
            for batch in batches:
                recorder.label = (index, batch)
                try:
                    call.run(batch)
                except ValueError as exc:
                    rejected.append((sorted(labels)[0], batch, f"{target.name}: {type(exc).__name__}: {exc}"))
                except Exception as exc:  # noqa: BLE001 - every other failure is a finding
                    errors.append((sorted(labels)[0], batch, f"{target.name}: {type(exc).__name__}: {exc}"))
    return rejected, errors


def replay_chunk(calls, batches, arches) -> tuple:
    """``replay`` on every target (a worker-process task): configs, sources, rejected, errors,
    and how often the emulated GPU was consulted."""
    recorder, consulted, rejected, errors = LaunchRecorder(), [], [], []
    for arch in arches:
        r, e = replay(calls, batches, TARGETS[arch], recorder, consulted)
        rejected += r
        errors += e
    return recorder.configs, dict(recorder.sources), rejected, errors, len(consulted)


def replay_all(groups, arches, jobs: int) -> tuple:
    """``replay_chunk`` over [(indexed calls, batches)] in ``jobs`` processes, merged."""
    import multiprocessing

    configs, sources, rejected, errors, consulted = {}, defaultdict(set), [], [], 0
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), initializer=init_worker,
                             initargs=(tempfile.gettempdir(),)) as pool:
        futures = [pool.submit(replay_chunk, calls[i::jobs * 4], batches, arches)
                   for calls, batches in groups for i in range(jobs * 4) if calls[i::jobs * 4]]
        for future in as_completed(futures):
            c, s, r, e, n = future.result()
            configs.update(c)
            for key, src in s.items():
                sources[key] |= src
            rejected += r
            errors += e
            consulted += n
    return configs, sources, rejected, errors, consulted


def record_preset(preset: str, factors: Sequence[int], precisions: Sequence[str]) -> Tuple[dict, dict]:
    """(public-op calls -> labels, launches seen at the model batch on sm_90a) of one preset at
    each latent-size factor and precision (a worker-process task)."""
    from ..models.registry import PRESETS

    torch.set_flush_denormal(True)
    calls, seen = {}, LaunchRecorder()
    native = PRESETS[preset][1]["input_size"]
    for factor in factors:
        for precision in precisions:
            model_calls(preset, native * factor, precision, calls, seen)
    return calls, seen.configs


def record_presets(presets: Sequence[str], factors, precisions, jobs: int, progress=print) -> Tuple[dict, dict]:
    """``record_preset`` over ``presets`` in ``jobs`` processes, merged."""
    import multiprocessing

    calls, seen = {}, {}
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), initializer=init_worker,
                             initargs=(tempfile.gettempdir(),)) as pool:
        futures = {pool.submit(record_preset, p, factors, precisions): p for p in presets}
        for i, future in enumerate(as_completed(futures), 1):
            part, configs = future.result()
            for call, labels in part.items():
                calls.setdefault(call, set()).update(labels)
            seen.update(configs)
            progress(f"  [{i}/{len(presets)}] {futures[future]}: {len(part)} op calls")
    return calls, seen
