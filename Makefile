# The README's two commands: `make demo` and `make test`. Both create .venv first when needed.
#
# Install order matters (see DESIGN.md): the CPU torch wheel goes in first; then every other
# package at the exact version in requirements/lock-cpu.txt, with --no-deps so nothing can pull
# a CUDA torch or the CUDA-only torchvision that mosaicml-streaming asks for (we never import it;
# pretrain/data/streaming_import.py explains the workaround).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH := torch==2.13.0
LOCK := requirements/lock-cpu.txt
STAMP := $(VENV)/.siyada-installed

export DS_BUILD_OPS := 0
# DeepSpeed compiles a small CPU communication op on first use (~40 s); keep it between runs.
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.cache/torch_extensions

.PHONY: demo test test-fast lint lock clean slurm-up slurm-down gpu-check lid-model curate-demo

demo: $(STAMP)
	$(BIN)/pretrain train

test: $(STAMP)
	$(BIN)/python -m pytest

# The fast loop while working: everything but the tests that launch processes (a few minutes).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not e2e"

# ruff over everything; mypy over the package and the kernels (settings in pyproject.toml).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

$(STAMP): pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet --no-deps -r $(LOCK)
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

# On a CUDA machine: the kernels' GPU tests (bf16, real shapes, bitwise repeats), then their
# benchmark against PyTorch SDPA / eager / torch.compile (and flash-attn when installed).
# GPU_PYTHON: any Python with a CUDA torch, triton and pytest (default: the venv's).
GPU_PYTHON ?= $(BIN)/python
gpu-check:
	$(GPU_PYTHON) -m pytest -m gpu tests/kernels
	$(GPU_PYTHON) bench/kernels.py

# The single-node Slurm cluster the `slurm` tests submit to (root; apt-get on first use).
slurm-up:
	slurm/local/start.sh

slurm-down:
	slurm/local/stop.sh

# Raw sample crawl -> curated corpus with a data card -> the demo model -> a Hugging Face export
# whose model card carries the data card (runs/curate_demo/hf/README.md).
curate-demo: $(STAMP)
	$(BIN)/pretrain curate --config configs/curate_demo.yaml
	$(BIN)/pretrain train --config configs/curate_demo.yaml
	$(BIN)/pretrain export --checkpoint runs/curate_demo --output runs/curate_demo/hf --force

# The bundled language-ID model (pretrain/data/lid_model/): trained only on text the package may
# ship, the sample corpus (written for this project) and the public-domain UDHR (read from
# ../shared/data, never copied). DODa is CC BY-NC: it is used to measure (bench/lid.py), not here.
REAL_TEXT ?= ../shared/data/real-text
lid-model: $(STAMP)
	$(BIN)/pretrain lid train --output pretrain/data/lid_model \
	  $(foreach f,$(sort $(wildcard pretrain/data/sample_corpus/*.jsonl)),--data $(f)) \
	  --text arb_Arab=$(REAL_TEXT)/udhr_arb.txt --text eng_Latn=$(REAL_TEXT)/udhr_eng.txt \
	  --text fra_Latn=$(REAL_TEXT)/udhr_fra.txt --text tzm_Latn=$(REAL_TEXT)/udhr_tzm.txt \
	  --text zgh_Tfng=$(REAL_TEXT)/udhr_zgh.txt

# Re-record the resolved versions after changing dependencies in the venv by hand.
lock:
	$(BIN)/pip freeze --exclude-editable | grep -v -E '^(torch|torchvision|siyada)==' > $(LOCK)

clean:
	rm -rf $(VENV) .cache runs
