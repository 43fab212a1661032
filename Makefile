# Two commands do all set-up on a fresh machine:
#   make demo   build XSwin and run forward/backward training steps (the main job for now)
#   make test   install the test dependencies and run the test suite
# torch 2.13.0 pins triton 3.7.1; naming both keeps pip from pulling a newer torch (and its
# CUDA wheels) on CPU-only machines.
PYTHON ?= python3
VENV ?= .venv
PIP = $(VENV)/bin/pip
PY = $(VENV)/bin/python

$(VENV)/bin/activate:
	$(PYTHON) -m venv $(VENV)

install: $(VENV)/bin/activate
	$(PIP) install -q "torch==2.13.0" "triton==3.7.1" -e .

install-test: $(VENV)/bin/activate
	$(PIP) install -q "torch==2.13.0" "triton==3.7.1" -e ".[test]"

demo: install
	$(PY) demo.py

# kernels run through Triton's interpreter on machines without a GPU
test: install-test
	TRITON_INTERPRET=1 HF_HUB_OFFLINE=1 $(PY) -m pytest tests -q -n 2

.PHONY: install install-test demo test
