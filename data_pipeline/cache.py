"""The request cache that makes a rerun free: one JSON file per request hash, written atomically.

Why files and not one sqlite database: Ray Data runs the HTTP clients in several actor processes, on several
nodes on a cluster, all writing to a shared volume. SQLite's WAL mode needs shared memory and working POSIX
locks, which network filesystems (NFS, most cluster volumes) do not give, so concurrent writers there can
corrupt the database. A file per key needs no lock at all: the writer puts the response in a temp file in the
same directory and ``os.replace``s it into place, which is atomic on POSIX, so a reader sees either nothing or
a whole entry, a crash leaves at worst an orphan temp file, and two workers racing on one key write the same
content. Keys are sharded into 256 sub-directories so no directory grows huge.

The key covers everything that determines the answer and nothing secret (never the API key): endpoint base
URL, model, messages, sampling parameters (including the attempt number, so regenerations are new requests)
and the prompt template version.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def request_key(payload: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of ``payload`` (sorted keys, no whitespace)."""
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


class RequestCache:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        try:
            return json.loads(self._path(key).read_text())
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError):  # cannot happen with os.replace; treat as a miss
            return None

    def put(self, key: str, value: dict[str, Any]) -> None:
        path = self._path(key)
        path.parent.mkdir(exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(value, f, ensure_ascii=False)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def __len__(self) -> int:
        return sum(1 for _ in self.root.glob("??/*.json"))
