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
    assert cfg.epochs == 18 and cfg.pqa.threshold == 2.0 and cfg.optim.nesterov is True and cfg.optim.lr == 0.2
    assert cfg.data.autoaugment is False and cfg.data.cutout == 0 and cfg.data.batch_size == 64
    assert cfg.experiment_name == experiment and cfg.trainer.precision == "bf16-mixed"


def test_fast_recipe_trains_a_step_and_converts_exactly(tmp_path, monkeypatch):
    from data_files import write_cifar10
    write_cifar10(tmp_path / "data", per_batch=20, n_test=30)
    metrics = run_script("train", ["experiment=table1_resnet20_cifar10", "recipe=fast", f"data.data_dir={tmp_path / 'data'}",
                                   "epochs=1", "trainer.limit_train_batches=1", "data.batch_size=16", "snn.timesteps=1",
                                   "logger=none"], tmp_path / "logs", monkeypatch)
    assert metrics["training"]["steps"] == 1 and metrics["training"]["lr_schedule"]["nesterov"] is True
    assert metrics["config"]["pqa"]["threshold"] == 2.0 and metrics["snn"]["agreement"][0] == 1.0
    assert_every_layer_fired(metrics)
