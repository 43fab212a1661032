"""Evaluation of trained checkpoints: FID, Inception Score, KID and precision/recall through
torch-fidelity, offline (``evaluate.py``).

``metrics.compute_metrics`` wires torch-fidelity; ``digits_extractor`` holds the project's own
feature extractor for the built-in digits (registered into torch-fidelity as ``digits-cnn``);
``cli`` is the ``evaluate.py`` command line. torch-fidelity is an optional dependency
(``pip install -e ".[eval]"``), imported only when metrics are computed.
"""
