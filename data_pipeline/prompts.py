"""Versioned prompt templates: ``data_pipeline/prompts/<name>.<version>.txt``, never prompts in code.

A file has a ``[system]`` and a ``[user]`` section; placeholders are ``$name`` (:class:`string.Template`,
so the JSON examples in the prompts need no brace escaping). A template's id ``<name>.<version>`` is written
into every output row and into the request cache key: editing a prompt means adding a new version file, and
a run with the new version never reuses answers given to the old one.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from importlib import resources
from string import Template
from typing import Any

_SECTION_RE = re.compile(r"^\[(system|user)\]\s*$", re.MULTILINE)


@dataclass(frozen=True)
class PromptTemplate:
    id: str  # "<name>.<version>", recorded in rows and cache keys
    system: Template
    user: Template

    def messages(self, **values: Any) -> list[dict[str, Any]]:
        """OpenAI chat messages; a missing placeholder raises KeyError (a template/code mismatch is a bug)."""
        return [{"role": "system", "content": self.system.substitute(values)},
                {"role": "user", "content": self.user.substitute(values)}]


@functools.cache
def load_template(name: str, version: str) -> PromptTemplate:
    path = resources.files("data_pipeline").joinpath(f"prompts/{name}.{version}.txt")
    if not path.is_file():
        raise FileNotFoundError(f"prompt template not found: data_pipeline/prompts/{name}.{version}.txt")
    parts = _SECTION_RE.split(path.read_text())
    sections = dict(zip(parts[1::2], (p.strip("\n") for p in parts[2::2]), strict=True))
    if set(sections) != {"system", "user"}:
        raise ValueError(f"prompts/{name}.{version}.txt needs exactly one [system] and one [user] section")
    return PromptTemplate(f"{name}.{version}", Template(sections["system"]), Template(sections["user"]))
