"""Hydra composition and the train.py / convert.py entry points, run as a user runs them."""
import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import lightning
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf, open_dict
from torch import nn

from helpers import assert_every_layer_fired
from pmsm_exp.jobs import builders
from pmsm_exp.runs import tracking
from pmsm_exp.jobs.checks import check_train_config, checked_model, job_neuron
from pmsm_exp.snn.conversion import NEURONS
from pmsm_exp.quant import pqa_layers
from pmsm_exp.snn.simulation import check_settings

ROOT = Path(__file__).resolve().parents[1]
CONF = str(ROOT / "conf")
TINY = {"data": "synthetic", "model": "resnet20", "epochs": 2, "data.train_size": 128, "data.test_size": 64,
        "data.batch_size": 32, "snn.timesteps": 3, "trainer.log_every_n_steps": 1}


def tiny(**changes):
    return [f"{k}={v}" for k, v in {**TINY, **{k.replace("__", "."): v for k, v in changes.items()}}.items()]


def group_options(group):
    return sorted(p.stem for p in (ROOT / "conf" / group).glob("*.yaml"))


def run(script, *overrides, log_dir, check=True):
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / script), *overrides, f"paths.log_dir={log_dir}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def compose_train(*overrides):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=True)


def check_option(group, option, cfg):
    """What each group's option must give: something that could fail, for every group."""
    if group == "experiment":
        assert cfg.experiment_name == option  # W&B groups runs by experiment
        cfg.trainer.accelerator = "cpu"       # the GPU recipes are checked on this CPU machine
        pqa = check_train_config(cfg)         # every value valid; model built, its conversion tried
        checked_model(OmegaConf.to_container(cfg.model, resolve=True), pqa, job_neuron(cfg, pqa),
                      builders.num_classes(OmegaConf.to_container(cfg.data, resolve=True)))
    elif group in ("model", "pqa"):
        pqa = builders.resolve_pqa(cfg.pqa)
        model = builders.build_model(cfg.model, pqa, 10)
        assert [m for m in model.modules() if isinstance(m, nn.Linear)][-1].out_features == 10
        quantizers = pqa_layers(model)
        if cfg.pqa.kind == "relu":
            assert not quantizers and any(isinstance(m, nn.ReLU) for m in model.modules())
        else:
            signed = [q for q in quantizers.values() if q.alpha != 0 or cfg.pqa.alpha == 0]
            assert signed and all((q.levels, q.alpha, q.beta) == (cfg.pqa.levels, cfg.pqa.alpha, cfg.pqa.beta)
                                  for q in signed)
    elif group == "data":
        dm = builders.build_datamodule(cfg.data)
        assert type(dm).__name__.lower() == f"{option}datamodule" and dm.batch_size == cfg.data.batch_size
    elif group == "snn":
        check_settings(cfg.snn.timesteps, "static", "mean")
        assert cfg.snn.neuron in (None, *NEURONS)
    elif group == "trainer":
        if option == "cpu" or torch.cuda.is_available():
            trainer = builders.build_trainer(cfg, [])
            assert trainer.max_epochs == cfg.epochs and trainer.world_size >= 1
        assert cfg.trainer.accelerator == ("cpu" if option in ("cpu", "ddp_cpu") else "gpu")
        if option.startswith("ddp"):
            assert cfg.trainer.strategy == "ddp"
        if option == "ddp":
            assert cfg.trainer.sync_batchnorm
    elif group == "logger":
        built = builders.build_loggers(cfg)
        assert all(isinstance(b, lightning.pytorch.loggers.Logger) for b in built)
        assert {type(b).__name__.lower().removesuffix("logger") for b in built} == ({option} - {"none"})
    elif group == "callbacks":
        built = builders.build_callbacks(cfg, validation=True)
        assert all(isinstance(b, lightning.Callback) for b in built)
        checkpoints = [b for b in built if isinstance(b, lightning.pytorch.callbacks.ModelCheckpoint)]
        assert any(c.filename == "last" and not c.monitor for c in checkpoints)  # what convert.py and resume need
        # without a validation split nothing may be chosen on a metric (it would be the test set's)
        assert not any(getattr(b, "monitor", None) for b in builders.build_callbacks(cfg, validation=False))


@pytest.mark.parametrize("group", ["model", "data", "pqa", "snn", "trainer", "logger", "callbacks", "experiment"])
def test_every_option_composes(group, tmp_path):
    for option in group_options(group):
        cfg = compose_train(f"{group}={option}", f"paths.data_dir={tmp_path}")
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(tmp_path)  # as in a job (checkpoint folders, W&B id file)
        HydraConfig.instance().set_config(cfg)
        cfg.paths.output_dir = str(tmp_path)
        check_option(group, option, cfg)
    tracking.close()


