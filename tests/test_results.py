"""The published results (results/) are what the report prints from the committed metrics.json files.

README's Results section and results/*.md must be exactly the report's output rebuilt here from
results/runs/, so no number in them can be edited by hand or go stale.
"""
import json
from pathlib import Path

import pytest

from pmsm_exp.runs import report

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"
RUNS = RESULTS / "runs"
# name -> the report arguments sweeps/results_cpu.sh uses for it
TABLES = {
    "table1_resnet20_cifar10": ["accuracy", "--experiment", "table1_resnet20_cifar10",
                                "--timesteps", "1", "2", "4", "8", "16", "32"],
    "fig3a_alpha": ["ablation", "--experiment", "ablation_alpha", "--param", "alpha", "--timesteps", "1"],
}


@pytest.fixture(scope="module")
def rebuilt(tmp_path_factory):
    out = tmp_path_factory.mktemp("rebuilt")
    for name, args in TABLES.items():
        report.main([*args, "--logs", str(RUNS), "--out", str(out), "--name", name])
    return out


@pytest.mark.parametrize("name", TABLES)
def test_committed_tables_are_the_report_output(rebuilt, name):
    for suffix in (".md", ".csv", "_left_out.csv"):
        assert (RESULTS / f"{name}{suffix}").read_text() == (rebuilt / f"{name}{suffix}").read_text(), suffix


@pytest.mark.parametrize("name", TABLES)
def test_readme_shows_the_tables_as_printed(rebuilt, name):
    readme = (ROOT / "README.md").read_text()
    assert (rebuilt / f"{name}.md").read_text().strip() in readme


def test_energy_table_is_the_report_output(tmp_path):
    report.main(["equal", "--logs", str(RUNS), "--experiment", "table1_resnet20_cifar10", "--task", "convert",
                 "--out", str(tmp_path), "--name", "table1_energy"])
    for suffix in (".md", ".csv"):
        assert (RESULTS / f"table1_energy{suffix}").read_text() == (tmp_path / f"table1_energy{suffix}").read_text()
    assert (tmp_path / "table1_energy.md").read_text().strip() in (ROOT / "README.md").read_text()


def test_every_pmsm_run_agrees_with_its_qann_at_t1():
    runs = [json.loads(p.read_text()) for p in sorted(RUNS.rglob("metrics.json"))]
    pmsm = [m for m in runs if m["run"]["method"] == "pmsm"]
    assert pmsm and all(m["status"] == "finished" for m in runs)
    for m in pmsm:
        snn = m["snn"]
        assert snn["timesteps"][0] == 1 and snn["agreement"][0] == 1.0, m["run"]
        assert snn["test_acc"][0] == m["qann"]["test_acc"], m["run"]


def test_plot_is_published():
    assert (RESULTS / "table1_over_t.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_published_paths_check_out_on_windows():
    # Windows refuses these characters in file names (git cannot check such a path out there)
    bad = [p for p in RESULTS.rglob("*") if any(c in p.relative_to(ROOT).as_posix() for c in ':*?"<>|\\')]
    assert not bad, bad[:3]


def test_readme_prose_numbers_come_from_the_records():
    """Every number README's Results prose states, recomputed here from the committed records."""
    runs = [json.loads(p.read_text()) for p in sorted(RUNS.rglob("metrics.json"))]
    convert = {m["run"]["method"]: m for m in runs if m["run"]["task"] == "convert"
               and m["run"]["experiment"] == "table1_resnet20_cifar10"}
    pmsm, qcfs = convert["pmsm"]["snn"], convert["qcfs"]["snn"]
    readme = " ".join((ROOT / "README.md").read_text().split())
    pct = lambda v: f"{100 * v:.2f}%"  # noqa: E731
    later = [100 * a for a in pmsm["test_acc"][1:8]]
    assert f"stays at {min(later):.1f}-{max(later):.1f}% for T=2…8" in readme
    reach_qann = next(t for t, a in zip(qcfs["timesteps"], qcfs["test_acc"]) if a >= convert["qcfs"]["qann"]["test_acc"])
    assert f"needs about {reach_qann} steps to reach its QANN" in readme
    assert f"({pct(convert['qcfs']['qann']['test_acc'])} against {pct(convert['pmsm']['qann']['test_acc'])})" in readme
    assert f"starts at {pct(qcfs['test_acc'][0])} at T=1" in readme
    spikes = pmsm["spikes_per_image"][0] / qcfs["spikes_per_image"][0]
    events = pmsm["spike_events_per_image"][0] / qcfs["spike_events_per_image"][0]
    assert f"PMSM emits {spikes:.1f}x QCFS's spikes ({events:.1f}x its spike events)" in readme
    first = next(i for i, a in enumerate(qcfs["test_acc"]) if a >= pmsm["test_acc"][0])
    more = qcfs["spikes_per_image"][first] / pmsm["spikes_per_image"][0]
    more_events = qcfs["spike_events_per_image"][first] / pmsm["spike_events_per_image"][0]
    assert (f"first reaches PMSM's T=1 accuracy at T={qcfs['timesteps'][first]}, with {more:.2f}x PMSM's spikes "
            f"(PMSM uses {1 / more:.2f}x) and {more_events:.2f}x its spike events") in readme
    power = lambda n, t: n * 0.9e-12 / (t * 1e-3) * 1e3  # noqa: E731  (Eq. 11, mW)
    assert (f"({power(qcfs['spikes_per_image'][first], qcfs['timesteps'][first]):.3f} mW against "
            f"{power(pmsm['spikes_per_image'][0], 1):.3f} mW)") in readme
    gap_t1 = 0.6243 - qcfs["test_acc"][0]
    gap_qann = 0.9177 - convert["qcfs"]["qann"]["test_acc"]
    assert f"is {100 * gap_t1:.1f} points below the paper's 62.43%" in readme and f"({100 * gap_qann:.1f} points)" in readme


def test_recipe_selection_table_is_the_report_output(tmp_path):
    report.main(["selection", "--logs", str(RUNS), "--experiment", "recipe_select", "--out", str(tmp_path),
                 "--name", "recipe_select"])
    for suffix in (".md", ".csv"):
        assert (RESULTS / f"recipe_select{suffix}").read_text() == (tmp_path / f"recipe_select{suffix}").read_text()
    assert (tmp_path / "recipe_select.md").read_text().strip() in (ROOT / "README.md").read_text()
    # the recipe conf/recipe/fast.yaml sets is the one with the best validation accuracy
    import csv
    best = next(csv.DictReader((tmp_path / "recipe_select.csv").open()))
    fast = (ROOT / "conf" / "recipe" / "fast.yaml").read_text()
    assert best["changed"] == "lambda0=2 optim.lr=0.2 optim.nesterov=True"
    assert "threshold: 2.0" in fast and "lr: 0.2" in fast and "nesterov: true" in fast
