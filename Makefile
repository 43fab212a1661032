# These commands do all set-up on a fresh machine:
#   make train  the main job: train a small XSwin on sklearn's digits on the CPU (minutes), then
#               write a sample grid and a loss curve into results/NNN-XSwin-digits/
#   make test   install the test dependencies and run the test suite
#   make bench  install the benchmark dependencies and run the benchmark suite
#   make table1 the X-Swin report's Table 1 on the digits (docs/table1.md)
#   make compare which backbone: 4 models x 3 seeds on the digits and Fashion-MNIST (docs/comparison.md)
#   make text-to-image  a text model trained from captions on Fashion-MNIST on the CPU (docs/text_to_image.md)
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

train: install
	$(PY) train.py

# kernels run through Triton's interpreter on machines without a GPU
test: install-test
	TRITON_INTERPRET=1 HF_HUB_OFFLINE=1 $(PY) -m pytest tests -q -n 2

install-bench: $(VENV)/bin/activate
	$(PIP) install -q "torch==2.13.0" "triton==3.7.1" -e ".[benchmark]"

# the benchmark suite (docs/benchmarks.md): the full suite on a GPU; without one, GPU/Triton
# cases skip and the quick CPU part runs. Never under Triton's interpreter (meaningless timings).
# Extra pytest options go in BENCH_ARGS, e.g. BENCH_ARGS="--benchmark-json bench.json".
BENCH_ARGS ?=
bench: install-bench
	env -u TRITON_INTERPRET $(PY) -m pytest benchmarks/ --benchmark-only $(BENCH_ARGS)

# docs/table1.md: XSwin, USwin, UViT and DiT trained alike on the digits, 3 seeds each, into
# results/table1-digits/ (about 60-75 minutes on 2 CPU cores; the same command resumes it).
# Extra flags in TABLE1_ARGS, e.g. TABLE1_ARGS="--seeds 5 --device cuda".
TABLE1_ARGS ?=
table1: $(VENV)/bin/activate
	$(PIP) install -q "torch==2.13.0" "triton==3.7.1" -e ".[eval]"
	$(PY) experiments/table1_digits.py $(TABLE1_ARGS)

# docs/comparison.md: XSwin, USwin, UViT and DiT on the digits and Fashion-MNIST, 3 seeds, FID along
# training, then the ViTs' compute-matched cells, as two processes (about 3.3 + 2.3 hours on 2 quiet
# CPU cores; the same command resumes it).
# Installs Debian's dataset-fashion-mnist if its files are missing. Run folders go to COMPARE_OUT,
# cell summaries, tables and curves to docs/results/compare-backbones/; extra flags in COMPARE_ARGS.
COMPARE_OUT ?= results/compare-backbones
COMPARE_ARGS ?=
FASHION_MNIST_FILE = /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz
compare: $(VENV)/bin/activate
	$(PIP) install -q "torch==2.13.0" "triton==3.7.1" -e ".[eval]"
	test -f $(FASHION_MNIST_FILE) || (apt-get install -y dataset-fashion-mnist || sudo apt-get install -y dataset-fashion-mnist)
	$(PY) -m xswin_fast.evaluation.fashion_extractor --if-missing
	$(PY) -c "from xswin_fast.evaluation.digits_extractor import load_digits_cnn; load_digits_cnn()"
	$(PY) experiments/compare_backbones.py --out $(COMPARE_OUT) --threads 1 --shard 0/2 $(COMPARE_ARGS) & \
	$(PY) experiments/compare_backbones.py --out $(COMPARE_OUT) --threads 1 --shard 1/2 $(COMPARE_ARGS); \
	status=$$?; wait $$! || status=1; exit $$status
	$(PY) experiments/compare_backbones.py --out $(COMPARE_OUT) --report-only $(COMPARE_ARGS)

# Is the core's budget long enough? Seed 0 of its eight cells on twice the schedule (6,000 steps,
# about 2 hours on two quiet processes; resumable like compare), then experiments/schedule_check.py
# against the core: docs/results/compare-backbones-6000/schedule_check.md.
compare-long:
	$(MAKE) compare COMPARE_OUT=$(COMPARE_OUT)-6000 COMPARE_ARGS="--seeds 1 --steps 6000 --eval-every 1200 --no-matched \
	  --results docs/results/compare-backbones-6000 $(COMPARE_ARGS)"
	$(PY) experiments/schedule_check.py --short docs/results/compare-backbones --long docs/results/compare-backbones-6000

# docs/text_to_image.md: captions written from Fashion-MNIST's labels, DiT-digits trained from them with
# the separate cross-attention and with the fused attention (two processes), sampled from held-out
# prompts and scored for prompt alignment; results in docs/results/text-to-image/. Extra flags in T2I_ARGS.
T2I_OUT ?= results/text-to-image
T2I_ARGS ?=
text-to-image: $(VENV)/bin/activate
	$(PIP) install -q "torch==2.13.0" "triton==3.7.1" -e ".[text]"
	test -f $(FASHION_MNIST_FILE) || (apt-get install -y dataset-fashion-mnist || sudo apt-get install -y dataset-fashion-mnist)
	$(PY) -m xswin_fast.evaluation.fashion_extractor --if-missing
	HF_HUB_OFFLINE=1 $(PY) experiments/text_to_image.py --out $(T2I_OUT) $(T2I_ARGS) --write-data-only
	HF_HUB_OFFLINE=1 $(PY) experiments/text_to_image.py --out $(T2I_OUT) --fusions separate $(T2I_ARGS) & \
	HF_HUB_OFFLINE=1 $(PY) experiments/text_to_image.py --out $(T2I_OUT) --fusions fused $(T2I_ARGS); \
	status=$$?; wait $$! || status=1; exit $$status

# docs/gpu_fitness.md: registers, spills, shared memory and occupancy of every kernel configuration
# on sm_80, sm_86, sm_89, sm_90a, sm_100a and sm_120 (ptxas and ptxas-blackwell ship in the triton
# wheel), every preset at 1x/2x/4x, three precisions, batches 1-256 and the window sweep, with the
# rules (--check; CI enforces a narrower scope, .ci/run)
COMPILE_CHECK_ARGS ?= --check
compile-check: install
	env -u TRITON_INTERPRET $(PY) -m xswin_fast.compile_check $(COMPILE_CHECK_ARGS)

# on a CUDA machine, under 8 minutes: results in benchmarks/results/<gpu>-<date>-<commit>/
# (GPU_SESSION_ARGS=--dry-run walks every step without a GPU; --comparison adds the backbone
# comparison's full version, budgeted apart: docs/comparison.md)
GPU_SESSION_ARGS ?=
gpu-session: install-bench
	env -u TRITON_INTERPRET $(PY) benchmarks/gpu_session.py $(GPU_SESSION_ARGS)

.PHONY: install install-test install-bench train test bench table1 compare compare-long text-to-image compile-check gpu-session
