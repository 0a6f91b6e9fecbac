"""The paper in miniature (sweeps/paper.sh, runs/campaign.py): the claims ledger's rules against hand-made
records whose verdicts are worked out here, every file the campaign promises, and a piece of the smoke
campaign end to end (the whole smoke campaign is a slow test)."""
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from pmsm_exp.runs import campaign

ROOT = Path(__file__).resolve().parents[1]
FILES = ["table1_cifar10.md", "table1_cifar100.md", "table2_vit.md", "table3_energy.md", "fig2_entropy.png",
         "fig3a_alpha.png", "fig3b_beta.png", "fig4_layer_spikes.png", "fig5_regimes.png",
         "fig6_conversion_error.png", "CLAIMS.md", "campaign.md", "crosscheck_spikingjelly.md"]


def record(experiment, method, model="resnet20", *, qann=0.8, t1=None, accs=None, agreement=None, seed=42,
           alpha=-0.25, beta=1.0, power=None, layers=None, analysis=None, overrides=()):
    accs = accs or [qann if t1 is None else t1, qann]
    steps = list(range(1, len(accs) + 1))
    return {"status": "finished",
            "run": {"task": "train", "experiment": experiment, "model": model, "data": "cifar10", "method": method,
                    "pqa": {"levels": 8, "alpha": alpha if method == "pmsm" else 0.0, "beta": beta, "threshold": 2.0},
                    "seed": seed, "overrides": [f"experiment={experiment}", f"pqa={method}", f"seed={seed}",
                                                f"pqa.alpha={alpha}", f"pqa.beta={beta}", *overrides]},
            "qann": {"test_acc": qann},
            "snn": {"timesteps": steps, "test_acc": accs, "agreement": agreement or [1.0] + [0.99] * (len(steps) - 1),
                    "power_mw": power or [0.3] * len(steps), "spikes_per_image": [1e5 * t for t in steps],
                    "spike_events_per_image": [5e4 * t for t in steps],
                    "layer_spikes": layers or {"a": [10.0 * t for t in steps], "b": [20.0 * t for t in steps]}},
            "data": {"name": "cifar10", "train_images": 50000, "test_images": 10000},
            "training": {"epochs": 32}, **({"analysis": analysis} if analysis else {})}


