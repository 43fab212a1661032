"""Build an XSwin backbone and run real forward/backward training steps on random latents.

    python demo.py                       # XSwin-paper (64-px latents 8x8x4) on the CPU
    python demo.py --model XSwin-S/2 --latent-size 32 --device cuda

This is the placeholder main job until the training script lands: it builds the model, prints
its parameter count and forward GFLOPs, then times a few AdamW steps of the DiT epsilon-MSE
objective on random data (noise targets at random timesteps) and reports the loss.
"""
import argparse
import time

import torch
import torch.nn.functional as F

from xswin_fast import create_model, list_models
from xswin_fast.flops import count_parameters, forward_flops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="XSwin-paper", choices=list_models())
    parser.add_argument("--latent-size", type=int, default=None, help="default: the preset's input_size")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backend", default=None, choices=[None, "torch", "triton"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    model = create_model(args.model).to(args.device).set_backend(args.backend)
    size = args.latent_size or model.input_size
    print(f"{args.model}: {count_parameters(model) / 1e6:.2f}M parameters, "
          f"{forward_flops(model, size) / 1e9:.2f} forward GFLOPs per {size}x{size} latent")

    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x0 = torch.randn(args.batch_size, model.in_channels, size, size, device=args.device)
    y = torch.randint(0, model.num_classes, (args.batch_size,), device=args.device)
    for step in range(1, args.steps + 1):
        start = time.perf_counter()
        t = torch.randint(0, 1000, (args.batch_size,), device=args.device)
        noise = torch.randn_like(x0)
        alpha = (1 - t.float() / 1000).view(-1, 1, 1, 1)
        xt = alpha.sqrt() * x0 + (1 - alpha).sqrt() * noise
        eps = model(xt, t, y)[:, : model.in_channels]
        loss = F.mse_loss(eps, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        dt = time.perf_counter() - start
        print(f"step {step}: loss {loss.item():.4f}, {args.batch_size / dt:.1f} images/s")


if __name__ == "__main__":
    main()
