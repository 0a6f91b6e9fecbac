"""Paper-style tables rebuilt from metrics.json files on disk (hand-written here: no training)."""
import csv
import json
import os
import statistics
from pathlib import Path

import pytest
import torch
from torch import nn

from pmsm_exp.runs import report

ROOT = Path(__file__).resolve().parents[1]


def fake_run(root, name, experiment, method="pmsm", alpha=-0.25, qann=0.95, snn_acc=(0.95, 0.951), spikes=(1e5, 2e5),
             model="vgg16", data="cifar10", seed=42, overrides=(), status="finished", task="train", extra=None,
             levels=8, beta=1.0, hydra=True):
    d = root / name
    d.mkdir(parents=True)
    t = list(range(1, len(snn_acc) + 1))
    metrics = {"run": {"task": task, "experiment": experiment, "model": model, "data": data, "method": method,
                       "pqa": {"levels": levels, "alpha": alpha, "beta": beta, "threshold": 8.0}, "seed": seed,
                       "overrides": [f"seed={seed}", *overrides]},
               "qann": {"test_acc": qann},
               "snn": {"timesteps": t, "test_acc": list(snn_acc), "agreement": [1.0] * len(t),
                       "spikes_per_image": list(spikes), "spike_events_per_image": [s / 2 for s in spikes],
                       "power_mw": [s * 0.9e-12 / (k * 1e-3) * 1e3 for s, k in zip(spikes, t)],
                       "layer_spikes": {}},
               **(extra or {})}
    if status is not None:
        metrics = {"status": status, **metrics}
    (d / "metrics.json").write_text(json.dumps(metrics))
    if hydra:
        (d / ".hydra").mkdir()
        (d / ".hydra" / "config.yaml").write_text(f"experiment_name: {experiment}\nseed: {seed}\n")
    return d


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """Two experiments (Table 1 VGG-16 CIFAR-10 and an alpha sweep), two seeds, a failed, a diverged,
    an unfinished and a corrupt run."""
    root = tmp_path_factory.mktemp("logs")
    t1 = "table1_vgg16_cifar10"
    fake_run(root, "train/multiruns/A/0", t1, seed=1, qann=0.95, snn_acc=(0.95, 0.951), overrides=["pqa=pmsm"])
    fake_run(root, "train/multiruns/A/1", t1, seed=2, qann=0.93, snn_acc=(0.93, 0.935), overrides=["pqa=pmsm"])
    fake_run(root, "train/multiruns/A/2", t1, "qcfs", 0.0, 0.94, (0.70, 0.85), (5e5, 10e5), seed=1,
             overrides=["pqa=qcfs"])
    fake_run(root, "train/multiruns/A/3", t1, seed=3, qann=0.10, status="failed",
             extra={"error": "data.batch_size: got 0; a positive integer"})
    fake_run(root, "train/multiruns/A/4", t1, seed=4, qann=None, status="diverged",
             extra={"error": "non-finite loss at step 12"})
    abl = "ablation_alpha"
    for i, (alpha, seed, acc) in enumerate([(-0.25, 1, 0.90), (-0.25, 2, 0.80), (-0.5, 1, 0.70), (-0.5, 2, 0.60)]):
        fake_run(root, f"train/multiruns/B/{i}", abl, alpha=alpha, seed=seed, qann=acc, snn_acc=(acc, acc),
                 overrides=[f"pqa.alpha={alpha}", "epochs=1", "data.num_workers=0"])
    (root / "train/runs/corrupt/.hydra").mkdir(parents=True)
    (root / "train/runs/corrupt/.hydra/config.yaml").write_text(f"experiment_name: {t1}\n")
    (root / "train/runs/corrupt/metrics.json").write_text('{"status": "finished", "run": {')
    (root / "train/runs/running/.hydra").mkdir(parents=True)
    (root / "train/runs/running/.hydra/config.yaml").write_text(f"experiment_name: {t1}\n")
    return root


