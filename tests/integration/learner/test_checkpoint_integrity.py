"""Verified checkpoints and loading without pickle (issue 21, items 4 and 5).

A checkpoint's manifest lists the size and SHA-256 of every file; a file truncated or corrupted after the save
makes the load refuse that checkpoint, naming the file, and fall back to the previous one. A save that hits a
full disk (a real small tmpfs, mounted in a private mount namespace) fails naming the cause and leaves the
previous checkpoint intact. RNG and trainer state are safetensors/JSON, and DCP's pickled index is read by an
unpickler that can only build DCP metadata.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from vt_ray.config.roles import LearnerRoleConfig
from vt_ray.learner import checkpoint as ckpt
from vt_ray.learner import manifest
from vt_ray.learner.manifest import CheckpointCorrupt

ROOT = Path(__file__).resolve().parents[3]


def _stage(root: Path, step: int, payload: bytes = b"x" * 1000) -> None:
    """A fake checkpoint in the temp dir: one 'shard' hashed by 'rank 0', the rest left to the commit."""
    d = ckpt.tmp_dir(root, step)
    d.mkdir(parents=True)
    (d / "__0_0.distcp").write_bytes(payload + bytes([step]))
    (d / ".metadata").write_bytes(b"index")
    ckpt.write_trainer_state(d / ckpt.TRAINER_STATE, {"step": step, "extra": {}})
    manifest.write_partial(d, 0, ["__0_0.distcp"])


def _committed(root: Path, steps: tuple[int, ...] = (1, 2), keep_last: int = 3) -> None:
    for step in steps:
        _stage(root, step)
        ckpt.commit(root, step, keep_last)


def test_manifest_lists_size_and_sha256_of_every_file(tmp_path: Path) -> None:
    import hashlib

    _committed(tmp_path, (1,))
    step = tmp_path / "step_00000001"
    m = json.loads((step / manifest.MANIFEST).read_text())
    assert m["hash"] == "sha256" and m["format"] == 2
    assert sorted(m["files"]) == [".metadata", "__0_0.distcp", ckpt.TRAINER_STATE]  # partials merged, removed
    shard = (step / "__0_0.distcp").read_bytes()
    assert m["files"]["__0_0.distcp"] == {"size": len(shard), "sha256": hashlib.sha256(shard).hexdigest()}
    assert not list(step.glob(".manifest_rank*"))
    manifest.verify(step)


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "no_manifest"])
def test_a_damaged_newest_checkpoint_is_refused_naming_the_file_and_the_previous_one_loads(
    tmp_path: Path, damage: str
) -> None:
    _committed(tmp_path)
    newest = tmp_path / "step_00000002"
    shard = newest / "__0_0.distcp"
    if damage == "flip":  # same size, one bit different: only the hash sees it
        data = bytearray(shard.read_bytes())
        data[500] ^= 0x01
        shard.write_bytes(bytes(data))
    elif damage == "truncate":
        shard.write_bytes(shard.read_bytes()[:100])
    elif damage == "delete":
        shard.unlink()
    else:
        (newest / manifest.MANIFEST).unlink()
    expected = {"flip": ("__0_0.distcp", "sha256 differs"), "truncate": ("__0_0.distcp", "truncated"),
                "delete": ("__0_0.distcp", "missing"), "no_manifest": (manifest.MANIFEST, "missing")}[damage]

    with pytest.raises(CheckpointCorrupt, match=expected[1]) as info:
        manifest.verify(newest)
    assert info.value.file == expected[0]
    selection = ckpt.select(tmp_path)
    assert selection.found == tmp_path / "step_00000001"
    assert [(Path(e.path).name, e.file) for e in selection.refused] == [("step_00000002", expected[0])]
    assert expected[0] in str(selection.refused[0]) and "step_00000002" in str(selection.refused[0])
    # Moved aside, kept for inspection: a later save of step 2 and the pruning never see it.
    assert not newest.exists() and (tmp_path / "corrupt_step_00000002").is_dir()
    assert ckpt.resolve(tmp_path) == tmp_path / "step_00000001"


def test_no_intact_checkpoint_left_is_an_error_not_a_fresh_start(tmp_path: Path) -> None:
    _committed(tmp_path, (1,))
    (tmp_path / "step_00000001" / "__0_0.distcp").write_bytes(b"")
    with pytest.raises(CheckpointCorrupt, match="no intact checkpoint left.*step_00000001"):
        ckpt.select(tmp_path)


def test_a_pickle_era_checkpoint_is_refused_not_unpickled(tmp_path: Path) -> None:
    step = tmp_path / "step_00000003"
    step.mkdir()
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (step / ckpt.LEGACY_TRAINER_STATE).write_bytes(pickle.dumps(Evil()))
    with pytest.raises(ckpt.LegacyCheckpoint, match="older vt_ray.*never unpickles"):
        ckpt.select(tmp_path)
    with pytest.raises(ckpt.LegacyCheckpoint):
        ckpt.resolve(step)
    assert not marker.exists()


def test_dcp_index_that_would_run_code_is_refused(tmp_path: Path) -> None:
    from vt_ray.learner.safe_dcp import UnsafeCheckpointError, load_metadata

    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with (tmp_path / ".metadata").open("wb") as f:
        pickle.dump(Evil(), f)
    with (tmp_path / ".metadata").open("rb") as f, pytest.raises(UnsafeCheckpointError, match="posix.system|os.system"):
        load_metadata(f)
    assert not marker.exists()


def test_rng_state_round_trips_through_safetensors(tmp_path: Path) -> None:
    torch.manual_seed(3), np.random.seed(4), random.seed(5)
    np.random.standard_normal()  # leaves a cached gaussian in numpy's state
    ckpt.save_rng(tmp_path / "rng.safetensors")
    expected = (torch.rand(3), np.random.standard_normal(3), random.random(), np.random.standard_normal())
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    ckpt.load_rng(tmp_path / "rng.safetensors")
    got = (torch.rand(3), np.random.standard_normal(3), random.random(), np.random.standard_normal())
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1]) and got[2:] == expected[2:]


# ---- with a real learner (in-process, one gloo rank) --------------------------------------------------------
def _learner(model_dir: Path, *extra: str):
    from vt_ray.config.loader import load_config
    from vt_ray.learner.worker import LearnerWorker

    worker = LearnerWorker(LearnerRoleConfig.of(load_config(None, [f"model.path={model_dir}", "learner.reference=none",
                                                                   *extra])))
    worker.setup(total_steps=4)
    return worker


def test_learner_loads_the_previous_checkpoint_when_a_shard_of_the_newest_is_corrupt(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    root = tmp_path / "ckpt"
    a = _learner(tiny_model_dir, "learner.keep_last=2")
    a.save_checkpoint(str(root), {"marker": "step0"})
    a.step = 1  # a second checkpoint (the optimizer step itself does not matter here)
    a.save_checkpoint(str(root), {"marker": "step1"})
    shard = next((root / "step_00000001").glob("*.distcp"))
    with shard.open("r+b") as f:  # a bad block in the middle of the shard: same size
        f.seek(shard.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    b = _learner(tiny_model_dir)
    assert b.load_checkpoint(str(root)) == {"marker": "step0"}
    assert b.step == 0
    assert (root / "corrupt_step_00000001").is_dir()
    assert json.loads((root / "step_00000000" / manifest.MANIFEST).read_text())["files"].keys() >= {
        ".metadata", ckpt.TRAINER_STATE, ckpt.rng_file(0), shard.name}


_FULL_DISK = textwrap.dedent("""
    import json, subprocess, sys
    from pathlib import Path
    from vt_ray.config.loader import load_config
    from vt_ray.config.roles import LearnerRoleConfig
    from vt_ray.learner import checkpoint as ckpt, manifest
    from vt_ray.learner.worker import LearnerWorker

    model, scratch, mnt = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    w = LearnerWorker(LearnerRoleConfig.of(load_config(None, [f"model.path={model}", "learner.reference=none",
                                                              "learner.keep_last=2"])))
    w.setup(total_steps=4)
    w.save_checkpoint(str(scratch))  # how big one checkpoint is
    size = sum(p.stat().st_size for p in (scratch / "step_00000000").iterdir())
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={int(size * 1.5)}", "tmpfs", str(mnt)], check=True)
    root = mnt / "ckpt"
    w.save_checkpoint(str(root))  # fits
    w.step = 1
    try:
        w.save_checkpoint(str(root))  # needs a second checkpoint's room beside the first: does not fit
        error = None
    except ckpt.CheckpointWriteError as err:
        error = str(err)
    manifest.verify(root / "step_00000000")  # the previous checkpoint is intact, hash for hash
    print(json.dumps({"error": error, "latest": (root / "latest").read_text().strip(),
                      "entries": sorted(p.name for p in root.iterdir()), "size": size}))
