"""Every number says which code, data, machine and time made it; no published file names this machine;
resuming from what is not there, or from a truncated checkpoint, ends in one line."""
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from test_bad_inputs import TINY, message_lines, run_inprocess
from test_gpu_switches import run_script

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    logs = tmp_path_factory.mktemp("logs")
    mp = pytest.MonkeyPatch()
    metrics = run_script("train", [*TINY, "data.train_size=48", "data.test_size=40"], logs, mp)
    mp.undo()
    return metrics, logs


def test_metrics_say_which_code_data_machine_and_time(tiny_run):
    metrics, logs = tiny_run
    p = metrics["provenance"]
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert p["git_commit"] == head and isinstance(p["git_dirty"], bool)
    assert p["versions"]["torch"] == torch.__version__ and p["versions"]["python"] == sys.version.split()[0]
    assert {"torchvision", "lightning", "hydra-core", "timm", "pmsm_exp"} <= {k for k, v in p["versions"].items() if v}
    assert p["machine"]["threads"] == torch.get_num_threads() and "gpu" in p["machine"] and p["machine"]["cpu"]
    assert p["started"] <= p["finished"] and p["started"].endswith("+00:00") and p["wall_s"] > 0
    assert p["command"].startswith("python train.py ") and "epochs=1" in p["command"]
    data = metrics["data"]
    assert data["test_images"] == 40 and data["train_images"] == 48 and re.fullmatch(r"[0-9a-f]{16}", data["fingerprint"])
    training = metrics["training"]
    assert training["epochs"] == 1 and training["steps"] >= 1 and training["wall_s"] > 0
    assert training["final_train_loss"] > 0 and training["lr_schedule"]["peak_lr"] == metrics["config"]["optim"]["lr"]
    assert metrics["config"]["optim"]["momentum"] == 0.9 and metrics["config"]["seed"] == 42
    # no path of this machine in the record: relative to the log root
    assert str(logs) not in json.dumps(metrics)
    assert metrics["run"]["checkpoint"] == f"{metrics['run']['folder']}/checkpoints/last.ckpt"
    assert (logs / metrics["run"]["checkpoint"]).is_file()


def test_same_data_same_fingerprint_other_data_another(tiny_run):
    from pmsm_exp.data import create_datamodule, fingerprint
    metrics, _ = tiny_run
    data = dict(metrics["config"]["data"])   # the recorded config rebuilds the same test set
    for seed, same in ((data["seed"], True), (data["seed"] + 1, False)):
        dm = create_datamodule(**{**data, "seed": seed})
        dm.setup("fit")
        assert (fingerprint(dm.test_set) == metrics["data"]["fingerprint"]) == same


def test_convert_run_carries_its_checkpoints_training_provenance(tiny_run, tmp_path, monkeypatch):
    metrics, logs = tiny_run
    converted = run_script("convert", [f"ckpt_path={logs / metrics['run']['checkpoint']}", "logger=none"],
                           tmp_path, monkeypatch)
    assert converted["trained"]["provenance"]["git_commit"] == metrics["provenance"]["git_commit"]
    assert converted["trained"]["config"]["optim"] == metrics["config"]["optim"]
    assert converted["provenance"]["command"].startswith("python convert.py ckpt_path=")
    assert converted["data"]["test_images"] == 40


def test_failed_run_records_provenance_too(tmp_path, capsys, monkeypatch):
    code, err = run_inprocess("train", [*TINY, "optim.lr=-1"], tmp_path / "logs", capsys, monkeypatch)
    (path,) = (tmp_path / "logs").rglob("metrics.json")
    recorded = json.loads(path.read_text())
    assert code == 1 and recorded["status"] == "failed" and recorded["provenance"]["git_commit"]
    assert recorded["provenance"]["command"].endswith("paths.log_dir=<logs>")


def test_resume_from_a_missing_path_is_one_line(tmp_path, capsys, monkeypatch):
    code, err = run_inprocess("train", [*TINY, f"resume={tmp_path / 'no-such-run'}"], tmp_path / "logs", capsys,
                              monkeypatch)
    lines = message_lines(err)
    assert code == 1 and "Traceback" not in err and len(lines) == 1, err
    assert "resume" in lines[0] and "no such file or folder" in lines[0]


