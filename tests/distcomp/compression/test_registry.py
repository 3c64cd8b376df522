"""The registry of compression methods: the only list of methods. A method declares everything
about itself in its class, is found without being named anywhere else, and an incomplete or
clashing one fails when it is defined."""

from __future__ import annotations

import ast
import importlib
import pickle
import pkgutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import distcomp.compression.methods as methods_pkg
from distcomp import CompressionConfig, LGreCoConfig, method_class, method_names
from distcomp.compression import compressor
from distcomp.compression.compressor import Compressor, GatherCompressor, knob_owners
from distcomp.compression.config import ignored_options
from distcomp.knobs import Knobs, knob

REPO = Path(__file__).resolve().parents[3]


def test_every_module_of_the_methods_folder_is_registered_with_a_complete_class():
    modules = {m.name for m in pkgutil.iter_modules(methods_pkg.__path__)}
    registered = {method_class(n).__module__.rsplit(".", 1)[1] for n in method_names()}
    assert modules == registered and len(method_names()) >= 3
    for name in method_names():
        cls = method_class(name)
        comp = cls()
        assert cls.name == name and comp.knob in {f for f in cls.Options.__dataclass_fields__}
        assert comp.milder(comp.gentle(comp.setting), comp.setting)
        shape = torch.Size([64, 256])
        assert comp.compresses(shape, comp.setting, 1.0)
        assert 0 < comp.wire_bytes(shape, comp.setting) < comp.dense_bytes(shape)
        plan = LGreCoConfig().plan_for(name)
        options = comp.candidates(comp.setting, shape, plan)
        errors = comp.candidate_errors(torch.randn(shape), [comp.setting, *options])
        assert len(errors) == 1 + len(options) and all(e >= 0 for e in errors)


def _define(name: str, **body):
    namespace = {"name": name, "knob": "level", **body}
    return type("Probe", (GatherCompressor,), namespace)


@dataclass(frozen=True)
class ProbeOptions(Knobs):
    level: int = knob(1, low=1)


def _complete() -> dict:
    def nothing(self, *args, **kwargs):
        return None

    return {"Options": ProbeOptions, **{m: nothing for m in (
        "gentle", "eligible", "wire_bytes", "candidates", "candidate_errors", "encode", "decode")}}


@pytest.mark.parametrize("change, match", [
    ({"gentle": None}, "does not define gentle"),
    ({"candidate_errors": None}, "does not define candidate_errors"),
    ({"Options": None}, "does not declare 'Options'"),
    ({"Options": dict}, "Options must be a Knobs dataclass"),
    ({"knob": "levels"}, "its knob 'levels' is not a field of its Options"),
])
def test_an_incomplete_method_fails_when_it_is_defined(change, match):
    body = _complete()
    for k, v in change.items():
        if v is None:
            body.pop(k)
        else:
            body[k] = v
    with pytest.raises(TypeError, match=match):
        _define("probe", **body)
    assert "probe" not in method_names()


def test_a_taken_name_or_a_knob_declared_differently_fails_when_defined():
    with pytest.raises(TypeError, match="the name is taken"):
        _define("topk", **_complete())

    @dataclass(frozen=True)
    class Clashing(Knobs):
        level: int = knob(1, low=1)
        rank: float = 2.0  # PowerSGD's rank is an integer >= 1

    with pytest.raises(TypeError, match=r"field\(s\) \['rank'\] are declared differently"):
        _define("probe2", **{**_complete(), "Options": Clashing})
    assert not {"probe", "probe2"} & set(method_names())