@pytest.fixture(scope="module")
def table(mixed, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    rows = report.main(["accuracy", "--logs", str(mixed), "--timesteps", "1", "2", "--out", str(out), "--format", "long"])
    return rows, out


def pick(rows, **want):
    return [r for r in rows if all(str(r[k]) == str(v) for k, v in want.items())]


def test_rows_separate_experiments_settings_and_methods(table):
    rows, _ = table
    ann = pick(rows, metric="ann_acc")
    keys = sorted((r["experiment"], r["method"], r["settings"]) for r in ann)
    assert keys == [("ablation_alpha", "pmsm", "alpha=-0.25"), ("ablation_alpha", "pmsm", "alpha=-0.5"),
                    ("table1_vgg16_cifar10", "pmsm", ""), ("table1_vgg16_cifar10", "qcfs", "")]


def test_mean_and_std_over_two_seeds(table, capsys):
    rows, out = table
    (pmsm,) = pick(rows, experiment="table1_vgg16_cifar10", method="pmsm", metric="snn_acc", T=2)
    assert pmsm["n"] == 2 and pmsm["seeds"] == "1 2"
    assert pmsm["ours"] == pytest.approx((0.951 + 0.935) / 2)
    assert pmsm["std"] == pytest.approx(statistics.stdev([0.951, 0.935]))
    (alpha,) = pick(rows, experiment="ablation_alpha", settings="alpha=-0.5", metric="ann_acc")
    assert alpha["n"] == 2 and alpha["ours"] == pytest.approx(0.65)     # never averaged with alpha=-0.25
    md = (out / "accuracy.md").read_text()
    # printed in percent: mean ± sample std
    assert "| table1_vgg16_cifar10 | vgg16 | cifar10 | pmsm | - | 2 | snn_acc | 2 | 94.30 ± 1.13 |" in md
    assert "every ablation_alpha row: epochs=1" in md and "every table1" not in md


def test_paper_column_and_difference(table):
    rows, _ = table
    (ann,) = pick(rows, experiment="table1_vgg16_cifar10", method="pmsm", metric="ann_acc")
    assert ann["paper"] == pytest.approx(0.9567) and ann["diff"] == pytest.approx(0.94 - 0.9567)
    assert ann["paper_source"] == "Table 1: Ours"
    (t1,) = pick(rows, experiment="table1_vgg16_cifar10", method="qcfs", metric="snn_acc", T=1)
    assert t1["paper"] == pytest.approx(0.8841) and t1["paper_source"] == "Table 1: QCFS (Bu et al. 2022b)"
    (t2,) = pick(rows, experiment="table1_vgg16_cifar10", method="pmsm", metric="snn_acc", T=2)
    assert t2["paper"] is None and t2["diff"] is None      # the paper reports T=1 and 8 only
    # the alpha sweep stands beside Fig. 3(a), whose values are not in the text, never beside Table 1
    for r in pick(rows, experiment="ablation_alpha", metric="snn_acc"):
        assert r["paper"] is None and r["paper_source"] == "Fig. 3(a): PMSM (no value in the text)"


def test_runs_left_out_are_listed_with_reasons(table, capsys):
    rows, out = table
    md = (out / "accuracy.md").read_text()
    for line in ("- train/multiruns/A/3 [table1_vgg16_cifar10]: failed: data.batch_size: got 0; a positive integer",
                 "- train/multiruns/A/4 [table1_vgg16_cifar10]: diverged: non-finite loss at step 12",
                 "- train/runs/running [table1_vgg16_cifar10]: unfinished (no metrics.json",
                 "- train/runs/corrupt [table1_vgg16_cifar10]: unreadable (JSONDecodeError"):
        assert line in md, line
    assert "left out: 4 run(s)" in md
    with open(out / "accuracy_left_out.csv") as f:
        left = list(csv.DictReader(f))
    assert [r["run"] for r in left] == ["train/multiruns/A/3", "train/multiruns/A/4", "train/runs/corrupt",
                                        "train/runs/running"]
    # neither the failed run (qann 0.10) nor the diverged one entered a mean
    (ann,) = pick(rows, experiment="table1_vgg16_cifar10", method="pmsm", metric="ann_acc")
    assert ann["n"] == 2 and ann["ours"] == pytest.approx(0.94)


def test_units_fractions_in_files_percent_in_print(table, capsys, mixed):
    rows, out = table
    with open(out / "accuracy.csv") as f:
        written = list(csv.DictReader(f))
    r = next(r for r in written if r["experiment"] == "table1_vgg16_cifar10" and r["method"] == "qcfs"
             and r["metric"] == "snn_acc" and r["T"] == "2")
    assert float(r["ours"]) == pytest.approx(0.85) and float(r["paper"] or 0) <= 1
    report.main(["accuracy", "--logs", str(mixed), "--experiment", "table1_vgg16_cifar10", "--timesteps", "1",
                 "--out", str(out / "again"), "--format", "long"])
    printed = capsys.readouterr().out
    assert "| table1_vgg16_cifar10 | vgg16 | cifar10 | qcfs | 1 | snn_acc | 1 | 70.00 | 88.41 | -18.41 |" in printed
    assert "ablation_alpha" not in printed.split("left out")[0]


def test_shared_recipe_is_printed(mixed, tmp_path, capsys):
    report.main(["ablation", "--logs", str(mixed), "--experiment", "ablation_alpha", "--param", "alpha",
                 "--timesteps", "1", "--out", str(tmp_path), "--format", "long"])
    printed = capsys.readouterr().out
    assert "every ablation_alpha row: epochs=1" in printed and "num_workers" not in printed
    body = printed.split("\n\n")[0].splitlines()[2:]
    assert [line.split(" | ")[4] for line in body] == ["-0.25"] * 2 + ["-0.5"] * 2   # alpha column, Fig. 3 order


def test_nan_and_legacy_files(tmp_path, capsys):
    logs = tmp_path / "logs"
    fake_run(logs, "a", "default", seed=1, qann=0.9, status=None)                      # legacy: counts
    fake_run(logs, "b", "default", seed=2, qann=0.8, status=None, snn_acc=(0.8, None))  # a null value at T=2
    fake_run(logs, "c", "default", seed=3, qann=0.1, status=None, overrides=["epochs=0"])
    (logs / "d").mkdir()
    (logs / "d" / "metrics.json").write_text('{"run": {"experiment": "default"}, "qann": {"test_acc": NaN}}')
    rows = report.main(["accuracy", "--logs", str(logs), "--timesteps", "2", "--out", str(tmp_path / "o")])
    printed = capsys.readouterr().out
    (t2,) = pick(rows, metric="snn_acc")
    assert t2["ours"] == pytest.approx(0.951) and t2["count"] == 1 and t2["n"] == 2
    assert "95.10 (1/2)" in printed
    assert "2 run(s) without a status field" in printed
    assert "- c [default]: untrained (epochs=0)" in printed and "- d [?]: unreadable (ValueError: NaN)" in printed


def test_same_seed_twice_counts_once(tmp_path):
    logs = tmp_path / "logs"
    old = fake_run(logs, "z_old", "default", seed=1, qann=0.5)
    fake_run(logs, "a_new", "default", seed=1, qann=0.9)
    os.utime(old / "metrics.json", (1e9, 1e9))
    rows = report.main(["accuracy", "--logs", str(logs), "--timesteps", "1", "--out", str(tmp_path / "o")])
    (ann,) = pick(rows, metric="ann_acc")
    assert ann["n"] == 1 and ann["ours"] == pytest.approx(0.9)
    with open(tmp_path / "o" / "accuracy_left_out.csv") as f:
        assert list(csv.reader(f))[1:] == [["z_old", "default", "superseded by a_new (seed 1, newer)"]]


def test_other_overrides_split_rows_ignored_keys_do_not(tmp_path):
    logs = tmp_path / "logs"
    fake_run(logs, "a", "default", seed=1, overrides=["optim.lr=0.1", "data.num_workers=0", "logger=csv"])
    fake_run(logs, "b", "default", seed=2, overrides=["optim.lr=0.1", "data.num_workers=8", "paths.log_dir=/x"])
    fake_run(logs, "c", "default", seed=1, overrides=["optim.lr=0.05"])
    fake_run(logs, "e", "default", seed=1, overrides=["optim.lr=0.05", "data.train_subset=100"])  # not under data=
    # another model at its own lr: the lr differs within the experiment, so every row names it
    fake_run(logs, "d", "default", seed=1, model="resnet20", overrides=["optim.lr=0.2", "+optim.x=1"])
    rows = report.main(["accuracy", "--logs", str(logs), "--timesteps", "1", "--out", str(tmp_path / "o")])
    assert sorted((r["model"], r["settings"], r["n"]) for r in pick(rows, metric="ann_acc")) == [
        ("resnet20", "data.train_subset=(default) optim.lr=0.2 optim.x=1", 1),
        ("vgg16", "data.train_subset=(default) optim.lr=0.05 optim.x=(default)", 1),
        ("vgg16", "data.train_subset=(default) optim.lr=0.1 optim.x=(default)", 2),
        ("vgg16", "data.train_subset=100 optim.lr=0.05 optim.x=(default)", 1)]


def test_convert_rows_carry_their_training_runs_recipe(tmp_path):
    logs = tmp_path / "logs"
    recipe = ["epochs=15", "optim.lr=0.1", "trainer.precision=bf16-mixed"]
    for seed in (1, 2):
        fake_run(logs, f"train/multiruns/t1/epochs:15+seed:{seed}", "t1", seed=seed, overrides=recipe, snn_acc=(0.9,))
    # published copies write Hydra's ':' as '=': the checkpoint paths (from the campaign's machine) still match
    (logs / "train/multiruns/t1/epochs:15+seed:2").rename(logs / "train/multiruns/t1/epochs=15+seed=2")
    for seed in (1, 2):
        ckpt = f"/elsewhere/logs/train/multiruns/t1/epochs:15+seed:{seed}/checkpoints/last.ckpt"
        fake_run(logs, f"convert/runs/{seed}", "t1", task="convert", seed=42, snn_acc=(0.9, 0.91, 0.92, 0.93),
                 overrides=[f"ckpt_path={ckpt}", "trainer.precision=32-true"], extra={})
        m = json.loads((logs / f"convert/runs/{seed}/metrics.json").read_text())
        m["run"]["checkpoint"] = ckpt
        (logs / f"convert/runs/{seed}/metrics.json").write_text(json.dumps(m))
    # a convert run of a checkpoint from elsewhere keeps only its own overrides
    fake_run(logs, "convert/runs/x", "t1", task="convert", overrides=["trainer.precision=32-true"],
             extra={}, snn_acc=(0.5,))
    rows = report.main(["accuracy", "--logs", str(logs), "--timesteps", "1", "2", "4", "--out", str(tmp_path / "o")])
    settings = sorted({(r["settings"], r["n"]) for r in pick(rows, metric="ann_acc")})
    assert settings == [
        ("task=convert epochs=(default) optim.lr=(default) trainer.precision=32-true", 1),
        ("task=convert epochs=15 optim.lr=0.1 trainer.precision=32-true", 2),   # both checkpoints, one row
        ("task=train epochs=15 optim.lr=0.1 trainer.precision=bf16-mixed", 2)]
    # rows only for the T a run simulated: the training rows stop at T=1, the convert rows at T=4
    assert sorted((r["settings"].split()[0], r["T"]) for r in pick(rows, metric="snn_acc")
                  if "0.1" in r["settings"]) == [("task=convert", 1), ("task=convert", 2), ("task=convert", 4),
                                                 ("task=train", 1)]
    assert all(r["ours"] is not None for r in rows)


def test_energy_table_ratio_and_paper(tmp_path):
    logs = tmp_path / "logs"
    e = "table3_vgg16_cifar10"
    fake_run(logs, "a", e, seed=1, spikes=(1e5, 2e5))
    fake_run(logs, "b", e, seed=2, spikes=(3e5, 6e5))
    fake_run(logs, "c", e, "qcfs", 0.0, 0.94, (0.70, 0.85), (5e5, 10e5))
    rows = report.main(["energy", "--logs", str(logs), "--timesteps", "1", "--out", str(tmp_path / "o")])
    (spikes,) = pick(rows, method="pmsm", metric="spikes_e5")
    assert spikes["ours"] == pytest.approx(2.0) and spikes["paper"] == pytest.approx(0.61)
    (power,) = pick(rows, method="pmsm", metric="power_mw")
    assert power["ours"] == pytest.approx(0.18) and power["paper"] == pytest.approx(0.055)   # 2e5 * 0.9 pJ / 1 ms
    (ratio,) = pick(rows, method="pmsm", metric="power_ratio")
    assert ratio["ours"] == pytest.approx(0.45 / 0.18) and ratio["paper"] == pytest.approx(0.278 / 0.055)
    assert pick(rows, method="qcfs", metric="power_ratio")[0]["ours"] == 1.0
    assert pick(rows, method="qcfs", metric="ann_acc")[0]["paper_source"] == "Table 3: QCFS"


def test_output_is_deterministic(mixed, tmp_path, capsys):
    """Same files, any order of creation or mtime: the same text (README tables are checked against it)."""
    report.main(["accuracy", "--logs", str(mixed), "--timesteps", "1", "8", "--out", str(tmp_path / "a")])
    for p in mixed.rglob("metrics.json"):
        os.utime(p, (2e9, 2e9))
    report.main(["accuracy", "--logs", str(mixed), "--timesteps", "1", "8", "--out", str(tmp_path / "b")])
    for name in ("accuracy.md", "accuracy.csv", "accuracy_left_out.csv"):
        assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text()
    assert str(mixed) not in (tmp_path / "a" / "accuracy.md").read_text()


def test_latest_is_by_time_not_by_name(tmp_path, capsys):
    logs = tmp_path / "logs"
    new = fake_run(logs, "multiruns/2026-01-01/2", "table3_vgg16_cifar10", seed=1)
    old = fake_run(logs, "multiruns/2026-01-01/10", "table3_vgg16_cifar10", seed=2)
    fake_run(logs, "multiruns/2026-01-01/11", "table3_vgg16_cifar10", "qcfs", 0.0, seed=1)
    fake_run(logs, "multiruns/2026-01-01/12", "table3_vgg16_cifar10", seed=3, status="failed")
    os.utime(old / "metrics.json", (1e9, 1e9))
    os.utime(new / "metrics.json", (1.5e9, 1.5e9))
    assert report.main(["latest", "--logs", str(logs), "--experiment", "table3_vgg16_cifar10",
                        "--method", "pmsm"]) == new
    assert capsys.readouterr().out.strip() == str(new)
    with pytest.raises(SystemExit, match="--method ann: no finished run"):
        report.main(["latest", "--logs", str(logs), "--experiment", "table3_vgg16_cifar10", "--method", "ann"])


@pytest.mark.parametrize("script", ["table2_vit.sh", "paper.sh"])
def test_sweeps_pick_the_newest_run_by_time(script):
    text = (ROOT / "sweeps" / script).read_text()
    assert "tail -1" not in text and "pmsm_exp.runs.report latest" in text


def test_bad_input_one_line(tmp_path, mixed):
    with pytest.raises(SystemExit, match=r"^error: --logs: got .*nope, which is not a folder"):
        report.main(["accuracy", "--logs", str(tmp_path / "nope")])
    with pytest.raises(SystemExit, match="no finished runs of experiment"):
        report.main(["accuracy", "--logs", str(mixed), "--experiment", "nothing", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="--timesteps: got"):
        report.main(["accuracy", "--logs", str(mixed), "--timesteps", "0"])


def test_paper_results_transcription():
    paper = report.paper_results()
    by = {(p.table, p.row, p.model, p.data, p.metric, p.T): p.value for p in paper}
    # spot checks against the paper's text (percent as printed there, fractions here)
    assert by["Table 1", "Ours", "resnet20", "cifar100", "snn_acc", "8"] == pytest.approx(0.7024)
    assert by["Table 1", "QCFS (Bu et al. 2022b)", "vgg16", "cifar100", "snn_acc", "8"] == pytest.approx(0.7396)
    assert by["Table 2", "Ours", "vit_s", "imagenet", "snn_acc", "1"] == pytest.approx(0.816)
    assert by["Table 2", "Ours", "vit_s", "cifar10", "snn_acc", "1"] == pytest.approx(0.985)
    assert by["Table 3", "QCFS", "vgg16", "cifar100", "power_mw", "2"] == pytest.approx(0.331)
    # Eq. 11 holds for every Table 3 row: P = spikes * 0.9 pJ / (T * 1 ms), within the printed digits
    # (spikes printed to 0.005e5: 0.0045/T mW; power to 0.0005 mW)
    for p in paper:
        if p.metric == "power_mw":
            spikes, t = by[p.table, p.row, p.model, p.data, "spikes_e5", p.T], int(p.T)
            assert p.value == pytest.approx(spikes * 1e5 * 0.9e-12 / (t * 1e-3) * 1e3, abs=0.0045 / t + 0.0005)
    assert {p.table for p in paper} == {"Table 1", "Table 2", "Table 3", "Fig. 3(a)", "Fig. 3(b)"}
    assert all(p.value is None or 0 < p.value for p in paper)


def test_analysis_accuracies_are_fractions(tmp_path):
    """analysis.snn_accuracy is a fraction like snn.test_acc; checked against a plain count."""
    from pmsm_exp.analysis.analyze import analyze
    from pmsm_exp.snn.conversion import convert_to_snn
    from pmsm_exp.quant import make_activation
    torch.manual_seed(0)
    act = make_activation("pqa", 8, -0.25, 1.0, 8.0)
    qann = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), act(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, 3)).eval()
    x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 3, (16,))
    s = analyze(qann, convert_to_snn(qann, "aif"), [(x, y)], 2, tmp_path)
    expected = (qann(x).argmax(-1) == y).double().mean().item()       # T=1 equals the QANN (lossless)
    assert s["ann_accuracy"] == pytest.approx(expected) and s["snn_accuracy"][0] == pytest.approx(expected)
    assert all(0 <= v <= 1 for v in s["snn_accuracy"] + s["agreement_with_ann"]) and s["agreement_with_ann"][0] == 1
    with open(tmp_path / "energy_over_time.csv") as f:
        assert float(next(csv.DictReader(f))["snn_acc"]) == pytest.approx(expected)