def entropy_ratio_reference(levels, lam, alpha, beta):
    """H(k)/H(BN) for k = clamp(floor(zL/lam + 1/2), aL, bL), z ~ N(0, 1), written out here."""
    cdf = lambda x: 0.5 * (1 + math.erf(x / math.sqrt(2)))  # noqa: E731
    d, lo, hi = lam / levels, round(alpha * levels), round(beta * levels)
    probs = [cdf(math.inf if k == hi else (k + 0.5) * d) - cdf(-math.inf if k == lo else (k - 0.5) * d)
             for k in range(lo, hi + 1)]
    return -sum(p * math.log(p) for p in probs if p > 0) / (0.5 * math.log(2 * math.pi * math.e))


def test_auto_alpha_beta_records_entropy_choice():
    cfg = compose_train("pqa.alpha=auto", "pqa.beta=1.0")
    pqa = builders.resolve_pqa(cfg.pqa)
    grid = [-0.125 * i for i in range(1, 9)]
    ratios = {a: entropy_ratio_reference(8, 8.0, a, 1.0) for a in grid}
    closest = min(grid, key=lambda a: abs(ratios[a] - 1))
    assert pqa["alpha"] == closest and pqa["beta"] == 1.0
    assert pqa["entropy_choice"]["ratio"] == pytest.approx(ratios[closest], abs=1e-9)
    assert pqa["entropy_choice"]["auto"] == ["alpha"]


@pytest.fixture(scope="module")
def train_run(tmp_path_factory):
    logs = tmp_path_factory.mktemp("logs")
    proc = run("train.py", *tiny(analysis="full", analysis__max_batches=1), log_dir=logs)
    run_dir = next((logs / "train" / "runs").iterdir())
    return run_dir, json.loads((run_dir / "metrics.json").read_text()), proc.stdout


def test_train_writes_metrics_checkpoint_and_wandb(train_run):
    run_dir, metrics, stdout = train_run
    assert set(metrics) == {"status", "run", "qann", "snn", "analysis", "data", "training", "config", "provenance"}
    assert metrics["status"] == "finished"
    r = metrics["run"]
    assert (r["model"], r["data"], r["method"], r["seed"]) == ("resnet20", "synthetic", "pmsm", 42)
    assert r["pqa"]["levels"] == 8 and r["pqa"]["alpha"] == -0.25 and r["pqa"]["beta"] == 1.0
    assert "data=synthetic" in r["overrides"]
    snn = metrics["snn"]
    assert snn["timesteps"] == [1, 2, 3]
    for key in ("test_acc", "agreement", "spikes_per_image", "power_mw"):
        assert len(snn[key]) == 3
    assert all(0 <= a <= 1 for a in snn["test_acc"] + snn["agreement"])
    assert 0 <= metrics["qann"]["test_acc"] <= 1
    assert snn["test_acc"][0] == metrics["qann"]["test_acc"]      # lossless first step
    assert snn["agreement"][0] == 1.0
    assert_every_layer_fired({"snn": snn})
    assert len(snn["layer_spikes"]) == 19 and snn["spikes_per_image"][2] > snn["spikes_per_image"][0] > 0
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert not (run_dir / "checkpoints" / "best.ckpt").exists()  # val_fraction=0: nothing to choose best on
    assert "Traceback" not in (run_dir / "train.log").read_text() and (run_dir / "train.log").stat().st_size > 0
    assert list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert "QANN test accuracy" in stdout and str(run_dir.name) in stdout


@pytest.fixture(scope="module")
def qcfs_run(tmp_path_factory):
    """A second, different run: the QCFS baseline (IF neurons), trained and analysed."""
    logs = tmp_path_factory.mktemp("qcfs")
    run("train.py", *tiny(pqa="qcfs", analysis="full", analysis__max_batches=1), log_dir=logs)
    run_dir = next((logs / "train" / "runs").iterdir())
    return run_dir, json.loads((run_dir / "metrics.json").read_text())


@pytest.fixture(scope="module")
def aif_on_qcfs_run(qcfs_run, tmp_path_factory):
    """The QCFS checkpoint converted with AIF neurons instead of its IF ones (a CNN takes no
    total-bounded neuron: checks.py refuses stbif and aif_bounded there)."""
    run_dir, _ = qcfs_run
    logs = tmp_path_factory.mktemp("aif_on_qcfs")
    run("convert.py", f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}", "snn.neuron=aif", "snn.timesteps=2",
        "logger=none", log_dir=logs)
    return json.loads(next(logs.rglob("metrics.json")).read_text())


