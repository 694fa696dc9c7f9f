"""The one "scope held between two wrapped calls" mechanism.

An iterator or poll client hands the caller a message and returns: ``next()`` on a
``consume()`` generator, ``async for``, ``poll()``, ``getone()``, ``basic_get``. The handler
then runs *between* two calls hoptrace wraps, so no ``with`` block can surround it. The
message's process scope is opened by :func:`hold` and stays current until

* the owner's next call (:func:`release`, called first thing by every wrapped call);
* the client's own settle point for that message, where it has one (commit,
  ``store_offsets``, ack/nack/reject): :func:`settle`;
* the loop that got it ends (:class:`HeldIteration`, :class:`AsyncHeldIteration`,
  :func:`held_items`), however it ends: exhausted, ``break``, an exception, ``close()``.

Held scopes live in a :class:`~contextvars.ContextVar` stack, so each thread and each asyncio
task has its own, and a scope is closed in the context that opened it. Ownership is tested by
resetting the token of the push that added the scope to the stack: that succeeds only in the
very context that set it, which tells the opener apart from a task that merely inherited a
copy of its context, and it leaves the stack as it was before the push.

The setting ``hold_consume_scope=False`` turns holding off: the wrapped calls then open no
scope, and the caller gives each message its exact boundaries with the client's
``processing(message)`` scope (or ``iterate()``).
"""

from __future__ import annotations

import functools
import threading
import weakref
from asyncio import current_task
from asyncio.events import _get_running_loop
from collections.abc import Awaitable, Callable, Generator, Iterable, Iterator
from contextvars import ContextVar, Token
from typing import Any, NamedTuple

from opentelemetry.context import get_current

from . import diagnostics
from . import settings as _settings
from .hop import consume_scope
from .settings import get_settings

__all__ = [
    "AsyncHeldIteration",
    "Held",
    "HeldIteration",
    "drop",
    "enabled",
    "held_items",
    "hold",
    "latest",
    "release",
    "release_all",
    "releasing",
    "releasing_all",
    "releasing_all_async",
    "scoped",
    "settle",
    "settling",
    "settling_async",
]


class Held(NamedTuple):
    """A process scope kept open after the call that returned its message.

    A tuple: built in C per message (``tuple.__new__``), read by C-level attribute getters.
    """

    owner: object
    scope: consume_scope
    #: Names the message for :func:`settle`.
    key: object
    settles: bool
    #: ``[token]`` of the push that added this entry to the stack (set once pushed).
    mark: list[Token[tuple[Held, ...]]]
    #: The task or thread that holds it.
    where: Any
    #: The context the scope made current: a settle closes the scope only from there.
    context: Any


_new_held = tuple.__new__


_stack: ContextVar[tuple[Held, ...]] = ContextVar("hoptrace_held", default=())
#: Each owner's held scopes, one per task or thread that holds one, by ``id(owner)``: a weak
#: reference to the owner (whose callback forgets the entry) and ``{task or thread: scope}``
#: (the scope, not the :class:`Held`, which refers to the owner and would keep it alive).
#: A scope opened in a task that is gone (``asyncio.wait_for(consumer.getone())`` on Python
#: < 3.12 runs the call in a child task), or in a thread that ended, is ended at the owner's
#: next call instead of never.
_by_owner: dict[int, tuple[weakref.ref[Any], dict[Any, consume_scope]]] = {}
#: The owner types that take no weak reference (a C consumer wrapped with ``wrap_consumer``):
#: known once, not learnt from a TypeError at every call.
_unreferenced: set[type] = set()
#: The current thread, cached per thread (``threading.current_thread()`` costs more per call).
_local = threading.local()


def _forget(key: int, ref: weakref.ref[Any]) -> None:
    try:
        record = _by_owner.get(key)
        if record is not None and record[0] is ref:
            del _by_owner[key]
    except Exception:  # interpreter shutdown: module globals may be gone
        pass


def _slots(owner: object) -> dict[Any, consume_scope] | None:
    """``owner``'s ``{task or thread: scope}``, created on first use; None for an owner that
    takes no weak reference."""
    key = id(owner)
    record = _by_owner.get(key)
    if record is not None and record[0]() is owner:
        return record[1]
    if type(owner) in _unreferenced:
        return None
    try:
        ref = weakref.ref(owner, functools.partial(_forget, key))
    except TypeError:  # an owner that takes no weak reference (a C type: never will)
        _unreferenced.add(type(owner))
        return None
    # setdefault: two threads making the owner's first call keep one map between them.
    record = _by_owner.setdefault(key, (ref, {}))
    if record[0]() is not owner:  # a collected owner's entry, its callback not run yet
        record = _by_owner[key] = (ref, {})
    return record[1]


def enabled() -> bool:
    """Return whether wrapped calls hold a scope open (the ``hold_consume_scope`` setting)."""
    return get_settings().hold_consume_scope


def _gone(where: Any) -> bool:
    done = getattr(where, "done", None)
    if done is not None:
        return bool(done())
    return not where.is_alive()


