"""The short-budget recipe: its config composes with every Table 1 experiment and trains; weight
averaging, when a recipe uses it, is what is evaluated and converted, exactly at T=1."""
import pytest
import torch

from helpers import assert_every_layer_fired
from test_framework import compose_train
from test_gpu_switches import run_script

TINY = ["data=synthetic", "data.train_size=64", "data.test_size=32", "data.batch_size=16", "snn.timesteps=2",
        "logger=none"]


def test_weight_averaged_model_is_the_one_evaluated_and_converted_exactly(tmp_path, monkeypatch):
    trained = run_script("train", [*TINY, "epochs=2", "optim.ema_decay=0.5"], tmp_path / "train", monkeypatch)
    assert trained["snn"]["agreement"][0] == 1.0 and trained["snn"]["test_acc"][0] == trained["qann"]["test_acc"]
    assert_every_layer_fired(trained)
    ckpt = torch.load(tmp_path / "train" / trained["run"]["checkpoint"], weights_only=True)
    averaged, current = ckpt["state_dict"], ckpt["current_model_state"]
    assert averaged.keys() == current.keys()
    assert any(not torch.equal(averaged[k], current[k]) for k in averaged if averaged[k].is_floating_point())
    converted = run_script("convert", [f"ckpt_path={tmp_path / 'train' / trained['run']['checkpoint']}", "logger=none"],
                           tmp_path / "convert", monkeypatch)
    assert converted["qann"]["test_acc"] == trained["qann"]["test_acc"] and converted["snn"]["agreement"][0] == 1.0


@pytest.mark.parametrize("experiment", ["table1_resnet20_cifar10", "table1_vgg16_cifar10"])
def test_fast_recipe_composes_over_the_experiment(experiment):
    cfg = compose_train(f"experiment={experiment}", "recipe=fast")
    assert cfg.epochs == 18 and cfg.pqa.threshold == 2.0 and cfg.optim.nesterov is True and cfg.optim.lr == 0.1
    assert cfg.data.autoaugment is False and cfg.data.cutout == 0 and cfg.data.batch_size == 32
    assert cfg.experiment_name == experiment and cfg.trainer.precision == "bf16-mixed"


def test_vgg_recipe_is_the_fast_recipe_at_batch_128_and_lr_0_05():
    fast = compose_train("experiment=table1_vgg16_cifar10", "recipe=fast")
    vgg = compose_train("experiment=table1_vgg16_cifar10", "recipe=fast_vgg")
    assert (vgg.data.batch_size, vgg.optim.lr) == (128, 0.05)
    vgg.data.batch_size, vgg.optim.lr = fast.data.batch_size, fast.optim.lr
    del vgg.hydra, fast.hydra  # the command lines differ, by the recipe's name
    assert vgg == fast  # nothing else differs


def test_fast_recipe_trains_a_step_and_converts_exactly(tmp_path, monkeypatch):
    from data_files import write_cifar10
    write_cifar10(tmp_path / "data", per_batch=20, n_test=30)
    metrics = run_script("train", ["experiment=table1_resnet20_cifar10", "recipe=fast", f"data.data_dir={tmp_path / 'data'}",
                                   "epochs=1", "trainer.limit_train_batches=1", "data.batch_size=16", "snn.timesteps=1",
                                   "logger=none"], tmp_path / "logs", monkeypatch)
    assert metrics["training"]["steps"] == 1 and metrics["training"]["lr_schedule"]["nesterov"] is True
    assert metrics["config"]["pqa"]["threshold"] == 2.0 and metrics["snn"]["agreement"][0] == 1.0
    assert_every_layer_fired(metrics)


def one_sgd_step(model, optim: dict, grad) -> tuple[dict, dict, object]:
    """Every parameter's value before and after one step of the optimizer QANNModule builds from
    `optim`, each gradient set to grad(p); returns (before, after, module)."""
    from types import SimpleNamespace
    from pmsm_exp.engine.training import QANNModule
    module = QANNModule(model, 2, {"name": "sgd", "scheduler": "none", **optim})
    module._trainer = SimpleNamespace(estimated_stepping_batches=1, max_epochs=1, datamodule=None, world_size=1,
                                      accumulate_grad_batches=1)
    opt = module.configure_optimizers()["optimizer"]
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = grad(p)
    opt.step()
    return before, {name: p.detach() for name, p in model.named_parameters()}, module


