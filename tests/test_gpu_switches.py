"""The GPU path's switches, checked on a CPU: model.channels_last, model.compile,
trainer=gpu's defaults (bf16-mixed, channels_last, data.on_device=auto) and their checks.

References are independent of the code under test: the same network in the default
(contiguous) memory order, an eager training step, a model rebuilt from the checkpoint and
evaluated by hand, torch's own autocast state."""
import copy
import importlib.util
import json
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import hydra
import pytest
import torch
from hydra import compose, initialize_config_dir
from torch import nn

from helpers import random_qann, randomize, assert_every_layer_fired
from pmsm_exp.engine import evaluation, switches as speed, training
from pmsm_exp.jobs.checks import check_model_switches, check_train_config
from pmsm_exp.snn.conversion import convert_to_snn
from pmsm_exp.data import CIFAR10DataModule, SyntheticDataModule
from pmsm_exp.errors import UserError
from pmsm_exp.snn.folding import fold_batchnorm
from pmsm_exp.models import create_model
from pmsm_exp.quant import PQA
from pmsm_exp.snn.simulation import simulate

ROOT = Path(__file__).resolve().parents[1]
CL = torch.channels_last
TINY = ["model=resnet20", "logger=none", "epochs=1", "snn.timesteps=2", "+trainer.enable_progress_bar=false",
        "data=synthetic", "data.train_size=64", "data.test_size=32", "data.batch_size=32"]


def conv_weights(model):
    return [m.weight for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1)]


