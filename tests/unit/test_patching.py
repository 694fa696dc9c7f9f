"""Patcher: idempotent wrap, and patches that stack with other tools' wrappers.

Other tools wrap the same methods: OpenTelemetry contrib and ddtrace with wrapt proxies,
others with plain ``functools.wraps`` functions. Whichever order they come in, taking
hoptrace's wrapper out must leave theirs working, and wrapping again must not stack a
second hoptrace wrapper.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import pytest
import wrapt

from hoptrace.core.patching import Patcher, original_of

#: The base of every wrapt proxy: BaseObjectProxy in wrapt 2, ObjectProxy in wrapt 1.
PROXY = getattr(wrapt, "BaseObjectProxy", wrapt.ObjectProxy)


class Client:
    def send(self, x: int) -> int:
        return x


class Sub(Client):
    pass


def doubling(original: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(self: Any, x: int) -> int:
        return int(original(self, x)) * 2

    return wrapper


def add_wrapt(owner: Any, amount: int) -> None:
    """Another tool's wrapper, wrapt style (as contrib and ddtrace do): adds ``amount``."""

    def wrapper(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> int:
        # contrib's wrappers read the client from ``instance``: a call that reaches this
        # wrapper unbound (instance None, self among args) breaks them.
        assert isinstance(instance, owner), f"unbound call: instance={instance!r}"
        return int(wrapped(*args, **kwargs)) + amount

    wrapt.wrap_function_wrapper(owner, "send", wrapper)


def remove_wrapt(owner: Any) -> None:
    """What contrib's ``unwrap`` does: put back what the top wrapt proxy wraps."""
    current = vars(owner)["send"]
    assert isinstance(current, PROXY)
    setattr(owner, "send", current.__wrapped__)  # noqa: B010


def add_plain(owner: Any, amount: int) -> Callable[..., Any]:
    """Another tool's wrapper, a plain closure with functools.wraps: adds ``amount``."""
    original = owner.send

    @functools.wraps(original)
    def send(self: Any, x: int) -> int:
        return int(original(self, x)) + amount

    owner.send = send
    return original


@pytest.fixture
def fresh() -> Any:
    class Fresh:
        def send(self, x: int) -> int:
            return x

    return Fresh


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


@pytest.mark.parametrize("style", ["wrapt", "plain"])
def test_wrapper_added_after_ours_survives_our_restore(fresh: Any, style: str) -> None:
    patcher = Patcher("test")
    patcher.wrap(fresh, "send", doubling)
    (add_wrapt if style == "wrapt" else add_plain)(fresh, 100)
    assert fresh().send(3) == 106  # theirs on top of ours
    patcher.restore()
    assert fresh().send(3) == 103  # theirs still there, ours gone
    assert not patcher.active
    patcher.wrap(fresh, "send", doubling)
    # Ours back exactly once: under a wrapt proxy it was taken out of the chain, so it now
    # goes on top; under a plain wrapper it stayed as a pass-through and is switched back on.
    assert fresh().send(3) == (206 if style == "wrapt" else 106)
    patcher.restore()
    assert fresh().send(3) == 103


def test_wrapt_proxy_is_repointed_past_our_wrapper(fresh: Any) -> None:
    original = fresh.send
    patcher = Patcher("test")
    patcher.wrap(fresh, "send", doubling)
    add_wrapt(fresh, 100)
    patcher.restore()
    assert vars(fresh)["send"].__wrapped__ is original
    remove_wrapt(fresh)  # their own unwrap then restores the plain method
    assert vars(fresh)["send"] is original and fresh().send(3) == 3


@pytest.mark.parametrize("style", ["wrapt", "plain"])
def test_wrapper_added_before_ours_survives_our_restore(fresh: Any, style: str) -> None:
    (add_wrapt if style == "wrapt" else add_plain)(fresh, 100)
    patcher = Patcher("test")
    patcher.wrap(fresh, "send", doubling)
    assert fresh().send(3) == 206  # ours on top of theirs
    patcher.restore()
    assert fresh().send(3) == 103
    if style == "wrapt":
        remove_wrapt(fresh)
        assert fresh().send(3) == 3


def test_instrument_uninstrument_instrument_between_two_other_wrappers(fresh: Any) -> None:
    add_wrapt(fresh, 1000)
    patcher = Patcher("test")
    patcher.wrap(fresh, "send", doubling)
    add_plain(fresh, 100)
    assert fresh().send(3) == (3 + 1000) * 2 + 100
    for _ in range(3):
        patcher.restore()
        assert fresh().send(3) == 3 + 1000 + 100
        patcher.wrap(fresh, "send", doubling)
        assert fresh().send(3) == (3 + 1000) * 2 + 100


def test_their_unwrap_after_ours_on_top_keeps_ours(fresh: Any) -> None:
    add_wrapt(fresh, 100)
    patcher = Patcher("test")
    patcher.wrap(fresh, "send", doubling)
    # contrib's unwrap only acts when the top of the chain is a wrapt proxy: ours is not one,
    # so it must leave ours in place rather than strip it
    top = vars(fresh)["send"]
    assert not isinstance(top, PROXY)
    patcher.restore()
    assert fresh().send(3) == 103
