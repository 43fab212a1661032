"""Bad settings and bad inputs of the layers and models: each call raises the exact exception type
(TypeError for a wrong type, ValueError for a wrong value) with a message that names the argument,
at construction or before any computation. Nothing is truncated, coerced or accepted silently."""
import functools
import math

import pytest
import torch

from families import tiny
from helpers import model_inputs
from xswin_fast import DiT, USwin, UViT, XSwin, create_model
from xswin_fast.layers.adaln import Modulator
from xswin_fast.layers.attention import Attention, WindowAttention, WindowCrossAttention
from xswin_fast.layers.blocks import SwinBlock, ViTBlock
from xswin_fast.layers.conv import ConvTriplet
from xswin_fast.layers.embed import LabelEmbedder, TimestepEmbedder
from xswin_fast.layers.mlp import Mlp
from xswin_fast.layers.patching import PatchExpanding, PatchMerging, Patching

pytestmark = pytest.mark.usefixtures("single_thread")

NAN, INF = math.nan, math.inf

# id: (exception, message pattern naming the argument, call)
LAYER_SETTINGS = {
    "window-float": (TypeError, r"window_size must be an int or a pair of ints", lambda: WindowAttention(32, 2, (2.5, 2), (0, 0))),
    "window-str": (TypeError, r"window_size must be an int or a pair", lambda: WindowAttention(32, 2, "22", (0, 0))),
    "window-zero": (ValueError, r"window_size must be >= 1", lambda: WindowAttention(32, 2, (0, 2), (0, 0))),
    "shift-float": (TypeError, r"shift_size must be an int or a pair", lambda: WindowAttention(32, 2, (2, 2), (1.0, 1))),
    "shift-negative": (ValueError, r"shift_size must be >= 0", lambda: WindowAttention(32, 2, (2, 2), (-1, 0))),
    "shift-ge-window": (ValueError, r"shift_size must be < window_size", lambda: WindowAttention(32, 2, (2, 2), (2, 0))),
    "heads-not-dividing": (ValueError, r"dim \(32\) must be divisible by num_heads \(3\)", lambda: WindowAttention(32, 3, 2, 0)),
    "heads-zero": (ValueError, r"num_heads must be >= 1", lambda: Attention(32, 0)),
    "heads-float": (TypeError, r"num_heads must be an int", lambda: Attention(32, 2.0)),
    "qkv-bias-str": (TypeError, r"qkv_bias must be a bool", lambda: Attention(32, 2, qkv_bias="no")),
    "cross-window-float": (TypeError, r"window_size must be", lambda: WindowCrossAttention(32, 2, 2.0, 16)),
    "cross-eps-inf": (ValueError, r"eps must be a finite float > 0", lambda: WindowCrossAttention(32, 2, 2, 16, eps=INF)),
    "swin-eps-nan": (ValueError, r"eps must be a finite float > 0", lambda: SwinBlock(32, 2, 2, 0, 16, eps=NAN)),
    "swin-eps-negative": (ValueError, r"eps must be a finite float > 0", lambda: SwinBlock(32, 2, 2, 0, 16, eps=-1e-5)),
    "swin-eps-str": (TypeError, r"eps must be a float", lambda: SwinBlock(32, 2, 2, 0, 16, eps="1e-5")),
    "swin-drop-path-one": (ValueError, r"drop_path must be a probability in \[0, 1\)", lambda: SwinBlock(32, 2, 2, 0, 16, drop_path=1.0)),
    "swin-drop-path-negative": (ValueError, r"drop_path must be a probability", lambda: SwinBlock(32, 2, 2, 0, 16, drop_path=-0.1)),
    "swin-drop-path-nan": (ValueError, r"drop_path must be a probability", lambda: SwinBlock(32, 2, 2, 0, 16, drop_path=NAN)),
    "swin-mlp-ratio-zero": (ValueError, r"mlp_ratio must be a finite float > 0", lambda: SwinBlock(32, 2, 2, 0, 16, mlp_ratio=0)),
    "vit-eps-inf": (ValueError, r"eps must be a finite float > 0", lambda: ViTBlock(32, 2, 16, eps=INF)),
    "vit-mlp-ratio-tiny": (ValueError, r"mlp_ratio \(0.01\) times the width \(32\) must be >= 1", lambda: ViTBlock(32, 2, 16, mlp_ratio=0.01)),
    "mlp-approximate": (ValueError, r"approximate must be", lambda: Mlp(32, 64, approximate="fast")),
    "mlp-hidden-zero": (ValueError, r"hidden_dim must be >= 1", lambda: Mlp(32, 0)),
    "modulator-dim-zero": (ValueError, r"dim must be >= 1", lambda: Modulator(16, 0)),
    "modulator-cond-float": (TypeError, r"c_dim must be an int", lambda: Modulator(16.0, 8)),
    "modulator-channels-last-str": (TypeError, r"channels_last must be a bool", lambda: Modulator(16, 8, channels_last="no")),
    "patching-patch-float": (TypeError, r"patch_size must be an int", lambda: Patching(4, 32, 2.0, 16)),
    "patching-eps-zero": (ValueError, r"eps must be a finite float > 0", lambda: Patching(4, 32, 2, 16, eps=0.0)),
    "merging-eps-inf": (ValueError, r"eps must be a finite float > 0", lambda: PatchMerging(32, 16, eps=INF)),
    "expanding-odd": (ValueError, r"dim of PatchExpanding must be even", lambda: PatchExpanding(33, 16)),
    "conv-kernel-even": (ValueError, r"kernel_size must be odd", lambda: ConvTriplet(4, 32, 16, kernel_size=2)),
    "label-dropout-above-one": (ValueError, r"dropout_prob must be a probability in \[0, 1\]", lambda: LabelEmbedder(10, 32, 1.5)),
    "label-classes-zero": (ValueError, r"num_classes must be >= 1", lambda: LabelEmbedder(0, 32, 0.1)),
    "timestep-hidden-zero": (ValueError, r"hidden_size must be >= 1", lambda: TimestepEmbedder(0)),
}


