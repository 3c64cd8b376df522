"""Run several ``python -m MODULE ARGS`` (or ``python SCRIPT.py ARGS``) commands in one fresh
interpreter, one after another.

Each command is run as ``python`` would run it (``runpy``, ``__name__ == "__main__"``,
``sys.argv`` set), with its own stdout and stderr captured, so a test checks each command as
written. Why: a new interpreter spends 2-4 s here importing torch before the command does
anything; a dozen table generators or ``--help`` calls in one interpreter pay that once. A
command that must run as its own program (a console script, a launcher) still gets its own
``subprocess.run``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

_RUNNER = r"""
import contextlib, io, json, runpy, sys, traceback
results = []
for module, *args in json.loads(sys.stdin.read()):
    out, err, rc = io.StringIO(), io.StringIO(), 0
    sys.argv = [module, *args]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            if module.endswith(".py"):
                runpy.run_path(module, run_name="__main__")
            else:
                runpy.run_module(module, run_name="__main__", alter_sys=True)
        except SystemExit as e:  # as the interpreter exits: a message goes to stderr
            rc = e.code if isinstance(e.code, int) else int(e.code is not None)
            if e.code is not None and not isinstance(e.code, int):
                print(e.code, file=sys.stderr)
        except BaseException:
            traceback.print_exc()
            rc = 1
    results.append({"rc": rc, "stdout": out.getvalue(), "stderr": err.getvalue()})
sys.__stdout__.write(json.dumps(results))
"""


def run_modules(commands: list[list[str]], *, cwd: Path, env: dict[str, str],
                timeout: float = 600) -> list[dict]:
    """``commands``: each ``[module or script.py, *args]``; returns, per command, ``{"rc", "stdout",
    "stderr"}`` in order. The whole batch has one deadline (``timeout`` seconds)."""
    proc = subprocess.run([sys.executable, "-c", _RUNNER], input=json.dumps(commands),
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)