def _owned(entry: Held) -> bool:
    """Whether this context pushed ``entry`` (the stack is then back to before that push)."""
    try:
        _stack.reset(entry.mark[0])
        return True
    except (ValueError, RuntimeError):
        return False


def hold(
    owner: object, scope: consume_scope | None, key: object = None, *, settles: bool = True,
    opened: bool = False,
) -> Held | None:
    """Open ``scope`` for the message ``owner``'s call just returned; keep it until the next.

    ``key`` names the message for :func:`settle`; ``settles=False`` keeps the scope open
    through a settle (a ``consume()`` loop body that acks before it is done); ``opened``:
    the caller opened ``scope`` already. Returns None, with nothing opened, when holding is
    off or ``scope`` is None.
    """
    if scope is None:
        return None
    try:
        loop = _get_running_loop()
        where: Any
        if loop is not None:
            where = current_task(loop)
        else:
            try:
                where = _local.thread
            except AttributeError:
                where = _local.thread = threading.current_thread()
        record = _by_owner.get(id(owner))  # _slots(owner)'s common cases, inlined
        slots = (record[1] if record is not None and record[0]() is owner
                 else None if type(owner) in _unreferenced else _slots(owner))
        if slots and (len(slots) > 1 or where not in slots):
            for other in [w for w in slots if w is not where and _gone(w)]:
                slots.pop(other).close()
        if not (_settings._current or get_settings()).hold_consume_scope:
            if opened:
                scope.close()
            return None
        if not opened:
            scope.open()
        mark: list[Any] = [None]
        entry = _new_held(Held, (owner, scope, key, settles, mark, where, scope._attached))
        mark[0] = _stack.set((*_stack.get(), entry))
        if slots is not None:
            slots[where] = scope
        return entry
    except Exception as exc:
        diagnostics.internal_error("held.hold", exc)
        return None


def release(owner: object | None = None) -> None:
    """Close ``owner``'s held scope in this task/thread, and every scope held after it.

    With ``owner=None`` every held scope of this task or thread is closed. Scopes this task
    only inherited are forgotten here and left to the task that opened them.
    """
    stack = _stack.get()
    if not stack:
        return
    index = 0
    if owner is not None:
        last = len(stack) - 1
        entry = stack[last]
        # (entry[i]: Held's fields by index, which the interpreter reads without a lookup.)
        if entry[0] is owner:  # the common case: _close_from for the newest scope alone
            try:
                _stack.reset(entry[4][0])  # as _owned(entry): the stack is stack[:last] again
            except (ValueError, RuntimeError):
                _stack.set(stack[:last])
                return  # only inherited: forgotten here, left to the task that opened it
            try:
                entry[1].close()
            except Exception as exc:
                diagnostics.internal_error("held.release", exc)
            return
        for i in range(last - 1, -1, -1):
            if stack[i].owner is owner:
                index = i
                break
        else:
            return
    _close_from(stack, index)


def release_all(owner: object) -> None:
    """Close every scope held for ``owner``, in every task or thread (the owner closes).

    This task's scopes close as :func:`release` closes them; another task's only end their
    span (that task's context is its own).
    """
    release(owner)
    record = _by_owner.get(id(owner))
    if record is None or record[0]() is not owner:
        return
    _by_owner.pop(id(owner), None)
    for scope in record[1].values():
        _end_span(scope)


def _end_span(scope: consume_scope) -> None:
    span = scope.span
    if span is not None:
        scope.span = None
        span.end()


def _close_from(stack: tuple[Held, ...], index: int) -> None:
    """Take ``stack[index:]`` off the stack; close, newest first, those this context pushed."""
    owned = [entry for entry in reversed(stack[index:]) if _owned(entry)]
    _stack.set(stack[:index])
    for entry in owned:
        try:
            entry.scope.close()
        except Exception as exc:
            diagnostics.internal_error("held.release", exc)


def _covers(held_key: object, settled: object, multiple: bool) -> bool:
    if settled is None or settled is held_key or settled == held_key:
        return True
    if not multiple:
        return False
    if settled == 0:
        return True
    return type(held_key) is int and type(settled) is int and held_key <= settled


def settle(owner: object | None, key: object = None, multiple: bool = False) -> None:
    """Close the scope held for a message the caller just settled (ack, commit …).

    ``key=None`` settles whatever ``owner`` holds (a commit of the consumer's position);
    ``multiple`` treats ``key`` as "this delivery tag and every earlier one" (0: all). The
    scope closes only while its own context is still the current one: a settle made inside
    a span the handler opened leaves it to the next call.
    """
    stack = _stack.get()
    if not stack:
        return
    entry = stack[-1]
    if (owner is not None and entry.owner is not owner) or not entry.settles:
        return
    if not _covers(entry.key, key, multiple) or get_current() is not entry.context:
        return
    _close_from(stack, len(stack) - 1)


