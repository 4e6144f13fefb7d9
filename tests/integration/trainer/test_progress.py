"""Live progress lines: shown on a terminal, silent in logs and with --quiet, and our own lines stay whole."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from vt_ray.common.progress import QUIET_ENV, Progress

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = (
    "import logging\n"
    "from vt_ray.common.progress import Progress, echo\n"
    "logging.basicConfig(level=logging.INFO, format='%(message)s')\n"
    "with Progress('GRPO', total=3) as bar:\n"
    "    for s in range(3):\n"
    "        echo(f'[step {s + 1}] reward=0.5')\n"
    "        logging.getLogger('x').info('logged %d', s + 1)\n"
    "        bar.advance(reward=0.5, acc=0.25)\n"
)


def _run_on_terminal(env: dict[str, str], args: tuple[str, ...] = ("-c", SCRIPT)) -> tuple[str, str]:
    """(what a terminal on stderr shows, stdout) for ``python ARGS`` (SCRIPT) run with stderr on a
    pseudo-terminal."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a terminal 120 columns wide
    proc = subprocess.Popen([sys.executable, *args], stderr=slave, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT), **env})
    os.close(slave)
    stdout, _ = proc.communicate(timeout=120)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed its end
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert proc.returncode == 0
    return b"".join(chunks).decode(errors="replace"), stdout


def test_progress_line_on_a_terminal_and_silent_with_quiet() -> None:
    shown, stdout = _run_on_terminal({})
    assert "GRPO" in shown and "3/3" in shown and "reward=0.5" in shown and "acc=0.25" in shown
    # Log lines are whole lines above the bar, never glued to it.
    assert all(any(line.strip().endswith(f"logged {i}") and "GRPO" not in line for line in shown.splitlines())
               for i in (1, 2, 3)), shown
    assert stdout.splitlines() == ["[step 1] reward=0.5", "[step 2] reward=0.5", "[step 3] reward=0.5"]
    quiet, stdout = _run_on_terminal({QUIET_ENV: "1"})
    assert "GRPO" not in quiet and quiet.split() == ["logged", "1", "logged", "2", "logged", "3"]  # logs stay
    assert stdout.count("[step") == 3


def test_data_check_shows_a_progress_line_per_file_on_a_terminal(tmp_path: Path) -> None:
    (tmp_path / "v.mp4").write_bytes(b"x")  # data check only looks for the file
    rows = [json.dumps({"uid": f"u{i}", "video": "v.mp4", "question": "q", "answer": "A", "options": ["x", "y"]})
            for i in range(3)]
    rows += [json.dumps({"uid": "u9", "video": "gone.mp4", "question": "q", "answer": "A", "options": ["x", "y"]}),
             "not json"]
    (tmp_path / "train.jsonl").write_text("\n".join(rows) + "\n")
    check = ("-m", "vt_ray", "data", "check", "--file", str(tmp_path / "train.jsonl"))
    shown, stdout = _run_on_terminal({}, check)
    line = next(x for x in shown.replace("\r", "\n").splitlines()[::-1] if "data check train.jsonl" in x)
    assert "5row" in line and "samples=3" in line and "bad=1" in line and "missing=1" in line, shown
    assert json.loads(stdout.splitlines()[0])["samples"] == 3  # stdout keeps the plain report
    quiet, stdout = _run_on_terminal({QUIET_ENV: "1"}, check)
    assert "data check" not in quiet and json.loads(stdout.splitlines()[0])["missing_media"] == 1


def test_no_progress_output_when_stderr_is_not_a_terminal(capsys: pytest.CaptureFixture) -> None:
    with Progress("SFT", total=5) as bar:
        for _ in range(5):
            bar.advance(loss=1.0)
    assert capsys.readouterr().err == ""


def test_quiet_flag_is_accepted_by_every_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from vt_ray.cli import main

    monkeypatch.delenv(QUIET_ENV, raising=False)
    assert main(["report", str(tmp_path / "missing"), "--quiet"]) == 1  # parsed (no "unrecognized arguments")
    assert os.environ[QUIET_ENV] == "1"
