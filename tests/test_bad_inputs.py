"""Every bad input ends in one line naming the key or file, exit code 1, before any work.

The entry points run in-process (train.py's and convert.py's own task functions under
hydra.main, sys.argv patched), which costs a fraction of a second per case instead of a
subprocess each; three cases run as true subprocesses. Set BAD_INPUT_TABLE=FILE to write
the table of input -> message (the closing note's measurement).
"""
import importlib.util
import json
import math
import os
import pickle
import subprocess
import sys
from pathlib import Path

import hydra
import numpy as np
import pytest
import torch

import pmsm_exp.jobs.pipeline  # noqa: F401  (Lightning's log handler binds the stderr of import time: not a capsys one)

ROOT = Path(__file__).resolve().parents[1]
BASE = ["model=resnet20", "logger=none", "epochs=1", "snn.timesteps=1", "+trainer.enable_progress_bar=false"]
TINY = [*BASE, "data=synthetic", "data.train_size=64", "data.test_size=32", "data.batch_size=32"]
CIFAR = [*BASE, "data=cifar10", "data.batch_size=10", "data.num_workers=0"]  # + CIFAR[folder]
# Hydra's framing of a failed job, and Lightning's info line from seeding (data files are read after it)
HYDRA_FRAME = ("Error executing job with overrides", "Set the environment variable HYDRA_FULL_ERROR", "Seed set to ")