def test_resume_from_a_truncated_last_checkpoint_is_one_line(tiny_run, tmp_path, capsys, monkeypatch):
    metrics, logs = tiny_run
    run = tmp_path / "run"
    shutil.copytree(logs / metrics["run"]["folder"], run)
    (run / "metrics.json").unlink()
    last = run / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])   # a kill in the middle of a save
    code, err = run_inprocess("train", [*TINY, "data.train_size=48", "data.test_size=40", f"resume={run}"],
                              tmp_path / "logs", capsys, monkeypatch)
    lines = message_lines(err)
    assert code == 1 and "Traceback" not in err and len(lines) == 1, err
    assert "last.ckpt" in lines[0] and "unreadable" in lines[0] and "delete it" in lines[0]


def test_an_unreadable_last_checkpoint_gives_way_to_a_readable_one(tiny_run, tmp_path, capsys):
    from pmsm_exp.runs.folders import resume_checkpoint
    metrics, logs = tiny_run
    run = tmp_path / "run"
    shutil.copytree(logs / metrics["run"]["folder"], run)
    shutil.copy(run / "checkpoints" / "last.ckpt", run / "hpc_ckpt_1.ckpt")
    (run / "checkpoints" / "last.ckpt").write_bytes(b"\x80\x02truncated")
    assert resume_checkpoint(None, run) == str(run / "hpc_ckpt_1.ckpt")
    assert "unreadable" in capsys.readouterr().out


def test_checkpoints_are_written_atomically(tmp_path, monkeypatch):
    """A save killed half-way leaves the previous file whole (Lightning's own save writes in place)."""
    from pmsm_exp.engine import checkpoint_io
    target = tmp_path / "last.ckpt"
    checkpoint_io.atomic_save({"step": 1}, target)

    def dies(obj, f):
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint_io.torch, "save", dies)
    with pytest.raises(KeyboardInterrupt):
        checkpoint_io.atomic_save({"step": 2}, target)
    assert torch.load(target, weights_only=True) == {"step": 1} and list(tmp_path.iterdir()) == [target]


MACHINE_PATH = re.compile(r"(^|[^A-Za-z0-9_.])/(work|tmp|home|root|Users|mnt)/[A-Za-z]")   # the stop hook's


def test_no_tracked_file_outside_tests_names_a_path_of_this_machine():
    files = subprocess.run(["git", "-C", str(ROOT), "ls-files"], capture_output=True, text=True).stdout.split()
    found = []
    for name in files:
        if name.startswith("tests/") or not (ROOT / name).is_file():
            continue
        try:
            text = (ROOT / name).read_text()
        except UnicodeDecodeError:
            continue
        found += [f"{name}: {m.group(0)}" for m in MACHINE_PATH.finditer(text)]
    assert not found, "\n".join(found[:20])


PUBLISHED = sorted((ROOT / "results" / "checkpoints").rglob("*.ckpt"))
SHARED_CIFAR = ROOT.parent / "shared" / "data" / "cifar10"


@pytest.fixture(scope="module")
def real_cifar_few(tmp_path_factory):
    """The first 200 test images of the shared CIFAR-10 copy (and 10 training ones), decoded."""
    if not (SHARED_CIFAR / "materialize.py").is_file():
        pytest.skip("no shared CIFAR-10 copy beside the repository")
    out = tmp_path_factory.mktemp("cifar")
    subprocess.run([sys.executable, str(SHARED_CIFAR / "materialize.py"), str(out), "--train", "10", "--test", "200"],
                   check=True, capture_output=True)
    return out


@pytest.mark.parametrize("ckpt", PUBLISHED, ids=[p.stem for p in PUBLISHED])
def test_published_checkpoint_converts_exactly_with_no_other_file(ckpt, real_cifar_few, tmp_path, monkeypatch):
    """A published checkpoint alone is enough for convert.py: at T=1 on real test images a PMSM SNN agrees
    with its QANN on every image, every layer firing (QCFS is not exact at T=1, by design), and the QANN's
    accuracy is that of the checkpoint's weights run here by hand."""
    from pmsm_exp.data import CIFAR10DataModule
    from pmsm_exp.jobs.builders import build_model
    from pmsm_exp.runs.checkpoints import load_checkpoint
    from helpers import assert_every_layer_fired
    metrics = run_script("convert", [f"ckpt_path={ckpt}", f"data.data_dir={real_cifar_few}", "data.num_workers=0",
                                     "data.test_subset=200", "snn.timesteps=1", "logger=none"], tmp_path, monkeypatch)
    config, state, provenance = load_checkpoint(ckpt)
    assert metrics["data"]["test_images"] == 200
    if config["pqa"]["method"] == "pmsm":
        assert metrics["snn"]["agreement"][0] == 1.0
    assert_every_layer_fired(metrics)
    assert provenance and provenance["git_commit"] and metrics["trained"]["provenance"] == provenance
    model = build_model(config["model"], config["pqa"], 10)
    model.load_state_dict(state)
    dm = CIFAR10DataModule(data_dir=str(real_cifar_few), batch_size=200, num_workers=0, test_subset=200)
    dm.setup("test")
    x, y = next(iter(dm.test_dataloader()))
    with torch.no_grad():
        acc = (model.eval()(x).argmax(1) == y).double().mean().item()
    assert metrics["qann"]["test_acc"] == pytest.approx(acc, abs=1e-12)


