"""Hostile header values and carriers shared by the hypothesis fuzz and the atheris harness."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any


class TextSubclass(str):
    """A ``str`` subclass, as some client libraries hand out."""


class Junk:
    """An object that refuses to be looked at: every dunder hoptrace might call raises."""

    def __str__(self) -> str:
        raise RuntimeError("no str")

    def __repr__(self) -> str:
        raise RuntimeError("no repr")

    def __len__(self) -> int:
        raise RuntimeError("no len")

    def __iter__(self) -> Iterator[Any]:
        raise RuntimeError("no iter")

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("no eq")

    __hash__ = object.__hash__


class BadBytes(bytes):
    """Bytes whose length cannot be taken."""

    def __len__(self) -> int:
        raise RuntimeError("no len")


class ExplodingMapping(Mapping[str, Any]):
    """A Mapping whose lookups raise."""

    def __getitem__(self, key: str) -> Any:
        raise RuntimeError("no getitem")

    def __iter__(self) -> Iterator[str]:
        raise RuntimeError("no iter")

    def __len__(self) -> int:
        return 1


class ReadOnlyMapping(Mapping[str, Any]):
    """A user-defined immutable Mapping."""

    def __init__(self, data: dict[str, Any]) -> None:
        self._data = data

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)
