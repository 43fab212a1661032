"""The Objective protocol: every objective class implements every member with a compatible
signature, and a checkpoint's objective config is read in both layouts."""
import inspect
import typing

import pytest

from xswin_fast.checkpoints import CheckpointError
from xswin_fast.objectives import (
    OBJECTIVES, Diffusion, FlowMatching, Objective, objective_from_config, saved_objective_config,
)

CLASSES = [Diffusion, FlowMatching]
METHODS = [n for n, v in vars(Objective).items() if (callable(v) or isinstance(v, classmethod)) and not n.startswith("_")]
ATTRIBUTES = list(typing.get_type_hints(Objective))


def test_the_protocol_names_the_interface():
    assert set(METHODS) == {"config", "from_config", "sample_timesteps", "add_noise", "training_losses",
                            "make_sampler", "sample"}
    assert set(ATTRIBUTES) == {"name", "num_timesteps", "learn_sigma", "samplers", "default_sampler", "default_steps"}


@pytest.mark.parametrize("objective", [Diffusion(), FlowMatching()], ids=["eps", "flow"])
def test_every_objective_is_an_objective(objective):
    assert isinstance(objective, Objective)
    assert objective.name in OBJECTIVES and objective.default_sampler in objective.samplers
    for attr in ATTRIBUTES:
        expected = typing.get_type_hints(Objective)[attr]
        value = getattr(objective, attr)
        assert isinstance(value, typing.get_origin(expected) or expected), (attr, value)


def _compatible(protocol_sig: inspect.Signature, class_sig: inspect.Signature) -> list:
    """What keeps ``class_sig`` from standing in for ``protocol_sig``: each protocol parameter must
    exist with the same name, kind and position; the class may add parameters only with defaults,
    and may give a default where the protocol has none, never take one away."""
    problems = []
    proto, cls = list(protocol_sig.parameters.values()), list(class_sig.parameters.values())
    by_name = {p.name: p for p in cls}
    for i, p in enumerate(proto):
        q = by_name.get(p.name)
        if q is None:
            problems.append(f"missing {p.name}")
            continue
        if q.kind != p.kind:
            problems.append(f"{p.name} is {q.kind.description}, the protocol's is {p.kind.description}")
        if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD and cls.index(q) != i:
            problems.append(f"{p.name} at position {cls.index(q)}, the protocol's at {i}")
        if p.default is not inspect.Parameter.empty and q.default is inspect.Parameter.empty:
            problems.append(f"{p.name} has no default")
    for q in cls:
        if q.name not in {p.name for p in proto} and q.default is inspect.Parameter.empty and q.kind not in (
                inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            problems.append(f"extra required parameter {q.name}")
    return problems


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
@pytest.mark.parametrize("method", METHODS)
def test_every_member_has_a_compatible_signature(cls, method):
    proto, impl = inspect.getattr_static(Objective, method), inspect.getattr_static(cls, method)
    assert isinstance(impl, classmethod) == isinstance(proto, classmethod), method
    problems = _compatible(inspect.signature(getattr(Objective, method)), inspect.signature(getattr(cls, method)))
    assert not problems, problems


def test_the_signature_check_can_fail():
    def proto(self, x, *, steps, cfg_scale=1.0):
        ...

    assert not _compatible(inspect.signature(proto), inspect.signature(lambda self, x, *, steps=3, cfg_scale=1.0, y=0: 0))
    assert _compatible(inspect.signature(proto), inspect.signature(lambda self, y, *, steps, cfg_scale=1.0: 0))
    assert _compatible(inspect.signature(proto), inspect.signature(lambda self, x, steps, cfg_scale=1.0: 0))
    assert _compatible(inspect.signature(proto), inspect.signature(lambda self, x, *, steps, cfg_scale: 0))
    assert _compatible(inspect.signature(proto), inspect.signature(lambda self, x, z, *, steps, cfg_scale=1.0: 0))


def test_a_class_without_a_member_is_not_an_objective():
    class Partial:
        name, num_timesteps, learn_sigma = "eps", 10, False
        samplers, default_sampler, default_steps = ("ddpm",), "ddpm", 5

    assert not isinstance(Partial(), Objective)


def test_both_checkpoint_layouts_give_the_objective_config():
    flow = FlowMatching(num_train_timesteps=500, time_shift=2.0).config()
    assert saved_objective_config({"objective": flow}) == flow  # format xswin_fast.train/2
    assert saved_objective_config({"objective": "flow", "diffusion": flow}) == flow  # format /1
    eps = Diffusion(learn_sigma=False).config()
    assert saved_objective_config({"diffusion": eps}) == eps  # /1 from before flow matching: no name at all
    assert objective_from_config(saved_objective_config({"diffusion": eps})).name == "eps"
    with pytest.raises(CheckpointError, match="no objective config"):
        saved_objective_config({"objective": "eps"})