def compose_cfg(name, *overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(name, overrides=list(overrides))


def run_script(script, overrides, log_dir, monkeypatch):
    """train.py / convert.py's own task function in this process, as `python <script>.py` runs it."""
    spec = importlib.util.spec_from_file_location(f"_{script}_gpu_switches", ROOT / f"{script}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    main = hydra.main(version_base="1.3", config_path=str(ROOT / "conf"), config_name=script)(module.main.__wrapped__)
    monkeypatch.setattr(sys, "argv", [f"{script}.py", *overrides, f"paths.log_dir={log_dir}"])
    main()
    return json.loads(next(Path(log_dir).rglob("metrics.json")).read_text())


# ---------------------------------------------------------------- channels_last
@pytest.mark.parametrize("arch", ["resnet20", "vgg16"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_channels_last_snn_first_step_equals_its_quantized_ann(arch, dtype):
    qann = speed.to_channels_last(random_qann(arch, 8, -0.25, 1.0, seed=8).to(dtype))
    assert all(w.is_contiguous(memory_format=CL) and not w.is_contiguous() for w in conv_weights(qann))
    x = speed.as_input(torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=dtype), True)
    assert x.is_contiguous(memory_format=CL) and not x.is_contiguous()
    with torch.no_grad():
        logits = qann(x)
    snn = convert_to_snn(qann)
    assert all(w.is_contiguous(memory_format=CL) for w in conv_weights(snn))  # the SNN keeps the layout
    result = simulate(snn, x, timesteps=3)
    assert torch.equal(result.outputs[0], logits)
    assert sum(c[0].item() for c in result.spike_counts.values()) > 0


def test_channels_last_with_folded_batchnorm_first_step_exact():
    qann, _ = fold_batchnorm(random_qann("resnet20", 8, -0.5, 1.0, seed=6), torch.zeros(1, 3, 32, 32))
    qann = speed.to_channels_last(qann)
    x = speed.as_input(torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(7)), True)
    with torch.no_grad():
        logits = qann(x)
    assert torch.equal(simulate(convert_to_snn(qann), x, timesteps=2, chunk=1).outputs[0], logits)


@pytest.mark.parametrize("arch", ["resnet20", "vgg16"])
def test_channels_last_changes_the_layout_not_the_values(arch):
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    # the QANN in float64: rounding differences (1e-16) cannot move a value across a level boundary
    ref = random_qann(arch, 8, -0.25, 1.0, seed=3).double()
    fast = speed.to_channels_last(copy.deepcopy(ref))
    with torch.no_grad():
        torch.testing.assert_close(fast(speed.as_input(x.double(), True)), ref(x.double()), rtol=1e-10, atol=1e-10)
    # float32 with ReLU (nothing to round to a level): float tolerance
    torch.manual_seed(4)
    relu = randomize(create_model(arch, 10, nn.ReLU), torch.Generator().manual_seed(4))
    fast = speed.to_channels_last(copy.deepcopy(relu))
    with torch.no_grad():
        expected, got = relu(x), fast(speed.as_input(x, True))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_channels_last_bf16_mixed_run_trains_in_autocast_and_evaluates_exactly_in_float32(tmp_path, monkeypatch):
    seen = {"train": [], "test": []}
    train_step, test_step = training.QANNModule.training_step, evaluation.EvalModule.test_step

    def probe_train(self, batch, i):
        inputs = []
        hook = self.model.register_forward_pre_hook(lambda m, args: inputs.append(args[0]))
        loss = train_step(self, batch, i)
        hook.remove()
        seen["train"].append((torch.is_autocast_enabled("cpu"), inputs[0].is_contiguous(memory_format=CL),
                              all(w.is_contiguous(memory_format=CL) for w in conv_weights(self.model))))
        return loss

    def probe_test(self, batch, i):
        weights = conv_weights(self.snn)
        seen["test"].append((torch.is_autocast_enabled("cpu"), all(w.is_contiguous(memory_format=CL) for w in weights)))
        return test_step(self, batch, i)

    monkeypatch.setattr(training.QANNModule, "training_step", probe_train)
    monkeypatch.setattr(evaluation.EvalModule, "test_step", probe_test)
    metrics = run_script("train", [*TINY, "model.channels_last=true", "trainer.precision=bf16-mixed"],
                         tmp_path / "logs", monkeypatch)
    assert seen["train"] == [(True, True, True)] * 2   # autocast, channels_last inputs and weights
    assert seen["test"] and all(s == (False, True) for s in seen["test"])  # float32, channels_last SNN
    assert metrics["snn"]["agreement"][0] == 1.0 and metrics["snn"]["test_acc"][0] == metrics["qann"]["test_acc"]
    assert_every_layer_fired(metrics)
    # reference: the checkpoint's weights in a fresh contiguous float32 model, evaluated by hand
    ckpt = torch.load(next((tmp_path / "logs").rglob("last.ckpt")), map_location="cpu", weights_only=True)
    assert ckpt["pmsm_config"]["model"]["channels_last"] is True
    state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items()}
    model = create_model("resnet20", 10, lambda: PQA(8, -0.25, 1.0, 8.0))
    model.load_state_dict(state)
    dm = SyntheticDataModule(train_size=64, test_size=32, batch_size=32, seed=42)
    dm.setup("test")
    x, y = next(iter(dm.test_dataloader()))
    with torch.no_grad():
        acc = (model.eval()(x).argmax(1) == y).double().mean().item()
    assert metrics["qann"]["test_acc"] == pytest.approx(acc, abs=1e-12)
    # convert.py: the training run's layout unless told otherwise (model.channels_last=false here)
    seen["test"].clear()
    converted = run_script("convert", [f"ckpt_path={next((tmp_path / 'logs').rglob('last.ckpt'))}", "logger=none",
                                       "snn.timesteps=2", "model.channels_last=false"], tmp_path / "convert", monkeypatch)
    assert seen["test"] and all(s == (False, False) for s in seen["test"])
    assert converted["qann"]["test_acc"] == metrics["qann"]["test_acc"] and converted["snn"]["agreement"][0] == 1.0
    assert_every_layer_fired(converted)


# ---------------------------------------------------------------- compile
def tiny_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), PQA(4, -0.25, 1.0, 2.0),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))


def test_compiled_training_step_matches_eager_and_keeps_plain_keys():
    net = tiny_net()
    eager = training.QANNModule(copy.deepcopy(net), 10, {"name": "sgd", "lr": 0.1})
    fast = training.QANNModule(copy.deepcopy(net), 10, {"name": "sgd", "lr": 0.1}, compile=True, channels_last=True)
    assert fast.compiled_model is not None and eager.compiled_model is None
    assert list(fast.state_dict()) == list(eager.state_dict())  # no `_orig_mod.`, no second copy
    assert [n for n, _ in fast.named_modules()] == [n for n, _ in eager.named_modules()]
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(16, 3, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log without a Trainer
        losses = [m.training_step((x, y), 0) for m in (eager, fast)]
    for loss in losses:
        loss.backward()
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-6)
    for (name, a), (_, b) in zip(eager.model.named_parameters(), fast.model.named_parameters()):
        assert a.grad is not None and b.grad is not None, name
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6, msg=name)
    bn_e, bn_f = eager.model[1], fast.model[1]
    torch.testing.assert_close(bn_f.running_mean, bn_e.running_mean)   # the compiled forward updates buffers
    assert int(bn_f.num_batches_tracked) == 1


