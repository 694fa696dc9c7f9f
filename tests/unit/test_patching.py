"""Patcher: idempotent wrap, full restore."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hoptrace.core.patching import Patcher, original_of


class Client:
    def send(self, x: int) -> int:
        return x


class Sub(Client):
    pass


def doubling(original: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(self: Any, x: int) -> int:
        return int(original(self, x)) * 2

    return wrapper


def test_wrap_twice_is_a_no_op_and_restore_undoes() -> None:
    patcher = Patcher("test")
    patcher.wrap(Client, "send", doubling)
    patcher.wrap(Client, "send", doubling)
    assert Client().send(3) == 6
    assert original_of(Client.send)(Client(), 3) == 3
    patcher.restore()
    patcher.restore()
    assert Client().send(3) == 3
    assert not patcher.active


def test_inherited_attribute_is_removed_not_shadowed_on_restore() -> None:
    patcher = Patcher("test")
    patcher.wrap(Sub, "send", doubling)
    assert Sub().send(2) == 4 and Client().send(2) == 2
    patcher.restore()
    assert "send" not in vars(Sub)
