"""Real training on the real CIFAR-10 copy (minutes on a CPU): `python -m pytest -m slow`."""
import json
import subprocess
import sys

import pytest

from test_framework import run, shared_cifar10


@pytest.mark.slow
@pytest.mark.skipif(shared_cifar10() is None, reason="real CIFAR-10 files (../shared/data/cifar10) are absent")
@pytest.mark.parametrize("pqa", ["pmsm", "qcfs"])
def test_resnet20_learns_and_converts(pqa, tmp_path):
    subprocess.run([sys.executable, str(shared_cifar10() / "materialize.py"), str(tmp_path / "data"),
                    "--train", "5000", "--test", "1000"], check=True, capture_output=True)
    run("train.py", "model=resnet20", "data=cifar10", f"pqa={pqa}", f"paths.data_dir={tmp_path / 'data'}",
        "epochs=3", "data.batch_size=100", "data.num_workers=0", "snn.timesteps=8", "logger=csv",
        log_dir=tmp_path / "logs")
    metrics = json.loads(next((tmp_path / "logs").rglob("metrics.json")).read_text())
    acc, snn = metrics["qann"]["test_acc"], metrics["snn"]
    assert acc > 0.25  # well above chance (0.1) after 3 short epochs
    if pqa == "pmsm":
        assert snn["agreement"][0] == 1.0 and snn["test_acc"][0] == acc
        assert abs(snn["test_acc"][7] - snn["test_acc"][0]) <= 0.03
    else:  # QCFS: far from its QANN at T=1, closer by T=8
        assert snn["agreement"][0] < 0.9 and snn["agreement"][7] > snn["agreement"][0]