@pytest.mark.slow
def test_checkpoint_trained_compiled_converts(tmp_path, monkeypatch):
    trained = run_script("train", [*TINY, "model.compile=true"], tmp_path / "train", monkeypatch)
    ckpt_path = next((tmp_path / "train").rglob("last.ckpt"))
    keys = torch.load(ckpt_path, map_location="cpu", weights_only=True)["state_dict"]
    assert keys and all(k.startswith("model.") and "_orig_mod" not in k for k in keys)
    converted = run_script("convert", [f"ckpt_path={ckpt_path}", "logger=none", "snn.timesteps=2"],
                           tmp_path / "convert", monkeypatch)
    assert converted["qann"]["test_acc"] == trained["qann"]["test_acc"]
    assert converted["snn"]["agreement"][0] == 1.0
    assert_every_layer_fired(converted)


# ---------------------------------------------------------------- trainer=gpu and the checks
def test_trainer_gpu_defaults_and_every_value_valid_but_the_device():
    cfg = compose_cfg("train", "trainer=gpu")
    assert cfg.trainer.precision == "bf16-mixed" and cfg.trainer.accelerator == "gpu" and cfg.trainer.benchmark
    assert cfg.model.channels_last is True and cfg.model.compile is False and cfg.data.on_device == "auto"
    assert compose_cfg("train", "trainer=ddp").trainer.precision == "bf16-mixed"
    plain = compose_cfg("train")
    assert plain.trainer.precision == "32-true" and plain.model.channels_last is False
    # the same recipe on synthetic data (no data.on_device) and with the ViT recipe composes too
    assert compose_cfg("train", "trainer=gpu", "data=synthetic").model.channels_last is True
    assert compose_cfg("train", "trainer=gpu", "experiment=table2_vit_s_cifar10").model.name == "vit_s"
    cfg.trainer.accelerator = "cpu"   # this machine has no GPU; every other value must pass
    check_train_config(cfg)
    assert compose_cfg("convert", "trainer=gpu", "ckpt_path=x").model.channels_last is True


@pytest.mark.parametrize("overrides, fragments", [
    (["trainer.precision=bf17"], ["trainer.precision: got 'bf17'", "32-true", "bf16-mixed"]),
    (["trainer.precision=16-mixed"], ["trainer.precision: got '16-mixed'", "bf16-mixed"]),
    (["model.channels_last=maybe"], ["model.channels_last: got 'maybe'", "true or false"]),
    (["model.compile=fast"], ["model.compile: got 'fast'", "max-autotune"]),
    (["model.compile=1"], ["model.compile: got 1"]),
    (["data.on_device=sometimes"], ["data.on_device: got 'sometimes'", "auto"]),
    (["model.zero_init_residual=maybe"], ["model.zero_init_residual: got 'maybe'", "true or false"]),
])
def test_bad_switch_is_one_line_before_any_work(overrides, fragments):
    cfg = compose_cfg("train", *overrides)
    with pytest.raises(UserError) as exc:
        check_train_config(cfg)
    msg = str(exc.value)
    assert "\n" not in msg and all(f in msg for f in fragments), msg


def test_convert_switch_null_means_as_trained_and_bad_values_refused():
    check_model_switches(compose_cfg("convert", "ckpt_path=x"))          # channels_last: null
    with pytest.raises(UserError, match=r"^model.channels_last: got 'maybe'"):
        check_model_switches(compose_cfg("convert", "ckpt_path=x", "model.channels_last=maybe"))


def test_on_device_auto_takes_the_device_path_on_a_gpu_only():
    def on(device, **kwargs):
        dm = CIFAR10DataModule(on_device="auto", **kwargs)
        dm.trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device(device)))
        return dm.uses_device_path()

    assert on("cuda") and not on("cpu") and not CIFAR10DataModule(on_device="auto").uses_device_path()
    assert not on("cuda", autoaugment=True) and not on("cuda", re_prob=0.25) and not on("cuda", repeated_aug=3)
    assert CIFAR10DataModule(on_device=True).uses_device_path() is True
    assert CIFAR10DataModule(on_device=False).uses_device_path() is False
    with pytest.raises(UserError, match="data.autoaugment"):   # explicit true still refuses what it cannot do
        CIFAR10DataModule(on_device=True, autoaugment=True)


