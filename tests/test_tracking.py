"""W&B tracking, read back from the offline run files (no mocks, no network): config, history over T,
tables, names/groups, checkpoint lineage; and W&B staying optional (logger=csv / none).

The jobs run in this process (train.py / convert.py through Hydra, as a user runs them), sharing
one 2-job sweep and one convert run per module."""
import contextlib
import io
import json
import re
import runpy
import sys
from pathlib import Path

import pytest
import torch

from wandb_records import offline_runs

ROOT = Path(__file__).resolve().parents[1]
TINY = ["data=synthetic", "data.train_size=64", "data.test_size=32", "data.image_size=8", "epochs=1",
        "snn.timesteps=2"]


def hydra_job(script: str, *overrides: str, log_dir) -> str:
    """Run train.py / convert.py in this process with these command-line arguments; returns its stdout."""
    argv, out = sys.argv, io.StringIO()
    sys.argv = [str(ROOT / script), *overrides, f"paths.log_dir={log_dir}"]
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_path(str(ROOT / script), run_name="__main__")
    finally:
        sys.argv = argv
    return out.getvalue()


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, monkeypatch_module):
    """A 2-job alpha sweep with W&B offline, and a convert (analysis=full) of job 0's last checkpoint."""
    monkeypatch_module.setenv("WANDB_MODE", "offline")
    monkeypatch_module.setenv("WANDB_SILENT", "true")
    monkeypatch_module.setenv("MPLBACKEND", "Agg")
    logs = tmp_path_factory.mktemp("logs")
    stdout = hydra_job("train.py", "-m", *TINY, "optim.lr=0.05", "pqa.alpha=-0.25,-0.5", log_dir=logs)
    sweep_dir = logs / "train" / "multiruns" / "default"  # <experiment>/<overrides> per job
    jobs = sorted((p.parent for p in sweep_dir.glob("*/metrics.json")), key=lambda d: "alpha:-0.5" in d.name)
    ckpt = jobs[0] / "checkpoints" / "last.ckpt"
    convert_stdout = hydra_job("convert.py", f"ckpt_path={ckpt}", "snn.timesteps=2", "analysis=full",
                               "analysis.max_batches=1", log_dir=logs)
    convert_dir = next((logs / "convert" / "runs").iterdir())
    runs = {d: offline_runs(d / "wandb") for d in (*jobs, convert_dir)}
    assert all(len(r) == 1 for r in runs.values()), runs  # one W&B run per job
    return {"sweep_dir": sweep_dir, "jobs": jobs, "convert_dir": convert_dir, "ckpt": ckpt, "stdout": stdout,
            "convert_stdout": convert_stdout, "train": [runs[d][0] for d in jobs], "convert": runs[convert_dir][0]}


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # these tiny models gain nothing from threads; on a shared 2-core machine two threads contend (30x slower)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def test_train_run_config_history_and_tables(sweep):
    run, job = sweep["train"][0], sweep["jobs"][0]
    m = metrics(job)
    cfg = run.config
    # the whole resolved config, flattened with dots
    assert cfg["optim.lr"] == 0.05 and cfg["epochs"] == 1 and cfg["pqa.alpha"] == -0.25
    assert cfg["trainer.precision"] == "32-true" and cfg["optim.scheduler"] == "cosine" and cfg["seed"] == 42
    assert cfg["params.total"] >= cfg["params.trainable"] > 0
    assert re.fullmatch(r"[0-9a-f]{40}", cfg["git.commit"]) and isinstance(cfg["git.dirty"], bool)
    # one history row per timestep, its step metric snn/timestep
    rows = [h for h in run.history if "snn/timestep" in h]
    assert [h["snn/timestep"] for h in rows] == m["snn"]["timesteps"] == [1, 2]
    for key, src in (("snn/test_acc", "test_acc"), ("snn/agreement", "agreement"),
                     ("snn/spikes_per_image", "spikes_per_image"), ("snn/power_mw", "power_mw"),
                     ("snn/spike_events_per_image", "spike_events_per_image")):
        assert [h[key] for h in rows] == pytest.approx(m["snn"][src])
    steps = {mt.name: mt.step_metric for mt in run.metrics}
    assert steps["snn/test_acc"] == steps["snn/power_mw"] == "snn/timestep"
    assert not any(k.startswith("snn/test_acc_t") for h in run.history for k in h)  # no per-t scalars any more
    # the accuracy-over-T table and the per-layer spikes table
    table = run.table("tables/over_t")
    col = {c: i for i, c in enumerate(table["columns"])}
    assert [r[col["timestep"]] for r in table["data"]] == [1, 2]
    assert [r[col["test_acc"]] for r in table["data"]] == pytest.approx(m["snn"]["test_acc"])
    layers = run.table("tables/layer_spikes")
    assert len(layers["data"]) == 2 * len(m["snn"]["layer_spikes"])
    name, spikes = next(iter(m["snn"]["layer_spikes"].items()))
    assert [r[2] for r in layers["data"] if r[0] == name] == pytest.approx(spikes)
    assert run.summary["snn_at"]["t1"]["test_acc"] == m["snn"]["test_acc"][0]
    # the W&B id is the one kept in the run folder (a resumed job reuses it)
    assert run.run.run_id == (job / "wandb_id").read_text().strip()