def test_train_with_analysis_writes_files(train_run, qcfs_run, tmp_path):
    run_dir, metrics, _ = train_run
    analysis = metrics["analysis"]
    assert analysis["conversion_error_mean"][0] <= 1e-6 < analysis["spikes_up_to"][0]
    for name in ("energy.json", "layer_spikes.csv", "conversion_error.csv", "layer_spikes.png"):
        assert (run_dir / "analysis" / name).stat().st_size > 0
    from pmsm_exp.analysis import compare
    other_dir, other = qcfs_run
    compare.main([f"PMSM={run_dir}", f"QCFS={other_dir}", "--out", str(tmp_path)])
    with open(tmp_path / "energy_comparison.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["method"], r["T"]) for r in rows] == [(m, str(t)) for t in (1, 2, 3) for m in ("PMSM", "QCFS")]
    runs = {"PMSM": analysis, "QCFS": other["analysis"]}
    for r in rows:
        i = int(r["T"]) - 1
        assert float(r["power_mw"]) == pytest.approx(runs[r["method"]]["power_mw"][i], rel=1e-6)
        # ratio = baseline (the last run) / this run
        expected = runs["QCFS"]["power_mw"][i] / runs[r["method"]]["power_mw"][i]
        assert float(r["ratio"]) == pytest.approx(expected, rel=1e-6)
    assert analysis["power_mw"][0] != other["analysis"]["power_mw"][0]  # two different runs


def test_convert_reproduces_train_run(train_run, tmp_path):
    run_dir, metrics, _ = train_run
    run("convert.py", f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}", "snn.timesteps=3", log_dir=tmp_path)
    converted = json.loads(next((tmp_path / "convert" / "runs").glob("*/metrics.json")).read_text())
    assert converted["qann"] == metrics["qann"]
    for key in ("test_acc", "agreement", "spikes_per_image"):
        assert converted["snn"][key] == pytest.approx(metrics["snn"][key], rel=1e-6)
    assert converted["run"]["task"] == "convert" and converted["run"]["pqa"] == metrics["run"]["pqa"]


def test_convert_with_another_neuron_is_its_own_method(qcfs_run, aif_on_qcfs_run):
    _, trained = qcfs_run
    converted = aif_on_qcfs_run
    assert converted["run"]["method"] == "qcfs+aif" and converted["run"]["snn"]["neuron"] == "aif"
    assert trained["run"]["snn"]["neuron"] == "if" and converted["qann"] == trained["qann"]
    assert converted["snn"]["agreement"][0] == 1.0     # AIF emits the QCFS quantizer's level at T=1
    assert_every_layer_fired(converted)


def test_multirun_sweeps_alpha(tmp_path):
    run("train.py", "-m", "pqa.alpha=-0.125,-0.25", *tiny(epochs=1, snn__timesteps=2, logger="csv"), log_dir=tmp_path)
    found = sorted(json.loads(p.read_text())["run"]["pqa"]["alpha"]
                   for p in (tmp_path / "train" / "multiruns").glob("*/*/metrics.json"))
    assert found == [-0.25, -0.125]


def shared_cifar10():
    base = Path(os.environ.get("PMSM_SHARED_DATA", ROOT.parent / "shared" / "data")) / "cifar10"
    return base if (base / "materialize.py").is_file() else None


@pytest.mark.skipif(shared_cifar10() is None, reason="real CIFAR-10 files (../shared/data/cifar10) are absent")
def test_real_cifar10_end_to_end(tmp_path):
    subprocess.run([sys.executable, str(shared_cifar10() / "materialize.py"), str(tmp_path / "data"),
                    "--train", "300", "--test", "200"], check=True, capture_output=True)
    run("train.py", "data=cifar10", f"paths.data_dir={tmp_path / 'data'}", "epochs=1", "data.batch_size=100",
        "data.num_workers=0", "snn.timesteps=2", "logger=csv", log_dir=tmp_path / "logs")
    metrics = json.loads(next((tmp_path / "logs").rglob("metrics.json")).read_text())
    assert metrics["run"]["data"] == "cifar10"
    assert metrics["snn"]["agreement"][0] == 1.0
    assert_every_layer_fired(metrics)
    assert metrics["snn"]["test_acc"][0] == metrics["qann"]["test_acc"]


@pytest.mark.parametrize("override, expected", [
    ("model=resnet18", ["resnet20", "vgg16"]),
    ("data=mnist", ["cifar10", "cifar100", "synthetic"]),
    ("pqa=lsq", ["pmsm", "qcfs"]),
])
def test_unknown_option_lists_valid_ones(override, expected, tmp_path):
    proc = run("train.py", override, log_dir=tmp_path, check=False)
    assert proc.returncode != 0
    for name in expected:
        assert name in proc.stderr


# Missing data set, missing/corrupt checkpoint and bad settings (one line, exit 1, before any work):
# tests/test_bad_inputs.py runs those cases in-process, as a table.
