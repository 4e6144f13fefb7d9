"""User code named in a recipe by import path (reward functions, advantage estimators, losses)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from vt_ray.common.errors import ConfigError


def import_callable(path: str, key: str) -> Callable[..., Any]:
    """``package.module:function`` (attribute chains allowed after the colon) to a callable. Raises
    :class:`ConfigError` naming ``key`` when the path is malformed or the module, attribute or callable is
    missing, so a bad recipe fails at load time, not at the first step."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(key, f"expected 'package.module:function', got {path!r}")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as err:  # noqa: BLE001 - any import-time failure of user code is a config error
        raise ConfigError(key, f"cannot import module {module_name!r}: {type(err).__name__}: {err}") from err
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(key, f"module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(key, f"{path!r} is not callable")
    fn: Callable[..., Any] = obj
    return fn
