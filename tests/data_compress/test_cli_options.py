"""The CLI's surface: --version, help with a default for every flag, and progress bars shown
on a terminal only (a real pseudo-terminal, not a mock, for the end-to-end check)."""

from __future__ import annotations

import argparse
import fcntl
import io
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("datasets", reason="needs Hugging Face datasets (the data extra)")

from distcomp.data import progress  # noqa: E402
from distcomp.data.cli import HelpFormatter, main, parser, version  # noqa: E402

SCRIPT = Path(sys.executable).with_name("distcomp-data")


def subparsers() -> dict[str, argparse.ArgumentParser]:
    p = parser()
    (action,) = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_every_flag_of_every_subcommand_has_help_and_says_its_default():
    subs = subparsers()
    assert set(subs) == {"inspect", "embed", "quantize", "prune", "dedup", "evaluate"}
    for name, sp in subs.items():
        formatter = HelpFormatter(prog=name)
        for action in sp._actions:
            flag = f"{name} {'/'.join(action.option_strings)}"
            assert action.help and action.help.strip(), flag
            if isinstance(action, argparse._HelpAction):
                continue
            text = formatter._get_help_string(action)
            assert "default" in text or "required" in text, (flag, text)
            assert action.required == ("required" in text), (flag, text)
        sp.format_help()  # every %-format in the help renders


def test_help_shows_computed_defaults_in_words(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["quantize", "--help"])
    assert exit_.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "(default: auto)" in out and "(default: graphcut)" in out
    assert "(default: 10 GraphCut bins" in out and "(default: on when stderr is a terminal)" in out
    assert "--no-progress" in out and "--columns" in out and "(default: off)" in out


def test_version_prints_the_installed_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    from importlib.metadata import version as dist_version

    assert capsys.readouterr().out == f"distcomp-data {dist_version('distcomp')}\n"
    assert version() == dist_version("distcomp")


def test_progress_decision_follows_the_flag_then_the_terminal():
    assert progress.wanted(True, io.StringIO()) is True  # --progress: forced on
    assert not progress.wanted(False, sys.__stdin__)  # --no-progress: forced off
    assert progress.wanted(None, io.StringIO()) is False  # captured: no bars
    read, write = os.pipe()
    with os.fdopen(read, "rb"), os.fdopen(write, "wb") as w:
        assert progress.wanted(None, w) is False  # a pipe (CI logs, `2> log`)
    master, slave = pty.openpty()
    with os.fdopen(master, "rb"), os.fdopen(slave, "wb") as s:
        assert progress.wanted(None, s) is True  # a terminal
    closed = io.StringIO()
    closed.close()
    assert progress.wanted(None, closed) is False  # cannot tell: quiet


def test_a_bar_on_a_terminal_that_reports_no_size_still_draws(monkeypatch):
    master, slave = pty.openpty()  # a fresh pty reports 0 x 0; tqdm alone prints blank lines
    with os.fdopen(slave, "w") as fake_stderr:
        monkeypatch.setattr(sys, "stderr", fake_stderr)
        with progress.bar(5, "k-center", True) as b:
            b.update(5)
        monkeypatch.undo()
    text = b""
    while select.select([master], [], [], 0.5)[0]:
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        text += chunk
    os.close(master)
    assert b"k-center: 100%" in text and b"5/5" in text, text


def test_silent_bars_cost_nothing_and_track_passes_items_through():
    with progress.bar(10, "x", False) as b:
        b.update(3)
    assert list(progress.track(range(4), "x", False)) == [0, 1, 2, 3]
    assert list(progress.track(iter("ab"), "x", True)) == ["a", "b"]


def run_on(stderr_tty: bool, argv: list[str], timeout: float = 180) -> tuple[int, str]:
    """The console script with its stderr on a pseudo-terminal (or a pipe); (status,
    what stderr received)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TERM": "xterm", "COLUMNS": "100"}
    if not stderr_tty:
        proc = subprocess.run([str(SCRIPT), *argv], capture_output=True, text=True, env=env,
                              timeout=timeout)
        return proc.returncode, proc.stderr
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 24 x 100
    proc = subprocess.Popen([str(SCRIPT), *argv], stdout=subprocess.DEVNULL, stderr=slave,
                            env=env)
    os.close(slave)
    chunks, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # the terminal closed: the process is gone
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(master)
    return proc.wait(timeout=30), b"".join(chunks).decode(errors="replace")


def test_bars_on_a_terminal_and_none_in_a_pipe(tmp_path, capsys):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 600)
    np.savez(tmp_path / "t.npz", x=(rng.normal(size=(600, 8)) + y[:, None]).astype(np.float32),
             label=y)
    argv = ["prune", "--input", str(tmp_path / "t.npz"), "--ratio", "0.3", "--method",
            "kcenter"]
    status, err = run_on(True, [*argv, "--output", str(tmp_path / "tty")])
    assert status == 0, err
    assert "k-center" in err and "hash input" in err and "Saving the dataset" in err, err
    status, err = run_on(False, [*argv, "--output", str(tmp_path / "pipe")])
    assert status == 0 and err == "", err
    assert main([*argv, "--output", tmp_path / "forced", "--progress"]) == 0  # not a tty
    assert "k-center" in capsys.readouterr().err
    assert main([*argv, "--output", tmp_path / "quiet"]) == 0
    assert capsys.readouterr().err == ""