def entry_point(script: str):
    """The script's own task function under hydra.main, as `python <script>.py` runs it."""
    spec = importlib.util.spec_from_file_location(f"_{script}_entry", ROOT / f"{script}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return hydra.main(version_base="1.3", config_path=str(ROOT / "conf"), config_name=script)(module.main.__wrapped__)


ENTRY = {}


def run_inprocess(script, overrides, log_dir, capsys, monkeypatch):
    """(exit code, stderr) of one in-process run that is expected to fail."""
    if script not in ENTRY:
        ENTRY[script] = entry_point(script)
    if not any(o.startswith("paths.log_dir=") for o in overrides):
        overrides = [*overrides, f"paths.log_dir={log_dir}"]
    monkeypatch.setattr(sys, "argv", [f"{script}.py", *overrides])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        ENTRY[script]()
    return exc.value.code, capsys.readouterr().err


def message_lines(stderr: str) -> list[str]:
    """stderr without Hydra's own framing lines (job overrides, the HYDRA_FULL_ERROR hint)."""
    return [line for line in stderr.splitlines() if line.strip() and not line.startswith(HYDRA_FRAME)]


# ---------------------------------------------------------------- fixtures
def write_cifar_batch(path: Path, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    with open(path, "wb") as f:
        pickle.dump({"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "labels": list(range(10)) * (n // 10)}, f)


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    """Tiny fake CIFAR-10 folders (torchvision layout): good, truncated batch, text test batch."""
    base = tmp_path_factory.mktemp("cifar")
    roots = {}
    for kind in ("good", "truncated", "text"):
        folder = base / kind / "cifar-10-batches-py"
        folder.mkdir(parents=True)
        for i in range(1, 6):
            write_cifar_batch(folder / f"data_batch_{i}", 20, i)
        write_cifar_batch(folder / "test_batch", 20, 0)
        roots[kind] = base / kind
    truncated = roots["truncated"] / "cifar-10-batches-py" / "data_batch_1"
    truncated.write_bytes(truncated.read_bytes()[:1000])
    (roots["text"] / "cifar-10-batches-py" / "test_batch").write_text("label,pixels\n3,0 0 0\n")
    roots["empty"] = base / "empty"
    roots["empty"].mkdir()
    return roots


class Evil:
    """Unpickling this runs a shell command that leaves a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Checkpoints and paths: one real checkpoint from a tiny training run, and bad ones."""
    base = tmp_path_factory.mktemp("files")
    mp = pytest.MonkeyPatch()
    mp.setattr(sys, "argv", ["train.py", *TINY, "data.train_size=32", f"paths.log_dir={base / 'logs'}"])
    ENTRY.setdefault("train", entry_point("train"))()
    mp.undo()
    good = next((base / "logs").rglob("last.ckpt"))
    out = {"good": good, "missing": base / "none.ckpt", "folder": base, "garbage": base / "garbage.ckpt",
           "foreign": base / "foreign.ckpt", "evil": base / "evil.ckpt", "marker": base / "pwned",
           "a_file": base / "a_file"}
    out["garbage"].write_bytes(b"not a checkpoint at all")
    torch.save({"weight": torch.ones(2)}, out["foreign"])
    torch.save({"state_dict": {}, "pmsm_config": Evil(out["marker"])}, out["evil"])
    out["a_file"].write_text("")
    return out


# ---------------------------------------------------------------- the table
# (id, script, overrides (FILES[...] / CIFAR[...] filled in), fragments the one line must contain)
CASES = [
    ("levels_text", "train", ["pqa.levels=abc"], ["pqa.levels", "'abc'"]),
    ("levels_zero", "train", ["pqa.levels=0"], ["pqa.levels", "positive integer"]),
    ("alpha_off_grid", "train", ["pqa.alpha=-0.3"], ["pqa.alpha", "-0.3"]),
    ("alpha_positive", "train", ["pqa.alpha=0.5"], ["pqa.alpha", "<= 0"]),
    ("beta_zero", "train", ["pqa.beta=0"], ["pqa.beta", "> 0"]),
    ("threshold_negative", "train", ["pqa.threshold=-1"], ["pqa.threshold", "-1"]),
    ("pqa_kind", "train", ["pqa.kind=swish"], ["pqa.kind", "'swish'"]),
    ("seed_text", "train", ["seed=abc"], ["seed", "'abc'"]),
    ("seed_negative", "train", ["seed=-1"], ["seed", "-1"]),
    ("lr_text", "train", ["optim.lr=abc"], ["optim.lr", "'abc'"]),
    ("lr_negative", "train", ["optim.lr=-0.1"], ["optim.lr", "-0.1"]),
    ("optimizer", "train", ["optim.name=adam"], ["optim.name", "sgd, adamw"]),
    ("weight_decay", "train", ["optim.weight_decay=-1"], ["optim.weight_decay", "-1"]),
    ("momentum", "train", ["optim.momentum=2"], ["optim.momentum", "2"]),
    ("scheduler", "train", ["optim.scheduler=step"], ["optim.scheduler", "cosine"]),
    ("batch_size_zero", "train", ["data.batch_size=0"], ["data.batch_size", "0"]),
    ("train_size_zero", "train", ["data.train_size=0"], ["data.train_size", "0"]),
    ("num_workers", "train", ["CIFAR[good]", "data.num_workers=-1"], ["data.num_workers", "-1"]),
    ("train_subset_zero", "train", ["CIFAR[good]", "data.train_subset=0"], ["data.train_subset", "0"]),
    ("chunk_zero", "train", ["snn.chunk=0"], ["snn.chunk", "0"]),
    ("kernels", "train", ["snn.kernels=triton"], ["snn.kernels", "'triton'"]),
    ("fold_bn", "train", ["snn.fold_bn=maybe"], ["snn.fold_bn", "'maybe'"]),
    ("timesteps_zero", "train", ["snn.timesteps=0"], ["snn.timesteps", "0"]),
    ("encoding", "train", ["snn.encoding=rate"], ["snn.encoding", "'rate'"]),
    ("readout", "train", ["snn.readout=max"], ["snn.readout", "'max'"]),
    ("neuron_unknown", "train", ["snn.neuron=lif"], ["snn.neuron", "'lif'"]),
    ("if_needs_alpha_0", "train", ["snn.neuron=if"], ["snn.neuron", "alpha=0"]),
    ("relu_cannot_convert", "train", ["pqa=relu", "snn.neuron=aif"], ["snn.neuron", "ReLU"]),
    ("epochs_zero", "train", ["epochs=0"], ["epochs", "0"]),
    ("warmup_negative", "train", ["optim.warmup_epochs=-1"], ["optim.warmup_epochs", "-1"]),
    ("label_smoothing_one", "train", ["optim.label_smoothing=1.0"], ["optim.label_smoothing", "1.0"]),
    ("quantize_from_last_epoch", "train", ["epochs=2", "optim.quantize_from_epoch=2"],
     ["optim.quantize_from_epoch", "2", "below epochs=2"]),
    ("threshold_lr_scale_zero", "train", ["optim.threshold_lr_scale=0"], ["optim.threshold_lr_scale", "0"]),
    ("nesterov_text", "train", ["optim.nesterov=maybe"], ["optim.nesterov", "'maybe'"]),
    ("ema_decay_one", "train", ["optim.ema_decay=1.0"], ["optim.ema_decay", "1.0"]),
    ("pqa_neuron", "train", ["pqa.neuron=lif"], ["pqa.neuron", "'lif'"]),
    ("noise_negative", "train", ["+data.noise=-1"], ["data.noise", "-1"]),
    ("wandb_checkpoints", "train", ["logger=wandb", "logger.wandb.checkpoints=all"], ["logger.wandb.checkpoints", "'all'"]),
    ("resume_missing", "train", ["resume=no-such-folder/run"], ["resume", "no such file or folder"]),
    ("eval_checkpoint_worst", "train", ["eval_checkpoint=worst"], ["eval_checkpoint", "'worst'"]),
    ("best_without_validation", "train", ["eval_checkpoint=best"], ["eval_checkpoint", "val_fraction"]),
    ("gpu_without_gpu", "train", ["trainer=gpu"], ["trainer.accelerator", "'gpu'"]),
    ("log_dir_under_file", "train", ["FILES[a_file]/logs"], ["paths.log_dir", "a_file"]),
    ("dataset_missing", "train", ["CIFAR[empty]"], ["data_batch_1"]),
    ("truncated_batch", "train", ["CIFAR[truncated]"], ["data_batch_1"]),
    ("text_test_batch", "train", ["CIFAR[text]"], ["test_batch"]),
    ("ckpt_path_missing_value", "convert", [], ["ckpt_path", "missing"]),
    ("ckpt_not_found", "convert", ["FILES[missing]"], ["ckpt_path", "none.ckpt"]),
    ("ckpt_is_folder", "convert", ["FILES[folder]"], ["ckpt_path", "folder"]),
    ("ckpt_garbage", "convert", ["FILES[garbage]"], ["ckpt_path", "garbage.ckpt"]),
    ("ckpt_foreign", "convert", ["FILES[foreign]"], ["foreign.ckpt", "not a pmsm-exp checkpoint"]),
    ("ckpt_runs_code", "convert", ["FILES[evil]"], ["evil.ckpt", "posix.system", "refused"]),
    ("convert_other_dataset", "convert", ["FILES[good]", "+data.name=cifar10"], ["data.name", "'synthetic'"]),
    ("convert_unknown_data_key", "convert", ["FILES[good]", "+data.train_sizee=3"], ["data.train_sizee"]),
    ("convert_batch_size_zero", "convert", ["FILES[good]", "data.batch_size=0"], ["data.batch_size", "0"]),
    ("convert_if_on_pmsm", "convert", ["FILES[good]", "snn.neuron=if"], ["snn.neuron", "alpha=0"]),
    ("convert_chunk_zero", "convert", ["FILES[good]", "snn.chunk=0"], ["snn.chunk", "0"]),
    # a total-bounded neuron or input-once encoding on a CNN: the SNN would fall to chance over T
    ("bounded_neuron_on_cnn", "train", ["snn.neuron=aif_bounded"], ["snn.neuron", "'aif_bounded'", "use aif"]),
    ("convert_stbif_on_cnn", "convert", ["FILES[good]", "snn.neuron=stbif"], ["snn.neuron", "'stbif'", "use aif"]),
    ("first_encoding_on_cnn", "train", ["snn.encoding=first"], ["snn.encoding", "'first'", "'static'"]),
    ("static_encoding_on_vit", "train", ["model=vit_tiny", "pqa=pmsm_vit", "snn.encoding=static"],
     ["snn.encoding", "'static'", "'first'"]),
]


def fill(overrides, files, cifar):
    out = []
    for o in overrides:
        if o.startswith("FILES["):
            key, rest = o[6:].split("]", 1)
            out.append(("paths.log_dir=" if rest else "ckpt_path=") + f"{files[key]}{rest}")
        elif o.startswith("CIFAR["):
            out.append(f"paths.data_dir={cifar[o[6:-1]]}")
        else:
            out.append(o)
    return out


@pytest.mark.parametrize("name, script, overrides, fragments", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_naming_it(name, script, overrides, fragments, request, tmp_path, capsys,
                                         monkeypatch):
    if name == "gpu_without_gpu" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    needs = lambda prefix: any(o.startswith(prefix) for o in overrides)  # noqa: E731  (fixtures only when used)
    args = fill(overrides, request.getfixturevalue("files") if needs("FILES[") else None,
                request.getfixturevalue("cifar") if needs("CIFAR[") else None)
    base = [] if script == "convert" else CIFAR if needs("CIFAR[") else TINY
    code, err = run_inprocess(script, base + args, tmp_path / "logs", capsys, monkeypatch)
    lines = message_lines(err)
    if os.environ.get("BAD_INPUT_TABLE"):
        with open(os.environ["BAD_INPUT_TABLE"], "a") as table:
            table.write(f"| {script} {' '.join(overrides)} | {code} | {' / '.join(lines)} |\n")
    assert code == 1, err
    assert "Traceback" not in err and len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    # refused before any work: no checkpoint, no logger folders; the job is recorded as failed
    run_dirs = list((tmp_path / "logs").rglob("*"))
    assert not [p for p in run_dirs if p.suffix == ".ckpt" or p.name in ("csv", "wandb")]
    for path in (p for p in run_dirs if p.name == "metrics.json"):
        recorded = json.loads(path.read_text())
        assert recorded["status"] == "failed" and recorded["error"] == lines[0].removeprefix("error: ")


def test_crafted_checkpoint_never_runs(files, tmp_path, capsys, monkeypatch):
    code, err = run_inprocess("convert", [f"ckpt_path={files['evil']}"], tmp_path, capsys, monkeypatch)
    assert code == 1 and "refused" in err
    assert not files["marker"].exists()
    # the file is truly malicious: the unsafe load the project used to do runs its command
    torch.load(files["evil"], weights_only=False)
    assert files["marker"].exists()
    files["marker"].unlink()


def test_batch_size_zero_creates_no_logger_folders(tmp_path, capsys, monkeypatch):
    code, err = run_inprocess("train", [*TINY, "logger=csv", "data.batch_size=0"], tmp_path, capsys, monkeypatch)
    assert code == 1 and "data.batch_size" in err
    assert not [p for p in tmp_path.rglob("*") if p.name in ("csv", "wandb")]


def test_logger_none_drops_the_lr_monitor(tmp_path, files):
    # the module fixture `files` trained with logger=none and the default callbacks (LR monitor)
    metrics = json.loads(next(files["good"].parents[1].glob("metrics.json")).read_text())
    assert 0 <= metrics["qann"]["test_acc"] <= 1


def test_own_checkpoints_load_weights_only(files):
    ckpt = torch.load(files["good"], map_location="cpu", weights_only=True)
    assert ckpt["pmsm_config"]["model"]["name"] == "resnet20"


# ---------------------------------------------------------------- divergence
def strict_json(path: Path) -> dict:
    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")
    return json.loads(path.read_text(), parse_constant=refuse)


def test_divergence_stops_with_status_diverged(tmp_path, capsys, monkeypatch):
    code, err = run_inprocess("train", [*TINY, "epochs=2", "optim.lr=1e6"], tmp_path, capsys, monkeypatch)
    assert code == 1
    lines = message_lines(err)
    assert len(lines) == 1 and "Traceback" not in err and "diverged" in lines[0] and "global step" in lines[0], err
    metrics = strict_json(next(tmp_path.rglob("metrics.json")))
    assert metrics["status"] == "diverged" and "global step" in metrics["error"]
    for ckpt in tmp_path.rglob("*.ckpt"):  # whatever is on disk holds finite weights
        state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()), ckpt


def test_divergence_callback_refuses_a_nonfinite_checkpoint():
    from pmsm_exp.engine.callbacks import StopOnDivergence
    from pmsm_exp.errors import DivergedError

    class Trainer:
        global_step, current_epoch, optimizers = 7, 0, []

    trainer, cb = Trainer(), StopOnDivergence()
    cb.on_save_checkpoint(trainer, None, {"state_dict": {"w": torch.ones(3)}})
    with pytest.raises(DivergedError, match="step 7"):
        cb.on_save_checkpoint(trainer, None, {"state_dict": {"w": torch.tensor([1.0, math.inf])}})
    # a loss is read when the next step's forward is queued (no GPU stall); the message names its own step
    cb.on_before_backward(trainer, None, torch.tensor(1.0))
    trainer.global_step = 8
    cb.on_before_backward(trainer, None, torch.tensor(math.nan))
    trainer.global_step = 9
    with pytest.raises(DivergedError, match="global step 8"):
        cb.on_before_backward(trainer, None, torch.tensor(1.0))
    cb.on_before_backward(trainer, None, torch.tensor(math.inf))  # or at the latest before a checkpoint
    with pytest.raises(DivergedError, match="global step 9"):
        cb.on_save_checkpoint(trainer, None, {"state_dict": {"w": torch.ones(3)}})


def test_divergence_callback_stops_at_an_epoch_end_with_a_threshold_at_or_below_zero():
    from torch import nn

    from pmsm_exp.engine.callbacks import StopOnDivergence
    from pmsm_exp.errors import DivergedError
    from pmsm_exp.quant.pqa import PQA

    class Trainer:
        global_step, current_epoch, optimizers = 40, 2, []

    model = nn.Sequential(nn.Linear(2, 2), PQA(8, -0.25, 1.0, 2.0), nn.Linear(2, 2), PQA(8, -0.25, 1.0, 2.0))
    cb = StopOnDivergence()
    cb.on_train_epoch_end(Trainer(), model)               # healthy thresholds: nothing happens
    with torch.no_grad():
        model[3].threshold.fill_(-0.5)
    with pytest.raises(DivergedError, match=r"^training diverged: learned threshold 3.threshold = -0.5 <= 0 at the "
                                            r"end of epoch 2 \(global step 40\).*optim.threshold_floor"):
        cb.on_train_epoch_end(Trainer(), model)
    with torch.no_grad():
        model[3].threshold.fill_(0.0)
    with pytest.raises(DivergedError, match="3.threshold = 0 <= 0"):
        cb.on_train_epoch_end(Trainer(), model)


# ---------------------------------------------------------------- true subprocesses
def run_script(*args, cwd):
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, str(ROOT / args[0]), *args[1:]], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args, fragment", [
    (["train.py", "pqa.levels=abc"], "pqa.levels: got 'abc'"),
    (["convert.py"], "ckpt_path: missing"),
], ids=["train_levels_text", "convert_without_ckpt_path"])
def test_bad_input_as_a_user_runs_it(args, fragment, tmp_path):
    proc = run_script(*args, f"paths.log_dir={tmp_path}", cwd=tmp_path)
    lines = message_lines(proc.stderr)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1 and fragment in lines[0], proc.stderr


@pytest.mark.parametrize("value", [0, 1.5, "x"])
def test_imagenet_crop_pct_outside_its_range_is_one_line(value):
    from pmsm_exp.data import create_datamodule
    from pmsm_exp.errors import UserError
    with pytest.raises(UserError, match=rf"^data\.crop_pct: got {value!r}; allowed: a number in \(0, 1\]$"):
        create_datamodule("imagenet", crop_pct=value, data_dir="no-such-imagenet")
