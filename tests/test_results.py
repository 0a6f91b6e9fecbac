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
FIRST = RESULTS / "first-cpu"            # the first CPU campaign: its tables, its README
FIRST_RUNS = RUNS / "first-cpu"
RECIPE_RUNS = RUNS / "recipe"            # the recipe selection rounds and the earlier fast-recipe run
# name -> the report arguments the first campaign's scripts used for it
TABLES = {
    "table1_resnet20_cifar10": ["accuracy", "--experiment", "table1_resnet20_cifar10",
                                "--timesteps", "1", "2", "4", "8", "16", "32"],
    "fig3a_alpha": ["ablation", "--experiment", "ablation_alpha", "--param", "alpha", "--timesteps", "1"],
}


@pytest.fixture(scope="module")
def rebuilt(tmp_path_factory):
    out = tmp_path_factory.mktemp("rebuilt")
    for name, args in TABLES.items():
        report.main([*args, "--logs", str(FIRST_RUNS), "--out", str(out), "--name", name])
    return out


@pytest.mark.parametrize("name", TABLES)
def test_committed_tables_are_the_report_output(rebuilt, name):
    for suffix in (".md", ".csv", "_left_out.csv"):
        assert (FIRST / f"{name}{suffix}").read_text() == (rebuilt / f"{name}{suffix}").read_text(), suffix


@pytest.mark.parametrize("name", TABLES)
def test_readme_shows_the_tables_as_printed(rebuilt, name):
    readme = (FIRST / "README.md").read_text()
    assert (rebuilt / f"{name}.md").read_text().strip() in readme


def test_energy_table_is_the_report_output(tmp_path):
    report.main(["equal", "--logs", str(FIRST_RUNS), "--experiment", "table1_resnet20_cifar10", "--task", "convert",
                 "--out", str(tmp_path), "--name", "table1_energy"])
    for suffix in (".md", ".csv"):
        assert (FIRST / f"table1_energy{suffix}").read_text() == (tmp_path / f"table1_energy{suffix}").read_text()
    assert (tmp_path / "table1_energy.md").read_text().strip() in (FIRST / "README.md").read_text()


def test_every_pmsm_run_agrees_with_its_qann_at_t1():
    runs = [json.loads(p.read_text()) for p in sorted(RUNS.rglob("metrics.json"))]
    pmsm = [m for m in runs if m["run"]["method"] == "pmsm" and m["status"] == "finished"]
    # a run that did not finish is published with its status and why (a campaign goes on past it)
    assert pmsm and all(m["status"] == "finished" or m.get("error") or m.get("reason") for m in runs)
    for m in pmsm:
        snn = m["snn"]
        assert snn["timesteps"][0] == 1 and snn["agreement"][0] == 1.0, m["run"]
        assert snn["test_acc"][0] == m["qann"]["test_acc"], m["run"]


