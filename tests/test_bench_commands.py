"""``make bench``'s commands (the ones BENCHMARKS.md prints beside its figures) run in CI at a
tiny size, so none rots between two full runs of ``make bench``.

- Every measurement command runs as written, with flags that shrink it (``TINY``: fewer seeds,
  steps and nodes), or is run so by a named test; netbench's and defaults' lines run as one
  ``--smoke`` launch per workload, every arm any line names on the cheapest workload.
  Each must write its JSON with no record in an error state. A benchmark module without an
  entry in ``TINY`` fails.
- Every command's arguments also go through its benchmark's own parser at full size.
- Every table generator runs on a copy of BENCHMARKS.md, which must come out unchanged: the
  tables are what the committed JSON says, never edited by hand.
"""

from __future__ import annotations

import importlib
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.one_process import run_modules

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_DATASETS_OFFLINE": "1",
       "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}

UNION = "union"
# module -> how its lines run at a tiny size: flags that shrink a run (replacing the command's
# own values); UNION: under --smoke a module's lines differ only in arms and workloads, so one
# smoke launch per workload runs every arm any line runs there; or the test that already runs
# the line, as written plus the flags that shrink it
TINY: dict[str, list[str] | str] = {
    "benchmarks.micro.compressors": ["--repeats", "1"],
    "benchmarks.network.netbench": UNION,
    "benchmarks.accuracy.defaults": UNION,
    "benchmarks.micro.planner": ["--layers", "4"],
    "benchmarks.network.link_cost": "tests/benchmarks/network/test_netbench.py::"
                            "test_link_cost_measures_compute_next_to_a_saturating_flow",
    "benchmarks.data.quality": ["--datasets", "digits", "--seeds", "1", "--steps", "20",
                                "--probe-epochs", "1"],
    "benchmarks.data.scale": ["--n", "3000", "--sizes", "1000,3000", "--dim", "16"],
    "benchmarks.gnn.gnnpipe": "tests/benchmarks/gnn/test_gnnpipe.py::"
                          "test_gnnpipe_records_every_mode",
    "benchmarks.integrations": "tests/hooks/test_deepspeed.py::"
                               "test_script_matches_ddp_and_sends_fewer_bytes_than_deepspeed",
    "benchmarks.accuracy.co2_outer": ["--quick", "--workloads", "resnet", "--taus", "2",
                                      "--momenta", "0.5"],
}


def bench_commands() -> list[list[str]]:
    """``make -n bench``'s python commands, as argv after ``python``."""
    out = subprocess.run(["make", "-n", "--no-print-directory", "bench"], cwd=REPO, env=ENV,
                         capture_output=True, text=True, timeout=60, check=True).stdout
    cmds = []
    for line in out.replace("\\\n", " ").splitlines():
        argv = shlex.split(line)
        while argv and "=" in argv[0] and not argv[0].startswith("-"):
            argv = argv[1:]  # OMP_NUM_THREADS=1 ... env prefix
        if argv and argv[0].endswith("python") and argv[1] == "-m":
            cmds.append(argv[1:])
    return cmds


MEASUREMENTS = [argv for argv in bench_commands() if "--readme" not in argv]


CHEAPEST_FIRST = ("cnn", "resnet", "lm")  # the workloads by the cost of a step here


def smoke_unions() -> list[list[str]]:
    """For each UNION module, one ``--smoke`` command per workload its lines run: every arm any
    line runs on the cheapest of those workloads (an arm's code does not depend on the
    workload), the other workloads on the first arm their lines run (in one run where that arm
    is the same), so every workload and every arm runs once (``--json`` left to the test). An
    arm swept over settings (``NAME@SETTING``)
    runs at its first: the settings differ in one number, which the benchmark's parser checks
    at full size (test_bench_measurement_commands_parse)."""
    cmds = []
    for module in (m for m, how in TINY.items() if how == UNION):
        arms: dict[str, dict[str, None]] = {}
        for argv in (a for a in MEASUREMENTS if a[1] == module):
            args = importlib.import_module(module).parse_args(argv[2:])
            for w in args.workloads:
                lm_only = getattr(args, "lm_arms", None) if w == "lm" else None
                arms.setdefault(w, {}).update(
                    dict.fromkeys(a for a in args.arms if lm_only is None or a in lm_only))
        cheapest, *others = sorted(arms, key=CHEAPEST_FIRST.index)
        every = dict.fromkeys(a for w in arms for a in arms[w])
        first = {a.partition("@")[0]: a for a in reversed(every)}  # one setting per arm
        placed = {cheapest: [a for a in every if first[a.partition("@")[0]] == a]}
        for w in others:  # the others in one run per first arm: one start-up, not one each
            first = next(iter(arms[w]))
            key = next((k for k, v in placed.items() if k != cheapest and v == [first]), None)
            placed[f"{key},{w}" if key else w] = [first]
            placed.pop(key, None)
        for w, names in placed.items():
            pick = ["--lm-arms", ",".join(names)] if module == "benchmarks.accuracy.defaults" \
                else []
            cmds.append(["-m", module, "--smoke", "--workloads", w, "--arms", ",".join(names),
                         *pick])
    return cmds