def releasing(original: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a client method that ends the owner's use (``close``, ``cancel``): release first."""
    def release_first(self: Any, *args: Any, **kwargs: Any) -> Any:
        release(self)
        return original(self, *args, **kwargs)

    return release_first


def releasing_all(original: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a method that ends the owner for good (a Kafka consumer's ``close``):
    :func:`release_all` first. It may be called from another task or thread than the one
    polling (a framework's shutdown), and that one's last scope must still end its span."""
    def release_all_first(self: Any, *args: Any, **kwargs: Any) -> Any:
        release_all(self)
        return original(self, *args, **kwargs)

    return release_all_first


def releasing_all_async(original: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """:func:`releasing_all` for a coroutine method (aiokafka's ``stop``)."""
    async def release_first(self: Any, *args: Any, **kwargs: Any) -> Any:
        release_all(self)
        return await original(self, *args, **kwargs)

    return release_first


def settling(
    original: Callable[..., Any], which: Callable[..., tuple[object, object, bool]] | None = None,
) -> Callable[..., Any]:
    """Wrap a client's settle method (commit, ack …): once it ran, :func:`settle` what it settled.

    ``which(self, *args, **kwargs)`` returns ``(owner, key, multiple)``; by default the owner is
    the client object itself and the settle covers whatever it holds (a commit).
    """
    def settle_after(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return original(self, *args, **kwargs)
        finally:
            settle(*(which(self, *args, **kwargs) if which else (self, None, False)))

    return settle_after


def settling_async(
    original: Callable[..., Awaitable[Any]],
    which: Callable[..., tuple[object, object, bool]] | None = None,
) -> Callable[..., Awaitable[Any]]:
    """:func:`settling` for a coroutine method (aiokafka's ``commit``, aio-pika's ``ack``)."""
    async def settle_after(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return await original(self, *args, **kwargs)
        finally:
            settle(*(which(self, *args, **kwargs) if which else (self, None, False)))

    return settle_after


def latest(owner: object) -> Held | None:
    """Return ``owner``'s newest held scope in this task or thread, if any."""
    stack = _stack.get()
    if stack and stack[-1].owner is owner:
        return stack[-1]
    return None


def drop(entry: Held) -> None:
    """Close ``entry`` because the loop that got its message ended (``break``, ``return`` …).

    CPython drops a ``for``/``async for`` iterator right where the loop ends, in the same
    task or thread, so the scope is closed there. Collected elsewhere (a reference cycle,
    another task or thread), only the span is ended; the context stays in its own task until
    that task's next call or its end.
    """
    try:
        stack = _stack.get()
        for i in range(len(stack) - 1, -1, -1):
            if stack[i] is entry:
                if _owned(entry):
                    _close_from(stack, i + 1)  # the scopes held after it, newest first
                    _stack.set(stack[:i])
                    entry.scope.close()
                    return
                break
        _end_span(entry.scope)
    except Exception as exc:
        diagnostics.internal_error("held.drop", exc)


class HeldIteration:
    """The iterator a ``for`` loop gets: each step may hold a scope; dropped, it closes it.

    ``step`` is the wrapped call (it releases and holds for ``owner``); other attributes are
    ``owner``'s.
    """

    __slots__ = ("_entry", "_owner", "_step")

    def __init__(self, owner: Any, step: Callable[[], Any]) -> None:
        self._owner = owner
        self._step = step
        self._entry: Held | None = None

    def __iter__(self) -> HeldIteration:
        return self

    def __next__(self) -> Any:
        item = self._step()
        self._entry = latest(self._owner)
        return item

    def __getattr__(self, name: str) -> Any:
        return getattr(self._owner, name)

    def __del__(self) -> None:
        entry = self._entry
        if entry is not None:
            self._entry = None
            try:
                drop(entry)
            except Exception:  # interpreter shutdown: module globals may be gone
                pass


class AsyncHeldIteration(HeldIteration):
    """:class:`HeldIteration` for ``async for``: ``step`` returns an awaitable."""

    __slots__ = ()

    def __aiter__(self) -> AsyncHeldIteration:
        return self

    async def __anext__(self) -> Any:
        item = await self._step()
        self._entry = latest(self._owner)
        return item


def held_items(
    owner: object, items: Iterator[Any], scope_of: Callable[[Any], consume_scope | None],
    *, settles: bool = False, opened: bool = False,
) -> Iterator[Any]:
    """Yield ``items``, each with ``scope_of(item)`` held until the loop asks for the next.

    For a client's own generator (pika's ``consume()``): leaving the loop in any way closes
    the last scope, then closes ``items``. ``opened``: ``scope_of`` opens the scope itself.
    """
    try:
        while True:
            release(owner)
            try:
                item = next(items)
            except StopIteration:
                return
            if get_settings().hold_consume_scope:
                hold(owner, scope_of(item), settles=settles, opened=opened)
            yield item
    finally:
        release(owner)
        close = getattr(items, "close", None)
        if close is not None:
            close()


def scoped(
    items: Iterable[Any], scope_of: Callable[[Any], consume_scope | None]
) -> Generator[Any, None, None]:
    """Yield each item inside its own scope, open exactly while the caller handles it."""
    for item in items:
        try:
            scope = scope_of(item)
            if scope is not None:
                scope.open()
        except Exception as exc:
            diagnostics.internal_error("held.scoped", exc)
            scope = None
        try:
            yield item
        finally:
            if scope is not None:
                scope.close()
