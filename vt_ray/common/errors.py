"""Config errors that always name the offending key (and the file, once the loader knows it)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A recipe or override is invalid. ``key`` is the full dotted path, ``source`` the file or 'command line'."""

    def __init__(self, key: str, message: str, source: str | None = None) -> None:
        self.key, self.message, self.source = key, message, source
        where = f"{source}: " if source else ""
        super().__init__(f"{where}config key '{key}': {message}")

    def with_source(self, source: str) -> ConfigError:
        return ConfigError(self.key, self.message, source)


def check(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(key, message)