# ---------------------------------------------------------------- the benchmark
def test_gpu_epoch_benchmark_smoke_on_cpu(tmp_path):
    spec = importlib.util.spec_from_file_location("gpu_epoch", ROOT / "benchmarks" / "gpu_epoch.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.main(["--device", "cpu", "--steps", "3", "--batches", "8", "16", "--images", "64",
                         "--rounds", "1", "--warmup", "1", "--out", str(tmp_path)])
    assert [r["batch"] for r in result["batches"]] == [8, 16]
    for r in result["batches"]:
        assert r["steps_per_epoch"] == 64 // r["batch"] and set(r["paths"]) == {"pure compute", "GPU data path"}
        for p in r["paths"].values():
            assert p["s_per_step"] > 0 and p["images_per_s"] == pytest.approx(r["batch"] / p["s_per_step"])
        assert r["paths"]["pure compute"]["ratio_to_pure"] == 1.0
    saved = json.loads((tmp_path / "gpu_epoch.json").read_text())
    assert saved["settings"]["precision"] == "bf16" and saved["settings"]["channels_last"] is True
    assert "| 16 | GPU data path |" in (tmp_path / "gpu_epoch.md").read_text()


# ---------------------------------------------------------------- snn.kernels=auto in a training run
def kernels_seen(monkeypatch):
    """The kernels the quantizers (and neurons) of each training and test step were set to run."""
    from pmsm_exp.quant.kernels import kernels_of
    seen = {"train": [], "test": []}
    train_step, test_step = training.QANNModule.training_step, evaluation.EvalModule.test_step

    def one(*models):
        (kernels,) = set().union(*(kernels_of(m) for m in models if m is not None))   # one choice per step
        return kernels

    monkeypatch.setattr(training.QANNModule, "training_step",
                        lambda self, b, i: seen["train"].append(one(self.model)) or train_step(self, b, i))
    monkeypatch.setattr(evaluation.EvalModule, "test_step",
                        lambda self, b, i: seen["test"].append(one(self.qann, self.snn)) or test_step(self, b, i))
    return seen


def test_short_training_run_keeps_the_eager_kernels(tmp_path, monkeypatch):
    seen = kernels_seen(monkeypatch)
    metrics = run_script("train", TINY, tmp_path / "logs", monkeypatch)   # snn.kernels=auto, 2 steps
    assert metrics["run"]["snn"]["kernels"] == "auto" and metrics["run"]["training_kernels"] == "eager"
    assert seen["train"] == ["eager"] * 2 and set(seen["test"]) == {"eager"}


@pytest.mark.slow   # torch.compile: 5-25 s of compilation on a CPU
@pytest.mark.parametrize("precision, kernels", [("32-true", "auto"),
                                               ("bf16-mixed", "compile")])   # auto trains bf16 eager
def test_auto_kernels_train_compiled_bit_for_bit_like_eager_and_evaluate_eager(tmp_path, monkeypatch, precision,
                                                                             kernels):
    from pmsm_exp.quant import kernels as fused
    steps = [*TINY, "epochs=2", "data.train_size=96", "trainer.deterministic=true", f"trainer.precision={precision}"]
    eager = run_script("train", [*steps, "snn.kernels=eager"], tmp_path / "eager", monkeypatch)
    monkeypatch.setattr(fused, "AUTO_COMPILE_STEPS", 4)   # this run's 6 steps count as a long run
    if fused.compile_unavailable("cpu"):
        pytest.skip(fused.compile_unavailable("cpu"))
    seen = kernels_seen(monkeypatch)
    auto = run_script("train", [*steps, f"snn.kernels={kernels}"], tmp_path / "auto", monkeypatch)
    assert auto["run"]["training_kernels"] == "compile" and eager["run"]["training_kernels"] == "eager"
    assert seen["train"] == ["compile"] * 6 and set(seen["test"]) == {"eager" if kernels == "auto" else "compile"}
    # the compiled quantizer does the eager arithmetic, forward and backward: the same weights after 6 steps
    weights = [torch.load(next((tmp_path / d).rglob("last.ckpt")), map_location="cpu", weights_only=True)["state_dict"]
               for d in ("eager", "auto")]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert auto["qann"]["test_acc"] == eager["qann"]["test_acc"] and auto["snn"]["agreement"][0] == 1.0
