"""Campaigns as a user runs them (subprocesses): resume after kill -9 and SIGTERM, a sweep
that goes on past a failed job and skips finished jobs when relaunched, Hydra's launcher
plugins, and DDP evaluation that counts each test image once.

Subprocess runs cost 10-15 s of CPU each (imports included), so the default run keeps the
kill -9 / resume test and the failed-job sweep (about 60 s on 2 idle cores); SIGTERM, the
joblib and submitit_local launchers and DDP are marked slow (about 100 s more):
`python -m pytest -m slow tests/test_campaign.py`."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# tiny: 8x8 images, 4 batches per epoch, an odd test set (33 images: not divisible by 2 ranks)
TINY = ["data=synthetic", "model=resnet20", "data.train_size=64", "data.test_size=33", "data.image_size=8",
        "data.batch_size=16", "snn.timesteps=2", "logger=csv", "trainer.log_every_n_steps=1"]
EPOCHS = 6
ENV = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONUNBUFFERED": "1",
       "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0"}


def start(script, *overrides, log_dir):
    return subprocess.Popen([sys.executable, str(ROOT / script), *overrides, f"paths.log_dir={log_dir}"],
                            cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run(script, *overrides, log_dir, check=True):
    proc = start(script, *overrides, log_dir=log_dir)
    out, err = proc.communicate(timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} failed ({proc.returncode}):\n{out[-3000:]}\n{err[-3000:]}")
    return proc.returncode, out, err


def metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def interrupt_after_first_checkpoint(log_dir: Path, signum: int, *overrides):
    """Start a training run, send `signum` once its first last.ckpt exists; (run folder, rc, stdout)."""
    proc = start("train.py", *TINY, f"epochs={EPOCHS}", *overrides, log_dir=log_dir)
    deadline = time.time() + 300
    while not list(log_dir.glob("train/runs/*/checkpoints/last.ckpt")):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signum)
    out, _ = proc.communicate(timeout=300)
    (run_dir,) = log_dir.glob("train/runs/*")
    return run_dir, proc.returncode, out


def same_results(a: dict, b: dict) -> None:
    assert a["qann"] == b["qann"]
    for key in ("test_acc", "agreement", "spikes_per_image", "spike_events_per_image", "layer_spikes"):
        assert a["snn"][key] == b["snn"][key], key


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    logs = tmp_path_factory.mktemp("reference")
    run("train.py", *TINY, f"epochs={EPOCHS}", log_dir=logs)
    (run_dir,) = logs.glob("train/runs/*")
    return run_dir


def epochs_logged(run_dir: Path) -> list[int]:
    import csv
    rows = list(csv.DictReader((run_dir / "csv" / "metrics.csv").open()))
    return sorted({int(r["epoch"]) for r in rows if r.get("train/loss")})


def same_training_state(run_dir: Path, reference: Path) -> None:
    """Weights, optimizer state (momentum buffers) and schedule of the two runs' last checkpoints: equal
    to the bit, not merely close (a resume that restarts from scratch ends elsewhere in them)."""
    import torch
    a, b = (torch.load(d / "checkpoints" / "last.ckpt", weights_only=True) for d in (run_dir, reference))
    assert a["global_step"] == b["global_step"] and a["epoch"] == b["epoch"]
    assert a["state_dict"].keys() == b["state_dict"].keys()
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    (sa,), (sb,) = a["optimizer_states"], b["optimizer_states"]
    assert sa["state"].keys() == sb["state"].keys() and sa["state"]
    assert all(torch.equal(sa["state"][i]["momentum_buffer"], sb["state"][i]["momentum_buffer"]) for i in sa["state"])
    assert a["lr_schedulers"] == b["lr_schedulers"]


def test_kill_9_then_resume_auto_equals_uninterrupted_run(uninterrupted, tmp_path):
    """Mutation caught: a resume that restarts from step 0 (ckpt_path dropped) trains every step again;
    a resumed run's training.wall_s that counts only its own process."""
    import torch
    run_dir, rc, _ = interrupt_after_first_checkpoint(tmp_path, signal.SIGKILL)
    assert rc == -signal.SIGKILL and not (run_dir / "metrics.json").exists()
    kept = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    stopped_at, trained_before = kept["global_step"], kept["pmsm_training_wall_s"]
    _, out, _ = run("train.py", *TINY, f"epochs={EPOCHS}", "resume=auto", log_dir=tmp_path)
    assert "resuming from" in out and len(list(tmp_path.glob("train/runs/*"))) == 1  # continued in its folder
    resumed, reference = metrics(run_dir), metrics(uninterrupted)
    assert resumed["status"] == "finished"
    same_results(resumed, reference)
    # it started where the killed run stopped and trained only the remaining steps
    total = reference["training"]["steps"]
    assert 0 < stopped_at < total and resumed["training"]["steps"] == total
    assert resumed["training"]["steps_this_run"] == total - stopped_at
    assert resumed["training"]["resumed_from"].endswith("checkpoints/last.ckpt")
    # the fitting time adds the killed process's time up to its checkpoint to this process's own
    this_run = resumed["training"]["wall_s_this_run"]
    assert trained_before > 0 and this_run > 0
    assert resumed["training"]["wall_s"] == pytest.approx(trained_before + this_run, abs=0.01)
    assert reference["training"]["wall_s"] == pytest.approx(reference["training"]["wall_s_this_run"], abs=0.01)
    same_training_state(run_dir, uninterrupted)
    assert epochs_logged(run_dir) == list(range(EPOCHS))  # one CSV log, every epoch in it