def test_published_checkpoint_finds_the_data_of_this_machine(real_cifar_few, tmp_path, monkeypatch):
    """A published checkpoint records `<elsewhere>/data`: with no data.data_dir, convert.py reads this
    machine's PMSM_DATA_DIR instead of failing on a folder that exists nowhere."""
    from pmsm_exp.runs.checkpoints import load_checkpoint
    ckpt = next(p for p in PUBLISHED if "pmsm" in p.name)
    config, _, _ = load_checkpoint(ckpt)
    assert config["data"]["data_dir"].startswith("<elsewhere>")
    monkeypatch.setenv("PMSM_DATA_DIR", str(real_cifar_few))
    metrics = run_script("convert", [f"ckpt_path={ckpt}", "data.num_workers=0", "data.test_subset=20",
                                     "snn.timesteps=1", "logger=none"], tmp_path, monkeypatch)
    assert metrics["status"] == "finished" and metrics["data"]["test_images"] == 20


def test_convert_keeps_a_data_folder_that_exists_and_a_given_one(tmp_path):
    from pmsm_exp.jobs.pipeline import data_dir_here
    stored = {"name": "cifar10", "data_dir": str(tmp_path), "batch_size": 128}
    assert data_dir_here(stored, {}, "/here")["data_dir"] == str(tmp_path)
    assert data_dir_here(stored, {"data_dir": "/given"}, "/here")["data_dir"] == "/given"
    assert data_dir_here({**stored, "data_dir": "<elsewhere>/data"}, {"batch_size": 7}, "/here") == \
        {"name": "cifar10", "data_dir": "/here", "batch_size": 7}


def test_published_checkpoints_are_small_and_named_by_their_records():
    for ckpt in PUBLISHED:
        assert ckpt.stat().st_size < 4 * 2 ** 20, ckpt.name     # sweeps/paper.sh: --max-checkpoint-mb 4
        assert set(torch.load(ckpt, weights_only=True)) >= {"state_dict", "pmsm_config", "pmsm_provenance"}
    named = {json.loads(p.read_text())["run"].get("published_checkpoint")
             for p in (ROOT / "results" / "runs").rglob("metrics.json")} - {None}
    assert named == {p.relative_to(ROOT / "results").as_posix() for p in PUBLISHED}


def test_publishing_one_experiment_keeps_the_other_experiments_published_under_the_same_name(tmp_path):
    from test_report import fake_run
    from pmsm_exp.runs import publish
    logs, out = tmp_path / "logs", tmp_path / "results"
    fake_run(logs, "train/multiruns/first/0", "first_round", qann=0.71)
    publish.main(["--logs", str(logs), "--out", str(out), "--under", "recipe"])
    fake_run(logs, "train/multiruns/second/0", "second_round", qann=0.72)
    shutil.rmtree(logs / "train/multiruns/first")         # a new machine: only the new round's logs exist
    publish.main(["--logs", str(logs), "--out", str(out), "--under", "recipe", "--experiment", "second_round"])
    published = {json.loads(p.read_text())["run"]["experiment"]: json.loads(p.read_text())["qann"]["test_acc"]
                 for p in (out / "runs" / "recipe").rglob("metrics.json")}
    assert published == {"first_round": 0.71, "second_round": 0.72}
    # without --experiment the published folder mirrors the logs, as before
    publish.main(["--logs", str(logs), "--out", str(out), "--under", "recipe"])
    assert [p.parent.name for p in (out / "runs" / "recipe").rglob("metrics.json")] == ["0"]
    assert json.loads(next((out / "runs" / "recipe").rglob("metrics.json")).read_text())["qann"]["test_acc"] == 0.72
