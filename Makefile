# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
RUN    := OMP_NUM_THREADS=1 HF_DATASETS_OFFLINE=1 PATH=$(CURDIR)/$(BIN):$$PATH
TORCHRUN := $(RUN) $(BIN)/torchrun --standalone --nproc_per_node=2

.PHONY: gpu-check venv sysdeps mpi deepspeed extras horovod horovod-build test test-horovod lint docs demo bench clean

venv: $(STAMP)

# constraints.txt pins the CPU build torch==2.13.0 for this machine; the package itself only
# asks for torch>=2.3.
# uv (from the package registry, into the venv) installs the same pinned set as pip and
# byte-compiles it on every core: 27 s here against pip's 53 s (pip unpacks and compiles file by
# file). Imports need the .pyc files when PYTHONDONTWRITEBYTECODE is set (twice as slow
# without). uv reads no pip config, so pip's find-links (where this machine keeps its torch
# wheel) are passed on. Where uv cannot install, pip does the same job, then compileall over all
# cores (its status ignored: a few vendored test files in site-packages do not parse).
UV_LINKS := $(if $(PIP_FIND_LINKS),--find-links $(PIP_FIND_LINKS))
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	($(BIN)/pip install -q uv && $(BIN)/uv pip install -q --python $(BIN)/python \
	  --compile-bytecode $(UV_LINKS) -c constraints.txt -e '.[dev]') || \
	($(BIN)/pip install -q --no-compile -c constraints.txt -e '.[dev]' && \
	 ($(BIN)/python -m compileall -q -j 0 $(VENV)/lib > /dev/null || true))
	touch $(STAMP)

# System pieces from Debian's packages, installed only when missing and only as root.
APT_PKGS := $(if $(shell command -v ip),,iproute2) $(if $(shell command -v tc),,iproute2) \
            $(if $(shell command -v mpicc),,openmpi-bin libopenmpi-dev) \
            $(if $(shell command -v slurmctld),,slurm-wlm) $(if $(shell command -v munged),,munge) \
            $(if $(shell command -v cmake),,cmake) $(if $(shell command -v g++),,g++) \
            $(if $(shell command -v iptables),,iptables)
