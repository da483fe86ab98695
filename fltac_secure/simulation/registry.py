"""The simulator's methods by name; registering a name twice is refused."""

from __future__ import annotations

from fltac_secure.simulation.fedit import FEDIT_VARIANTS
from fltac_secure.simulation.methods import FLTAC, Central, Local, Method, Oracle

METHODS: dict[str, type[Method]] = {}


def register_method(cls: type[Method]) -> type[Method]:
    """Add a method under ``cls.name``; an empty or already registered name is refused."""
    if not cls.name or cls.name in METHODS:
        raise ValueError(f"method name {cls.name!r} is empty or already registered")
    METHODS[cls.name] = cls
    return cls


for _cls in (FLTAC, Oracle, *FEDIT_VARIANTS, Local, Central):
    register_method(_cls)
