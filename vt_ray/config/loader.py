"""Load a recipe: schema defaults <- recipe YAML <- ``key=value`` overrides, strictly, into typed objects.

A recipe only needs the keys that differ from the schema defaults. Unknown keys, wrong types and invalid values
fail here, before any actor starts, naming the full key and the file (or 'command line') that set it.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from enum import Enum
from pathlib import Path
from typing import Any, cast

import yaml
from omegaconf import Container, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from vt_ray.common.errors import ConfigError
from vt_ray.config.schema import RecipeConfig

COMMAND_LINE = "command line"


def split_cli_args(args: Sequence[str]) -> tuple[str | None, list[str]]:
    """``recipe=PATH`` and ``key=value`` tokens from a command line; anything else is an error."""
    recipe: str | None = None
    overrides: list[str] = []
    for arg in args:
        if "=" not in arg:
            raise ConfigError(arg, "expected key=value (e.g. rollout.n=4) or recipe=PATH", COMMAND_LINE)
        key, value = arg.split("=", 1)
        if key == "recipe":
            recipe = value
        else:
            overrides.append(arg)
    return recipe, overrides


def _from_error(err: OmegaConfBaseException, source: str) -> ConfigError:
    key = getattr(err, "full_key", None) or "?"
    message = str(err).split("\n", 1)[0]
    return ConfigError(str(key), message, source)


def _read_yaml(path: Path) -> DictConfig:
    if not path.is_file():
        raise ConfigError("recipe", f"recipe file not found: {path}", COMMAND_LINE)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError("recipe", f"not valid YAML: {err}", str(path)) from err
    if not isinstance(data, dict):
        raise ConfigError("recipe", "the top level must be a mapping of sections", str(path))
    return OmegaConf.create(data)


def _apply_override(merged: DictConfig, item: str) -> DictConfig:
    """``key=value`` into the config. A key through a list index (``curate.sources.1.limit=5``) goes through
    ``OmegaConf.update``: a dotlist merge would turn the index into a mapping key and fail on the list."""
    key, sep, raw = item.partition("=")
    if sep and any(part.isdigit() for part in key.split(".")):
        value = OmegaConf.from_dotlist([f"value={raw}"])["value"]  # the same value grammar as a dotlist
        if OmegaConf.select(merged, key, default=_MISSING) is _MISSING:
            raise ConfigError(key, "no such key (or list index out of range)", COMMAND_LINE)
        parts = key.split(".")
        for depth in range(1, len(parts)):  # list items are built from frozen (read-only) dataclass prototypes
            node = OmegaConf.select(merged, ".".join(parts[:depth]))
            if isinstance(node, Container):
                OmegaConf.set_readonly(node, False)
        OmegaConf.update(merged, key, value, merge=True)
        return merged
    return cast(DictConfig, OmegaConf.merge(merged, OmegaConf.from_dotlist([item])))  # merging into a DictConfig


_MISSING = object()


def load_config(recipe: str | os.PathLike[str] | None = None, overrides: Sequence[str] = ()) -> RecipeConfig:
    """The typed recipe. Raises :class:`ConfigError` naming the key and its source on any problem."""
    merged: DictConfig = OmegaConf.structured(RecipeConfig)
    OmegaConf.set_readonly(merged, False)  # the dataclasses are frozen; the draft they are built from is not
    source = COMMAND_LINE
    if recipe is not None:
        source = str(recipe)
        try:
            merged = cast(DictConfig, OmegaConf.merge(merged, _read_yaml(Path(recipe))))
        except OmegaConfBaseException as err:
            raise _from_error(err, source) from err
        except (TypeError, ValueError) as err:  # OmegaConf: "Cannot merge incompatible container types"
            raise ConfigError("recipe", f"{type(err).__name__}: {err}", source) from err
    for item in overrides:
        try:
            merged = _apply_override(merged, item)
        except OmegaConfBaseException as err:
            raise _from_error(err, f"{COMMAND_LINE} ({item})") from err
        except ConfigError:
            raise
        except (ValueError, TypeError, yaml.YAMLError) as err:  # a malformed token, a list given a mapping
            raise ConfigError(item.partition("=")[0], str(err).splitlines()[0], COMMAND_LINE) from err
    try:
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except ConfigError as err:  # __post_init__ validation: the value may come from the file or an override
        origin = source if not any(o.startswith(err.key + "=") for o in overrides) else COMMAND_LINE
        raise err.with_source(origin) from err
    except OmegaConfBaseException as err:
        raise _from_error(err, source) from err


def to_yaml(config: RecipeConfig) -> str:
    """The fully resolved recipe, as saved next to checkpoints and printed at start. Closed choices are written as
    their values (``mode: async``), which is what a recipe says; OmegaConf would write the member name."""
    return OmegaConf.to_yaml(OmegaConf.create(_plain(dataclasses.asdict(config))))


def _plain(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def load_from_cli(args: Sequence[str]) -> RecipeConfig:
    recipe, overrides = split_cli_args(args)
    return load_config(recipe, overrides)