# 16 steps per epoch, so that a SIGTERM after the first checkpoint lands inside an epoch
MID = [*TINY, "data.batch_size=4", "epochs=3"]


def test_sigterm_mid_epoch_then_resume_equals_uninterrupted_run(tmp_path):
    """SIGTERM inside an epoch: the checkpoint saved on the way out carries the loop's position and the
    RNG states; the resumed run should end with the uninterrupted run's weights and optimizer state."""
    import torch
    reference_logs = tmp_path / "reference"
    run("train.py", *MID, log_dir=reference_logs)
    (reference,) = reference_logs.glob("train/runs/*")
    proc = start("train.py", *MID, log_dir=tmp_path / "stopped")
    deadline = time.time() + 300
    while not list((tmp_path / "stopped").glob("train/runs/*/checkpoints/last.ckpt")):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.02)
    time.sleep(0.3)   # into the second epoch
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=300)
    (run_dir,) = (tmp_path / "stopped").glob("train/runs/*")
    assert proc.returncode == 128 + signal.SIGTERM, out
    stopped_at = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert stopped_at % 16, "stopped on an epoch boundary: not the case this test is about"
    run("train.py", *MID, "resume=auto", log_dir=tmp_path / "stopped")
    resumed = metrics(run_dir)
    total = metrics(reference)["training"]["steps"]
    assert 16 < stopped_at < total and resumed["training"]["steps_this_run"] == total - stopped_at
    same_results(resumed, metrics(reference))
    same_training_state(run_dir, reference)


@pytest.mark.slow  # subprocess runs: see the module docstring for the timings
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1], ids=["SIGTERM", "SIGUSR1"])
def test_signal_saves_a_checkpoint_that_resume_auto_finishes(signum, tmp_path):
    run_dir, rc, out = interrupt_after_first_checkpoint(tmp_path, signum)
    assert rc == 128 + signum, out
    assert "interrupted at epoch" in out and not (run_dir / "metrics.json").exists()
    import torch
    stopped_at = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert stopped_at > 0
    _, out, _ = run("train.py", *TINY, f"epochs={EPOCHS}", "resume=auto", log_dir=tmp_path)
    assert metrics(run_dir)["status"] == "finished" and "resuming from" in out
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == EPOCHS - 1


def sweep_jobs(log_dir: Path) -> dict[str, Path]:
    return {p.name.split("optim.lr:")[1].split("+")[0]: p for p in log_dir.glob("train/multiruns/default/*")}