def test_result_table_printed_last_and_written(sweep):
    job = sweep["jobs"][1]
    summary = (job / "summary.txt").read_text()
    assert "QANN test accuracy" in summary and str(job) in summary
    assert sweep["stdout"].rstrip().endswith(summary.rstrip())  # last job's table is the last thing printed
    assert "Run history" not in sweep["stdout"]


def test_sweep_runs_named_and_grouped(sweep):
    a, b = (r.run for r in sweep["train"])
    assert a.display_name != b.display_name
    assert "-a-0.25-" in a.display_name and "-a-0.5-" in b.display_name
    assert a.display_name.startswith("resnet20-synthetic-pmsm-") and a.display_name.endswith("-s42")
    # the keys the sweep overrides (paths.log_dir left out), the same for both jobs
    assert a.run_group == b.run_group == \
        "sweep-data,data.image_size,data.test_size,data.train_size,epochs,optim.lr,pqa.alpha,snn.timesteps"
    assert a.job_type == b.job_type == "train"
    assert {"resnet20", "synthetic", "pmsm", "alpha=-0.25"} <= set(a.tags) and "alpha=-0.5" in b.tags


def test_convert_uses_the_training_checkpoint_artifact(sweep):
    train, conv = sweep["train"][0], sweep["convert"]
    ckpt = sweep["ckpt"].resolve()
    # training logged its checkpoints as artifact checkpoint-<id>, alias = file stem
    versions = [a for a in train.artifacts if a.type == "model"]
    assert {a.name for a in versions} == {f"checkpoint-{train.run.run_id}"}
    last = next(a for a in versions if "last" in a.aliases)
    entry = last.manifest.contents[0]
    assert entry.ref == ckpt.as_uri()
    import base64
    import hashlib
    assert entry.digest == base64.b64encode(hashlib.md5(ckpt.read_bytes()).digest()).decode()
    # the convert run names that artifact version, the file and its digest (W&B refuses use_artifact offline)
    c = conv.config
    assert c["checkpoint.artifact"] == f"checkpoint-{train.run.run_id}:last"
    assert c["checkpoint.path"] == str(ckpt) and c["checkpoint.md5"] == entry.digest
    assert c["checkpoint.train_run_id"] == train.run.run_id
    # ... carries the training run's config, sits in its group, named after its sweep values
    assert c["optim.lr"] == 0.05 and c["pqa.alpha"] == -0.25 and c["epochs"] == 1
    assert conv.run.job_type == "convert" and conv.run.run_group == train.run.run_group
    assert "-a-0.25-" in conv.run.display_name
    assert not [a for a in conv.artifacts if a.type == "model"]


def test_sync_plan_lists_runs_and_lineage(sweep):
    from pmsm_exp.runs.tracking import sync
    plan = sync([sweep["sweep_dir"], sweep["convert_dir"]], dry_run=True)
    train_dirs = {str(r.dir.resolve()) for r in sweep["train"]}
    words = plan[0].split(" ")
    # training runs first (in start-time order, which two jobs started in the same second leave open), then
    # the convert run that uses their checkpoint artifact
    assert words[:2] == ["wandb", "sync"] and len(words) == 5
    assert set(words[2:4]) == train_dirs and words[4] == str(sweep["convert"].dir.resolve())
    assert plan[1:] == [f"link pmsm-exp/{sweep['convert'].run.run_id} uses checkpoint-{sweep['train'][0].run.run_id}:last"]


def test_convert_images_and_conversion_error_table(sweep):
    conv, run_dir = sweep["convert"], sweep["convert_dir"]
    analysis = metrics(run_dir)["analysis"]
    images = {k: v for h in conv.history for k, v in h.items() if isinstance(v, dict) and v.get("_type") == "image-file"}
    assert set(images) == {"analysis/layer_spikes", "analysis/conversion_error", "analysis/accuracy_over_time"}
    assert all(v.get("caption") for v in images.values())
    table = conv.table("tables/conversion_error")
    layer, info = next((n, v) for n, v in analysis["layers"].items() if v["conversion_error"])
    assert [r[2] for r in table["data"] if r[0] == layer] == pytest.approx(info["conversion_error"])
    assert [r[2] for r in table["data"] if r[0] == "mean"] == pytest.approx(analysis["conversion_error_mean"])
    rows = [h for h in conv.history if "snn/timestep" in h]
    assert [h["analysis/conversion_error_mean"] for h in rows] == pytest.approx(analysis["conversion_error_mean"])


