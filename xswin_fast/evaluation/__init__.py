"""Evaluation of generated images: FID, Inception Score, KID and precision/recall through
torch-fidelity, offline.

``metrics.compute_metrics`` wires torch-fidelity; ``digits_extractor`` holds the project's own
feature extractor for the built-in digits (registered into torch-fidelity as ``digits-cnn``) and
the torch-fidelity wrapper of such small CNNs; ``fashion_extractor`` the one for Fashion-MNIST
(``fashion-cnn``);
``reference`` exports a run's held-out split as reference images. The ``evaluate.py`` command
line is ``xswin_fast.cli.evaluate``. torch-fidelity is an optional dependency
(``pip install -e ".[eval]"``), imported only when metrics are computed.
"""
