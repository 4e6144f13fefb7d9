"""Offline WordNet for NLTK's METEOR.

NLTK downloads WordNet at run time, which we cannot do; ``tools/setup_wordnet.sh`` builds an NLTK data dir
from Debian's WordNet 3.0 packages at ``.venv/nltk_data``. Recent NLTK refuses corpus paths that are not on
``nltk.data.path`` ("Security Violation ... Unauthorized path"), so we put that dir first on it.
"""

from __future__ import annotations

import os
from pathlib import Path

SETUP_COMMAND = "bash tools/setup_wordnet.sh"
ENV_VAR = "VT_RAY_NLTK_DATA"
_REPO_ROOT = Path(__file__).resolve().parents[2]


class WordNetMissingError(RuntimeError):
    """The offline WordNet data dir is not there: names the dir and the setup command."""


def nltk_data_dir() -> Path:
    """``$VT_RAY_NLTK_DATA`` if set (same variable as the setup script), else ``<repo>/.venv/nltk_data``."""
    env = os.environ.get(ENV_VAR)
    return Path(env).resolve() if env else _REPO_ROOT / ".venv" / "nltk_data"


def ensure_wordnet() -> Path:
    """Put the offline NLTK data dir first on ``nltk.data.path`` and check WordNet loads; returns the dir."""
    import nltk

    root = nltk_data_dir()
    corpus = root / "corpora" / "wordnet"
    if not (corpus / "lexnames").is_file() or not (corpus / "data.noun").is_file():
        raise WordNetMissingError(
            f"offline WordNet not found at {corpus} (needed for METEOR); run `{SETUP_COMMAND}` from the repo root"
        )
    if not nltk.data.path or nltk.data.path[0] != str(root):
        if str(root) in nltk.data.path:
            nltk.data.path.remove(str(root))
        nltk.data.path.insert(0, str(root))
    from nltk.corpus import wordnet

    wordnet.ensure_loaded()
    return root
