"""Every command README.md and BENCHMARKS.md show is run in CI at a tiny size, so none rots.

- README's shell commands (fenced ``bash`` blocks and inline code spans that start a command)
  are listed in ``TINY``: each either runs here, as written plus flags that shrink it, or names
  the test that runs it (a launcher this test cannot start itself: mpirun, sbatch, two nodes).
  A README command missing from ``TINY`` fails the first test.
- ``make bench``'s commands (BENCHMARKS.md's): tests/test_bench_commands.py.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.one_process import run_modules

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_DATASETS_OFFLINE": "1",
       "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
STARTS = ("make ", "torchrun ", "python -m ", "distcomp-data ", "mpirun ", "sbatch ",
          "horovodrun ", "pip install ")
SMALL = ["--epochs", "1", "--steps-per-epoch", "12", "--width", "32", "--batch-size", "16"]

HOROVOD_TEST = ("tests/hooks/test_horovod.py::"
                "test_script_matches_ddp_and_sends_fewer_bytes_than_horovod")
DEEPSPEED_TEST = ("tests/hooks/test_deepspeed.py::"
                  "test_script_matches_ddp_and_sends_fewer_bytes_than_deepspeed")

# README command -> ("run", extra argv) | ("test", test that runs it, why it runs there)
TINY: dict[str, tuple] = {
    "make demo": ("run", []),
    "make gpu-check": ("run", []),  # no CUDA here: it starts, says so and skips
    "python -m benchmarks.micro.gpu": ("run", ["--elements", "8192", "--json",
                                          "bench-results/gpu-readme.json"]),
    "make test": ("test", ".ci/run", "CI itself is `make test`"),
    "make docs": ("test", "Makefile::test", "`make test` runs `docs`"),
    "make horovod": ("test", HOROVOD_TEST,
                     "not in CI: Horovod's build takes ~4 minutes (`make test-horovod`)"),
    "make test-horovod": ("test", HOROVOD_TEST,
                          "not in CI: it builds Horovod first (~4 minutes)"),
    "pip install .": ("test", "tests/test_layout.py::test_the_wheel_installs_only_the_distcomp"
                      "_namespace", "builds the wheel pip would install"),
    "torchrun --nproc_per_node=2 launch/train.py --comm powersgd": ("run", SMALL),
    "torchrun --nproc_per_node=2 launch/train.py --comm lgreco-powersgd": ("run", SMALL),
    "torchrun --nproc_per_node=2 launch/train_lightning.py --comm powersgd": (
        "test", "tests/launch/test_frameworks.py::test_lightning_ddp_strategy_takes_the_state_"
        "and_hook_unchanged", "the same command with --steps 40, beside --comm none"),
    "torchrun --nproc_per_node=2 launch/train_accelerate.py --comm powersgd": (
        "test", "tests/launch/test_frameworks.py::"
        "test_accelerate_prepare_then_attach_reads_the_wrapped_optimizer",
        "the same command with --steps 40, beside --comm none"),
    "torchrun --nproc_per_node=2 launch/train_deepspeed.py --comm powersgd": (
        "test", DEEPSPEED_TEST,
        "needs DeepSpeed's CPU op, built by `make deepspeed`"),
    "horovodrun -np 2 --gloo python launch/train_horovod.py --comm lgreco-qsgd": (
        "test", HOROVOD_TEST,
        "not in CI: Horovod's build takes ~4 minutes (`make test-horovod`)"),
    "torchrun --nnodes=2 --nproc_per_node=4 --rdzv_backend=c10d --rdzv_endpoint=node0:29500 "
    "launch/train.py --comm co2 --tau 4": (
        "test", "tests/launch/test_train.py::test_two_node_c10d_rendezvous_averages_in_three_"
        "stages_without_a_flag",
        "two torchrun agents on this host, c10d on the loopback"),
    "mpirun -n 4 python launch/train.py --comm topk": (
        "test", "tests/launch/test_train.py::test_mpirun_launch", "Open MPI as root"),
    "sbatch slurm/train.sbatch": ("test", "tests/slurm/test_templates.py",
                                  "a local slurmctld + slurmd"),
    "python -m benchmarks.network.netbench --workloads cnn --arms allreduce,powersgd": (
        "test", "tests/benchmarks/network/test_netbench.py::"
        "test_readmes_netbench_command_writes_valid_json",
        "with --quick and 12 untimed steps on a 1 Gbit/s link, where the other "
        "network-namespace tests run (one worker at a time)"),
    "python -m benchmarks.network.netbench --ranks-per-host 2 --workloads resnet --steps 300 "
    "--burst 1mbit --seeds 0,1,2 --arms local,allreduce,powersgd,hsdp,hsdp_powersgd,hsdp_qsgd "
    "--json benchmarks/results/netbench-fsdp.json": (
        "test", "tests/test_bench_commands.py::test_bench_command_runs_at_a_tiny_size",
        "make bench's line: every arm under --smoke there, the sharded ones at 2 hosts x 2 in "
        "tests/benchmarks/network/test_netbench.py"),
    "python -m benchmarks.network.netbench --ranks-per-host 2 --workloads lm --steps 150 "
    "--burst 1mbit --arms local,allreduce,powersgd,hsdp,hsdp_powersgd --json "
    "benchmarks/results/netbench-fsdp-lm.json": (
        "test", "tests/test_bench_commands.py::test_bench_command_runs_at_a_tiny_size",
        "make bench's line: its arms under --smoke on the LM there"),
    "python -m benchmarks.network.netbench --ranks-per-host 2 --workloads cnn --steps 100 "
    "--burst 1mbit --seeds 0,1,2 --arms allreduce,fsdp,fsdp_qsgd,fsdp_fp8,fsdp_fp8_ag8 --json "
    "benchmarks/results/netbench-fsdp-flat.json": (
        "test", "tests/test_bench_commands.py::test_bench_command_runs_at_a_tiny_size",
        "make bench's line: every arm under --smoke there"),
    "torchrun --nproc_per_node=4 launch/train_fsdp.py --comm powersgd --ranks-per-node 2": (
        "test", "tests/launch/test_train_fsdp.py::test_readme_command_checkpoints_and_resumes_"
        "exactly", "the same command on the teacher workload, 3 epochs of 3 steps, resumed"),

    # the data CLI, in README's order, on tiny stand-ins for ds/ and digits/ (one test below)
    "distcomp-data inspect --input ds/": ("data", []),
    "distcomp-data prune --input ds/ --output p/ --ratio 0.3 --method kcenter": ("data", []),
    "distcomp-data quantize --input ds/ --output dq/ --ratio 0.3": ("data", ["--epochs", "2"]),
    "distcomp-data embed --input ds/ --output e/ --model mypkg.models:encoder": ("data", []),
    "distcomp-data dedup --input e/ --output d/ --features embedding --threshold 0.95": (
        "data", []),
    "distcomp-data prune --input digits/ --output kc/ --ratio 0.1 --method kcenter": (
        "data", []),
    "distcomp-data evaluate --input digits/ --subset kc/": (
        "data", ["--seeds", "2", "--eval-steps", "30"]),
    "distcomp-data quantize --input digits/ --output dk/ --ratio 0.3 --binning kmeans "
    "--evaluate": ("data", ["--seeds", "2", "--eval-steps", "30", "--epochs", "2"]),
    "distcomp-data --version": ("data", []),
    "distcomp-data evaluate": ("test", "tests/test_docs_commands.py::"
                               "test_readme_data_commands_run_in_order_on_tiny_data",
                               "the subcommand named in prose; its full command runs there"),
}


def readme_commands(text: str) -> list[str]:
    """Shell commands of fenced bash blocks (continuations joined, comments dropped) and of
    inline code spans that start like a command."""
    found = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                found.append(" ".join(line.split()))
    for span in re.findall(r"`([^`\n]+)`", text):
        if span.startswith(STARTS) and " " in span:
            found.append(" ".join(span.split()))
    return list(dict.fromkeys(found))


def test_every_readme_command_has_a_tiny_run():
    commands = readme_commands((REPO / "README.md").read_text())
    assert set(commands) - set(TINY) == set(), "add these README commands to TINY"
    for cmd, (kind, *rest) in TINY.items():
        if kind == "test":
            where = rest[0].split("::")
            path = REPO / where[0]
            assert path.exists(), (cmd, rest[0])
            if len(where) > 1:
                name = re.escape(where[1])  # a test function, or a make target
                assert re.search(rf"^(def {name}\b|{name}:)", path.read_text(), flags=re.M), (
                    cmd, rest[0])


RUNNABLE = [c for c, (kind, *_) in TINY.items() if kind == "run"]


@pytest.mark.parametrize("cmd", RUNNABLE)
def test_readme_command_runs_at_a_tiny_size(cmd, tmp_path):
    argv = shlex.split(cmd) + TINY[cmd][1]
    if argv[0] == "torchrun":
        argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", *argv[1:]]
    elif argv[:2] == ["python", "-m"]:
        argv = [sys.executable, *argv[1:]]
    proc = subprocess.run(argv, cwd=REPO, env=ENV, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_readme_data_commands_run_in_order_on_tiny_data(tmp_path):
    """README's ``distcomp-data`` lines as written (plus flags that shrink them), in order,
    in a folder holding a 150-row ``ds/`` (inputs and labels), the first 300
    rows of scikit-learn's digits as ``digits/``, and ``mypkg/models.py`` with ``encoder``."""
    datasets = pytest.importorskip("datasets", reason="needs Hugging Face datasets (data extra)")
    import numpy as np
    from sklearn.datasets import load_digits

    rng = np.random.default_rng(0)
    x = rng.normal(size=(150, 8)).astype("float32")
    datasets.Dataset.from_dict({"x": x, "label": rng.integers(0, 3, 150)}
                               ).save_to_disk(str(tmp_path / "ds"))
    d = load_digits()
    datasets.Dataset.from_dict({"x": d.data[:300].astype("float32"), "label": d.target[:300]}
                               ).save_to_disk(str(tmp_path / "digits"))
    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "__init__.py").write_text("")
    (tmp_path / "mypkg" / "models.py").write_text(
        "import torch\n\ndef encoder():\n    torch.manual_seed(0)\n"
        "    return torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.Tanh())\n")
    env = {**ENV, "PYTHONPATH": str(tmp_path)}
    lines = [(cmd, shlex.split(cmd)[1:] + rest[0]) for cmd, (kind, *rest) in TINY.items()
             if kind == "data"]
    # through the console script's module, in one interpreter (the installed script itself:
    # tests/data_compress/test_cli.py::test_console_script_is_installed)
    results = run_modules([["distcomp.data.cli", *args] for _, args in lines], cwd=tmp_path,
                          env=env)
    for (cmd, _), result in zip(lines, results, strict=True):
        assert result["rc"] == 0, (cmd, result["stdout"][-2000:], result["stderr"][-2000:])
    assert datasets.load_from_disk(str(tmp_path / "p")).num_rows == 45
    assert "evaluation" in (tmp_path / "dk" / "manifest.json").read_text()