def write(root: Path, records: dict[str, dict]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, m in records.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        (root / name / "metrics.json").write_text(json.dumps(m))
    return root


def load(root: Path) -> campaign.Records:
    return campaign.Records(campaign.report.collect(root).runs)


def test_lossless_claim_fails_when_one_run_disagrees_at_t1(tmp_path):
    good = record("table1_resnet20_cifar10", "pmsm", qann=0.8)
    off = record("table1_vgg16_cifar10", "pmsm", model="vgg16", qann=0.8, t1=0.8, agreement=[0.999, 0.99])
    assert campaign.lossless_claim(load(write(tmp_path / "a", {"r": good}))).verdict == "holds"
    assert campaign.lossless_claim(load(write(tmp_path / "b", {"r": good, "v": off}))).verdict == "fails"
    assert campaign.lossless_claim(load(write(tmp_path / "c", {}))).verdict == "untested"
    # same agreement but a T=1 accuracy that differs from the QANN's is not lossless either
    shifted = record("table1_resnet20_cifar10", "pmsm", qann=0.8, t1=0.79)
    assert campaign.lossless_claim(load(write(tmp_path / "d", {"r": shifted}))).verdict == "fails"


def test_beats_qcfs_claim_per_model(tmp_path):
    runs = {"rp": record("table1_resnet20_cifar10", "pmsm", qann=0.84),
            "rq": record("table1_resnet20_cifar10", "qcfs", qann=0.85, t1=0.40),
            "vp": record("table1_vgg16_cifar10", "pmsm", model="vgg16", qann=0.70),
            "vq": record("table1_vgg16_cifar10", "qcfs", model="vgg16", qann=0.80, t1=0.75)}
    claim = campaign.beats_qcfs_claim(load(write(tmp_path, runs)))
    assert claim.verdict == "partly"          # ResNet-20 84 > 40; VGG-16 70 < 75
    assert "84.00 vs QCFS 40.00" in claim.ours and "70.00 vs QCFS 75.00" in claim.ours


def test_stable_claim_allows_half_a_point(tmp_path):
    ok = record("table1_resnet20_cifar10", "pmsm", qann=0.80, accs=[0.80] + [0.797] * 7)    # -0.3 points at T=8
    bad = record("table1_resnet20_cifar10", "pmsm", qann=0.80, accs=[0.80] + [0.793] * 7)   # -0.7 points
    assert campaign.stable_claim(load(write(tmp_path / "a", {"r": ok}))).verdict == "holds"
    assert campaign.stable_claim(load(write(tmp_path / "b", {"r": bad}))).verdict == "fails"


@pytest.mark.parametrize("points, verdict", [
    ({-0.125: [0.50, 0.52], -0.25: [0.60, 0.61], -0.5: [0.55, 0.56]}, "holds"),      # peak 9 points over the ends
    ({-0.125: [0.60, 0.61], -0.25: [0.55, 0.56], -0.5: [0.50, 0.52]}, "fails"),      # monotone: peak at an end
    ({-0.125: [0.50, 0.60], -0.25: [0.56, 0.57], -0.5: [0.50, 0.52]}, "partly"),     # inside, within the spread
    ({-0.125: [0.50], -0.25: [0.60]}, "untested"),                                   # two points say nothing
])
def test_rise_then_drop_verdicts(points, verdict):
    claim = campaign.rise_then_drop_claim(points, "alpha", "Fig. 3(a)", [])
    assert claim.verdict == verdict
    if verdict != "untested":   # read as the paper does: alpha from -0.125 down
        assert claim.ours.startswith("-0.125: ") and claim.ours.index("-0.25: ") < claim.ours.index("-0.5: ")


def test_rise_then_drop_reads_beta_from_small_to_large():
    # beta goes 0.125 -> 1 in the paper; a peak at the largest beta is at an end
    points = {0.125: [0.50, 0.50], 0.5: [0.55, 0.55], 1.0: [0.60, 0.60]}
    claim = campaign.rise_then_drop_claim(points, "beta", "Fig. 3(b)", [])
    assert claim.verdict == "fails" and "peak at 1" in claim.ours


def test_energy_claims_from_the_vgg_pair(tmp_path):
    # QCFS power 6x PMSM's at T=1 and 2; PMSM fewer spikes in one of two layers
    pmsm = record("table1_vgg16_cifar10", "pmsm", model="vgg16", power=[0.05, 0.05],
                  layers={"a": [5.0, 10.0], "b": [30.0, 60.0], "c": [7.0, 14.0]})
    qcfs = record("table1_vgg16_cifar10", "qcfs", model="vgg16", power=[0.30, 0.30],
                  layers={"a": [10.0, 20.0], "b": [20.0, 40.0], "c": [7.0, 9.0]})     # c: a tie is not fewer
    energy, layers = campaign.energy_claim(load(write(tmp_path, {"p": pmsm, "q": qcfs})))
    assert energy.verdict == "holds" and "T=1: 6.00x" in energy.ours
    assert layers.verdict == "partly" and "fewer in 1 of 3 layers" in layers.ours
    energy, layers = campaign.energy_claim(load(write(tmp_path / "none", {})))
    assert energy.verdict == layers.verdict == "untested"


def test_energy_claim_fails_when_pmsm_spends_more(tmp_path):
    # as the first CPU campaign's ResNet-20 pair: PMSM fires more at equal T
    pmsm = record("table1_vgg16_cifar10", "pmsm", model="vgg16", power=[0.29, 0.29])
    qcfs = record("table1_vgg16_cifar10", "qcfs", model="vgg16", power=[0.03, 0.03])
    energy, _ = campaign.energy_claim(load(write(tmp_path, {"p": pmsm, "q": qcfs})))
    assert energy.verdict == "fails" and "T=1: 0.10x" in energy.ours


def test_entropy_rule_claim_picks_beta_quarter_not_table4():
    # issue 20: at L=8, lambda=8 the entropy rule picks beta=0.25, not Table 4's beta=1
    claim = campaign.entropy_rule_claim(campaign.Records([]))
    assert claim.verdict == "fails" and "beta=0.25" in claim.ours


def test_vit_small_loss_claim(tmp_path):
    small = record("vit_tiny_cifar10", "pmsm", model="vit_tiny", qann=0.70, t1=0.695)
    large = record("vit_tiny_cifar10", "pmsm", model="vit_tiny", qann=0.70, t1=0.60)
    assert campaign.vit_claims(load(write(tmp_path / "a", {"v": small})))[0].verdict == "holds"
    assert campaign.vit_claims(load(write(tmp_path / "b", {"v": large})))[0].verdict == "fails"
    assert campaign.vit_claims(load(write(tmp_path / "c", {})))[1].verdict == "untested"


def test_vit_claim_explains_an_exact_t1_only_when_every_image_agrees(tmp_path):
    exact = record("vit_tiny_cifar10", "pmsm", model="vit_tiny", qann=0.70, t1=0.70)
    near = record("vit_tiny_cifar10", "pmsm", model="vit_tiny", qann=0.70, t1=0.70, agreement=[0.999, 0.99])
    assert "No loss" in campaign.vit_claims(load(write(tmp_path / "a", {"v": exact})))[0].ours
    assert "No loss" not in campaign.vit_claims(load(write(tmp_path / "b", {"v": near})))[0].ours


def test_build_writes_every_file_with_a_verdict_per_claim(tmp_path):
    analysis = {"timesteps": 4, "conversion_error_mean": [0.0, 0.1, 0.05, 0.02],
                "layers": {"a": {"conversion_error": [0.0, 0.2, 0.1, 0.04]}, "b": {"conversion_error": None}}}
    runs = {"t1/p": record("table1_resnet20_cifar10", "pmsm", analysis=analysis),
            "t1/q": record("table1_resnet20_cifar10", "qcfs", t1=0.3, analysis=analysis),
            **{f"a/{a}-{s}": record("ablation_alpha", "pmsm", alpha=a, seed=s, qann=0.5 + 0.01 * s - 0.1 * abs(a + 0.5),
                                    overrides=(f"pqa.alpha={a}",))
               for a in (-0.125, -0.5, -1.0) for s in (1, 2)}}
    root = write(tmp_path / "runs", runs)
    (root / "steps.tsv").write_text("table1_resnet20_pmsm\tcpu\t1765000000\t1500\t0\n")
    ledger = campaign.build(root, tmp_path / "out", "cpu")
    for name in FILES:
        assert (tmp_path / "out" / name).stat().st_size > 0, name
    assert all(c.verdict in campaign.VERDICTS for c in ledger) and len(ledger) >= 10
    text = (tmp_path / "out" / "CLAIMS.md").read_text()
    assert text.count("| **") == len(ledger)
    assert "not run: no CIFAR-100" in (tmp_path / "out" / "table1_cifar100.md").read_text()
    assert "25.0 min" in (tmp_path / "out" / "campaign.md").read_text()
    alpha = next(c for c in ledger if "over alpha first rises" in c.claim)
    assert alpha.verdict == "holds" and "peak at -0.5" in alpha.ours


def _env(tmp_path):
    from data_files import write_cifar10
    data = write_cifar10(tmp_path / "data", per_batch=60, n_test=140)
    return {**os.environ, "PMSM_DATA_DIR": str(data), "WANDB_MODE": "offline", "WANDB_SILENT": "true",
            "MPLBACKEND": "Agg"}


def test_smoke_campaign_piece_trains_converts_and_publishes(tmp_path):
    """The lighter piece of BUDGET=smoke in the default suite: the ResNet-20 pair through paper.sh, then the
    publish step: records and checkpoints under OUT, every file built, T=1 exact, a relaunch skips the jobs."""
    env = _env(tmp_path)
    cmd = ["bash", str(ROOT / "sweeps" / "paper.sh")]
    env.update(BUDGET="smoke", LOGS=str(tmp_path / "logs"), OUT=str(tmp_path / "out"),
               STEPS="table1_resnet20 crosscheck publish")
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "out"
    records = [json.loads(p.read_text()) for p in (out / "runs" / "paper-smoke").rglob("metrics.json")]
    pmsm = [m for m in records if m["run"]["method"] == "pmsm"]
    assert len(records) == 2 and len(pmsm) == 1
    assert pmsm[0]["snn"]["agreement"][0] == 1.0 and pmsm[0]["analysis"]["timesteps"] == 8
    assert all(str(tmp_path) not in p.read_text() for p in (out / "runs").rglob("metrics.json"))
    assert len(list((out / "checkpoints" / "paper-smoke").glob("*.ckpt"))) == 2
    for name in FILES:
        assert (out / name).is_file(), name
    steps = (tmp_path / "logs" / "steps.tsv").read_text().splitlines()
    assert [s.split("\t")[0] for s in steps] == ["table1_resnet20_pmsm", "table1_resnet20_qcfs", "crosscheck", "publish",
                                                 "build"]
    cross = (out / "crosscheck_spikingjelly.md").read_text()
    try:
        import spikingjelly  # noqa: F401  (the [bench] extra; CI installs [test] only)
        record = json.loads((out / "runs" / "paper-smoke" / "crosscheck.json").read_text())
        assert [r["T"] for r in record["rows"]] == [1, 2, 4, 8] and record["images"] == 64
        assert record["rows"][0]["ours"] == record["rows"][0]["spikingjelly"] and "| 8 |" in cross
        assert str(tmp_path) not in json.dumps(record) and record["provenance"]["git_commit"]
    except ImportError:
        assert "Not run yet" in cross
    # relaunched where LOGS is gone (a new machine): the published records are restored, nothing retrains
    start = time.time()
    again = subprocess.run(cmd, env={**env, "STEPS": "table1_resnet20", "LOGS": str(tmp_path / "new")},
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and time.time() - start < 120, again.stderr[-2000:]
    assert "restored 2 finished run record(s)" in again.stdout
    assert (again.stdout + again.stderr).count("already finished") == 2
    restored = list((tmp_path / "new").rglob("metrics.json"))
    assert len(restored) == 2 and all(len(list(p.parent.glob("checkpoints/last.ckpt"))) == 1 for p in restored)


def _crosscheck(rows):
    return {"checkpoint": "c.ckpt", "images": 500, "qann_acc": 0.8,
            "rows": [{"T": t, "ours": o, "spikingjelly": s, "same_prediction_spikingjelly": ss,
                      "spikingjelly_threshold_lambda": u, "same_prediction_spikingjelly_threshold_lambda": us}
                     for t, o, s, ss, u, us in rows]}


def test_crosscheck_names_where_they_differ_and_blames_the_rescaling_only_when_the_unscaled_neuron_agrees():
    from pmsm_exp.runs.crosscheck import markdown
    same = markdown(_crosscheck([(1, 0.5, 0.5, 1.0, 0.5, 1.0), (4, 0.7, 0.7, 1.0, 0.7, 1.0)]))
    assert "same accuracy at every T" in same and "| 4 | 70.00 | 70.00 | 100.00% | 70.00 | 100.00% |" in same
    rescaled = markdown(_crosscheck([(1, 0.5, 0.5, 1.0, 0.5, 1.0), (4, 0.71, 0.708, 0.998, 0.71, 1.0),
                                     (16, 0.846, 0.842, 0.996, 0.846, 1.0)]))
    assert "differ in accuracy at T=4, 16 (at most 0.40 points)" in rescaled and "99.60%" in rescaled
    assert "come from the rescaling" in rescaled
    neuron = markdown(_crosscheck([(1, 0.5, 0.5, 1.0, 0.4, 0.9), (4, 0.71, 0.708, 0.998, 0.71, 1.0)]))
    assert "come from the rescaling" not in neuron and "not the only source" in neuron and "90.00%" in neuron


def test_paper_sh_refuses_a_bad_budget_before_any_work(tmp_path):
    done = subprocess.run(["bash", str(ROOT / "sweeps" / "paper.sh")], capture_output=True, text=True,
                          env={**os.environ, "BUDGET": "gpu", "LOGS": str(tmp_path / "logs")})
    assert done.returncode == 2 and done.stderr.strip() == "error: BUDGET: got 'gpu'; allowed: smoke, cpu, paper"
    assert not (tmp_path / "logs").exists()


@pytest.mark.slow
def test_whole_smoke_campaign_writes_every_file_in_under_15_minutes(tmp_path):
    env = _env(tmp_path)
    env.update(BUDGET="smoke", LOGS=str(tmp_path / "logs"), OUT=str(tmp_path / "out"))
    start = time.time()
    done = subprocess.run(["bash", str(ROOT / "sweeps" / "paper.sh")], env=env, capture_output=True, text=True,
                          timeout=1800)
    took = time.time() - start
    assert done.returncode == 0, done.stderr[-3000:]
    assert took < 15 * 60, took
    for name in FILES:
        assert (tmp_path / "out" / name).is_file(), name
    claims = (tmp_path / "out" / "CLAIMS.md").read_text()
    assert claims.count("| **") >= 10
    records = [json.loads(p.read_text()) for p in (tmp_path / "out" / "runs").rglob("metrics.json")]
    assert {m["run"]["experiment"] for m in records} >= {
        "table1_resnet20_cifar10", "table1_vgg16_cifar10", "ablation_alpha", "ablation_beta", "vit_tiny_cifar10",
        "entropy_guided", "qcfs_own_levels", "table1_resnet20_cifar100", "table2_vit_s_imagenet"}
    assert all(m["status"] == "finished" for m in records)
    assert all(m["snn"]["agreement"][0] == 1.0 for m in records
               if m["run"]["method"] == "pmsm" and m["run"]["model"] in ("resnet20", "vgg16"))


def test_stand_in_files_are_read_by_the_real_data_modules(tmp_path):
    """BUDGET=smoke's CIFAR-100 and ImageNet: files in the real layouts, read by the real modules."""
    from pmsm_exp.data import CIFAR100DataModule, ImageNetDataModule
    from pmsm_exp.data.stand_in import write
    write(tmp_path, ["cifar100", "imagenet"], train=300, test=120)
    dm = CIFAR100DataModule(data_dir=str(tmp_path), batch_size=50, num_workers=0, train_subset=256, test_subset=100)
    dm.setup("fit")
    dm.setup("test")
    x, y = next(iter(dm.test_dataloader()))
    assert x.shape == (50, 3, 32, 32) and len(dm.train_set) == 256 and len(dm.test_set) == 100
    assert set(y.tolist()) == set(range(50))          # labels cycle through the 100 classes
    net = ImageNetDataModule(data_dir=str(tmp_path / "imagenet"), batch_size=4, num_workers=0, train_subset=8,
                             test_subset=4, repeated_aug=1)
    net.setup("test")
    x, y = next(iter(net.test_dataloader()))
    assert x.shape == (4, 3, 224, 224) and net.num_classes == 1000
    assert (tmp_path / "STAND_IN").read_text().split() == ["cifar100", "imagenet"]


def test_synthetic_subsets_take_the_first_samples():
    from pmsm_exp.data.synthetic import SyntheticDataModule
    from pmsm_exp.errors import UserError
    full, part = SyntheticDataModule(seed=3), SyntheticDataModule(seed=3, train_subset=100, test_subset=50)
    full.setup()
    part.setup()
    assert len(part.train_set) == 100 and len(part.test_set) == 50
    assert (part.train_set.tensors[0] == full.train_set.tensors[0][:100]).all()
    assert (part.test_set.tensors[0] == full.test_set.tensors[0][:50]).all()   # the test set does not move
    with pytest.raises(UserError, match=r"^data.train_subset: got 600; the synthetic training set has 512"):
        SyntheticDataModule(train_subset=600).setup()


def test_vit_stability_claim_fails_when_accuracy_falls_over_t(tmp_path):
    steady = record("vit_tiny_cifar10", "pmsm", model="vit_tiny", accs=[0.70] * 8)
    falling = record("vit_tiny_cifar10", "pmsm", model="vit_tiny", accs=[0.70, 0.69, 0.68, 0.67, 0.66, 0.65, 0.64, 0.60])
    assert campaign.vit_stable_claim(load(write(tmp_path / "a", {"v": steady}))).verdict == "holds"
    assert campaign.vit_stable_claim(load(write(tmp_path / "b", {"v": falling}))).verdict == "fails"
    assert campaign.vit_stable_claim(load(write(tmp_path / "c", {}))).verdict == "untested"
