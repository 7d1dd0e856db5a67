"""One lookup API for every named choice: backbones, heads, methods, LR schedules, augmentations.

    HEADS = Registry("head")

    @HEADS.register("arcface")
    class ArcFace(MarginHead): ...

    HEADS.get("ArcFace")       # case-insensitive -> ArcFace
    HEADS.get("arcfce")        # UnknownNameError: unknown head 'arcfce'; did you mean 'arcface'? (known: ...)
    HEADS.names()              # the registered names, in registration order

A registry is also a read-only mapping from the registered names to the objects, so
``name in HEADS``, ``HEADS[name]`` and ``list(HEADS)`` work as with a dict.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator, Mapping
from typing import Callable, Generic, TypeVar

from utils.errors import UnknownNameError

__all__ = ["Registry", "suggest", "similarity"]

T = TypeVar("T")


def _tokens(name: str) -> list[str]:
    return [t for t in name.lower().replace("-", "_").split("_") if t]


def _token_in(token: str, others: list[str]) -> bool:
    return any(token == o or (len(token) > 2 and difflib.SequenceMatcher(None, token, o).ratio() >= 0.8)
               for o in others)


def similarity(query: str, candidate: str) -> float:
    """How likely ``candidate`` is what a user meant by ``query``, in [0, 1].

    Half is the spelling (difflib's ratio), half how far the words of one name (split at ``_``)
    are contained in the other's, or the spelling without the ``_`` if that is closer: so
    ``lr_rate`` ranks ``lr`` above ``sample_rate``, ``lr_stpes`` ranks ``lr_steps`` above ``lr``
    and ``batchsize`` finds ``batch_size``.
    """
    q, c = query.lower(), candidate.lower()
    spelling = difflib.SequenceMatcher(None, q, c).ratio()
    qt, ct = _tokens(q), _tokens(c)
    if not qt or not ct:
        return spelling / 2
    contained = max(
        sum(_token_in(t, qt) for t in ct) / len(ct),
        sum(_token_in(t, ct) for t in qt) / len(qt),
    )
    squashed = difflib.SequenceMatcher(None, q.replace("_", ""), c.replace("_", "")).ratio()
    return (spelling + max(contained, squashed)) / 2


def suggest(query: str, known: Iterable[str], n: int = 3, cutoff: float = 0.6) -> str:
    """``"; did you mean 'a' or 'b'?"`` for the names closest to ``query`` (best first), or ``""``."""
    scored = sorted(((similarity(str(query), k), k) for k in known), key=lambda s: -s[0])
    if not scored or scored[0][0] < cutoff:
        return ""
    best = scored[0][0]
    close = [k for score, k in scored[:n] if score >= max(cutoff, best - 0.05)]
    return f"; did you mean {' or '.join(repr(c) for c in close)}?"


class Registry(Mapping[str, T], Generic[T]):
    """Named objects of one kind (``kind`` names it in errors), looked up case-insensitively."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}
        self._lower: dict[str, str] = {}

    def add(self, name: str, obj: T) -> T:
        """Register ``obj`` as ``name``; a second object under the same name is a bug."""
        key = name.lower()
        if key in self._lower:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._items[name] = obj
        self._lower[key] = name
        return obj

    def register(self, *names: str) -> Callable[[T], T]:
        """Decorator: register the decorated object under each of ``names``."""

        def decorate(obj: T) -> T:
            for name in names:
                self.add(name, obj)
            return obj

        return decorate

    def canonical(self, name: str) -> str:
        """The registered spelling of ``name`` (case-insensitive); UnknownNameError if none."""
        key = str(name).lower()
        if key not in self._lower:
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}{suggest(str(name), self._items)} (known: {', '.join(self._items)})"
            )
        return self._lower[key]

    def get(self, name: str) -> T:  # type: ignore[override]  # raises instead of returning a default
        """The object registered as ``name`` (case-insensitive); UnknownNameError with suggestions if none."""
        return self._items[self.canonical(name)]

    def names(self) -> list[str]:
        """The registered names, in registration order."""
        return list(self._items)

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._lower

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._items)})"
