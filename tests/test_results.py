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
