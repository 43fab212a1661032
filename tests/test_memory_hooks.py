"""diffusers' memory features on every family: layerwise casting, sequential offload and group offloading.

Each runs a forward of a tiny randomised model and compares it with the plain model:

* layerwise casting (``enable_layerwise_casting``, fp8 e4m3 storage, fp32 or bf16 compute): equal
  (tolerance 0) to the plain model whose cast weights were rounded to fp8 and back, and within
  the fp8 rounding of the plain model itself (relative L2 error below ``FP8_TOLERANCE``);
* sequential offload: every module's own parameters and buffers live on the meta device except
  during its own forward (what accelerate's ``cpu_offload`` behind ``enable_sequential_cpu_offload``
  does), so a weight read outside its module fails; equal to the plain model (tolerance 0);
* diffusers' group offloading (block and leaf level, in memory and on disk; on the CPU both
  devices are the CPU, as diffusers' own tests do without an accelerator): equal (tolerance 0).
  diffusers runs it through accelerate, which is not a dependency of the package: skipped without it.
"""
import copy
import pytest
import torch
import torch.nn as nn
from diffusers.hooks import HookRegistry, ModelHook, apply_group_offloading

from families import FAMILIES, tiny
from helpers import model_inputs, randomize_

pytestmark = pytest.mark.usefixtures("single_thread")

STORAGE = torch.float8_e4m3fn
# relative L2 error allowed between the fp8-stored and the plain model's outputs: four times fp8
# e4m3's unit roundoff 2^-4 (3 mantissa bits); measured 0.03-0.16 on the tiny models
FP8_TOLERANCE = 4 * 2**-4


def _plain(cls, dtype=torch.float32):
    torch.manual_seed(0)
    return randomize_(tiny(cls)).eval().to(dtype)


def _inputs(model, dtype=torch.float32):
    x, t, y = model_inputs(model)
    return x.to(dtype), t, y


@pytest.mark.parametrize("compute", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("cls", FAMILIES, ids=lambda c: c.__name__)
@torch.no_grad()
def test_layerwise_casting_matches_the_plain_model(cls, compute):
    plain = _plain(cls, compute)
    cast = copy.deepcopy(plain)
    cast.enable_layerwise_casting(storage_dtype=STORAGE, compute_dtype=compute)
    stored = {n for n, p in cast.named_parameters() if p.dtype == STORAGE}
    assert stored, "no weight is stored in fp8"
    inputs = _inputs(plain, compute)
    got = cast(*inputs)
    assert got.dtype == compute
    assert {n for n, p in cast.named_parameters() if p.dtype == STORAGE} == stored  # back in storage
    exact = plain(*inputs)
    rounded = copy.deepcopy(plain)
    for n, p in rounded.named_parameters():
        if n in stored:
            p.copy_(p.to(STORAGE).to(compute))
    torch.testing.assert_close(got, rounded(*inputs), rtol=0, atol=0)
    error = ((got.float() - exact.float()).norm() / exact.float().norm()).item()
    assert error < FP8_TOLERANCE, error


class MetaOffloadHook(ModelHook):
    """The module's own parameters and buffers on the meta device except during its forward."""

    def initialize_hook(self, module):
        self.tensors = {kind: dict(getattr(module, kind)) for kind in ("_parameters", "_buffers")}
        return self.post_forward(module, module)

    def pre_forward(self, module, *args, **kwargs):
        for kind, tensors in self.tensors.items():
            getattr(module, kind).update(tensors)
        return args, kwargs

    def post_forward(self, module, output):
        for kind, tensors in self.tensors.items():
            for name, t in tensors.items():
                if t is not None:
                    meta = torch.empty_like(t, device="meta")
                    getattr(module, kind)[name] = nn.Parameter(meta, t.requires_grad) if kind == "_parameters" else meta
        return output


def sequential_offload(model):
    for m in model.modules():
        if any(t is not None for t in (*m._parameters.values(), *m._buffers.values())):
            HookRegistry.check_if_exists_or_initialize(m).register_hook(MetaOffloadHook(), "meta_offload")
    return model


@pytest.mark.parametrize("cls", FAMILIES, ids=lambda c: c.__name__)
@torch.no_grad()
def test_sequential_offload_matches_the_plain_model(cls):
    plain = _plain(cls)
    inputs = _inputs(plain)
    offloaded = sequential_offload(copy.deepcopy(plain))
    assert all(p.device.type == "meta" for p in offloaded.parameters())
    torch.testing.assert_close(offloaded(*inputs), plain(*inputs), rtol=0, atol=0)
    assert all(p.device.type == "meta" for p in offloaded.parameters())


GROUP_OFFLOADS = {
    "block": dict(offload_type="block_level", num_blocks_per_group=1),
    "leaf": dict(offload_type="leaf_level"),
    "leaf-disk": dict(offload_type="leaf_level", offload_to_disk_path=True),
}


@pytest.mark.parametrize("kind", list(GROUP_OFFLOADS))
@pytest.mark.parametrize("cls", FAMILIES, ids=lambda c: c.__name__)
@torch.no_grad()
def test_group_offloading_matches_the_plain_model(cls, kind, tmp_path):
    pytest.importorskip("accelerate", reason="diffusers' group offloading needs accelerate")
    plain = _plain(cls)
    inputs = _inputs(plain)
    offloaded = copy.deepcopy(plain)
    options = dict(GROUP_OFFLOADS[kind])
    if options.pop("offload_to_disk_path", False):
        options["offload_to_disk_path"] = str(tmp_path)
    apply_group_offloading(offloaded, onload_device=torch.device("cpu"), offload_device=torch.device("cpu"), **options)
    torch.testing.assert_close(offloaded(*inputs), plain(*inputs), rtol=0, atol=0)