def test_compare_reads_old_percent_summaries():
    from pmsm_exp.analysis.compare import fractions
    old = {"ann_accuracy": 95.0, "snn_accuracy": [90.0, 92.0], "agreement_with_ann": [100.0, 98.0]}
    assert fractions(old)["snn_accuracy"] == pytest.approx([0.90, 0.92])
    new = {"accuracy_unit": "fraction", "ann_accuracy": 0.95}
    assert fractions(new) is new


def test_wandb_report_run(table, tmp_path, monkeypatch):
    """--wandb: one offline job_type=report run per experiment (its W&B group), the table as a wandb.Table."""
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    rows, _ = table
    mine = [r for r in rows if r["experiment"] == "table1_vgg16_cifar10"]   # paper column: numbers and None
    (run_dir,) = report.log_wandb("accuracy", "t", mine, report.Selection(), tmp_path, "offline", "pmsm-exp-test")
    from wandb_records import offline_runs
    (run,) = offline_runs(tmp_path)
    assert (run.run.run_group, run.run.job_type, run.run.display_name) == ("table1_vgg16_cifar10", "report",
                                                                           "report-t-table1_vgg16_cifar10")
    run = {"dir": run_dir}
    files = list(Path(run["dir"]).rglob("t_*.table.json"))
    assert files, list(Path(run["dir"]).rglob("*"))
    saved = json.loads(files[0].read_text())
    assert saved["columns"][:4] == ["experiment", "model", "data", "method"]
    assert len(saved["data"]) == len(mine)
    paper = [r[saved["columns"].index("paper")] for r in saved["data"]]
    assert paper == [r["paper"] for r in mine] and None in paper


