"""The repository's layout, enforced: one import namespace, imports flowing one way, and a wheel
that installs ``distcomp`` alone.

Folders and what they may import (AST walk of every ``.py`` file, so a lazy import inside a
function counts too):

- ``distcomp/`` (core: algorithms, workloads): nothing of ``distcomp.hooks``, ``distcomp.data``,
  ``launch`` or ``benchmarks``;
- ``hooks/``, ``data_compress/``: the ``distcomp`` namespace only, never ``launch`` or
  ``benchmarks``;
- ``launch/``: the installed package and its own siblings, never ``benchmarks``;
- ``benchmarks/``: never ``launch``.

Inside ``distcomp/`` the groups depend one way too: the shared modules at its top (comm, ledger,
checkpoint, knobs) on no group; ``gnn`` and ``workloads`` on neither compression nor CO2;
``compression`` not on CO2 or GNN (CO2 may use compression, to compress its outer average).

No file anywhere mutates ``sys.path``, and nothing imports the top-level names ``hooks`` or
``data_compress`` (they exist in the source tree only as the folders mapped into ``distcomp``).
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FOLDERS = ("distcomp", "hooks", "data_compress", "launch", "benchmarks", "tests")
LAUNCH_MODULES = {p.stem for p in (REPO / "launch").glob("*.py")}
FORBIDDEN = {
    "distcomp": ("distcomp.hooks", "distcomp.data", "launch", "benchmarks", "tests"),
    "hooks": ("launch", "benchmarks", "tests"),
    "data_compress": ("launch", "benchmarks", "tests"),
    "launch": ("benchmarks", "tests"),
    "benchmarks": ("launch", "tests"),
    "tests": ("launch",),
}
GROUPS = ("distcomp.compression", "distcomp.co2", "distcomp.gnn")
INSIDE = {  # path prefix inside distcomp/ -> the groups it may not import
    "distcomp/compression/": ("distcomp.co2", "distcomp.gnn"),
    "distcomp/co2/": ("distcomp.gnn",),
    "distcomp/gnn/": ("distcomp.compression", "distcomp.co2"),
    "distcomp/workloads/": GROUPS,
    **{f"distcomp/{m}.py": GROUPS for m in ("comm", "ledger", "checkpoint", "knobs")},
}


def python_files(folder: str) -> list[Path]:
    return sorted((REPO / folder).rglob("*.py"))


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file, relative ones resolved."""
    tree = ast.parse(path.read_text(), str(path))
    package = ".".join(path.relative_to(REPO).parent.parts)
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                names.append((node.lineno, ".".join(base + ([node.module] if node.module else []))))
            else:
                names.append((node.lineno, node.module))
    return names


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def launch_sibling(name: str) -> bool:
    """``from train import ...`` inside launch/: the script's own folder is sys.path[0]."""
    return name.split(".")[0] in LAUNCH_MODULES


def violations() -> list[str]:
    found = []
    for folder in FOLDERS:
        for path in python_files(folder):
            rel = path.relative_to(REPO)
            for line, name in imported_modules(path):
                bad = [p for p in FORBIDDEN[folder] if _under(name, p)]
                bad += [p for prefix, group in INSIDE.items() if str(rel).startswith(prefix)
                        for p in group if _under(name, p)]
                if folder != "launch" and launch_sibling(name):
                    bad.append("launch (a script imported by its module name)")
                if _under(name, "hooks") or _under(name, "data_compress"):
                    bad.append("a top-level name outside the distcomp namespace")
                found += [f"{rel}:{line}: imports {name}: {b}" for b in bad]
    return found


def test_imports_flow_one_way_through_one_namespace():
    assert violations() == []


def test_the_walk_sees_lazy_and_relative_imports(tmp_path, monkeypatch):
    """The checker itself can fail: a lazy import of benchmarks inside core is reported."""
    bad = REPO / "distcomp" / "_layout_probe.py"
    bad.write_text("def f():\n    from benchmarks.common import write_json\n"
                   "    from .hooks import x\n")
    gnn = REPO / "distcomp" / "gnn" / "_layout_probe.py"
    gnn.write_text("def f():\n    from ..compression import reducer\n")
    try:
        found = violations()
    finally:
        bad.unlink()
        gnn.unlink()
    assert any("_layout_probe.py:2: imports benchmarks.common" in v for v in found)
    assert any("_layout_probe.py:3: imports distcomp.hooks" in v for v in found)
    assert "distcomp/gnn/_layout_probe.py:2: imports distcomp.compression: distcomp.compression" \
        in found


def test_no_file_edits_sys_path():
    edits = []
    for folder in FOLDERS:
        for path in python_files(folder):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if (isinstance(node, ast.Attribute) and node.attr == "path"
                        and isinstance(node.value, ast.Name) and node.value.id == "sys"):
                    edits.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert edits == [], "sys.path used (import the installed package instead): " + ", ".join(edits)


def test_the_wheel_installs_only_the_distcomp_namespace(tmp_path):
    """A wheel built from a copy of the source tree holds ``distcomp/`` (with hooks, data,
    workloads mapped in) and its metadata only, and its console script points into the
    namespace. (A copy: building in place would leave build/ and egg-info in the checkout.)"""
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, src / name)
    for folder in ("distcomp", "hooks", "data_compress"):
        shutil.copytree(REPO / folder, src / folder, ignore=ignore)
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                            "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"), str(src)],
                           capture_output=True, text=True, timeout=280)
    assert build.returncode == 0, build.stderr
    (wheel,) = (tmp_path / "dist").glob("distcomp-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"distcomp", next(t for t in tops if t.endswith(".dist-info"))}, tops
    for module in ("distcomp/hooks/ddp.py", "distcomp/data/cli.py",
                   "distcomp/workloads/teacher.py", "distcomp/compression/lgreco.py"):
        assert module in names
    info = next(n for n in names if n.endswith("entry_points.txt"))
    entry = zipfile.ZipFile(wheel).read(info).decode()
    assert "distcomp-data = distcomp.data.cli:main" in entry