def test_sweep_goes_on_past_a_failed_job_and_relaunch_skips_finished_ones(tmp_path):
    # the middle job raises: a string learning rate (refused by checks.py before training)
    sweep = ["-m", "optim.lr=0.1,abc,0.05", *TINY, "epochs=1"]
    rc, out, err = run("train.py", *sweep, log_dir=tmp_path, check=False)
    assert rc == 1
    jobs = sweep_jobs(tmp_path)
    assert set(jobs) == {"0.1", "abc", "0.05"}
    assert [metrics(jobs[k])["status"] for k in ("0.1", "abc", "0.05")] == ["finished", "failed", "finished"]
    failed = metrics(jobs["abc"])
    assert "optim.lr" in failed["error"] and "\n" not in failed["error"] and failed["run"]["experiment"] == "default"
    log = (jobs["abc"] / "train.log").read_text()
    assert f"job failed: {failed['error']}" in log and "Traceback (most recent call last)" in log
    assert out.count("QANN test accuracy") == 2

    rc, out, err = run("train.py", *sweep, log_dir=tmp_path, check=False)
    assert rc == 1
    assert sorted(line.split()[1] for line in out.splitlines() if line.startswith("skipped:")) == sorted(
        str(jobs[k]) for k in ("0.1", "0.05"))
    assert out.count("QANN test accuracy") == 0           # nothing trained again
    assert (jobs["abc"] / "train.log").read_text().count("job failed") == 2  # job 2 ran again


@pytest.mark.slow  # subprocess runs: see the module docstring for the timings
@pytest.mark.parametrize("launcher", ["joblib", "submitit_local"])
def test_launcher_plugins_run_a_two_job_sweep(launcher, tmp_path):
    extra = ["hydra.launcher.n_jobs=2"] if launcher == "joblib" else ["hydra.launcher.timeout_min=10"]
    run("train.py", "-m", f"hydra/launcher={launcher}", *extra, "seed=1,2", *TINY, "epochs=1", log_dir=tmp_path)
    found = {metrics(p.parent)["run"]["seed"]: metrics(p.parent)["status"]
             for p in tmp_path.glob("train/multiruns/default/*/metrics.json")}
    assert found == {1: "finished", 2: "finished"}


@pytest.mark.slow  # subprocess runs: see the module docstring for the timings
def test_ddp_evaluation_counts_every_test_image_once(uninterrupted, tmp_path):
    """2 CPU processes (gloo) on 33 test images give exactly the single-process numbers."""
    ckpt = uninterrupted / "checkpoints" / "last.ckpt"
    _, out, _ = run("convert.py", f"ckpt_path={ckpt}", "trainer=ddp_cpu", "snn.timesteps=2", "logger=csv",
                    log_dir=tmp_path)
    assert out.count("QANN test accuracy") == 1
    (written,) = tmp_path.rglob("metrics.json")
    same_results(metrics(written.parent), metrics(uninterrupted))


# ---------------------------------------------------------------- in-process pieces (fast)
def test_shards_cover_the_test_set_once_where_distributed_sampler_pads(monkeypatch):
    from torch.utils.data.distributed import DistributedSampler
    from pmsm_exp.engine import evaluation as lit
    n, world = 33, 4
    seen = []
    for rank in range(world):
        monkeypatch.setattr(lit.dist, "is_initialized", lambda: True)
        monkeypatch.setattr(lit.dist, "get_rank", lambda rank=rank: rank)
        monkeypatch.setattr(lit.dist, "get_world_size", lambda: world)
        sampler = lit.ShardSampler(range(n))
        assert len(sampler) == len(list(sampler))
        seen += list(sampler)
    assert sorted(seen) == list(range(n))  # every image once
    padded = [i for r in range(world) for i in DistributedSampler(range(n), world, r, shuffle=False)]
    assert len(padded) == 36 and len(set(padded)) == n  # what Lightning's default would count


def test_checkpoint_rng_state_round_trip():
    import random
    import numpy as np
    import torch
    from pmsm_exp.engine.preemption import Resumable
    cb = Resumable("unused")
    state = cb.state_dict()
    expected = torch.rand(3), np.random.rand(3), random.random()
    torch.rand(5), np.random.rand(7), random.random()  # other draws in between
    cb.load_state_dict(state)
    got = torch.rand(3), np.random.rand(3), random.random()
    assert torch.equal(expected[0], got[0]) and (expected[1] == got[1]).all() and expected[2] == got[2]


