"""Closed choices of the recipe as ``StrEnum``s, and the check that turns a plain string into one.

OmegaConf structured configs take ``Enum`` fields (matching a YAML string by value or by name) but not
``typing.Literal``, so a closed choice is a ``StrEnum``: it compares and hashes like its string, so code written
against ``"sync"`` keeps working, and a value outside the set fails at load time naming the key. The enums of one
section live next to it; the ones several sections share live here.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TypeVar

from vt_ray.common.errors import ConfigError

E = TypeVar("E", bound=StrEnum)


class Dtype(StrEnum):
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


def choice(cls: type[E], value: object, key: str) -> E:
    """``value`` as a member of ``cls`` (by value, then by name), or a ConfigError naming ``key`` and the set."""
    if isinstance(value, cls):
        return value
    if isinstance(value, str):
        if value in cls._value2member_map_:
            return cls(value)
        if value in cls.__members__:
            return cls.__members__[value]
    raise ConfigError(key, f"unknown {value!r} (one of {' | '.join(m.value for m in cls)})")


def set_choice(section: object, field: str, cls: type[StrEnum], key: str) -> None:
    """In a frozen dataclass's ``__post_init__``: store ``field`` as a member of ``cls`` (a section built in Python
    with a plain string gets the same check and type as one loaded from YAML)."""
    object.__setattr__(section, field, choice(cls, getattr(section, field), key))


__all__ = ["Dtype", "choice", "set_choice"]