xswin = functools.partial(tiny, XSwin)
dit = functools.partial(tiny, DiT)


MODEL_SETTINGS = {
    "xswin-window-float": (TypeError, r"window_size must be an int or a pair", lambda: xswin(window_size=2.5)),
    "xswin-window-str": (TypeError, r"window_size must be an int or a pair", lambda: xswin(window_size="2")),
    "xswin-window-pair-float": (TypeError, r"window_size must be an int or a pair", lambda: xswin(window_size=(2, 2.0))),
    "xswin-patch-zero": (ValueError, r"patch_size must be >= 1", lambda: xswin(patch_size=0)),
    "xswin-patch-float": (TypeError, r"patch_size must be an int", lambda: xswin(patch_size=1.0)),
    "xswin-patch-not-dividing": (ValueError, r"input_size \(8\) must be divisible by patch_size \(3\)", lambda: xswin(patch_size=3)),
    "xswin-input-size-zero": (ValueError, r"input_size must be >= 1", lambda: xswin(input_size=0)),
    "xswin-in-channels-zero": (ValueError, r"in_channels must be >= 1", lambda: xswin(in_channels=0)),
    "xswin-embed-dim-negative": (ValueError, r"embed_dim must be >= 1", lambda: xswin(embed_dim=-32)),
    "xswin-embed-dim-bottleneck": (ValueError, r"embed_dim \* 2\*\*stages = 18 must be divisible by 4",
                                   lambda: xswin(embed_dim=18, depths=(1,), num_heads=(2,))),
    "xswin-depth-zero": (ValueError, r"depths\[1\] must be >= 1", lambda: xswin(depths=(1, 0))),
    "xswin-depth-negative": (ValueError, r"depths\[0\] must be >= 1", lambda: xswin(depths=(-1, 2))),
    "xswin-depth-float": (TypeError, r"depths\[0\] must be an int", lambda: xswin(depths=(1.5, 2))),
    "xswin-depths-str": (TypeError, r"depths must be a sequence of ints", lambda: xswin(depths="12")),
    "xswin-heads-zero": (ValueError, r"num_heads\[1\] must be >= 1", lambda: xswin(num_heads=(2, 0))),
    "xswin-bottleneck-depth-negative": (ValueError, r"bottleneck_depth must be >= 0", lambda: xswin(bottleneck_depth=-1)),
    "xswin-bottleneck-heads-zero": (ValueError, r"bottleneck_heads must be >= 1", lambda: xswin(bottleneck_heads=0)),
    "xswin-mlp-ratio-zero": (ValueError, r"mlp_ratio must be a finite float > 0", lambda: xswin(mlp_ratio=0)),
    "xswin-mlp-ratio-nan": (ValueError, r"mlp_ratio must be a finite float > 0", lambda: xswin(mlp_ratio=NAN)),
    "xswin-stochastic-depth-one": (ValueError, r"stochastic_depth_prob must be a probability in \[0, 1\)",
                                   lambda: xswin(stochastic_depth_prob=1.0)),
    "xswin-stochastic-depth-negative": (ValueError, r"stochastic_depth_prob must be a probability",
                                        lambda: xswin(stochastic_depth_prob=-0.1)),
    "xswin-class-dropout-above-one": (ValueError, r"class_dropout_prob must be a probability in \[0, 1\]",
                                      lambda: xswin(class_dropout_prob=1.5)),
    "xswin-class-dropout-nan": (ValueError, r"class_dropout_prob must be a probability", lambda: xswin(class_dropout_prob=NAN)),
    "xswin-num-classes-zero": (ValueError, r"num_classes must be >= 1", lambda: xswin(num_classes=0)),
    "xswin-num-classes-negative": (ValueError, r"num_classes must be >= 1", lambda: xswin(num_classes=-3)),
    "xswin-norm-eps-inf": (ValueError, r"norm_eps must be a finite float > 0", lambda: xswin(norm_eps=INF)),
    "xswin-norm-eps-zero": (ValueError, r"norm_eps must be a finite float > 0", lambda: xswin(norm_eps=0.0)),
    "xswin-final-downsample-str": (TypeError, r"final_downsample must be a bool", lambda: xswin(final_downsample="no")),
    "xswin-learn-sigma-int": (TypeError, r"learn_sigma must be a bool", lambda: xswin(learn_sigma=1)),
    "uswin-conv-blocks-str": (TypeError, r"conv_blocks must be a bool",
                              lambda: tiny(USwin, conv_blocks="False")),
    "dit-depth-zero": (ValueError, r"depth must be >= 1", lambda: dit(depth=0)),
    "dit-depth-negative": (ValueError, r"depth must be >= 1", lambda: dit(depth=-2)),
    "dit-heads-not-dividing": (ValueError, r"hidden_size \(64\) must be divisible by num_heads \(3\)", lambda: dit(num_heads=3)),
    "dit-heads-zero": (ValueError, r"num_heads must be >= 1", lambda: dit(num_heads=0)),
    "dit-hidden-zero": (ValueError, r"hidden_size must be >= 1", lambda: dit(hidden_size=0)),
    "dit-input-size-float": (TypeError, r"input_size must be an int", lambda: dit(input_size=8.0)),
    "dit-patch-not-dividing": (ValueError, r"input_size \(8\) must be divisible by patch_size \(3\)", lambda: dit(patch_size=3)),
    "dit-mlp-ratio-negative": (ValueError, r"mlp_ratio must be a finite float > 0", lambda: dit(mlp_ratio=-1.0)),
    "dit-class-dropout-above-one": (ValueError, r"class_dropout_prob must be a probability", lambda: dit(class_dropout_prob=2.0)),
    "dit-num-classes-zero": (ValueError, r"num_classes must be >= 1", lambda: dit(num_classes=0)),
    "uvit-learn-sigma-str": (TypeError, r"learn_sigma must be a bool", lambda: tiny(UViT, learn_sigma="yes")),
    "uvit-depth-zero": (ValueError, r"depth must be >= 1", lambda: tiny(UViT, depth=0)),
    "create-dropout-above-one": (ValueError, r"class_dropout_prob must be a probability",
                                 lambda: create_model("XSwin-digits", class_dropout_prob=1.5)),
    "create-depth-negative": (ValueError, r"depth must be >= 1", lambda: create_model("DiT-S/8", input_size=8, depth=-1)),
    "create-num-classes-zero": (ValueError, r"num_classes must be >= 1", lambda: create_model("UViT-S/8", input_size=8, num_classes=0)),
    "create-window-float": (TypeError, r"window_size must be an int or a pair", lambda: create_model("XSwin-digits", window_size=2.5)),
    "create-name-not-str": (TypeError, r"name must be a model name", lambda: create_model(["DiT-S/2"])),
}


