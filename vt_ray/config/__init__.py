"""Typed recipes: schema (dataclasses), strict loader, errors naming the key."""

from vt_ray.config.errors import ConfigError
from vt_ray.config.loader import load_config, load_from_cli, to_yaml
from vt_ray.config.schema import RecipeConfig

__all__ = ["ConfigError", "RecipeConfig", "load_config", "load_from_cli", "to_yaml"]