def test_csv_log_continues_in_the_same_file(tmp_path):
    from pmsm_exp.engine.loggers import CSVLogger
    first = CSVLogger(str(tmp_path))
    first.log_metrics({"train/loss": 2.0, "epoch": 0}, step=0)
    first.save()
    resumed = CSVLogger(str(tmp_path))  # a resumed run's logger: same folder, no new version
    resumed.log_metrics({"train/loss": 1.0, "epoch": 1}, step=1)
    resumed.save()
    lines = (tmp_path / "csv" / "metrics.csv").read_text().splitlines()
    assert len(lines) == 3 and lines[1].startswith("0,") and lines[2].startswith("1,")


def test_csv_log_keeps_its_rows_when_killed_while_adding_a_column(tmp_path, monkeypatch):
    """A new column (end of the first epoch) rewrites the file; a kill -9 inside that rewrite, here an
    error after the rewrite began, must leave the rows already on disk (Lightning's truncates first)."""
    import csv
    from pmsm_exp.engine.loggers import CSVLogger
    logger = CSVLogger(str(tmp_path))
    for step in range(3):
        logger.log_metrics({"train/loss": 2.0 - step, "epoch": 0}, step=step)
    logger.save()
    path = tmp_path / "csv" / "metrics.csv"
    before = path.read_text()

    def killed(self, rows):
        raise KeyboardInterrupt("killed mid-write")
    monkeypatch.setattr(csv.DictWriter, "writerows", killed)
    logger.log_metrics({"val/acc": 0.5, "epoch": 0}, step=3)  # a new column: the file is rewritten
    with pytest.raises(KeyboardInterrupt):
        logger.save()
    assert path.read_text() == before


def test_csv_log_resumed_after_a_torn_row_stays_parseable(tmp_path):
    import csv
    from pmsm_exp.engine.loggers import CSVLogger
    path = tmp_path / "csv" / "metrics.csv"
    path.parent.mkdir()
    path.write_text("epoch,step,train/loss\n0,0,2.0\n0,1,1.")  # killed in the middle of a row
    resumed = CSVLogger(str(tmp_path))
    resumed.log_metrics({"train/loss": 0.5, "epoch": 1}, step=2)
    resumed.save()
    rows = list(csv.DictReader(path.open()))
    assert [(r["epoch"], r["step"], r["train/loss"]) for r in rows] == [("0", "0", "2.0"), ("1", "2", "0.5")]


def compose_train(*overrides):
    from hydra import compose, initialize_config_dir
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=True)


@pytest.mark.parametrize("override, fragment", [
    ("epochs=0", "epochs: got 0; must be a positive integer"),
    ("eval_checkpoint=worst", "eval_checkpoint: got 'worst'"),
    ("eval_checkpoint=best", "eval_checkpoint: got 'best'; best is chosen on a validation split"),
])
def test_schedule_settings_refused_up_front(override, fragment):
    from pmsm_exp.jobs.checks import check_schedule
    from pmsm_exp.errors import UserError
    with pytest.raises(UserError) as err:
        check_schedule(compose_train(override))
    assert fragment in str(err.value) and "\n" not in str(err.value)
    check_schedule(compose_train("eval_checkpoint=best", "data.val_fraction=0.1"))


def test_best_checkpoint_loads_into_a_student_with_a_teacher(tmp_path):
    import torch
    from pmsm_exp.jobs import pipeline
    from pmsm_exp.engine.training import QANNModule
    optim = {"name": "sgd", "lr": 0.1}
    student, teacher = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    module = QANNModule(student, 3, optim, {}, teacher=teacher)
    saved = {"state_dict": {k: v + 1 for k, v in module.state_dict().items()}}
    module.on_save_checkpoint(saved)  # drops the teacher's keys, as Lightning's save does
    torch.save(saved, tmp_path / "best.ckpt")
    teacher_before = teacher.weight.clone()
    pipeline.load_student(module, str(tmp_path / "best.ckpt"))
    assert torch.equal(module.model.weight, saved["state_dict"]["model.weight"])
    assert torch.equal(module.teacher.weight, teacher_before)


def test_slurm_launcher_config():
    cfg = compose_train("hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.gpus_per_node=8")
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.partition, launcher.gpus_per_node, launcher.tasks_per_node, launcher.nodes) == ("gpu", 8, 8, 1)
    assert launcher.additional_parameters.requeue is True and launcher.signal_delay_s > 0 and launcher.timeout_min > 0
    assert compose_train("hydra/launcher=joblib").hydra.launcher._target_.endswith("JoblibLauncher")
