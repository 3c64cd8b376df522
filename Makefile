# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
RUN    := OMP_NUM_THREADS=1 HF_DATASETS_OFFLINE=1
TORCHRUN := $(RUN) $(BIN)/torchrun --standalone --nproc_per_node=2

.PHONY: venv sysdeps mpi test lint demo bench clean

venv: $(STAMP)

# constraints.txt pins the CPU build torch==2.13.0 for this machine; the package itself only
# asks for torch>=2.3.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# System pieces from Debian's packages, installed only when missing and only as root.
APT_PKGS := $(if $(shell command -v ip),,iproute2) $(if $(shell command -v tc),,iproute2) \
            $(if $(shell command -v mpicc),,openmpi-bin libopenmpi-dev) \
            $(if $(shell command -v slurmctld),,slurm-wlm) $(if $(shell command -v munged),,munge)
sysdeps:
	@if [ -n "$(strip $(APT_PKGS))" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(sort $(APT_PKGS)); \
	  else echo "missing $(sort $(APT_PKGS)); not root, so tests that need them will skip"; fi; \
	fi

lint: venv
	$(BIN)/ruff check .

# mpi4py (the mpi extra) compiles against the system's Open MPI, so it comes after sysdeps;
# where it cannot install, the MPI tests skip and say so.
mpi: venv sysdeps
	@$(BIN)/python -c "import mpi4py" 2>/dev/null || $(BIN)/pip install -q 'mpi4py>=3.1' || \
	  echo "mpi4py did not install: the mpirun tests will skip"

test: lint sysdeps mpi
	$(RUN) $(BIN)/python -m pytest -q

demo: venv
	$(TORCHRUN) launch/train.py --comm none
	$(TORCHRUN) launch/train.py --comm powersgd --rank 4

# Figures for README: compressors alone, then the two-host network benchmark at 100 Mbit/s and
# unshaped (compute overhead); README's netbench block is regenerated from the JSON.
RESULTS := benchmarks/results
bench: venv sysdeps
	$(RUN) $(BIN)/python -m benchmarks.compressors --json $(RESULTS)/compressors.json
	$(RUN) $(BIN)/python -m benchmarks.netbench --json $(RESULTS)/netbench.json \
	  --arms local,allreduce,torch_fp16,torch_powersgd,powersgd,topk,qsgd
	$(RUN) $(BIN)/python -m benchmarks.netbench --bandwidth none --json $(RESULTS)/netbench-unshaped.json \
	  --arms local,allreduce,torch_fp16,torch_powersgd,powersgd
	$(RUN) $(BIN)/python -m benchmarks.planner --json $(RESULTS)/planner.json
	$(RUN) $(BIN)/python -m benchmarks.netbench --workloads lm --json $(RESULTS)/netbench-lgreco.json \
	  --arms allreduce,powersgd,lgreco_powersgd,lgreco_powersgd_wide,lgreco_powersgd_layersum,topk,lgreco_topk,qsgd,lgreco_qsgd
	$(RUN) $(BIN)/python -m benchmarks.netbench --workloads lm --json $(RESULTS)/netbench-lgreco-long.json \
	  --steps 150 --arms allreduce,powersgd,lgreco_powersgd
	$(RUN) $(BIN)/python -m benchmarks.netbench --workloads lm --json $(RESULTS)/netbench-lgreco-rank8.json \
	  --rank 8 --arms allreduce,powersgd,lgreco_powersgd,lgreco_powersgd_wide
	$(RUN) $(BIN)/python -m benchmarks.netbench --workloads lm --json $(RESULTS)/netbench-co2.json \
	  --steps 150 --burst 1mbit --arms local,allreduce,diloco,co2,co2_bf16,co2_qsgd
	$(RUN) $(BIN)/python -m benchmarks.link_cost --json $(RESULTS)/link_cost.json
	$(RUN) $(BIN)/python -m benchmarks.data_quality --json $(RESULTS)/data_quality.json
	$(RUN) $(BIN)/python -m benchmarks.data_scale --json $(RESULTS)/data_scale.json
	$(RUN) $(BIN)/python -m benchmarks.gnnpipe --json $(RESULTS)/gnnpipe.json
	$(BIN)/python -m benchmarks.gnnpipe_report --readme README.md $(RESULTS)/gnnpipe.json
	$(BIN)/python -m benchmarks.data_report --readme README.md $(RESULTS)/data_quality.json \
	  $(RESULTS)/data_scale.json
	$(BIN)/python -m benchmarks.netbench_report --readme README.md $(RESULTS)/netbench.json \
	  $(RESULTS)/netbench-unshaped.json $(RESULTS)/netbench-lgreco.json \
	  $(RESULTS)/netbench-lgreco-long.json $(RESULTS)/netbench-lgreco-rank8.json \
	  $(RESULTS)/netbench-co2.json $(RESULTS)/netbench-co2-device.json

clean:
	rm -rf $(VENV) bench-results .pytest_cache .ruff_cache *.egg-info
