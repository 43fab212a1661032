"""Training, sampling and checkpointing for the xswin_fast backbones (``train.py``, ``sample.py``).

Modules: ``data`` (digits, ImageFolder, split, resumable sampler, latent cache), ``diffusion``
(diffusers schedulers + DiT's hybrid loss), ``ema``, ``checkpoint``, ``distributed``,
``builders`` (model presets, VAE), ``images`` (grids, PNGs, loss plot), ``trainer`` (the
training loop and CLI), ``sampling`` (the sampling CLI), ``compat`` (the torchvision shim).
"""
