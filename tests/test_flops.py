"""FLOP counting counts attention (the CPU flash path of SDPA is invisible to FlopCounterMode)."""
import pytest
import torch

from xswin_fast import create_model
from xswin_fast.flops import count_parameters, forward_flops, preset_table


def dit_forward_macs(L, D, depth, p, c_in=4, c_out=8, freq=256):
    """DiT forward multiply-adds per image, by hand."""
    block = 12 * L * D * D + 2 * L * L * D + 6 * D * D  # qkv+proj+mlp, QK^T and PV, adaLN
    return (
        depth * block
        + L * c_in * p * p * D  # patch embedding
        + L * D * p * p * c_out + 2 * D * D  # final linear, final adaLN
        + freq * D + D * D  # timestep MLP
    )


def test_dit_flops_match_the_analytic_count_including_attention():
    with torch.device("meta"):
        model = create_model("DiT-S/2")
    assert forward_flops(model, 32) == 2 * dit_forward_macs(L=256, D=384, depth=12, p=2)


def test_preset_table_lists_parameters_and_flops():
    table = preset_table(256, ["XSwin-paper", "DiT-S/2"])
    rows = table.splitlines()
    assert rows[0].startswith("| preset")
    assert rows[2].startswith("| XSwin-paper | 35.03 |")
    assert rows[3].startswith("| DiT-S/2 | 32.87 | 12.11 |")


def test_count_parameters_excludes_frozen_position_embedding():
    with torch.device("meta"):
        model = create_model("DiT-S/2")
    assert count_parameters(model, trainable_only=False) - count_parameters(model) == 256 * 384


@pytest.mark.parametrize("call, exc, match", [
    (lambda: preset_table(100, ["DiT-S/2"]), ValueError, r"image_size must be a multiple of 8"),
    (lambda: preset_table(256.0, ["DiT-S/2"]), TypeError, r"image_size must be an int"),
    (lambda: preset_table(256, ["DiT-T/2"]), ValueError, r"unknown model 'DiT-T/2'"),
    (lambda: forward_flops(create_model("DiT-S/8", input_size=8), 8, batch=0), ValueError, r"batch must be >= 1"),
    (lambda: forward_flops(create_model("DiT-S/8", input_size=8), 8.0), TypeError, r"latent_size must be an int"),
])
def test_bad_arguments_raise(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_counts_a_bfloat16_model():
    with torch.device("meta"):
        model = create_model("DiT-S/2").to(torch.bfloat16)
    assert forward_flops(model, 32) == 2 * dit_forward_macs(L=256, D=384, depth=12, p=2)


def test_preset_table_counts_pixel_presets_at_their_own_size():
    # a pixel-space preset is not a latent: built at its input_size whatever image_size says
    table = preset_table(512, ["DiffiT-CIFAR10", "XSwin-digits"])
    with torch.device("meta"):
        cifar = create_model("DiffiT-CIFAR10")
    assert f"| DiffiT-CIFAR10 (32-px images) | {count_parameters(cifar) / 1e6:.2f} | {forward_flops(cifar, 32) / 1e9:.2f} |" in table
    assert "| XSwin-digits (8-px images) |" in table