TINY_RUNS = [(a, f"{i}-{a[1].split('.')[1]}") for i, a in enumerate(MEASUREMENTS)
             if isinstance(TINY.get(a[1]), list)]
TINY_RUNS += [(a, f"{a[1].split('.')[1]}-smoke-{a[4]}") for a in smoke_unions()]


def shrunk(argv: list[str], tmp: Path) -> list[str]:
    """``argv`` with ``TINY``'s flags (replacing the command's own values) and its JSON in
    ``tmp``; the flags given a value are followed by one argument."""
    tiny = TINY[argv[1]] if isinstance(TINY[argv[1]], list) else []
    flags = {a for a in tiny if a.startswith("--")}
    out, skip = [], False
    for i, a in enumerate(argv):
        if skip:
            skip = False
            continue
        name = a.split("=")[0]
        if name in flags:  # dropped: TINY's value comes instead
            skip = "=" not in a and i + 1 < len(argv) and not argv[i + 1].startswith("--")
            continue
        out.append(str(tmp / Path(a).name) if out and out[-1] == "--json" else a)
    if "--json" not in out:
        out += ["--json", str(tmp / "out.json")]
    return out + tiny


def errors_in(payload) -> list:
    """Every record of a benchmark's JSON that says it failed."""
    if isinstance(payload, dict):
        own = [payload] if payload.get("status") == "error" else []
        return own + [e for v in payload.values() for e in errors_in(v)]
    if isinstance(payload, list):
        return [e for v in payload for e in errors_in(v)]
    return []


def test_every_benchmark_module_has_a_tiny_size():
    assert {argv[1] for argv in MEASUREMENTS} <= set(TINY)
    assert len(MEASUREMENTS) >= 20
    for how in TINY.values():  # a line left to another test names one that exists
        if isinstance(how, str) and how != UNION:
            path, name = how.split("::")
            assert f"def {name}(" in (REPO / path).read_text(), how


@pytest.mark.parametrize("argv", [a for a, _ in TINY_RUNS], ids=[i for _, i in TINY_RUNS])
def test_bench_command_runs_at_a_tiny_size(argv, tmp_path):
    if os.geteuid() != 0 and argv[1] in ("benchmarks.network.netbench",
                                         "benchmarks.network.link_cost"):
        pytest.skip("needs root for its network namespaces (ip netns, veth, tc)")
    cmd = shrunk(argv, tmp_path)
    proc = subprocess.run([sys.executable, *cmd], cwd=REPO, env=ENV, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, (cmd, proc.stdout[-3000:], proc.stderr[-3000:])
    (out,) = tmp_path.glob("*.json")
    errors = errors_in(json.loads(out.read_text()))
    assert not errors, json.dumps(errors, indent=1)[:6000]


def test_bench_measurement_commands_parse():
    """Every measurement in ``make bench`` names arms, workloads and flags its benchmark
    accepts at full size (a typo in an arm list fails here, not an hour into ``make bench``)."""
    checked, helped = 0, []
    for argv in MEASUREMENTS:
        module = importlib.import_module(argv[1])
        if hasattr(module, "parse_args"):
            module.parse_args(argv[2:])  # SystemExit on a bad argument fails the test
            checked += 1
        else:  # no parser of its own to call: its --help must still list every flag given
            helped.append(argv)
    assert checked >= 10
    asked = [[argv[1], "--help"] for argv in helped]
    for argv, result in zip(helped, run_modules(asked, cwd=REPO, env=ENV, timeout=300),
                            strict=True):
        assert result["rc"] == 0, (argv, result["stderr"][-2000:])
        for flag in (a.split("=")[0] for a in argv[2:] if a.startswith("--")):
            assert flag in result["stdout"], (argv, flag)


def test_benchmarks_md_tables_regenerate_unchanged_from_the_committed_json(tmp_path):
    copy = tmp_path / "BENCHMARKS.md"
    shutil.copy(REPO / "BENCHMARKS.md", copy)
    generators = [a for a in bench_commands() if "--readme" in a]
    assert len(generators) >= 8
    commands = [[str(copy) if a == "BENCHMARKS.md" else a for a in argv[1:]]
                for argv in generators]  # in order: several write into one copy
    for argv, result in zip(commands, run_modules(commands, cwd=REPO, env=ENV), strict=True):
        assert result["rc"] == 0, (argv, result["stderr"][-2000:])
    assert copy.read_text() == (REPO / "BENCHMARKS.md").read_text()
