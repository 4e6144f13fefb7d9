"""No silent hangs (notes/field-conventions.md C8 item 7): a role method that blocks forever makes its group
raise ``StepTimeout(role, method, rank)`` carrying the stuck actor's Python stacks (faulthandler on SIGUSR1).

The hang is a real blocking wait in the actor (``VT_RAY_HANG_AT``, see vt_ray/testing/faults.py), reached on
the tiny model with the groups built as the trainer builds them; the timeouts are set short once the actors
are up, as the trainer tightens them after its first step. Nothing here sleeps to synchronise.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from vt_ray.common.timeouts import ActorInfo, StepTimeout, dump_stacks, signal_and_read

ROOT = Path(__file__).resolve().parents[3]
TIMEOUT_S = 2.0  # the tightened, steady-state timeout of the groups under test


def _hang_env(point: str) -> dict[str, Any]:
    return {"env_vars": {"VT_RAY_HANG_AT": point}}


def _kill(group: Any) -> None:
    """Stop a group whose actor is stuck (its own shutdown may wait on the stuck actor)."""
    import ray

    for actor in group.actors:
        ray.kill(actor, no_restart=True)
    group.actors = []


# ---- pure parts ------------------------------------------------------------------------------------------
def test_step_timeout_names_the_call_and_survives_pickling() -> None:
    from vt_ray.learner.group import LearnerCallError, LearnerTimeout

    err = LearnerTimeout("learner", "train_step", 1, 2.5, "waiting on ranks [1]", {1: "File x, line 3 in f"})
    assert isinstance(err, StepTimeout) and isinstance(err, LearnerCallError)  # old callers keep catching it
    assert (err.role, err.method, err.rank, err.timeout_s) == ("learner", "train_step", 1, 2.5)
    assert str(err).startswith("learner[1].train_step: no answer within 2.5 s (waiting on ranks [1])")
    assert "--- Python stacks of learner[1] ---\nFile x, line 3 in f" in str(err)
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is LearnerTimeout and str(back) == str(err) and back.stacks == err.stacks


def test_a_process_without_a_dump_handler_is_not_signalled(tmp_path: Path) -> None:
    """SIGUSR1's default action kills: a pid that never installed the handler (or a reused pid) is left alone."""
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        text = signal_and_read(proc.pid, str(tmp_path / "dump.txt"), wait_s=1.0)
        assert "no SIGUSR1 handler" in text
        assert proc.poll() is None  # still alive
    finally:
        proc.kill()
        proc.wait()


