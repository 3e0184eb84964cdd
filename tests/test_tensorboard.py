"""TensorBoard logs (run setting tensorboard=true): the loop's losses, schedules and scores, read back with
TensorBoard's own reader; nothing written or imported when off; one line when the package is missing."""
import json
import subprocess
import sys

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from harness.tblog import TensorBoardLog, log_every
from harness.train import StepEnd
from tests.conftest import REPO
from tests.helpers import child_env, fast_run


def scalars(log_dir) -> dict[str, dict[int, float]]:
    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def history(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]


def test_a_run_with_tensorboard_logs_losses_schedules_and_scores(spd_rte_run, tmp_path):
    _, cache = spd_rte_run  # the teacher is cached there
    out = tmp_path / "run"
    # eval_steps=2: evaluations inside phases, which record the loss, its parts and the LR to compare with
    assert fast_run("spd", "rte", out, cache, extra=["tensorboard=true", "eval_steps=2",
                                                     "train_eval_examples=16"]) == 0
    logs = list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert len(logs) == 1
    got = scalars(out / "tensorboard")
    total = json.loads((out / "config.json").read_text())["total_steps"]
    assert log_every(total) == 1
    for tag in ("loss/total", "loss/attn", "loss/hidden", "loss/pred", "schedule/grafting_p", "schedule/sparsity",
                "schedule/lr"):
        assert sorted(got[tag]) == list(range(1, total + 1)), tag
    # the pruner reaches its target at the end of the pruning phase and stays there
    sparsity = got["schedule/sparsity"]
    assert sparsity[1] < 0.5 and sparsity[total] == pytest.approx(0.5)
    assert all(sparsity[s] <= sparsity[s + 1] + 1e-9 for s in range(1, total))
    assert all(0.0 <= p <= 1.0 for p in got["schedule/grafting_p"].values())
    entries = history(out)
    mid_phase = [e for e in entries if "loss" in e]
    assert mid_phase
    for e in mid_phase:  # what the loop recorded at an evaluation is what TensorBoard has for that step
        assert got["loss/total"][e["step"]] == pytest.approx(e["loss"], rel=1e-6)
        for part in ("attn", "hidden", "pred"):
            assert got[f"loss/{part}"][e["step"]] == pytest.approx(e[part], rel=1e-6)
        assert got["schedule/lr"][e["step"]] == pytest.approx(e["lr"], rel=1e-6)
        assert got["schedule/grafting_p"][e["step"]] == pytest.approx(e["p"], rel=1e-6)
    for e in entries:
        for split in ("dev", "train"):
            for name, value in e[split].items():
                assert got[f"{split}/{name}"][e["step"]] == pytest.approx(value, rel=1e-6), (split, name)
        assert got["eval/sparsity"][e["step"]] == pytest.approx(e["sparsity"])
    final = json.loads((out / "metrics.json").read_text())["final"]
    assert got["dev/score"][final["step"]] == pytest.approx(final["dev"]["score"], rel=1e-6)


def test_without_the_setting_nothing_is_written(spd_rte_run):
    run, _ = spd_rte_run
    assert json.loads((run / "config.json").read_text())["tensorboard"] is False
    assert not (run / "tensorboard").exists()


def test_without_the_setting_tensorboard_is_not_imported(tmp_path):
    code = ("import sys\nfrom tests.helpers import fast_run\n"
            f"assert fast_run('dense', 'rte', {str(tmp_path / 'run')!r}, {str(tmp_path / 'cache')!r}) == 0\n"
            "loaded = sorted(m for m in sys.modules if 'tensorboard' in m)\n"
            "assert not loaded, loaded\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=600,
                          env=child_env())
    assert done.returncode == 0, done.stderr[-2000:]


def test_a_missing_tensorboard_package_is_one_line_and_exit_2(spd_rte_run, tmp_path, monkeypatch, capsys):
    _, cache = spd_rte_run
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    assert fast_run("spd", "rte", tmp_path / "run", cache, extra=["tensorboard=true"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'spd-bench[tensorboard]'" in err[0], err
    assert not (tmp_path / "run").exists()


class Unread:
    """A 0-d tensor stand-in that counts how often it is read."""
    reads = 0

    def __init__(self, value):
        self.value = value

    def item(self):
        Unread.reads += 1
        return self.value


def test_tensors_are_read_only_on_logged_steps(tmp_path):
    log = TensorBoardLog(tmp_path / "tb", every=5, pruner_sparsity=lambda: 0.25)
    Unread.reads = 0
    for step in range(1, 11):
        log.on_step(StepEnd(step, "x", Unread(1.0 / step), {"kd": Unread(2.0)}, 0.5, 1e-3, torch.nn.Linear(1, 1)))
    log.close()
    assert Unread.reads == 4  # steps 5 and 10: the loss and one part each
    got = scalars(tmp_path / "tb")
    assert got["loss/total"] == {5: pytest.approx(0.2), 10: pytest.approx(0.1)}
    assert got["loss/kd"] == {5: 2.0, 10: 2.0} and got["schedule/sparsity"][10] == 0.25


def test_log_every_spaces_about_a_hundred_points():
    assert log_every(12) == 1 and log_every(1000) == 10 and log_every(36_000) == 50
