# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
RUN    := OMP_NUM_THREADS=1 HF_DATASETS_OFFLINE=1
TORCHRUN := $(RUN) $(BIN)/torchrun --standalone --nproc_per_node=2

.PHONY: venv test lint demo bench clean

venv: $(STAMP)

# constraints.txt pins the CPU build torch==2.13.0 for this machine; the package itself only
# asks for torch>=2.3.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

lint: venv
	$(BIN)/ruff check .

test: lint
	$(RUN) $(BIN)/python -m pytest -q

demo: venv
	$(TORCHRUN) launch/train.py --comm none
	$(TORCHRUN) launch/train.py --comm powersgd --rank 4

bench: venv
	$(RUN) $(BIN)/python -m benchmarks.compressors --json bench-results/compressors.json

clean:
	rm -rf $(VENV) bench-results .pytest_cache .ruff_cache *.egg-info
