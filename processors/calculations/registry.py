"""The calculation registry: named, versioned batch functions over validated params.

A calculation is a plain function ``fn(batch, progress) -> list[result]`` that
receives a list of validated pydantic params (one per job) and returns one JSON-
ready result per job, in order. Register it with ``@calculation``; packages
outside jobstream register through the ``jobstream.calculations`` entry point
group (the entry point names a module whose import runs the decorators).

This package is pure (numpy + pydantic): the ingest API imports it to validate
params and list kinds; it never imports Faust.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Callable, Protocol, Sequence

from pydantic import BaseModel

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "jobstream.calculations"


class CalculationError(Exception):
    """Bad input found during a calculation: the job fails at once, it is not retried."""

    def __init__(self, message: str, *, index: int | None = None) -> None:
        super().__init__(message)
        self.index = index  # which job of the batch, when only one is at fault


class TransientError(Exception):
    """A failure that may pass (a resource was busy): the job is retried with backoff."""

    def __init__(self, message: str, *, index: int | None = None) -> None:
        super().__init__(message)
        self.index = index  # which job of the batch, when only one is affected


class UnknownKind(KeyError):
    """No calculation is registered under this kind."""


class Progress(Protocol):
    def __call__(self, index: int, fraction: float) -> None:
        """Report that job ``index`` of the batch is ``fraction`` (0..1) done."""


BatchFn = Callable[[Sequence[Any], Progress], list[Any]]
# Jobs of one kind whose raw params give the same key are batched together (say, same shape).
BatchKey = Callable[[dict[str, Any]], Any]


@dataclass(frozen=True)
class Calculation:
    kind: str
    version: str
    params: type[BaseModel]
    fn: BatchFn
    description: str
    batch_key: BatchKey | None = None

    def validate(self, params: dict[str, Any]) -> BaseModel:
        return self.params.model_validate(params)


_REGISTRY: dict[str, Calculation] = {}
_loaded = False


def calculation(kind: str, *, version: str, params: type[BaseModel],
                batch_key: BatchKey | None = None) -> Callable[[BatchFn], BatchFn]:
    """Register ``fn`` as calculation ``kind`` at ``version`` taking ``params`` per job.

    ``batch_key(raw_params)`` (optional, must be cheap and never raise) splits a kind
    into groups that vectorise together; without it every job of a kind can share a batch.
    """

    def register(fn: BatchFn) -> BatchFn:
        existing = _REGISTRY.get(kind)
        if existing is not None and existing.fn is not fn and existing.version == version:
            raise ValueError(f"calculation {kind!r} version {version} is registered twice")
        doc = (fn.__doc__ or "").strip().splitlines()
        _REGISTRY[kind] = Calculation(kind, version, params, fn, doc[0] if doc else "", batch_key)
        return fn

    return register


def load_plugins(modules: Sequence[str] = ()) -> None:
    """Import every module named in the ``jobstream.calculations`` entry point group (once),
    and ``modules`` (``JOBSTREAM_PLUGINS``: extra modules, e.g. a deployment's own calculations)."""
    global _loaded
    for module in modules:
        if module:
            importlib.import_module(module)  # a named plugin that fails to import is a startup error
    if _loaded:
        return
    _loaded = True
    from processors.calculations import builtin  # noqa: F401  (always there, even uninstalled)

    for entry in entry_points(group=ENTRY_POINT_GROUP):
        try:
            entry.load()
        except Exception:
            logger.exception("could not load calculation plugin %s", entry.value)


def get(kind: str) -> Calculation:
    load_plugins()
    try:
        return _REGISTRY[kind]
    except KeyError:
        raise UnknownKind(kind) from None


def kinds() -> list[Calculation]:
    load_plugins()
    return sorted(_REGISTRY.values(), key=lambda c: c.kind)
