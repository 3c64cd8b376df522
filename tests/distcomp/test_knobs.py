"""The one validator behind every configuration: types from annotations, ranges from knob()."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pytest

from distcomp.knobs import Knobs, check_value, knob, scalar


@dataclass(frozen=True)
class Example(Knobs):
    count: int = knob(2, low=1)
    rate: float = knob(0.5, low=0.0, high=1.0, low_open=True)
    flag: bool = True
    mode: Literal["a", "b"] = "a"
    cap: float | None = knob(None, low=0.0, low_open=True)
    bits: tuple[Literal[2, 4], ...] = (2, 4)

    def check(self) -> None:
        if self.mode == "b" and self.count > 3:
            raise ValueError("count must be <= 3 with mode 'b'")


@pytest.mark.parametrize("fields, match", [
    ({"count": 0}, r"count must be an integer >= 1, got 0"),
    ({"count": 2.0}, "count must be an integer"),
    ({"count": True}, "count must be an integer"),
    ({"rate": 0.0}, r"rate must be a finite number in \(0.0, 1.0\], got 0.0"),
    ({"rate": float("nan")}, "rate must be a finite number"),
    ({"rate": "0.5"}, "rate"),
    ({"flag": 1}, "flag must be True or False"),
    ({"mode": "c"}, r"mode must be one of \('a', 'b'\), got 'c'"),
    ({"cap": 0.0}, "cap must be a finite number > 0.0"),
    ({"bits": (2, 3)}, r"bits\[1\] must be one of \(2, 4\)"),
    ({"bits": "24"}, "bits must be a tuple"),
    ({"mode": "b", "count": 4}, "count must be <= 3 with mode 'b'"),
])
def test_every_field_is_checked_with_a_message_naming_it(fields, match):
    with pytest.raises(ValueError, match=match):
        Example(**fields)


def test_values_are_normalised_and_round_trip_through_dicts():
    e = Example(bits=[4, 2], cap=2, rate=1)
    assert e.bits == (4, 2) and e.cap == 2
    assert Example.from_dict(e.to_dict()) == e
    with pytest.raises(ValueError, match=r"unknown Example options \['cont'\]"):
        Example.from_dict({"cont": 3})
    assert check_value("b", 4.0, Literal[2, 4]) == 4 and isinstance(check_value("b", 4.0,
                                                                                Literal[2, 4]),
                                                                    int)


def test_scalar_types_for_command_line_flags():
    assert scalar(int) == (int, None)
    assert scalar(float | None) == (float, None)
    assert scalar(Literal["max", "l2"]) == (str, ("max", "l2"))
    assert scalar(tuple[int, ...]) == (None, None)