def test_flat_knobs_go_to_the_method_others_are_logged_or_refused():
    config = CompressionConfig("topk", density=0.05, rank=3, warmup_steps=4)
    assert config.density == 0.05 and config.setting == 0.05 and config.warmup_steps == 4
    assert config.to_dict()["density"] == 0.05 and "rank" not in config.to_dict()
    assert CompressionConfig.from_dict(config.to_dict()) == config
    assert pickle.loads(pickle.dumps(config)) == config
    with pytest.raises(AttributeError, match="has no option 'rank'"):
        _ = config.rank
    assert ignored_options("topk", {"rank": 3, "density": 0.05}) == [
        "rank=3 applies to method 'powersgd' only; 'topk' ignores it"]
    with pytest.raises(ValueError, match="momentum applies to method"):
        CompressionConfig("qsgd", momentum=0.9)
    assert CompressionConfig("qsgd", momentum=0.0).method == "qsgd"  # the default: harmless
    with pytest.raises(ValueError, match=r"unknown compression options \['rnak'\]"):
        CompressionConfig("powersgd", rnak=3)
    with pytest.raises(ValueError, match="method must be one of"):
        CompressionConfig("no-such-method")


def test_lgreco_candidate_knobs_come_from_each_method():
    cfg = LGreCoConfig(gamma=0.25, qsgd_bits=[4, 2], period=10, window=2, warmup_steps=4)
    assert cfg.gamma == 0.25 and cfg.qsgd_bits == (2, 4) and cfg.plan_for("powersgd").beta == 2
    assert LGreCoConfig.from_dict(cfg.to_dict()) == cfg
    owned = {k for k, owners in knob_owners("Plan").items() for _ in owners}
    assert owned <= set(cfg.to_dict())


def test_nothing_outside_a_method_module_switches_on_a_method_name():
    """No code outside a method's own module decides by a method's name (or its ``lgreco-`` /
    ``lgreco_`` form): no such name compared (``==``, ``in``), used as a dict key, or listed
    with other method names, in the library, launch/, benchmarks/ or data_compress/. A name
    may still be an argument or a value: an experiment that studies one method names it."""
    names = set(method_names())
    names |= {f"lgreco{sep}{n}" for n in method_names() for sep in "-_"}
    found = []
    for folder in ("distcomp", "hooks", "launch", "benchmarks", "data_compress"):
        for path in sorted((REPO / folder).rglob("*.py")):
            own = path.stem if path.parent.name == "methods" else None
            for node in _switches(ast.parse(path.read_text()), names - {own}):
                found.append(f"{path.relative_to(REPO)}:{node.lineno}: {node.value!r}")
    assert found == [], "\n".join(found)


def _switches(tree: ast.AST, names: set[str]) -> list[ast.Constant]:
    """Method-name constants compared, used as dict keys, or listed among method names only."""
    def named(node) -> list[ast.Constant]:
        if isinstance(node, ast.Constant) and node.value in names:
            return [node]
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            return [c for e in node.elts for c in named(e)]
        return []

    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            out += [c for operand in (node.left, *node.comparators) for c in named(operand)]
        elif isinstance(node, ast.Dict):
            out += [c for k in node.keys if k is not None for c in named(k)]
        elif isinstance(node, (ast.Tuple, ast.List, ast.Set)) and len(node.elts) > 1 and \
                all(named(e) for e in node.elts):
            out += named(node)
    return list({id(c): c for c in out}.values())


def test_the_probe_for_switches_can_fail(tmp_path, monkeypatch):
    probe = REPO / "distcomp" / "_switch_probe.py"
    probe.write_text('def f(m):\n    return 1 if m == "topk" else 2\n'
                     'KNOBS = {"qsgd": "bits"}\nALL = ("powersgd", "topk")\n'
                     'def g(m):\n    return run(m, "powersgd")\n')
    try:
        with pytest.raises(AssertionError) as caught:
            test_nothing_outside_a_method_module_switches_on_a_method_name()
        text = str(caught.value)
        for line, name in ((2, "topk"), (3, "qsgd"), (4, "powersgd"), (4, "topk")):
            assert f"_switch_probe.py:{line}: {name!r}" in text
        assert "_switch_probe.py:6" not in text  # an argument: an experiment naming a method
    finally:
        probe.unlink()


def test_registry_module_imports_no_method():
    """The base module stays below the methods: they import it, never the other way."""
    source = Path(compressor.__file__).read_text()
    assert "compression.methods" not in source.replace("compression/methods", "")
    assert importlib.import_module("distcomp.compression.methods") is methods_pkg
    assert issubclass(method_class("topk"), Compressor)