""")


def test_a_save_that_fills_the_disk_fails_clearly_and_keeps_the_previous_checkpoint(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """A real full disk: a tmpfs 1.5 checkpoints large, mounted in a private mount namespace (``unshare``;
    as root directly, otherwise as root of a new user namespace), so nothing outlives the test process."""
    if shutil.which("unshare") is None:
        pytest.skip("needs util-linux unshare to mount a small tmpfs")
    ns = ["unshare", "--mount"] if os.geteuid() == 0 else ["unshare", "--user", "--map-root-user", "--mount"]
    (tmp_path / "mnt").mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [*ns, sys.executable, "-c", _FULL_DISK, str(tiny_model_dir), str(tmp_path / "scratch"), str(tmp_path / "mnt")],
        capture_output=True, text=True, env=env, timeout=600,
    )
    if proc.returncode != 0 and "unshare failed" in proc.stderr:
        pytest.skip(f"no mount namespace available here: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["error"] is not None, "the second save should not have fit"
    assert "No space left on device" in out["error"] and "step 1" in out["error"]
    assert "previous checkpoint (step_00000000) is untouched" in out["error"]
    assert out["latest"] == "step_00000000"
    assert out["entries"] == ["latest", "step_00000000"]  # the partial .tmp_step_00000001 was removed
