"""Paper-style tables rebuilt from metrics.json files on disk."""
import json

import pytest

from pmsm_exp import report


def fake_run(root, name, experiment, method, alpha, qann, snn_acc, spikes, model="vgg16", data="cifar10"):
    d = root / name
    d.mkdir(parents=True)
    t = list(range(1, len(snn_acc) + 1))
    metrics = {"run": {"experiment": experiment, "model": model, "data": data, "method": method,
                       "pqa": {"levels": 8, "alpha": alpha, "beta": 1.0}, "seed": 42, "overrides": []},
               "qann": {"test_acc": qann},
               "snn": {"timesteps": t, "test_acc": snn_acc, "agreement": [1.0] * len(t),
                       "spikes_per_image": spikes, "spike_events_per_image": [s / 2 for s in spikes],
                       "power_mw": [s * 0.9e-12 / (k * 1e-3) * 1e3 for s, k in zip(spikes, t)],
                       "layer_spikes": {}}}
    (d / "metrics.json").write_text(json.dumps(metrics))


@pytest.fixture
def logs(tmp_path):
    root = tmp_path / "logs"
    fake_run(root, "a", "t1", "pmsm", -0.25, 0.95, [0.95, 0.951], [1e5, 2e5])
    fake_run(root, "b", "t1", "pmsm", -0.25, 0.93, [0.93, 0.931], [3e5, 6e5])   # second seed: averaged
    fake_run(root, "c", "t1", "qcfs", 0.0, 0.94, [0.70, 0.85], [5e5, 10e5])
    fake_run(root, "d", "abl", "pmsm", -0.5, 0.90, [0.90, 0.90], [1e5, 2e5])
    fake_run(root, "e", "abl", "pmsm", -1.0, 0.80, [0.80, 0.80], [1e5, 2e5])
    (root / "broken").mkdir()
    (root / "broken" / "metrics.json").write_text("{ half written")
    return root


def test_accuracy_table_averages_seeds(logs, tmp_path):
    rows = report.main(["accuracy", "--logs", str(logs), "--experiment", "t1", "--timesteps", "1", "2",
                        "--out", str(tmp_path / "out")])
    pmsm = next(r for r in rows if r["method"] == "pmsm")
    assert pmsm["runs"] == 2 and pmsm["ann_acc"] == pytest.approx(94.0) and pmsm["acc_T1"] == pytest.approx(94.0)
    qcfs = next(r for r in rows if r["method"] == "qcfs")
    assert qcfs["acc_T1"] == pytest.approx(70.0) and qcfs["acc_T2"] == pytest.approx(85.0)
    assert (tmp_path / "out" / "accuracy.csv").read_text().startswith("model,data,method,ann_acc,acc_T1,acc_T2")
    assert "| vgg16 | cifar10 | pmsm |" in (tmp_path / "out" / "accuracy.md").read_text()


def test_ablation_table_rows_per_alpha(logs, tmp_path):
    rows = report.main(["ablation", "--logs", str(logs), "--experiment", "abl", "--param", "alpha",
                        "--timesteps", "1", "--out", str(tmp_path)])
    assert [r["alpha"] for r in rows] == [-0.5, -1.0]
    assert rows[1]["vgg16/cifar10 T1"] == pytest.approx(80.0)


def test_energy_table_ratio_against_qcfs(logs, tmp_path):
    rows = report.main(["energy", "--logs", str(logs), "--experiment", "t1", "--timesteps", "1",
                        "--out", str(tmp_path)])
    qcfs, pmsm = rows
    assert qcfs["method"] == "qcfs" and qcfs["power_ratio_vs_qcfs"] == 1.0
    assert pmsm["spikes_e5"] == pytest.approx(2.0)            # mean of 1e5 and 3e5
    assert pmsm["power_mw"] == pytest.approx(0.18)             # 2e5 * 0.9 pJ / 1 ms
    assert pmsm["power_ratio_vs_qcfs"] == pytest.approx(2.5)   # 0.45 / 0.18


def test_missing_logs_and_empty_selection(tmp_path, logs):
    with pytest.raises(SystemExit, match="does not exist"):
        report.main(["accuracy", "--logs", str(tmp_path / "nope")])
    with pytest.raises(SystemExit, match="experiment.*nothing"):
        report.main(["accuracy", "--logs", str(logs), "--experiment", "nothing"])
