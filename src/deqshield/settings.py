"""Validated settings objects.

Every configurable component (solver, gradient mode, readout, gradient path, attack, ...) is a
frozen pydantic dataclass: its constructor validates types and ranges and rejects unknown
keyword arguments, so the same class is both the Python API and the schema of its section in a
config file. Validation is strict: no bool for an int, no string for a number (``PGD(eps="0.1")``
is an error), no NaN or infinite float; an int is accepted for a float. Tuple fields take
tuples and nested settings take settings objects (a config file, validated as JSON data, gives
lists and mappings). Components that appear in a config under a ``name`` tag carry a
``name: Literal[...]`` field used as the discriminator.
"""

from __future__ import annotations

from typing import Any, Optional, TypeVar

from pydantic import ConfigDict, TypeAdapter
from pydantic.dataclasses import dataclass, is_pydantic_dataclass

SETTINGS = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True, strict=True,
                      allow_inf_nan=False)

T = TypeVar("T")


def component(cls: Optional[type[T]] = None, *, kw_only: bool = False) -> Any:
    """Class decorator: a frozen, validated dataclass that rejects unknown arguments.
    ``@component(kw_only=True)`` allows required fields after defaulted ones (keyword-only)."""
    decorate = dataclass(config=SETTINGS, kw_only=kw_only)
    return decorate if cls is None else decorate(cls)


def settings_dict(settings: Any) -> dict[str, Any]:
    """A settings object as a plain JSON-able mapping (what a config file would contain); a
    nested object that is not a settings object (e.g. a user's own gradient path) appears as
    ``{"name": its name}``."""
    if not is_pydantic_dataclass(type(settings)):
        return _named(settings)
    return TypeAdapter(type(settings)).dump_python(settings, mode="json", fallback=_named)


def _named(value: Any) -> dict[str, str]:
    return {"name": str(getattr(value, "name", type(value).__name__))}
