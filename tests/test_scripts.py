"""Script layouts: each is described once (``scripts.Slots``), and the Lua it generates binds what the Python encodes."""

from __future__ import annotations

import pytest
import redis

from janitor import scripts
from janitor.scripts import Slots

LAYOUTS = [value for value in vars(scripts).values() if isinstance(value, Slots)]


def test_encode_puts_values_in_the_layouts_order() -> None:
    """Values given by name come out in the layout's order."""
    slots = Slots(keys=("b", "a"), args=("y", "x", "z"))
    assert slots.encode({"a": b"A", "b": b"B"}, {"x": 1, "y": 2, "z": 3}) == (
        [b"B", b"A"],
        [2, 1, 3],
    )


@pytest.mark.parametrize(
    ("keys", "args"),
    [({"a": b"A"}, {"x": 1}), ({"a": b"A", "b": b"B"}, {"x": 1, "w": 0})],
)
def test_encode_refuses_a_missing_or_unknown_name(
    keys: dict[str, bytes], args: dict[str, scripts.Arg]
) -> None:
    """A value the layout does not name, or one it lacks, is an error, not a shifted slot."""
    with pytest.raises(ValueError, match="slots"):
        Slots(keys=("a", "b"), args=("x",)).encode(keys, args)


@pytest.mark.parametrize("slots", LAYOUTS, ids=lambda s: "/".join(s.keys + s.args))
def test_every_layout_binds_what_it_encodes(r: redis.Redis, slots: Slots) -> None:
    """Lua made by bind() at any offset reads back each value under its name, as encode() placed it."""
    names = slots.keys + slots.args
    assert len(set(names)) == len(names), "names are unique within a layout"
    keys, args = slots.encode(
        {name: f"k-{name}".encode() for name in slots.keys},
        {name: f"a-{name}" for name in slots.args},
    )
    body = "local k, a = 3, 2\n" + slots.bind() + "return {" + ", ".join(names) + "}"
    reply = r.eval(body, 2 + len(keys), b"x", b"y", *keys, "z", *args)
    assert reply == [f"k-{n}".encode() for n in slots.keys] + [
        f"a-{n}".encode() for n in slots.args
    ]


def test_a_head_binds_at_fixed_slots() -> None:
    """A call's head binds literal slots: the lease is KEYS[1] and the token ARGV[1], as the fence check reads them."""
    assert scripts.BATCH_HEAD_NOW.bind(k="1", a="1") == (
        "local lease = KEYS[1]\nlocal token, now, count = ARGV[1], ARGV[2], ARGV[3]\n"
    )
