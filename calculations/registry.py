"""The calculation registry: named, versioned batch functions over validated params.

A calculation is ``fn(batch, progress) -> list[result]`` over a list of validated pydantic
params, one JSON-ready result per job, in order. Register it with ``@calculation``; other
packages register through the ``jobstream.calculations`` entry point group. Pure (numpy +
pydantic), so the ingest API validates with it and never imports Faust.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Protocol

from packaging.version import InvalidVersion, Version
from pydantic import BaseModel

from streams.errors import JobstreamError

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "jobstream.calculations"


class CalculationError(JobstreamError):
    """Bad input found during a calculation: the job fails at once, it is not retried."""

    def __init__(self, message: str, *, index: int | None = None) -> None:
        super().__init__(message)
        self.index = index  # which job of the batch, when only one is at fault


class TransientError(JobstreamError):
    """A failure that may pass (a resource was busy): the job is retried with backoff."""

    def __init__(self, message: str, *, index: int | None = None) -> None:
        super().__init__(message)
        self.index = index  # which job of the batch, when only one is affected


class UnknownKind(JobstreamError, KeyError):
    """No calculation is registered under this kind."""


class UnknownVersion(JobstreamError, LookupError):
    """The kind exists, but not at the version asked for (a replay may name an old one)."""


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
    deterministic: bool = False  #: same params, same version → same result, so a past result may be reused

    def validate(self, params: dict[str, Any]) -> BaseModel:
        return self.params.model_validate(params)


# kind -> version -> calculation; several versions of a kind may live side by side, so a
# replay can re-run history with a fixed version while the old one stays runnable.
_REGISTRY: dict[str, dict[str, Calculation]] = {}
_CURRENT: dict[str, Calculation] = {}  # kind -> its highest version (get() is on every job's path)
_loaded = False


def _version_order(version: str) -> tuple[int, Any]:
    """Sort key: PEP 440 versions by meaning ("10" after "9"); anything else before them, by text."""
    try:
        return (1, Version(version))
    except InvalidVersion:
        return (0, version)


def calculation(
    kind: str,
    *,
    version: str,
    params: type[BaseModel],
    batch_key: BatchKey | None = None,
    deterministic: bool = False,
) -> Callable[[BatchFn], BatchFn]:
    """Register ``fn`` as calculation ``kind`` at ``version`` taking ``params`` per job.

    ``batch_key(raw_params)`` (optional, must be cheap and never raise) splits a kind
    into groups that vectorise together; without it every job of a kind can share a batch.
    ``deterministic``: the result depends on the params alone (randomness only from a seed
    in the params), so a submit may ask to reuse an earlier job's result (``reuse``). Off by
    default: a kind must promise it.
    """

    def register(fn: BatchFn) -> BatchFn:
        versions = _REGISTRY.setdefault(kind, {})
        existing = versions.get(version)
        if existing is not None and existing.fn is not fn:
            raise ValueError(f"calculation {kind!r} version {version} is registered twice")
        doc = (fn.__doc__ or "").strip().splitlines()
        versions[version] = Calculation(kind, version, params, fn, doc[0] if doc else "", batch_key, deterministic)
        _CURRENT[kind] = versions[max(versions, key=_version_order)]
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
    from calculations import builtin  # noqa: F401  (always there, even uninstalled)

    for entry in entry_points(group=ENTRY_POINT_GROUP):
        try:
            entry.load()
        except Exception:
            logger.exception("could not load calculation plugin %s", entry.value)


def get(kind: str, version: str | None = None) -> Calculation:
    """The calculation ``kind`` at ``version``; without a version, the current (highest) one."""
    load_plugins()
    if version is None:
        try:
            return _CURRENT[kind]
        except KeyError:
            raise UnknownKind(kind) from None
    try:
        versions = _REGISTRY[kind]
    except KeyError:
        raise UnknownKind(kind) from None
    try:
        return versions[version]
    except KeyError:
        raise UnknownVersion(f"{kind} has no version {version!r} (known: {', '.join(sorted(versions))})") from None


def versions(kind: str) -> list[str]:
    """Every registered version of ``kind``, oldest first."""
    load_plugins()
    return sorted(_REGISTRY.get(kind, {}), key=_version_order)


def kinds() -> list[Calculation]:
    """The current version of every kind, by name."""
    load_plugins()
    return sorted((get(kind) for kind in _REGISTRY), key=lambda c: c.kind)
