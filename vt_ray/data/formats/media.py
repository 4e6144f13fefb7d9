"""Media paths from a data file, resolved against a data root and refused when they leave it.

A dataset row names a file; a row from someone else's file must not make us read (or send to a model)
``../../home/user/.ssh/id_rsa`` or a symlink pointing out of the data directory. Paths are resolved with
symlinks followed (``Path.resolve``) and must stay under the resolved root.
"""

from __future__ import annotations

from pathlib import Path


class MediaPathError(ValueError):
    """A media path escapes the data root (``../``, an absolute path elsewhere, or a symlink out)."""


def resolve_media(path: str, root: str | Path, *, allow_absolute: bool = False) -> Path:
    """The absolute path of ``path`` under ``root``. Video-R1's "./Folder/x.mp4" and plain relative paths are
    relative to the root. ``allow_absolute`` accepts absolute paths anywhere (our own files only)."""
    if not isinstance(path, str) or not path.strip():
        raise MediaPathError(f"empty media path {path!r}")
    base = Path(root).resolve()
    p = Path(path)
    if p.is_absolute() and allow_absolute:
        return p
    full = (p if p.is_absolute() else base / p).resolve()
    if not full.is_relative_to(base):
        raise MediaPathError(f"media path {path!r} resolves to {full}, outside the data root {base}")
    return full
