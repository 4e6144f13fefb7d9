"""A name -> object registry whose built-in names are known without importing anything heavy.

The recipe schema checks names at load time, and loading a recipe must not import torch or vLLM. So each
registry knows its built-in names statically and imports the module that defines them only on first lookup
(a test keeps the two in sync). A recipe value is either a registered name or an import path
``package.module:attr``; the path is imported at load time (a missing module, attribute or a non-callable
fails there, naming the key) and then registered under the path itself, so a user's own function or class
needs no edit of ours, and resolves in every Ray worker too. Used for the algorithm's parts
(``vt_ray.algo.registry``) and the roles' backends (``vt_ray.config.backends``).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from typing import Any, TypeVar

from vt_ray.common.errors import ConfigError
from vt_ray.common.imports import import_callable

_F = TypeVar("_F", bound=Callable[..., Any])
_IMPORT_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def is_import_path(value: str) -> bool:
    return ":" in value


def resolve_import_path(path: str, key: str) -> Callable[..., Any]:
    """``package.module:name`` to a callable (a function or a class), or :class:`ConfigError` naming ``key``:
    the resolver reward functions use too (``vt_ray.common.imports``), after a check of the path's form."""
    if not _IMPORT_PATH.match(path):
        raise ConfigError(key, f"expected a registered name or 'package.module:name', got {path!r}")
    return import_callable(path, key)


class Registry:
    """Functions (or classes) of one kind by name. ``builtin`` lists the names ``module`` registers when imported."""

    def __init__(self, kind: str, key: str, module: str, builtin: tuple[str, ...]) -> None:
        self.kind, self.key, self.module, self.builtin = kind, key, module, builtin
        self._entries: dict[str, Callable[..., Any]] = {}

    def register(self, name: str) -> Callable[[_F], _F]:
        """Decorator: register the function under ``name`` (re-registering the same function is a no-op)."""

        def add(fn: _F) -> _F:
            known = self._entries.get(name)
            if known is not None and known is not fn and getattr(known, "__qualname__", None) != fn.__qualname__:
                raise ValueError(f"{self.kind} {name!r} is already registered ({known!r})")
            self._entries[name] = fn
            return fn

        return add

    def names(self) -> list[str]:
        """Every name a recipe may use without an import path (built-in and user-registered)."""
        return sorted(set(self.builtin) | {n for n in self._entries if not is_import_path(n)})

    def check(self, value: str, key: str | None = None) -> None:
        """Load-time validation: a known name, or an importable callable path. Raises ConfigError naming the key."""
        key = key or self.key
        if is_import_path(value):
            self._entries.setdefault(value, resolve_import_path(value, key))
            return
        if value not in self.names():
            raise ConfigError(key, f"unknown {self.kind} {value!r}; registered: {self.names()} "
                                   "(or 'package.module:name')")

    def get(self, value: str) -> Callable[..., Any]:
        """The function for a name or import path (imports the built-in module on first use)."""
        if value not in self._entries and value in self.builtin:
            importlib.import_module(self.module)
        if value not in self._entries:
            self.check(value)
        return self._entries[value]