@pytest.mark.parametrize("decay_all", [True, False])
def test_decay_all_false_leaves_thresholds_and_norms_undecayed(decay_all):
    """One SGD step with zero gradients moves a parameter only by weight decay: p <- p (1 - lr wd).
    optim.decay_all=false must exempt λ, BatchNorm and biases and still decay conv/linear weights."""
    from torch import nn
    from pmsm_exp.quant.pqa import PQA
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), PQA(8, -0.25, 1.0, 2.0), nn.Flatten(), nn.LazyLinear(2))
    model(torch.randn(2, 3, 6, 6))
    lr, wd = 0.5, 0.1
    before, after, _ = one_sgd_step(model, {"lr": lr, "momentum": 0.9, "weight_decay": wd, "decay_all": decay_all},
                                    torch.zeros_like)
    for name, p in after.items():
        decayed = decay_all or (p.ndim > 1)  # conv and linear weights only
        expected = before[name] * (1 - lr * wd) if decayed else before[name]
        assert torch.allclose(p, expected), name
    assert any("threshold" in name for name in before)  # λ took part


def test_threshold_floor_holds_every_lambda_up_during_training(tmp_path, monkeypatch):
    """λ₀=2 and a floor of 3: after one optimizer step every λ is exactly the floor (a plain clamp), and the
    network still converts exactly; without the floor the thresholds stay near λ₀."""
    floored = run_script("train", [*TINY, "epochs=1", "trainer.limit_train_batches=1", "pqa.threshold=2",
                                   "optim.threshold_floor=3"], tmp_path / "a", monkeypatch)
    free = run_script("train", [*TINY, "epochs=1", "trainer.limit_train_batches=1", "pqa.threshold=2"],
                      tmp_path / "b", monkeypatch)

    def thresholds(metrics, root):
        state = torch.load(root / metrics["run"]["checkpoint"], weights_only=True)["state_dict"]
        return [float(v) for k, v in state.items() if k.endswith("threshold")]

    assert thresholds(floored, tmp_path / "a") and all(v == 3.0 for v in thresholds(floored, tmp_path / "a"))
    assert all(abs(v - 2.0) < 0.5 for v in thresholds(free, tmp_path / "b"))
    assert floored["snn"]["agreement"][0] == 1.0 and floored["snn"]["test_acc"][0] == floored["qann"]["test_acc"]


@pytest.mark.parametrize("decay_all", [True, False])
def test_threshold_lr_scale_moves_thresholds_that_much_slower(decay_all):
    """Plain SGD (no momentum, no decay) moves p by -lr·grad: with a gradient of ones every weight moves
    by lr and every λ by lr·scale, whatever the decay grouping."""
    from torch import nn
    from pmsm_exp.quant.pqa import PQA
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), PQA(8, -0.25, 1.0, 2.0), nn.Flatten(),
                          nn.Linear(64, 2), PQA(8, -0.25, 1.0, 2.0))
    lr, scale = 0.5, 0.1
    before, after, module = one_sgd_step(model, {"lr": lr, "momentum": 0.0, "weight_decay": 0.0, "decay_all": decay_all,
                                                 "threshold_lr_scale": scale}, torch.ones_like)
    moved = {name: float((before[name] - p).abs().max()) for name, p in after.items()}
    assert sum("threshold" in n for n in moved) == 2 and len(moved) > 2
    for name, step in moved.items():
        assert step == pytest.approx(lr * scale if name.endswith("threshold") else lr), name
    assert module.schedule["threshold_lr_scale"] == scale


def test_quantize_from_epoch_clips_first_then_quantizes_and_converts_exactly(tmp_path, monkeypatch):
    """optim.quantize_from_epoch=1 of 2: in epoch 0 a PQA layer's outputs are the clip of its inputs to
    [αλ, βλ] (many distinct values) with λ frozen, in epoch 1 they are integer multiples of θ = λ/L within [αL, βL];
    what is tested and converted quantizes (agreement 1 at T=1)."""
    import lightning as L
    from pmsm_exp.engine.training import QANNModule
    from pmsm_exp.quant.pqa import pqa_layers
    seen = {}
    original = QANNModule.training_step

    def spy(self, batch, batch_idx):
        name, q = next(iter(pqa_layers(self.model).items()))
        captured = {}
        handle = q.register_forward_hook(lambda m, i, o: captured.update(z=i[0].detach().float(), y=o.detach().float()))
        out = original(self, batch, batch_idx)
        handle.remove()
        seen.setdefault(self.current_epoch, (captured, float(q.threshold.detach()), q))
        return out

    monkeypatch.setattr(QANNModule, "training_step", spy)
    metrics = run_script("train", [*TINY, "epochs=2", "trainer.precision=32-true", "optim.quantize_from_epoch=1"],
                         tmp_path / "a", monkeypatch)
    (c0, lam0, q), (c1, lam1, _) = seen[0], seen[1]
    lo, hi = q.alpha * lam0, q.beta * lam0
    assert torch.equal(c0["y"], c0["z"].clamp(lo, hi)) and len(torch.unique(c0["y"])) > 2 * q.levels
    assert lam1 == lam0   # λ is frozen while the warm-up clips (its gradient there only pushes it up)
    theta = lam1 / q.levels
    k = c1["y"] / theta
    assert torch.allclose(k, k.round(), atol=1e-4) and k.min() >= q.min_level - 1e-4 and k.max() <= q.max_level + 1e-4
    assert len(torch.unique(k.round())) > 2  # more than an all-zero layer
    assert q.quantize is True
    assert metrics["snn"]["agreement"][0] == 1.0 and metrics["snn"]["test_acc"][0] == metrics["qann"]["test_acc"]
    assert metrics["training"]["lr_schedule"]["quantize_from_epoch"] == 1
    assert_every_layer_fired(metrics)