def test_a_process_with_the_handler_dumps_its_stacks(tmp_path: Path) -> None:
    dump = tmp_path / "dump.txt"
    code = (
        "import faulthandler, signal, sys\n"
        f"f = open({str(dump)!r}, 'a')\n"
        "faulthandler.register(signal.SIGUSR1, file=f, all_threads=True)\n"
        "def blocked_here():\n"
        "    print('ready', flush=True)\n"
        "    sys.stdin.read()\n"
        "blocked_here()\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"  # handler installed, main thread blocked in read
        first = signal_and_read(proc.pid, str(dump), wait_s=10.0)
        second = signal_and_read(proc.pid, str(dump), wait_s=10.0)
        for text in (first, second):  # each call returns only the dump it asked for
            assert text.count("in blocked_here") == 1, text
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()


# ---- on a local Ray cluster ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def _reward(point: str, **_: Any) -> tuple[Any, Callable[[], Any]]:
    from vt_ray.rewards.config import RewardConfig
    from vt_ray.rewards.target import RewardTarget
    from vt_ray.trainer.reward_group import RewardGroup

    env = _hang_env(point)
    group = RewardGroup(RewardConfig(), 2, lambda rank: {"num_cpus": 0.1, "runtime_env": env}, timeout_s=300)
    group.timeout_s = TIMEOUT_S
    target = RewardTarget(answer="A", options=("x", "y"))
    return group, lambda: group.score(["<answer>A</answer>"] * 4, [target] * 4)


def _rollout(point: str, tiny_model_dir: Path, synthetic_dir: Path, **_: Any) -> tuple[Any, Callable[[], Any]]:
    from vt_ray.config.loader import load_config
    from vt_ray.data.schema import read_samples, resolve_video_paths
    from vt_ray.rollout.group import RolloutGroup
    from vt_ray.rollout.types import SamplingSettings

    cfg = load_config(ROOT / "recipes/tiny_cpu.yaml", [f"model.path={tiny_model_dir}", "rollout.backend=hf"])
    samples = resolve_video_paths(read_samples(synthetic_dir / "train.jsonl"), synthetic_dir)[:2]
    group = RolloutGroup(cfg, num_workers=1, num_cpus=0.5, runtime_env=_hang_env(point), timeout_s=300)
    group.timeout_s = TIMEOUT_S
    return group, lambda: group.generate(samples, SamplingSettings(n=2, temperature=1.0, max_tokens=8))


def _learner(point: str, tiny_model_dir: Path, **_: Any) -> tuple[Any, Callable[[], Any]]:
    from transformers import AutoProcessor

    from learner_examples import make_examples  # tests/ is on sys.path (rootdir conftest)
    from vt_ray.config.loader import load_config
    from vt_ray.learner.collate import collate
    from vt_ray.learner.group import LearnerGroup

    cfg = load_config(None, [f"model.path={tiny_model_dir}", "resources.learner.num_workers=1",
                             "resources.learner.cpus_per_worker=0.5", "learner.reference=none",
                             "learner.micro_batch_size=2"])
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    batch = collate(processor, make_examples(processor, 2))
    group = LearnerGroup(cfg, runtime_env=_hang_env(point), timeout_s=300)  # the long first-step timeout
    group.setup(total_steps=1)
    group.timeout_s = TIMEOUT_S
    method = point.split("@")[0].split(".")[1]
    if method == "train_step":
        return group, lambda: group.train_step(batch, "sft")
    return group, lambda: group.compute_logprobs(batch, "policy")


@pytest.mark.slow
@pytest.mark.parametrize(
    "role,method,rank",
    [("reward", "score", 1), ("rollout", "generate", 0), ("learner", "train_step", 0),
     ("learner", "compute_logprobs", 0)],
)
def test_a_blocked_role_method_raises_step_timeout_with_its_stacks(
    ray_cluster, tiny_model_dir: Path, synthetic_dir: Path, role: str, method: str, rank: int
) -> None:
    build = {"reward": _reward, "rollout": _rollout, "learner": _learner}[role]
    group, call = build(f"{role}.{method}@{rank}", tiny_model_dir=tiny_model_dir, synthetic_dir=synthetic_dir)
    try:
        with pytest.raises(StepTimeout) as caught:
            call()
        err = caught.value
        assert (err.role, err.method, err.rank) == (role, method, rank)
        assert str(err).startswith(f"{role}[{rank}].{method}: no answer within {TIMEOUT_S:g} s")
        stacks = err.stacks[rank]
        assert "in hang_point" in stacks and f"in {method}" in stacks, stacks  # the stuck frame and its caller
        assert "faults.py" in stacks
        assert stacks.rstrip() in str(err)  # the dump is in the message the driver prints
    finally:
        _kill(group)


@pytest.mark.slow
def test_an_actor_stuck_in_init_is_found_through_the_gcs(ray_cluster, tiny_model_dir: Path, monkeypatch) -> None:
    """It never answered ready(): its pid and node come from the GCS actor table, the dump path from the pid."""
    from vt_ray.config.loader import load_config
    from vt_ray.rollout.group import RolloutGroup

    spawned: list[Any] = []  # the group never returns: keep its actor to kill it
    spawn = RolloutGroup._spawn

    def spawn_and_wait_for_the_hang(self: Any, rank: int) -> Any:
        """The actor imports for a few seconds before its __init__ runs: the short timeout starts once it hangs."""
        spawned.append(spawn(self, rank))
        deadline = time.monotonic() + 120
        while "in hang_point" not in dump_stacks("rollout", [(rank, spawned[-1], None)], wait_s=1.0)[rank]:
            assert time.monotonic() < deadline, "the actor never reached rollout.init"
            time.sleep(0.2)  # polling, with a deadline
        return spawned[-1]

    monkeypatch.setattr(RolloutGroup, "_spawn", spawn_and_wait_for_the_hang)
    cfg = load_config(ROOT / "recipes/tiny_cpu.yaml", [f"model.path={tiny_model_dir}", "rollout.backend=hf"])
    try:
        with pytest.raises(StepTimeout) as caught:
            RolloutGroup(cfg, num_workers=1, num_cpus=0.5, runtime_env=_hang_env("rollout.init@0"),
                         timeout_s=TIMEOUT_S)
        err = caught.value
        assert (err.role, err.method, err.rank) == ("rollout", "ready", 0)
        assert "in hang_point" in err.stacks[0] and "in __init__" in err.stacks[0], err.stacks[0]
    finally:
        for actor in spawned:
            ray_cluster.kill(actor, no_restart=True)


@pytest.mark.slow
def test_stacks_of_an_actor_on_another_node_come_from_a_task_pinned_to_its_node(ray_cluster) -> None:
    """The KubeRay case (the driver's pod cannot signal or read another pod): forced through the pinned task,
    with the info from ready() and, for an actor that never answered, from the GCS."""
    group, call = _reward("reward.score@0")
    try:
        with pytest.raises(StepTimeout) as caught:
            call()
        assert "in hang_point" in caught.value.stacks[0]  # dumped from here: the actor is stuck there
        info = group._infos[0]
        assert isinstance(info, ActorInfo) and info.stacks_path and info.node_id
        for given in (info, None):
            text = dump_stacks("reward", [(0, group.actors[0], given)], via_task=True)[0]
            assert "in hang_point" in text and "in score" in text, text
    finally:
        _kill(group)


# ---- one deadline per call (issue 21, item 3) --------------------------------------------------------------
@pytest.mark.slow
def test_wait_all_has_one_deadline_names_every_late_rank_and_resends_failed_work(ray_cluster) -> None:
    """Real Ray tasks: two ranks never answer and one fails once. The timeout names exactly the two late ranks
    (both missed the same deadline: a per-rank wait would have named only the first), and the failed rank's
    re-sent work is what its result holds."""
    import threading

    from vt_ray.common.timeouts import wait_all

    @ray_cluster.remote(num_cpus=0, max_concurrency=8)
    class Ranks:  # one threaded actor, started before the clock runs: its calls answer in milliseconds
        def answer(self, x: int) -> int:
            if x < 0:
                raise ValueError("first try fails")
            if x == 99:
                threading.Event().wait()
            return x

    ranks = Ranks.remote()
    assert ray_cluster.get(ranks.answer.remote(7)) == 7
    refs = {0: ranks.answer.remote(0), 1: ranks.answer.remote(99), 2: ranks.answer.remote(-1),
            3: ranks.answer.remote(99)}
    resent: list[int] = []

    def resend(rank: int, err: Exception) -> Any:
        resent.append(rank)
        assert "first try fails" in str(err)
        return ranks.answer.remote(20 + rank)

    with pytest.raises(StepTimeout) as caught:
        wait_all(refs, TIMEOUT_S, lambda late: StepTimeout("test", "answer", late[0], TIMEOUT_S, ranks=late), resend)
    assert caught.value.ranks == [1, 3] and resent == [2]
    assert str(caught.value).startswith(f"test[1].answer: no answer within {TIMEOUT_S:g} s from ranks [1, 3]")
    assert wait_all({0: ranks.answer.remote(5), 1: ranks.answer.remote(-1)}, 60, lambda late: RuntimeError(late),
                    lambda rank, err: "scored 0") == {0: 5, 1: "scored 0"}
    ray_cluster.kill(ranks)


@pytest.mark.slow
def test_every_stuck_scorer_is_named_with_its_stacks(ray_cluster) -> None:
    group, call = _reward("reward.score")  # no rank: both scorers block
    try:
        with pytest.raises(StepTimeout) as caught:
            call()
        err = caught.value
        assert (err.role, err.method, err.ranks) == ("reward", "score", [0, 1])
        for rank in (0, 1):
            assert "in hang_point" in err.stacks[rank] and "in score" in err.stacks[rank], err.stacks[rank]
    finally:
        _kill(group)


# ---- the worker group every role group is built on ---------------------------------------------------------
def _echo_cls() -> type:
    """Built in a function so Ray ships the class by value (the test module is not importable in workers)."""

    class Echo:
        def __init__(self, rank: int, marker: str) -> None:
            self.rank, self.marker = rank, marker

        def ready(self) -> Any:
            from vt_ray.common.timeouts import install_stack_dumps

            return install_stack_dumps("echo", self.rank)

        def work(self, x: int, block: bool = False) -> tuple[int, int]:
            import os

            if block:
                time.sleep(3600)
            if self.rank == 1 and not os.path.exists(self.marker):  # dies once, like an OOM kill
                Path(self.marker).write_text("died")
                os._exit(1)
            return self.rank, x * 10 + self.rank

    return Echo


@pytest.mark.slow
def test_worker_group_calls_every_rank_replaces_a_dead_one_and_names_every_late_rank(ray_cluster, tmp_path) -> None:
    from ray.exceptions import RayActorError

    from vt_ray.cluster.worker_group import WorkerGroup

    class EchoGroup(WorkerGroup):
        role = "echo"

    group = EchoGroup(_echo_cls(), 3, lambda rank: (rank, str(tmp_path / "died")), timeout_s=60,
                      remote_options={"num_cpus": 0.1})
    try:
        assert sorted(group._infos) == [0, 1, 2] and len({i.pid for i in group._infos.values()}) == 3
        old_pid = group._infos[1].pid

        def replace(rank: int, err: Exception) -> Any:  # the roles' policy: respawn, re-send the rank's share
            assert isinstance(err, RayActorError) and rank == 1
            group.respawn(rank)
            return group.actors[rank].work.remote(7)

        assert group.call("work", 7, on_error=replace) == [(0, 70), (1, 71), (2, 72)]  # rank order, none lost
        assert group._infos[1].pid != old_pid  # the new actor's ready() answer
        group.timeout_s = TIMEOUT_S
        with pytest.raises(StepTimeout) as caught:
            group.call("work", 1, block=True, ranks=[2, 0])
        err = caught.value
        assert (err.role, err.method, err.ranks) == ("echo", "work", [0, 2])  # one deadline: both named
        assert all("in work" in err.stacks[rank] for rank in (0, 2)), err.stacks
    finally:
        group.kill_all()
    assert group.actors == []