def test_plot_over_time_means_per_row_and_png(mixed, tmp_path, capsys):
    sel = report.collect(mixed, ["table1_vgg16_cifar10"])
    curves, qanns = report.over_time(report.group_runs(sel))
    pmsm = next(v for k, v in curves.items() if k.startswith("pmsm"))
    qcfs = next(v for k, v in curves.items() if k.startswith("qcfs"))
    # the two pmsm seeds' accuracies, averaged by hand at each T
    assert pmsm == pytest.approx({1: (0.95 + 0.93) / 2, 2: (0.951 + 0.935) / 2})
    assert qcfs == pytest.approx({1: 0.70, 2: 0.85})
    assert qanns == pytest.approx({"pmsm QANN": 0.94, "qcfs QANN": 0.94})
    path = report.main(["plot", "--logs", str(mixed), "--experiment", "table1_vgg16_cifar10",
                        "--out", str(tmp_path), "--name", "over_t"])
    assert path == tmp_path / "over_t.png" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_needs_runs_over_several_steps(tmp_path):
    fake_run(tmp_path / "logs", "train/runs/a", "e", snn_acc=(0.9,), spikes=(1e5,))
    with pytest.raises(SystemExit, match="more than one timestep"):
        report.main(["plot", "--logs", str(tmp_path / "logs"), "--out", str(tmp_path)])


