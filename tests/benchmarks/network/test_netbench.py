"""The measuring instrument itself: namespaces, counters, teardown and the JSON it writes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from benchmarks.network import launch as netbench_launch
from benchmarks.network import netbench
from benchmarks.network.netns import NetnsError, TwoHosts, list_namespaces, ours

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root to create network namespaces (ip netns, veth, tc)"
)
REPO = Path(__file__).resolve().parents[3]


def mine(pid: int | None = None) -> list[str]:
    return [n for n in ours(list_namespaces()) if n.startswith(f"dcnb-{pid or os.getpid()}-")]


def test_namespaces_are_created_and_removed():
    with TwoHosts("100mbit") as net:
        assert sorted(mine()) == sorted(net.ns.values())
        qdisc = subprocess.run(net.command("a", ["tc", "qdisc", "show"]), capture_output=True,
                               text=True).stdout
        assert "tbf" in qdisc and "rate 100Mbit" in qdisc
        assert tbf_burst_bytes(net) < 5000  # 32 kbit
    assert mine() == []
    with TwoHosts("100mbit", burst="1mbit") as net:
        assert tbf_burst_bytes(net) > 65536  # a whole 64 KB GSO packet fits: no segmenting


def tbf_burst_bytes(net: TwoHosts) -> int:
    out = subprocess.run(net.command("a", ["tc", "-j", "qdisc", "show"]), capture_output=True,
                         text=True, check=True).stdout
    (tbf,) = [q for q in json.loads(out) if q["kind"] == "tbf"]
    return tbf["options"]["burst"]


def test_delay_uses_netem_or_says_why_not():
    try:
        with TwoHosts("100mbit", delay="5ms") as net:
            qdisc = subprocess.run(net.command("a", ["tc", "qdisc", "show"]),
                                   capture_output=True, text=True).stdout
            assert "netem" in qdisc and "tbf" in qdisc
    except NetnsError as err:
        assert "no netem qdisc" in str(err)
        assert mine() == []
        pytest.skip("this kernel has no sch_netem: --delay is refused with a clear message")
    assert mine() == []


def test_nothing_left_behind_after_a_failure():
    with pytest.raises(RuntimeError, match="boom"), TwoHosts("100mbit"):
        assert len(mine()) == 2
        raise RuntimeError("boom")
    assert mine() == []
    with pytest.raises(NetnsError, match="bandwidth"):
        with TwoHosts("fast"):  # bad rate: fails while building the link
            pass
    assert mine() == []


def test_counters_move_by_what_crosses_the_link():
    payload = 2_000_000
    server = (
        "import socket; s = socket.socket();"
        "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1);"
        "s.bind(('{addr}', 29399)); s.listen(1); c, _ = s.accept(); n = 0\n"
        "while True:\n    b = c.recv(65536)\n    n += len(b)\n    if not b: break\nprint(n)"
    )
    with TwoHosts(None) as net:
        before = net.counters("a")
        srv = net.popen("b", [sys.executable, "-c", server.format(addr=net.addr["b"])],
                        stdout=subprocess.PIPE, text=True)
        client = (
            "import socket, time\n"
            "for _ in range(100):\n"
            "    try:\n        s = socket.create_connection(('{addr}', 29399)); break\n"
            "    except OSError: time.sleep(0.05)\n"
            "s.sendall(b'x' * {n}); s.close()"
        ).format(addr=net.addr["b"], n=payload)
        subprocess.run(net.command("a", [sys.executable, "-c", client]), check=True, timeout=60)
        out, _ = srv.communicate(timeout=60)
        tx, rx = (after - b for after, b in zip(net.counters("a"), before))
    assert int(out) == payload
    assert payload <= tx < 1.1 * payload  # payload plus TCP/IP headers
    assert 0 < rx < 0.1 * payload  # acknowledgements


def test_a_crashing_arm_is_recorded_not_hidden(tmp_path):
    out = tmp_path / "nb.json"
    rc = netbench.main([
        "--workloads", "cnn", "--arms", "powersgd", "--steps", "2", "--warmup-steps", "1",
        "--rank", "0", "--json", str(out), "--data", str(REPO / "bench-results" / "data"),
    ])
    assert rc == 0
    (rec,) = json.loads(out.read_text())["results"]
    assert rec["status"] == "error" and "rank must be an integer >= 1" in rec["error"], rec


def test_a_host_that_dies_is_not_waited_on_for_the_full_timeout(tmp_path, monkeypatch):
    """One host exits non-zero while the other would wait on it (a collective, or torchrun's
    exit barrier): the launch ends PEER_GRACE_S later, not after the stall or arm timeout."""
    monkeypatch.setattr(netbench_launch, "PEER_GRACE_S", 1.0)
    procs = {"a": subprocess.Popen(["sleep", "60"]),
             "b": subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])}
    args = SimpleNamespace(arm_timeout=60.0, stall_timeout=60.0)
    start = time.monotonic()
    try:
        why = netbench_launch.watch(procs, tmp_path, "none-*.progress", args)
    finally:
        procs["a"].kill()
        procs["a"].wait()
    assert time.monotonic() - start < 10
    assert why == "host exited {'b': 3}, its peer still ran 1s later"


def test_a_native_abort_is_run_once_more_and_kept_in_the_record(monkeypatch):
    calls = []

    def attempt(net, args, workload, arms, index, out_dir, target, seed):
        calls.append((arms, index))
        if len(calls) == 1:  # allreduce died in gloo's teardown, local finished first
            return [{"arm": "local", "status": "ok", "error": None},
                    {"arm": "allreduce", "status": "error",
                     "error": "[b] terminate called without an active exception"}]
        return [{"arm": a, "status": "ok", "error": None} for a in arms]

    monkeypatch.setattr(netbench, "attempt_arms", attempt)
    recs = netbench.run_arms(None, None, "cnn", ["local", "allreduce"], 3, Path("."), None, 0)
    assert calls == [(["local", "allreduce"], 3), (["allreduce"], 3 + netbench.RETRY_PORT_OFFSET)]
    assert [r["status"] for r in recs] == ["ok", "ok"]
    assert "first_attempt_error" not in recs[0]
    assert "terminate called" in recs[1]["first_attempt_error"]
    calls.clear()
    monkeypatch.setattr(netbench, "attempt_arms", lambda *a: calls.append(1) or
                        [{"arm": "powersgd", "status": "error",
                          "error": "exit codes {'a': 1}: ValueError"}])
    (rec,) = netbench.run_arms(None, None, "cnn", ["powersgd"], 0, Path("."), None, 0)
    assert rec["status"] == "error" and calls == [1]  # a Python error is the arm's own


def test_smoke_runs_every_arm_of_a_workload_in_one_launch(tmp_path):
    """``--smoke`` (how CI runs ``make bench``'s netbench lines): a 1-step dense warm-up, so
    the compressed paths run, L-GreCo plans and CO2 averages within the few steps. With
    ARM@SETTING arms (make bench's L-GreCo frontier, at a tiny size): the frontier and the
    plans are drawn, the L-GreCo arm records its error ratio and its plans."""
    out = tmp_path / "nb.json"
    arms = ("allreduce,torch_powersgd,powersgd_fixed,lgreco_topk@0.01,co2_qsgd,powersgd@2,"
            "powersgd@4,lgreco_powersgd@4")
    assert netbench.main(["--smoke", "--workloads", "cnn", "--arms", arms, "--json", str(out),
                          "--data", str(REPO / "bench-results" / "data")]) == 0
    payload = json.loads(out.read_text())
    assert payload["config"]["smoke"] and payload["config"]["bandwidth"] is None
    recs = {r["arm"]: r for r in payload["results"]}
    assert list(recs) == arms.split(",")
    for r in recs.values():
        assert r["status"] == "ok", json.dumps(r, indent=1)
        assert r["steps_run"] == 3 and r["timed_steps"] == 2
    dense = recs["allreduce"]["ledger_bytes_per_step"]
    assert recs["lgreco_topk@0.01"]["ledger_bytes_per_step"] < dense / 10  # it compressed
    # torch's least warm-up is 2 dense steps, which the fixed arm shares: one timed step of two
    assert recs["powersgd_fixed"]["ledger_bytes_per_step"] < 0.75 * dense
    # rank 2 against 4 on the same steps: fewer bytes
    assert recs["powersgd@2"]["ledger_bytes_per_step"] < recs["powersgd@4"]["ledger_bytes_per_step"]
    assert "powersgd@4_over_allreduce_loss" not in payload["figures"]["cnn"]  # base names only
    assert out.with_name("nb-frontier.png").stat().st_size > 10_000
    assert 0 < recs["lgreco_powersgd@4"]["error_ratio"] <= 1.0 + 1e-9
    for arm in ("lgreco_topk@0.01", "lgreco_powersgd@4"):  # planned after the dense step
        plan = payload["plans"][f"cnn/{arm}"][0]
        assert plan["step"] == 1 and "fc1.weight" in plan["settings"], plan
    assert out.with_name("nb-plans.png").stat().st_size > 10_000
    with pytest.raises(SystemExit):
        netbench.parse_args(["--arms", "allreduce@4"])  # no setting to give
    with pytest.raises(SystemExit):
        netbench.parse_args(["--arms", "topk@dense"])
    assert mine() == []


def test_two_ranks_per_host_compress_only_between_the_hosts(tmp_path):
    """``--ranks-per-host 2``: world 4 over the two namespaces; ours reduces in three stages
    by default (torchrun's LOCAL_WORLD_SIZE), so host a hands the slow link half the payload
    of the flat arm, and its ranks' traffic with each other takes the loopback instead. The
    FSDP2 arms shard the model (a quarter or a half of DDP's parameters per rank) and the
    compressed ones send fewer bytes between the hosts than their dense twins."""
    out = tmp_path / "nb.json"
    assert netbench.main(["--smoke", "--ranks-per-host", "2", "--workloads", "cnn", "--arms",
                          "allreduce,powersgd,powersgd_flat,local_node,fsdp,hsdp,hsdp_powersgd,"
                          "fsdp_qsgd", "--json", str(out),
                          "--data", str(REPO / "bench-results" / "data")]) == 0
    payload = json.loads(out.read_text())
    assert payload["config"]["ranks_per_host"] == 2
    recs = {r["arm"]: r for r in payload["results"]}
    assert all(r["status"] == "ok" for r in recs.values()), recs
    hier, flat = recs["powersgd"], recs["powersgd_flat"]  # the dense warm-up step is untimed
    assert hier["ledger_bytes_per_step"] < 0.6 * flat["ledger_bytes_per_step"]
    assert hier["loopback_bytes_per_step"] > flat["loopback_bytes_per_step"]
    # local_node (CO2's floor) averages inside each host: the loopback carries it, not the veth
    node = recs["local_node"]
    assert node["loopback_bytes_per_step"] > node["dense_bytes"] / 2
    assert node["wire_bytes_per_step"] < node["loopback_bytes_per_step"] / 10
    full = recs["allreduce"]["param_bytes"]
    assert recs["fsdp"]["param_bytes"] < 0.3 * full
    assert 0.4 * full < recs["hsdp"]["param_bytes"] < 0.6 * full
    for dense, compressed in (("hsdp", "hsdp_powersgd"), ("fsdp", "fsdp_qsgd")):
        assert recs[compressed]["wire_bytes_per_step"] < 0.6 * recs[dense]["wire_bytes_per_step"]
        assert recs[compressed]["ledger_bytes_per_step"] > 0  # FSDPCompression's slow link
        assert f"{compressed}_over_{dense}_wire" in payload["figures"]["cnn"]
    # each rank keeps the state of its shard only: about half of a flat DDP rank's (which
    # compresses the whole gradient), as DDP's three stages keep it
    assert 0 < recs["hsdp_powersgd"]["compression_state_bytes"] < \
        0.7 * recs["powersgd_flat"]["compression_state_bytes"]
    assert mine() == []


def test_sigterm_tears_the_namespaces_down(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.network.netbench", "--workloads", "cnn", "--arms",
         "allreduce", "--steps", "500", "--json", str(tmp_path / "x.json"),
         "--data", str(REPO / "bench-results" / "data")],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while not mine(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert mine(proc.pid), "namespaces never appeared"
    time.sleep(3)  # let the ranks start inside them
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) != 0
    assert mine(proc.pid) == []
    assert not (tmp_path / "x.json").exists()  # no half-written output


def test_refuses_without_root_with_a_clear_message(monkeypatch, capsys):
    # an unprivileged user cannot run this interpreter here (root's home), so pretend the uid
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert netbench.main(["--quick"]) == 2
    assert "needs root" in capsys.readouterr().err
    assert mine() == []


def test_co2_arms_record_mean_step_time_clock_and_overlap(tmp_path):
    out = tmp_path / "nb.json"
    assert netbench.main([
        "--workloads", "cnn", "--arms", "local,co2,co2_bf16", "--steps", "9",
        "--warmup-steps",
        "1", "--tau", "2", "--json", str(out), "--data", str(REPO / "bench-results" / "data"),
    ]) == 0
    payload = json.loads(out.read_text())
    recs = {r["arm"]: r for r in payload["results"]}
    assert all(r["status"] == "ok" for r in recs.values()), recs
    dense = recs["co2"]["dense_bytes"]
    for arm, width in (("co2", 4), ("co2_bf16", 2)):  # diloco: tests/distcomp/co2/test_optimizer.py
        # rounds end at steps 1, 3, 5, 7: all four inside the 8 timed steps, one copy each
        assert recs[arm]["ledger_bytes_per_step"] == pytest.approx(width * dense / 8, rel=0.01)
        assert recs[arm]["mean_step_time_s"] > 0 and recs[arm]["wall_step_time_s"] > 0
        assert len(payload["clocks"][f"cnn/{arm}"]) == 9
        assert 0 <= recs[arm]["mean_round_wait_s"] <= recs[arm]["mean_round_s"]
    assert "co2_overlap" in payload["figures"]["cnn"]
    assert payload["figures"]["cnn"]["co2_bf16_over_local_wall_time"] > 0
    assert payload["config"]["burst"] == "32kbit"
    assert recs["local"]["wire_bytes_per_step"] < 10_000  # only barriers cross the link


def test_link_cost_measures_compute_next_to_a_saturating_flow(tmp_path):
    from benchmarks.network import link_cost

    out = tmp_path / "lc.json"
    assert link_cost.main(["--bursts", "1mbit", "--seconds", "2", "--pairs", "1",
                           "--json", str(out)]) == 0
    (rec,) = json.loads(out.read_text())["results"]
    idle, flow = rec["phases"]
    assert not idle["flow"] and flow["flow"] and min(idle["iters"] + flow["iters"]) > 0
    assert 8 < rec["flow_MB_per_s"] < 13.5  # 100 Mbit/s is 12.5 MB/s
    assert mine() == []


def test_soak_runs_its_ranks_inside_the_two_hosts(tmp_path):
    """The soak's lossy pass starts each rank inside its host's namespace (setns in the forked
    rank): a run over the veth link finishes with the loopback run's loss (same seed)."""
    from benchmarks.reliability import soak

    args = soak.parse_args(["--json", "unused", "--runs", "1", "--steps", "6"])
    clean = soak.soak_arm("powersgd", "loopback", args, tmp_path)
    with TwoHosts(bandwidth="100mbit") as net:
        linked = soak.soak_arm("powersgd", "netns", args, tmp_path, net)
        rx_bytes = net.counters("b")[1]
    assert clean["ok"] == linked["ok"] == 1, (clean, linked)
    assert linked["loss_mean"] == pytest.approx(clean["loss_mean"], rel=1e-6)
    assert rx_bytes > 10_000  # the gradients travelled over the veth, not the loopback
    assert mine() == []


def test_drop_loses_packets_at_the_given_rate():
    """The soak's loss on a kernel without netem: iptables drops each packet a host receives
    with the given probability (here 30% of 2000 UDP datagrams from host a to host b)."""
    with TwoHosts(bandwidth=None) as net:
        net.drop(0.3)
        receiver = subprocess.Popen(net.command("b", [sys.executable, "-c", (
            "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
            f"s.bind(('{net.addr['b']}', 9999)); s.settimeout(2); n = 0\n"
            "try:\n    while True: s.recv(16); n += 1\n"
            "except OSError: print(n)")]), stdout=subprocess.PIPE, text=True)
        time.sleep(0.5)
        subprocess.run(net.command("a", [sys.executable, "-c", (
            "import socket, time; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            f"for i in range(2000): s.sendto(b'x', ('{net.addr['b']}', 9999)); "
            "time.sleep(0.0005)")]), check=True, timeout=60)
        received = int(receiver.communicate(timeout=30)[0])
    assert 1200 < received < 1600, received  # 1400 expected; binomial sd ~20


def test_arms_are_parsed_once_from_the_registry():
    """Every method has every form; _fixed turns the schedule off and keeps the dense warm-up;
    an @SETTING is checked by the method's own knob."""
    from benchmarks.arms import Arm, RunSettings
    from distcomp import method_class, method_names

    run = RunSettings(knobs={"rank": 4, "density": 0.02})
    for method in method_names():
        fixed = Arm.parse(f"lgreco_{method}_fixed_flat_relative")
        assert (fixed.method, fixed.adaptive, fixed.fixed, fixed.flat, fixed.measure) == \
            (method, True, True, True, "relative")
        opts = fixed.hook_options(run)
        assert opts["accordion"] is False and opts["warmup_steps"] == 10
        assert opts["hierarchical"] is False and opts["lgreco"] == {"error_measure": "relative"}
        knob = method_class(method).knob
        assert set(opts) & {"rank", "density"} <= {knob}  # only its own command-line knob
    assert "accordion" not in Arm.parse("qsgd").hook_options(run)  # the library's default
    assert Arm.parse("topk@0.03").hook_options(run)["density"] == 0.03  # @ wins
    assert Arm.parse("co2_bf16@2").tau == 2 and Arm.parse("torch_fp16").kind == "torch"
    for bad, why in (("allreduce@4", "no compression setting"), ("topk@dense", "a number"),
                     ("powersgd@2.5", "rank must be an integer"), ("topkk", "unknown arm"),
                     ("powersgd_layersum", "unknown arm")):
        with pytest.raises(ValueError, match=why):
            Arm.parse(bad)


README_COMMAND = "python -m benchmarks.network.netbench --workloads cnn --arms allreduce,powersgd"


def test_readmes_netbench_command_writes_valid_json(tmp_path):
    """README's "check yours" command, as written plus ``--quick`` (16 steps) on a 1 Gbit/s
    link (here, in this file's worker: no two tests may own network namespaces at once).
    12 untimed steps hold the hooks' 10 dense warm-up steps: the timed ones compress."""
    assert README_COMMAND in (REPO / "README.md").read_text()
    out = tmp_path / "nb.json"
    argv = README_COMMAND.split()[3:] + ["--quick", "--warmup-steps", "12", "--bandwidth",
                                         "1gbit", "--json", str(out)]
    assert netbench.main(argv) == 0
    payload = json.loads(out.read_text())
    assert payload["config"]["steps"] == {"cnn": 16}
    assert [r["arm"] for r in payload["results"]] == ["allreduce", "powersgd"]
    recs = {r["arm"]: r for r in payload["results"]}
    for arm, r in recs.items():
        assert r["status"] == "ok", json.dumps(r, indent=1)  # the ranks' log tails in full
        for key in ("wire_bytes_per_step", "ledger_bytes_per_step", "step_time_s",
                    "loss_at_equal_steps"):
            assert isinstance(r[key], float | int), (arm, key)
        assert r["equal_steps"] == 16 and r["smooth_steps"] == 5
        assert r["target_loss"] == recs["allreduce"]["loss_at_equal_steps"]
        # allreduce stops at 16; the compressed arm may chase the target to 32
        assert r["steps_run"] == 16 if arm == "allreduce" else 16 <= r["steps_run"] <= 32
        assert r["timed_steps"] == r["steps_run"] - 12
        assert len(payload["curves"][f"cnn/{arm}"]) == r["steps_run"]
        assert (r["time_to_target_s"] is None) == (r["time_to_target_why"] is not None)
    assert recs["allreduce"]["time_to_target_s"] is not None  # its own loss, by definition
    chased = recs["powersgd"]
    assert chased["time_to_target_s"] is not None or chased["steps_run"] == 32
    dense = recs["allreduce"]["dense_bytes"]
    # 2 ranks, ring all-reduce: each side sends and receives the whole gradient once
    assert 2 * dense < recs["allreduce"]["wire_bytes_per_step"] < 2.4 * dense
    # steps 12-15 are in Accordion's first, gentle interval (rank 32; the convolutions then
    # shrink less than 2x and travel dense): measured 0.19
    assert recs["powersgd"]["wire_bytes_per_step"] < 0.3 * recs["allreduce"]["wire_bytes_per_step"]
    assert out.with_suffix(".png").stat().st_size > 10_000
    assert mine() == []