@pytest.mark.parametrize("case", list(LAYER_SETTINGS), ids=list(LAYER_SETTINGS))
def test_bad_layer_settings_raise(case):
    exc, match, fn = LAYER_SETTINGS[case]
    with pytest.raises(exc, match=match):
        fn()


@pytest.mark.parametrize("case", list(MODEL_SETTINGS), ids=list(MODEL_SETTINGS))
def test_bad_model_settings_raise(case):
    exc, match, fn = MODEL_SETTINGS[case]
    with pytest.raises(exc, match=match):
        fn()


def _replace(inputs, **changes):
    x, t, y = inputs
    return changes.get("x", x), changes.get("t", t), changes.get("y", y)


# id: (exception, message pattern naming the argument, (x, t, y) -> bad (x, t, y))
BAD_MODEL_INPUTS = {
    "x-float64": (TypeError, r"x must have the model's dtype torch.float32, got torch.float64",
                  lambda x, t, y: (x.double(), t, y)),
    "x-float16": (TypeError, r"x must have the model's dtype torch.float32, got torch.float16",
                  lambda x, t, y: (x.half(), t, y)),
    "x-other-device": (ValueError, r"x must be on the model's device cpu, got meta",
                       lambda x, t, y: (x.to("meta"), t.to("meta"), y.to("meta"))),
    "x-batch-zero": (ValueError, r"x must hold at least one sample", lambda x, t, y: (x[:0], t[:0], y[:0])),
    "x-empty-map": (ValueError, r"x must hold at least one sample and a non-empty map", lambda x, t, y: (x[:, :, :0], t, y)),
    "t-other-device": (ValueError, r"t must be on x's device cpu, got meta", lambda x, t, y: (x, t.to("meta"), y)),
    "t-nan": (ValueError, r"t must hold finite timesteps >= 0", lambda x, t, y: (x, t.float().fill_(NAN), y)),
    "t-inf": (ValueError, r"t must hold finite timesteps >= 0", lambda x, t, y: (x, t.float().fill_(INF), y)),
    "t-negative": (ValueError, r"t must hold finite timesteps >= 0", lambda x, t, y: (x, t - 2000, y)),
    "y-other-device": (ValueError, r"y must be on x's device cpu, got meta", lambda x, t, y: (x, t, y.to("meta"))),
    "y-uint8": (TypeError, r"y must be an integer tensor of class labels \(int64 or int32\), got dtype torch.uint8",
                lambda x, t, y: (x, t, y.to(torch.uint8))),
    "y-bool": (TypeError, r"y must be an integer tensor", lambda x, t, y: (x, t, y.bool())),
    "y-float": (TypeError, r"y must be an integer tensor", lambda x, t, y: (x, t, y.float())),
}