@pytest.mark.parametrize("logger", ["none", "csv"])
def test_train_and_convert_without_wandb(logger, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError: as if not installed
    hydra_job("train.py", *TINY, f"logger={logger}", log_dir=tmp_path)
    run_dir = next((tmp_path / "train" / "runs").iterdir())
    hydra_job("convert.py", f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}", "snn.timesteps=2", f"logger={logger}",
              log_dir=tmp_path)
    convert_dir = next((tmp_path / "convert" / "runs").iterdir())
    for d in (run_dir, convert_dir):
        assert metrics(d)["snn"]["timesteps"] == [1, 2] and (d / "summary.txt").is_file()
        assert not (d / "wandb").exists()
        assert (d / "csv").is_dir() == (logger == "csv")


def test_run_name_keeps_what_tells_runs_apart():
    from pmsm_exp.runs.tracking import run_name
    overrides = ["model=resnet20", "data=cifar10", "pqa.alpha=-0.25", "trainer=gpu", "data.num_workers=8",
                 "paths.log_dir=/x", "seed=42", "snn.timesteps=4", "snn.timesteps=8"]
    assert run_name("resnet20", "cifar10", "pmsm", overrides, 42) == "resnet20-cifar10-pmsm-a-0.25-T8-s42"


def test_run_config_flattens_and_records_entropy_choice():
    from pmsm_exp.jobs.builders import resolve_pqa
    from pmsm_exp.runs.tracking import run_config
    pqa = resolve_pqa({"method": "pmsm", "kind": "pqa", "levels": 8, "alpha": "auto", "beta": 1.0,
                       "threshold": 8.0, "neuron": "aif"})
    model = torch.nn.Linear(3, 2)
    flat = run_config({"optim": {"lr": 0.1, "distill": {"teacher": None}}, "epochs": 5, "pqa": pqa}, model,
                      trained={"optim": {"lr": 0.2, "momentum": 0.9}, "epochs": 600})
    assert flat["optim.lr"] == 0.1 and flat["optim.momentum"] == 0.9 and flat["epochs"] == 600
    assert flat["optim.distill.teacher"] is None and flat["params.total"] == 3 * 2 + 2
    assert flat["pqa.alpha"] == pqa["alpha"] and flat["pqa.entropy_choice.auto"] == ["alpha"]
    assert abs(flat["pqa.entropy_choice.ratio"] - 1) < 0.05


def test_report_table_run(tmp_path, monkeypatch):
    from pmsm_exp.runs.tracking import log_report_table
    monkeypatch.setenv("WANDB_MODE", "offline")
    rows = [{"model": "vgg16", "method": "pmsm", "acc_t1": 0.93}, {"model": "vgg16", "method": "qcfs", "acc_t8": 0.9}]
    run_dir = log_report_table("table1", rows, group="table1_vgg16_cifar10", out_dir=tmp_path)
    (run,) = offline_runs(tmp_path)
    assert str(run.dir) == run_dir
    assert (run.run.job_type, run.run.run_group, run.run.display_name) == ("report", "table1_vgg16_cifar10",
                                                                           "report-table1")
    assert run.table("report/table1") == {"columns": ["model", "method", "acc_t1", "acc_t8"],
                                          "data": [["vgg16", "pmsm", 0.93, None], ["vgg16", "qcfs", None, 0.9]]}


def test_job_rerun_in_its_folder_continues_its_wandb_run(sweep, tmp_path):
    """What a resumed job does: run again in its own folder (here a copy of sweep job 1)."""
    import shutil
    sweep_copy = tmp_path / "sweep-copy"
    shutil.copytree(sweep["jobs"][1], sweep_copy / "1", ignore=shutil.ignore_patterns("wandb", "checkpoints", "metrics.json"))
    hydra_job("train.py", *TINY, "optim.lr=0.05", "pqa.alpha=-0.5", f"hydra.run.dir={sweep_copy / '1'}",
              log_dir=tmp_path)
    (rerun,) = offline_runs(sweep_copy / "1" / "wandb")
    first = sweep["train"][1].run
    assert rerun.run.run_id == first.run_id and rerun.run.display_name == first.display_name
    assert rerun.run.run_group == first.run_group and first.run_group.startswith("sweep-")