sysdeps:
	@if [ -n "$(strip $(APT_PKGS))" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(sort $(APT_PKGS)); \
	  else echo "missing $(sort $(APT_PKGS)); not root, so tests that need them will skip"; fi; \
	fi

lint: venv
	$(BIN)/ruff check .

# The API reference from the docstrings (pdoc) into build/api/; every module of a package with
# an __all__ named (it hides submodules from pdoc's own walk; the others are walked). Part of `make test`, so CI
# checks that it builds.
mods = $(patsubst %.py,$(2).%,$(notdir $(filter-out %/__init__.py,$(wildcard $(1)/*.py))))
DOC_MODULES := distcomp $(call mods,distcomp,distcomp) distcomp.compression distcomp.gnn \
  distcomp.co2 $(call mods,distcomp/co2,distcomp.co2) distcomp.workloads distcomp.hooks \
  $(call mods,hooks,distcomp.hooks) distcomp.data
docs: venv
	$(RUN) $(BIN)/python -m pdoc --docformat restructuredtext -o build/api $(DOC_MODULES)
	@test -s build/api/distcomp/hooks/ddp.html && test -s build/api/distcomp/data/cli.html && \
	  echo "API reference: build/api/index.html"

# mpi4py (the mpi extra) compiles against the system's Open MPI, so it comes after sysdeps;
# where it cannot install, the MPI tests skip and say so.
mpi: venv sysdeps
	@$(BIN)/python -c "import mpi4py" 2>/dev/null || $(BIN)/pip install -q 'mpi4py>=3.1' || \
	  echo "mpi4py did not install: the mpirun tests will skip"

# DeepSpeed (the deepspeed extra) without prebuilt ops: the one it needs on CPU JIT-compiles on
# first use into .torch_extensions/. Where it cannot install, its tests skip and say so.
# The op's ~45 s compile starts in the background here, while the rest sets up and the first
# tests run; DeepSpeed's own file lock makes a test that needs it first wait for it.
deepspeed: venv
	@$(BIN)/python -c "import importlib.util as u, sys; sys.exit(u.find_spec('deepspeed') is None)" || \
	  DS_BUILD_OPS=0 $(BIN)/pip install -q -c constraints.txt --no-build-isolation 'deepspeed>=0.14' || \
	  echo "deepspeed did not install: the DeepSpeed tests will skip"
	@if $(BIN)/python -c "import deepspeed" 2>/dev/null; then \
	  (TORCH_EXTENSIONS_DIR=$(CURDIR)/.torch_extensions PATH=$(CURDIR)/$(BIN):$$PATH \
	   $(BIN)/python -c "from deepspeed.ops.op_builder import ShareMemCommBuilder as B; B().load()" \
	   > .torch_extensions.log 2>&1 &); fi

# Horovod 0.28.1 (the horovod extra) built from its sdist with gloo and PyTorch. As shipped it
# does not build against torch >= 2.1: its CMake files ask for C++14 (torch's headers need
# C++17) and its bundled gloo for C++11 (linking then fails on a duplicate
# gloo::rendezvous::Store::kDefaultTimeout). The three lines are raised to C++17 in the
# unpacked sdist under build/, then pip builds it (about 2.5 minutes, needs cmake and g++).
HOROVOD := horovod-0.28.1
HVD_SRC := build/horovod/$(HOROVOD)
horovod: venv sysdeps
	@$(BIN)/python -c "import importlib.util as u, sys; sys.exit(u.find_spec('horovod') is None)" || \
	  $(MAKE) --no-print-directory horovod-build || \
	  echo "horovod did not build: the Horovod tests will skip"

horovod-build:
	rm -rf build/horovod && mkdir -p build/horovod
	$(BIN)/pip download -q --no-deps --no-binary :all: --no-build-isolation \
	  '$(subst -,==,$(HOROVOD))' -d build/horovod
	tar -xzf build/horovod/$(HOROVOD).tar.gz -C build/horovod
	sed -i 's/set(CMAKE_CXX_STANDARD 14)/set(CMAKE_CXX_STANDARD 17)/' \
	  $(HVD_SRC)/CMakeLists.txt $(HVD_SRC)/horovod/torch/CMakeLists.txt
	sed -i 's/-std=c++11 -fPIC/-std=c++17 -fPIC/' $(HVD_SRC)/third_party/gloo/CMakeLists.txt
	HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 \
	  HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1 MAKEFLAGS= \
	  $(BIN)/pip install -q -c constraints.txt --no-build-isolation ./$(HVD_SRC)

# Set-up that only reads the venv (lint, docs) runs beside the steps that install into it, which
# run one after another (two pip runs must not write one venv at once).
test: venv
	$(MAKE) --no-print-directory -j2 lint docs extras
	$(RUN) $(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=15

extras:
	$(MAKE) --no-print-directory sysdeps && $(MAKE) --no-print-directory deepspeed && \
	  $(MAKE) --no-print-directory mpi

# Horovod's tests are not in `make test` (CI): building Horovod takes ~4 minutes here.
test-horovod: horovod
	$(RUN) $(BIN)/python -m pytest -q tests/hooks/test_horovod.py

demo: venv
	$(TORCHRUN) launch/train.py --comm none
	$(TORCHRUN) launch/train.py --comm powersgd --rank 4

# Figures for README: compressors alone, then the two-host network benchmark at 100 Mbit/s and
# unshaped (compute overhead), judged by loss at equal steps and time to plain DDP's loss;
# L-GreCo's frontier; what each default costs and buys. README's blocks are regenerated from
# the JSON.
RESULTS := benchmarks/results
NB_ARMS := local,allreduce,torch_fp16,torch_powersgd,powersgd,powersgd_fixed,topk,qsgd,lgreco_powersgd
FRONTIER_ARMS := allreduce,powersgd@2,powersgd@4,powersgd@8,lgreco_powersgd@2,lgreco_powersgd@4,$\
  lgreco_powersgd@8,topk@0.003,topk@0.01,topk@0.03,lgreco_topk@0.003,lgreco_topk@0.01,$\
  lgreco_topk@0.03,qsgd@2,qsgd@4,qsgd@8,lgreco_qsgd@2,lgreco_qsgd@4,lgreco_qsgd@8
# 2 hosts x 2 ranks: ours in three stages (the default) against the flat reduction, torch's
# PowerSGD hook (flat) beside them, top-k in three stages at twice the density, CO2 at tau 4 and 2
TOPOLOGY_ARMS := local,allreduce,torch_powersgd,powersgd,powersgd_flat,topk,topk_flat,topk@0.02,$\
  qsgd,qsgd_flat,co2_bf16,co2_bf16_flat,co2_bf16@2
# the same sweep for PowerSGD and top-k over three seeds on the loopback (loss only), paired
DEFAULTS_FRONTIER_ARMS := allreduce,powersgd@2,powersgd@4,powersgd@8,lgreco powersgd@2,$\
  lgreco powersgd@4,lgreco powersgd@8,topk@0.003,topk@0.01,topk@0.03,lgreco topk@0.003,$\
  lgreco topk@0.01,lgreco topk@0.03
# FSDP2 at 2 hosts x 2 ranks (#36): native HSDP against FSDPCompression's compressed cross-host
# average, DDP beside them; one-level FSDP2 (every rank a shard) against its compressed
# reduce-scatter on the small CNN (its weights cross the link in every all-gather too)
FSDP_ARMS := local,allreduce,powersgd,hsdp,hsdp_powersgd,hsdp_qsgd
FSDP_FLAT_ARMS := allreduce,fsdp,fsdp_qsgd,fsdp_fp8,fsdp_fp8_ag8
# the methods added through the registry (#35) beside the first three and torch's hooks
METHOD_ARMS := local,allreduce,torch_fp16,torch_powersgd,powersgd,topk,qsgd,signsgd,randk,fp8
DEFAULTS_METHOD_ARMS := allreduce,torch fp16 (noise floor),powersgd,topk,qsgd,signsgd,randk,fp8
bench: venv sysdeps
	$(RUN) $(BIN)/python -m benchmarks.micro.compressors --json $(RESULTS)/compressors.json
	$(RUN) $(BIN)/python -m benchmarks.network.netbench --workloads lm,resnet,cnn --arms $(NB_ARMS) \
	  --json $(RESULTS)/netbench.json
	$(RUN) $(BIN)/python -m benchmarks.network.netbench --bandwidth none --workloads lm,resnet \
	  --json $(RESULTS)/netbench-unshaped.json --arms local,allreduce,torch_fp16,torch_powersgd,powersgd
	$(RUN) $(BIN)/python -m benchmarks.network.netbench --workloads resnet --steps 300 \
	  --json $(RESULTS)/netbench-frontier.json --arms $(FRONTIER_ARMS)
	$(RUN) $(BIN)/python -m benchmarks.network.netbench --ranks-per-host 2 --workloads resnet --steps 300 \
	  --burst 1mbit --outer-momentum 0 --arms $(TOPOLOGY_ARMS) \
	  --json $(RESULTS)/netbench-topology.json
	$(RUN) $(BIN)/python -m benchmarks.network.netbench --ranks-per-host 2 --workloads resnet --steps 300 \
	  --burst 1mbit --outer-momentum 0 --arms local,local_node,co2_bf16,co2_bf16@2 \
	  --json $(RESULTS)/netbench-topology-co2.json
	$(RUN) $(BIN)/python -m benchmarks.network.netbench --bandwidth none --ranks-per-host 2 --workloads resnet \
	  --steps 300 --outer-momentum 0 --arms local,local_node,co2_bf16,co2_bf16@2 \
	  --json $(RESULTS)/netbench-topology-co2-unshaped.json
	$(RUN) $(BIN)/python -m benchmarks.network.netbench --ranks-per-host 2 --workloads lm --steps 150 \
	  --burst 1mbit --outer-momentum 0 --arms local,local_node,co2_bf16,co2_bf16@2 \
	  --json $(RESULTS)/netbench-topology-lm.json
	$(RUN) $(BIN)/python -m benchmarks.accuracy.co2_outer --json $(RESULTS)/co2-outer.json
	$(RUN) $(BIN)/python -m benchmarks.network.netbench --ranks-per-host 2 --workloads resnet --steps 300 \
	  --burst 1mbit --seeds 0,1,2 --arms $(FSDP_ARMS) --json $(RESULTS)/netbench-fsdp.json
	$(RUN) $(BIN)/python -m benchmarks.network.netbench --ranks-per-host 2 --workloads lm --steps 150 \
	  --burst 1mbit --arms local,allreduce,powersgd,hsdp,hsdp_powersgd --json $(RESULTS)/netbench-fsdp-lm.json
	$(RUN) $(BIN)/python -m benchmarks.network.netbench --ranks-per-host 2 --workloads cnn --steps 100 \
	  --burst 1mbit --seeds 0,1,2 --arms $(FSDP_FLAT_ARMS) --json $(RESULTS)/netbench-fsdp-flat.json
	$(RUN) $(BIN)/python -m benchmarks.accuracy.defaults --workloads cnn,resnet --seeds 0,1,2,3,4 \
	  --arms fsdp_fp8,fsdp_fp8_ag8 --json $(RESULTS)/defaults-fsdp.json
	$(RUN) $(BIN)/python -m benchmarks.network.netbench --workloads resnet --steps 300 \
	  --arms allreduce,powersgd,topk,qsgd --json $(RESULTS)/netbench-world2.json
	$(RUN) $(BIN)/python -m benchmarks.network.netbench --workloads lm --arms allreduce,qsgd,qsgd_fixed \
	  --json $(RESULTS)/netbench-qsgd.json
	$(RUN) $(BIN)/python -m benchmarks.network.netbench --workloads lm,resnet,cnn \
	  --arms allreduce,powersgd,lgreco_powersgd,lgreco_powersgd@16 --json $(RESULTS)/netbench-lgreco.json
	$(RUN) $(BIN)/python -m benchmarks.network.netbench --workloads lm,resnet --arms $(METHOD_ARMS) \
	  --json $(RESULTS)/netbench-methods.json
	$(RUN) $(BIN)/python -m benchmarks.accuracy.defaults --workloads resnet,cnn --seeds 0,1,2 \
	  --arms '$(DEFAULTS_METHOD_ARMS)' --json $(RESULTS)/defaults-methods.json
	$(RUN) $(BIN)/python -m benchmarks.accuracy.defaults --json $(RESULTS)/defaults.json
	$(RUN) $(BIN)/python -m benchmarks.accuracy.defaults --workloads resnet,cnn --seeds 0,1,2,3,4,5 \
	  --arms 'allreduce,torch fp16 (noise floor),powersgd' --json $(RESULTS)/defaults-seeds.json
	$(RUN) $(BIN)/python -m benchmarks.accuracy.defaults --workloads resnet --seeds 0,1,2,3,4,5 \
	  --arms 'allreduce,powersgd rank 16,powersgd accordion threshold 0.2' \
	  --json $(RESULTS)/defaults-candidates.json
	$(RUN) $(BIN)/python -m benchmarks.accuracy.defaults --workloads cnn,resnet --seeds 0,1,2,3,4,5 \
	  --arms 'allreduce,powersgd no accordion,torch powersgd (rank 8 warm-up 10)' \
	  --json $(RESULTS)/defaults-torch.json
	$(RUN) $(BIN)/python -m benchmarks.accuracy.defaults --workloads resnet --seeds 0,1,2,3,4,5 \
	  --arms 'allreduce,powersgd,lgreco powersgd,lgreco powersgd rank 16' \
	  --json $(RESULTS)/defaults-lgreco.json
	$(RUN) $(BIN)/python -m benchmarks.accuracy.defaults --workloads resnet --seeds 0,1,2 \
	  --arms '$(DEFAULTS_FRONTIER_ARMS)' --json $(RESULTS)/defaults-frontier.json
	$(RUN) $(BIN)/python -m benchmarks.micro.planner --json $(RESULTS)/planner.json
	$(RUN) $(BIN)/python -m benchmarks.network.netbench --workloads lm --json $(RESULTS)/netbench-co2.json \
	  --steps 150 --burst 1mbit --arms local,allreduce,diloco,co2,co2_bf16,co2_qsgd
	$(RUN) $(BIN)/python -m benchmarks.network.link_cost --json $(RESULTS)/link_cost.json
	$(RUN) $(BIN)/python -m benchmarks.data.quality --split val --features input \
	  --methods random,dq,dq-kmeans,moderate,kcenter --json $(RESULTS)/data_quality_val.json
	$(RUN) $(BIN)/python -m benchmarks.data.quality --split val --features probe \
	  --methods random,dq,dq-kmeans,moderate,kcenter --json $(RESULTS)/data_quality_val_probe.json
	$(RUN) $(BIN)/python -m benchmarks.data.quality --json $(RESULTS)/data_quality.json
	$(RUN) $(BIN)/python -m benchmarks.data.scale --json $(RESULTS)/data_scale.json
	$(RUN) $(BIN)/python -m benchmarks.data.scale --binning kmeans --json $(RESULTS)/data_scale_kmeans.json
	$(RUN) $(BIN)/python -m benchmarks.gnn.gnnpipe --json $(RESULTS)/gnnpipe.json
	$(MAKE) --no-print-directory deepspeed horovod
	$(RUN) $(BIN)/python -m benchmarks.integrations --json $(RESULTS)/integrations.json
	$(BIN)/python -m benchmarks.integrations --json $(RESULTS)/integrations.json --readme BENCHMARKS.md
	$(BIN)/python -m benchmarks.accuracy.defaults --json $(RESULTS)/defaults.json --readme BENCHMARKS.md
	$(BIN)/python -m benchmarks.accuracy.defaults --json $(RESULTS)/defaults-seeds.json --readme BENCHMARKS.md
	$(BIN)/python -m benchmarks.accuracy.defaults --json $(RESULTS)/defaults-candidates.json --readme BENCHMARKS.md
	$(BIN)/python -m benchmarks.accuracy.defaults --json $(RESULTS)/defaults-torch.json --readme BENCHMARKS.md
	$(BIN)/python -m benchmarks.accuracy.defaults --json $(RESULTS)/defaults-lgreco.json --readme BENCHMARKS.md
	$(BIN)/python -m benchmarks.accuracy.defaults --json $(RESULTS)/defaults-frontier.json --readme BENCHMARKS.md
	$(BIN)/python -m benchmarks.accuracy.defaults --json $(RESULTS)/defaults-methods.json --readme BENCHMARKS.md
	$(BIN)/python -m benchmarks.accuracy.defaults --json $(RESULTS)/defaults-fsdp.json --readme BENCHMARKS.md
	$(BIN)/python -m benchmarks.gnn.report --readme BENCHMARKS.md $(RESULTS)/gnnpipe.json
	$(BIN)/python -m benchmarks.data.report --readme BENCHMARKS.md --val $(RESULTS)/data_quality_val.json \
	  --val $(RESULTS)/data_quality_val_probe.json $(RESULTS)/data_quality.json $(RESULTS)/data_scale.json \
	  $(RESULTS)/data_scale_kmeans.json
	$(BIN)/python -m benchmarks.network.report --readme BENCHMARKS.md $(RESULTS)/netbench.json \
	  $(RESULTS)/netbench-unshaped.json $(RESULTS)/netbench-frontier.json \
	  $(RESULTS)/netbench-topology.json $(RESULTS)/netbench-topology-co2.json \
	  $(RESULTS)/netbench-topology-co2-unshaped.json \
	  $(RESULTS)/netbench-topology-lm.json \
	  $(RESULTS)/netbench-world2.json \
	  $(RESULTS)/netbench-co2.json $(RESULTS)/netbench-co2-device.json \
	  $(RESULTS)/netbench-methods.json $(RESULTS)/netbench-fsdp.json \
	  $(RESULTS)/netbench-fsdp-lm.json $(RESULTS)/netbench-fsdp-flat.json

# CUDA tests and the GPU benchmark (issue #27), with the machine's own Python and torch where it
# has them (a GPU machine: nothing is fetched), else with the project's venv. The package is laid
# out in GPU_SITE as the wheel lays it out (pyproject's package-dir: hooks/ -> distcomp.hooks,
# data_compress/ -> distcomp.data), no build tool needed, the repository root after it on the
# path for tests/ and benchmarks/; without CUDA every step says so and passes, which is how CI
# runs it. On a GPU machine: make gpu-check GPU_JSON=<where the figures go>. A dry run of the
# test code on the CPU: DISTCOMP_TEST_DEVICE=cpu make gpu-check.
GPU_PY ?= $(shell python3 -c 'import torch' 2>/dev/null && echo python3 || echo $(BIN)/python)
GPU_SITE ?= /tmp/distcomp-gpu-site
GPU_JSON ?= bench-results/gpu.json
GPU_TESTS := tests/distcomp/test_cuda.py tests/distcomp/test_cuda_gnnpipe.py tests/hooks/test_cuda.py \
  tests/hooks/test_cuda_fsdp.py
GPU_RUN = PYTHONPATH=$(GPU_SITE):$(CURDIR) OMP_NUM_THREADS=1 $(GPU_PY) -P
gpu-check: $(if $(filter $(BIN)/python,$(GPU_PY)),venv)
	@echo "gpu-check: $$($(GPU_PY) -c 'import sys, torch; print(sys.executable, sys.version.split()[0], "torch", torch.__version__, "CUDA:", torch.cuda.is_available() and torch.cuda.get_device_name())')"
	rm -rf $(GPU_SITE) && mkdir -p $(GPU_SITE)
	cp -r distcomp $(GPU_SITE)/ && cp -r hooks $(GPU_SITE)/distcomp/hooks && \
	  cp -r data_compress $(GPU_SITE)/distcomp/data
	$(GPU_RUN) -m pytest -q -rs -p no:cacheprovider --import-mode=append $(GPU_TESTS)
	$(GPU_RUN) -m benchmarks.micro.gpu --json $(GPU_JSON)

clean:
	rm -rf $(VENV) bench-results .pytest_cache .ruff_cache *.egg-info