@pytest.mark.parametrize("case", list(BAD_MODEL_INPUTS), ids=list(BAD_MODEL_INPUTS))
@pytest.mark.parametrize("cls", [XSwin, DiT], ids=["XSwin", "DiT"])
def test_bad_model_inputs_raise(cls, case):
    exc, match, bad = BAD_MODEL_INPUTS[case]
    model = tiny(cls)
    with pytest.raises(exc, match=match):
        model(*bad(*model_inputs(model)))


@pytest.mark.parametrize("cls", [XSwin, DiT], ids=["XSwin", "DiT"])
def test_int32_labels_and_other_dtypes_under_autocast_run(cls):
    # the good neighbours of the bad inputs above: int32 labels give the int64 result, and a
    # float32 input to a bfloat16 model runs under autocast
    model = tiny(cls).eval()
    x, t, y = model_inputs(model)
    torch.testing.assert_close(model(x, t, y.int()), model(x, t, y), rtol=0, atol=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model.to(torch.bfloat16)(x, t, y).dtype == torch.bfloat16


@pytest.mark.parametrize("cfg_scale, exc, match", [
    (NAN, ValueError, r"cfg_scale must be finite"),
    (INF, ValueError, r"cfg_scale must be finite"),
    ("4", TypeError, r"cfg_scale must be a float"),
])
def test_bad_cfg_scale_raises(cfg_scale, exc, match):
    model = tiny(XSwin)
    x, t, y = model_inputs(model)
    with pytest.raises(exc, match=match):
        model.forward_with_cfg(x, t, torch.tensor([0, model.num_classes]), cfg_scale)


def test_guided_channels_must_be_an_int():
    model = tiny(DiT)
    x, t, _ = model_inputs(model)
    with pytest.raises(TypeError, match=r"guided_channels must be an int"):
        model.forward_with_cfg(x, t, torch.tensor([0, model.num_classes]), 2.0, guided_channels=2.5)


def test_cfg_needs_null_labels_in_the_second_half():
    model = tiny(XSwin)
    x, t, _ = model_inputs(model)
    with pytest.raises(ValueError, match=r"y's second half must hold the null label 10"):
        model.forward_with_cfg(x, t, torch.tensor([0, 3]), 2.0)


def test_grad_checkpointing_switch_must_be_a_bool():
    with pytest.raises(TypeError, match=r"enable must be a bool"):
        tiny(DiT).set_grad_checkpointing("False")