def test_plot_is_published():
    assert (FIRST / "table1_over_t.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_published_paths_check_out_on_windows():
    # Windows refuses these characters in file names (git cannot check such a path out there)
    bad = [p for p in RESULTS.rglob("*") if any(c in p.relative_to(ROOT).as_posix() for c in ':*?"<>|\\')]
    assert not bad, bad[:3]


def test_readme_prose_numbers_come_from_the_records():
    """Every number the first campaign's prose states, recomputed here from the committed records."""
    runs = [json.loads(p.read_text()) for p in sorted(FIRST_RUNS.rglob("metrics.json"))]
    convert = {m["run"]["method"]: m for m in runs if m["run"]["task"] == "convert"
               and m["run"]["experiment"] == "table1_resnet20_cifar10"}
    pmsm, qcfs = convert["pmsm"]["snn"], convert["qcfs"]["snn"]
    readme = " ".join((FIRST / "README.md").read_text().split())
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
    report.main(["selection", "--logs", str(RECIPE_RUNS), "--experiment", "recipe_select", "--out", str(tmp_path),
                 "--name", "recipe_select"])
    for suffix in (".md", ".csv"):
        assert (RESULTS / f"recipe_select{suffix}").read_text() == (tmp_path / f"recipe_select{suffix}").read_text()
    assert (tmp_path / "recipe_select.md").read_text().strip() in (ROOT / "README.md").read_text()
    # the recipe conf/recipe/fast.yaml sets is the one with the best validation accuracy: every lever of
    # the best row has its value there (lambda0 is pqa.threshold)
    import csv
    import yaml
    rows = list(csv.DictReader((tmp_path / "recipe_select.csv").open()))
    best = max(rows, key=lambda r: float(r["val_acc"]))
    assert best is rows[0]
    fast = yaml.safe_load((ROOT / "conf" / "recipe" / "fast.yaml").read_text())
    levers = dict(kv.split("=", 1) for kv in best["changed"].split())
    assert levers, best
    for key, value in levers.items():
        node = fast
        for part in ("pqa.threshold" if key == "lambda0" else key).split("."):
            node = node[part]
        assert yaml.safe_load(value) == node, (key, value, node)


# ---------------------------------------------------------------- the paper in miniature (sweeps/paper.sh)
CAMPAIGN = RUNS / "paper-cpu"
CAMPAIGN_FILES = ["table1_cifar10.md", "table1_cifar100.md", "table2_vit.md", "table3_energy.md", "CLAIMS.md",
                  "campaign.md", "summary.md", "fig3a_alpha.md", "fig3b_beta.md", "crosscheck_spikingjelly.md"]
CAMPAIGN_FIGURES = ["fig2_entropy.png", "fig3a_alpha.png", "fig3b_beta.png", "fig4_layer_spikes.png",
                    "fig5_regimes.png", "fig6_conversion_error.png"]


@pytest.fixture(scope="module")
def campaign_rebuilt(tmp_path_factory):
    from pmsm_exp.runs import campaign
    out = tmp_path_factory.mktemp("campaign")
    campaign.build(CAMPAIGN, out, "cpu")
    return out


@pytest.mark.parametrize("name", CAMPAIGN_FILES)
def test_campaign_files_are_rebuilt_from_the_committed_records(campaign_rebuilt, name):
    assert (RESULTS / name).read_text() == (campaign_rebuilt / name).read_text()


@pytest.mark.parametrize("name", CAMPAIGN_FIGURES)
def test_campaign_figures_are_published(campaign_rebuilt, name):
    assert (RESULTS / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (campaign_rebuilt / name).is_file()


def test_readme_results_summary_is_the_campaign_summary(campaign_rebuilt):
    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- campaign:summary -->\n", 1)[1].split("<!-- /campaign:summary -->", 1)[0]
    assert block == (campaign_rebuilt / "summary.md").read_text()


def test_readme_shows_the_recipe_selection():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- report:recipe_select -->\n", 1)[1].split("<!-- /report:recipe_select -->", 1)[0]
    assert block.strip() == (RESULTS / "recipe_select.md").read_text().strip()


def test_full_budget_selection_table_is_the_report_output_and_picked_the_time_to_accuracy_recipe(tmp_path):
    """Round 5 (18 epochs on the split): README and results/ show the report's table, and the recipe
    sweeps/time_to_accuracy.sh trains with is recipe=fast with the best row's lever, nothing else."""
    import csv
    import re
    from test_framework import compose_train
    report.main(["selection", "--logs", str(RECIPE_RUNS), "--experiment", "recipe_select_18ep", "--out", str(tmp_path),
                 "--name", "recipe_select_18ep"])
    for suffix in (".md", ".csv"):
        assert (RESULTS / f"recipe_select_18ep{suffix}").read_text() == (tmp_path / f"recipe_select_18ep{suffix}").read_text()
    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- report:recipe_select_18ep -->\n", 1)[1].split("<!-- /report:recipe_select_18ep -->", 1)[0]
    assert block.strip() == (tmp_path / "recipe_select_18ep.md").read_text().strip()
    rows = list(csv.DictReader((tmp_path / "recipe_select_18ep.csv").open()))
    assert len(rows) >= 2 and all(int(r["epochs"]) == 18 and int(r["val_images"]) > 0 for r in rows)
    best = max(rows, key=lambda r: float(r["val_acc"]))
    chosen = re.search(r"^RECIPE=\$\{RECIPE:-(\w+)\}$", (ROOT / "sweeps" / "time_to_accuracy.sh").read_text(), re.M)[1]
    base = compose_train("experiment=table1_resnet20_cifar10", "recipe=fast")
    picked = compose_train("experiment=table1_resnet20_cifar10", f"recipe={chosen}")
    del base.hydra, picked.hydra
    from omegaconf import OmegaConf
    for kv in best["changed"].split():
        key, value = kv.split("=", 1)
        assert OmegaConf.select(picked, key) == yaml_value(value) != OmegaConf.select(base, key), kv
        OmegaConf.update(base, key, yaml_value(value))
    assert picked == base


def yaml_value(text):
    import yaml
    return yaml.safe_load(text)


def test_time_to_accuracy_section_is_rebuilt_from_its_record(tmp_path):
    from pmsm_exp.runs import campaign
    runs = RUNS / "time-to-accuracy"
    report.main(["accuracy", "--logs", str(runs), "--experiment", "time_to_accuracy", "--format", "paper",
                 "--timesteps", "1", "2", "4", "8", "16", "32", "--out", str(tmp_path), "--name", "time_to_accuracy"])
    for suffix in (".md", ".csv", "_left_out.csv"):
        assert (RESULTS / f"time_to_accuracy{suffix}").read_text() == (tmp_path / f"time_to_accuracy{suffix}").read_text()
    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- report:time_to_accuracy -->\n", 1)[1].split("<!-- /report:time_to_accuracy -->", 1)[0]
    records = campaign.Records(report.collect(runs).runs)
    line = campaign.time_to_accuracy(records, "time_to_accuracy")
    table = (tmp_path / "time_to_accuracy.md").read_text().split("\n\nleft out:")[0].strip()
    assert block == f"{line}\n\n{table}\n"
    pmsm, qcfs = campaign.pair(records, "time_to_accuracy")
    assert pmsm["data"]["train_images"] == 50000 and pmsm["data"]["test_images"] == 10000
    assert pmsm["training"]["epochs"] <= 18 and pmsm["training"]["wall_s"] <= 3600
    assert pmsm["training"]["resumed_from"] is None   # one uninterrupted process: its wall time is the recipe's
    # QCFS with the same recipe beside it: its QANN and its SNN at T=1 ... 32
    assert qcfs is not None and campaign.recipe_of(qcfs) == campaign.recipe_of(pmsm)
    assert qcfs["data"]["train_images"] == 50000 and qcfs["training"]["epochs"] <= 18
    assert all(campaign.snn_at(qcfs, "test_acc", t) is not None for t in (1, 2, 4, 8, 16, 32))
    assert pmsm["snn"]["agreement"][0] == 1.0 and pmsm["snn"]["test_acc"][0] == pmsm["qann"]["test_acc"]
    # the prose beside it: against recipe=fast's campaign run, and against the 85%
    fast, _ = campaign.pair(campaign.Records(report.collect(RUNS / "paper-cpu").runs), "table1_resnet20_cifar10")
    acc, before = pmsm["qann"]["test_acc"], fast["qann"]["test_acc"]
    against_target = (f"and still {100 * (0.85 - acc):.2f} points short of" if acc < 0.85 else
                      f"and {100 * (acc - 0.85):.2f} points above")
    assert (f"{100 * (acc - before):.2f} points above `recipe=fast`'s {100 * before:.2f}% "
            f"{against_target} the issue's 85%") in " ".join(readme.split())