def test_a_run_that_stops_during_the_warm_up_still_evaluates_the_quantized_network(tmp_path, monkeypatch):
    """Training ends in epoch 0 (max_steps=1) while the warm-up clips: what is tested and converted must
    be the quantized network (quantization switched back on at the end of fit), so the SNN at T=1 agrees
    with the QANN on every image; evaluated unrounded, the QANN would differ from its SNN."""
    metrics = run_script("train", [*TINY, "epochs=2", "trainer.precision=32-true", "optim.quantize_from_epoch=1",
                                   "+trainer.max_steps=1"], tmp_path / "a", monkeypatch)
    assert metrics["training"]["steps"] == 1
    assert metrics["snn"]["agreement"][0] == 1.0 and metrics["snn"]["test_acc"][0] == metrics["qann"]["test_acc"]
    assert_every_layer_fired(metrics)


def assert_recipe_is_its_base_with(base: str, recipe: str, key: str, base_value, value):
    """recipe=`recipe` composes as recipe=`base` with `key` changed from base_value to value, nothing else."""
    from omegaconf import OmegaConf
    parent = compose_train("experiment=table1_resnet20_cifar10", f"recipe={base}")
    child = compose_train("experiment=table1_resnet20_cifar10", f"recipe={recipe}")
    assert OmegaConf.select(child, key) == value and OmegaConf.select(parent, key) == base_value
    OmegaConf.update(child, key, base_value)
    del parent.hydra, child.hydra  # the command lines differ, by the recipe's name
    assert child == parent


def test_low_lr_recipe_is_the_fast_recipe_at_lr_0_05():
    assert_recipe_is_its_base_with("fast", "fast_low_lr", "optim.lr", 0.1, 0.05)


def test_crop2_recipe_is_the_low_lr_recipe_with_a_2_pixel_crop_padding():
    assert_recipe_is_its_base_with("fast_low_lr", "fast_crop2", "data.crop_pad", 4, 2)


def test_views2_recipe_is_the_crop2_recipe_with_two_views_and_trains_a_step(tmp_path, monkeypatch):
    assert_recipe_is_its_base_with("fast_crop2", "fast_views2", "data.views", 1, 2)
    from data_files import write_cifar10
    write_cifar10(tmp_path / "data", per_batch=20, n_test=30)
    metrics = run_script("train", ["experiment=table1_resnet20_cifar10", "recipe=fast_views2",
                                   f"data.data_dir={tmp_path / 'data'}", "epochs=1", "data.batch_size=50",
                                   "snn.timesteps=1", "logger=none"], tmp_path / "logs", monkeypatch)
    assert metrics["training"]["steps"] == 2   # 100 images at batch 50: two views do not add steps
    assert metrics["snn"]["agreement"][0] == 1.0
    assert_every_layer_fired(metrics)


def test_time_to_accuracy_script_refuses_an_unknown_recipe_in_one_line_before_training(tmp_path):
    import subprocess
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(["bash", str(root / "sweeps" / "time_to_accuracy.sh")], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "RECIPE": "fastest", "LOGS": str(tmp_path / "logs")})
    assert done.returncode == 2 and not (tmp_path / "logs").exists()
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert done.stderr.startswith("error: RECIPE: got 'fastest'; allowed: ") and "fast_low_lr" in done.stderr


def test_zero_init_residual_starts_every_block_as_its_shortcut():
    """model.zero_init_residual=true: each block's output at initialisation is its activation applied to
    its shortcut alone (by hand: relu(x) or relu(bn(conv1x1(x)))); false keeps the residual branch."""
    from pmsm_exp.models import create_model

    torch.manual_seed(0)
    blocks_seen = 0
    for zero in (True, False):
        model = create_model("resnet20", 10, torch.nn.ReLU, zero_init_residual=zero).eval()
        x = torch.randn(4, 3, 32, 32)
        h = model.stem(x)
        for stage in model.stages:
            for block in stage:
                by_hand = torch.relu(block.shortcut(h))
                out = block(h)
                assert torch.equal(out, by_hand) is zero
                blocks_seen += zero
                h = out
    assert blocks_seen == 9  # 3 stages x 3 blocks, every one checked


def test_zero_init_residual_is_a_resnet20_config_key_off_by_default():
    cfg = compose_train("experiment=table1_resnet20_cifar10", "recipe=fast")
    assert cfg.model.zero_init_residual is False