def test_paper_shaped_table_one_row_per_method_a_column_per_t(mixed, tmp_path, capsys):
    """The default view: a row per (model, data, method, setting), columns ANN, T=1, T=2, ..., each cell
    ours [the paper's figure]; seeds averaged (mean ± std), the long rows kept in the CSV."""
    report.main(["accuracy", "--logs", str(mixed), "--experiment", "table1_vgg16_cifar10", "--timesteps", "1", "2",
                 "--out", str(tmp_path)])
    lines = (tmp_path / "accuracy.md").read_text().split("\n\n")[0].splitlines()
    assert lines[0] == "| model | data | method | n | ANN | T=1 | T=2 | machine | code |"
    rows = {line.split(" | ")[2]: line.split(" | ") for line in lines[2:]}
    assert set(rows) == {"pmsm", "qcfs"}
    # PMSM: two seeds, QANN 95 and 93 (std 1.41), SNN at T=1 95 and 93; the paper: 95.67 (Table 1 VGG-16)
    assert rows["pmsm"][3] == "2" and rows["pmsm"][4].startswith("94.00 ± 1.41 [")
    assert rows["qcfs"][5] == "70.00 [88.41]" and rows["qcfs"][6] == "85.00"
    assert rows["pmsm"][-1] == "unknown |"          # records without provenance say so
    long = (tmp_path / "accuracy.csv").read_text().splitlines()
    assert long[0].startswith("experiment,model,data,method,settings,code,machine,n,") and len(long) == 1 + 2 * 3
