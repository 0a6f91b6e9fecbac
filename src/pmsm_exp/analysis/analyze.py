"""One converted run's spike/energy/conversion-error analysis, and PMSM-vs-QCFS comparison.

`analyze` simulates the SNN once per batch with every meter attached (spike
records, synaptic-op hooks, conversion-error hooks), writes

    energy.json             the full summary (conventions spelled out)
    energy_over_time.csv    per T: accuracy, spikes, events, power, SOPs, energy
    layer_spikes.csv        per neuron layer and step: spikes, events per image
    layer_sops.csv          per conv/linear and step: SOPs, event SOPs, analog MACs
    conversion_error.csv    per T: mean over layers and each layer (Fig. 6)
    layer_spikes.png  conversion_error.png  accuracy_over_time.png

and returns the summary (JSON-serialisable) for metrics.json. Accuracies and
agreement are fractions (as everywhere in metrics.json and the CSV files). `compare_runs`
puts several summaries into Table 3's layout (energy_comparison.csv) and adds
energy at equal accuracy (energy_equal_accuracy.csv): how many steps QCFS
needs to reach PMSM's T=1 accuracy, and what those steps cost.

Static encoding and mean readout only (the CNNs).
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from pmsm_exp.analysis.conversion_error import ConversionErrorMeter, layer_mean
from pmsm_exp.analysis.energy import (CONVENTIONS, E_SPIKE_PJ, SpikeStats, SynapticOpCounter, ann_energy_pj,
                                      count_macs, energy_at_equal_accuracy, snn_energy_pj)
from pmsm_exp.analysis.plots import plot_accuracy_over_time, plot_conversion_error, plot_layer_spikes
from pmsm_exp.snn import simulate


def _write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def _ratio(a: float, b: float) -> float | None:
    """a / b, None when b is 0 (no spikes at all): keeps the JSON strict."""
    return float(a) / float(b) if b else None


def _list(a) -> list[float]:
    return [float(v) for v in np.asarray(a, dtype=float)]


@torch.no_grad()
def analyze(qann: nn.Module, snn: nn.Module, batches: Iterable, timesteps: int, out_dir, label: str = "run",
            max_batches: int | None = None, device: str | torch.device | None = None) -> dict:
    """Simulate `snn` for `timesteps` steps on (x, y) batches (at most `max_batches`), write the
    analysis files into `out_dir`, return the summary dict."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    qann.eval()
    stats = SpikeStats()
    ann_correct, images = 0, 0
    snn_correct = np.zeros(timesteps)
    agree = np.zeros(timesteps)
    ann_macs = None
    with SynapticOpCounter(snn) as sops, ConversionErrorMeter(qann, snn) as meter:
        for i, (x, y) in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                break
            if device is not None:
                x, y = x.to(device), y.to(device)
            if ann_macs is None:
                ann_macs = count_macs(qann, x[:1])
            ann_pred = meter.reference(x).argmax(-1)
            result = simulate(snn, x, timesteps)
            stats.update(result)
            pred = result.outputs.argmax(-1)                           # [T, N]
            snn_correct += (pred == y).sum(1).double().cpu().numpy()
            agree += (pred == ann_pred).sum(1).double().cpu().numpy()
            ann_correct += int((ann_pred == y).sum())
            images += x.shape[0]
    if images == 0:
        raise ValueError("analyze got no batches")

    spikes_up_to, events_up_to = stats.spikes_up_to(), stats.events_up_to()
    sops_up_to = np.cumsum(sops.sops_per_step())
    sop_events_up_to = np.cumsum(sops.sop_events_per_step())
    analog_up_to = np.cumsum(sops.analog_macs_per_step())
    snn_e = snn_energy_pj(sops_up_to, analog_up_to)
    snn_e_events = snn_energy_pj(sop_events_up_to, analog_up_to)
    ann_macs_total = float(sum(ann_macs.values()))
    ann_e = ann_energy_pj(ann_macs_total)
    errors = meter.errors()
    err_mean = layer_mean(errors)
    ts = np.arange(1, timesteps + 1)

    layer_spikes, layer_events = stats.layer_spikes(), stats.layer_events()
    layer_sops, layer_sop_ev, layer_macs = sops.layer_sops(), sops.layer_sop_events(), sops.layer_analog_macs()
    synapses = {}
    for name in ann_macs:
        kind = "analog" if name in sops.analog else "untracked" if name in sops.untracked else "spikes"
        synapses[name] = {"input": kind, "ann_macs": ann_macs[name],
                          "sops_per_step": _list(layer_sops.get(name, np.zeros(timesteps))),
                          "sop_events_per_step": _list(layer_sop_ev.get(name, np.zeros(timesteps))),
                          "analog_macs_per_step": _list(layer_macs.get(name, np.zeros(timesteps)))}
    summary = {
        "label": label, "timesteps": timesteps, "images": images,
        "conventions": CONVENTIONS,
        # fractions, as everywhere in metrics.json; printed tables and plots show percent
        "accuracy_unit": "fraction",
        "ann_accuracy": ann_correct / images,
        "snn_accuracy": _list(snn_correct / images),
        "agreement_with_ann": _list(agree / images),
        "spikes_per_step": _list(stats.spikes_per_step()),
        "spikes_up_to": _list(spikes_up_to),
        "spikes_e5": _list(spikes_up_to / 1e5),
        "power_mw": _list(stats.power_mw()),
        "events_per_step": _list(stats.events_per_step()),
        "events_up_to": _list(events_up_to),
        "events_e5": _list(events_up_to / 1e5),
        "power_mw_events": _list(stats.power_mw(events=True)),
        "sops_up_to": _list(sops_up_to),
        "sop_events_up_to": _list(sop_events_up_to),
        "analog_macs_up_to": _list(analog_up_to),
        "snn_energy_pj": _list(snn_e),
        "snn_energy_pj_events": _list(snn_e_events),
        "ann_macs_per_image": ann_macs_total,
        "ann_energy_pj": ann_e,
        "energy_ratio_ann_over_snn": [_ratio(ann_e, e) for e in snn_e],
        "conversion_error_mean": _list(err_mean),
        "untracked_synapses": sorted(sops.untracked),
        "layers": {n: {"neurons": stats.neurons[n], "spikes_per_step": _list(layer_spikes[n]),
                       "events_per_step": _list(layer_events[n]),
                       "conversion_error": _list(errors[n]) if n in errors else None}
                   for n in layer_spikes},
        "synapses": synapses,
    }

    files = {
        "energy_over_time": _write_csv(
            out / "energy_over_time.csv",
            ["t", "snn_acc", "agreement_with_ann", "spikes_per_image", "spikes_e5", "power_mw",
             "events_per_image", "power_mw_events", "sops_per_image", "sop_events_per_image",
             "analog_macs_per_image", "snn_energy_pj", "ann_energy_pj", "energy_ratio_ann_over_snn",
             "conversion_error_mean"],
            zip(ts, summary["snn_accuracy"], summary["agreement_with_ann"], spikes_up_to, spikes_up_to / 1e5,
                summary["power_mw"], events_up_to, summary["power_mw_events"], sops_up_to, sop_events_up_to,
                analog_up_to, snn_e, [ann_e] * timesteps, summary["energy_ratio_ann_over_snn"], err_mean)),
        "layer_spikes": _write_csv(
            out / "layer_spikes.csv",
            ["layer", "neurons", "t", "spikes_per_image", "events_per_image", "spikes_per_neuron"],
            [(n, stats.neurons[n], t, layer_spikes[n][t - 1], layer_events[n][t - 1],
              layer_spikes[n][t - 1] / max(stats.neurons[n], 1)) for n in layer_spikes for t in ts]),
        "layer_sops": _write_csv(
            out / "layer_sops.csv",
            ["layer", "input", "t", "sops_per_image", "sop_events_per_image", "analog_macs_per_image",
             "ann_macs_per_image"],
            [(n, s["input"], t, s["sops_per_step"][t - 1], s["sop_events_per_step"][t - 1],
              s["analog_macs_per_step"][t - 1], s["ann_macs"]) for n, s in synapses.items() for t in ts]),
        "conversion_error": _write_csv(
            out / "conversion_error.csv", ["t", "mean", *errors],
            [(t, err_mean[t - 1], *(errors[n][t - 1] for n in errors)) for t in ts]),
        "layer_spikes_png": plot_layer_spikes(
            out / "layer_spikes.png",
            {"spikes |s|": {n: v.sum() for n, v in layer_spikes.items()},
             "events (s != 0)": {n: v.sum() for n, v in layer_events.items()}},
            title=f"{label}: per image, summed over steps 1..{timesteps}"),
        "conversion_error_png": plot_conversion_error(
            out / "conversion_error.png", {n: e for n, e in errors.items()}, err_mean,
            title=f"{label}: conversion error over time"),
        "accuracy_over_time_png": plot_accuracy_over_time(
            out / "accuracy_over_time.png", {label: summary["snn_accuracy"]},
            reference={"QANN": summary["ann_accuracy"]}, title=f"{label}: accuracy over time"),
    }
    summary["files"] = {k: str(v) for k, v in files.items()}
    (out / "energy.json").write_text(json.dumps(summary, indent=1))
    summary["files"]["energy"] = str(out / "energy.json")
    return summary


def _run_energies(s: dict) -> dict[str, list[float]]:
    """Energy per image up to T (pJ) under each convention."""
    return {"spikes": [E_SPIKE_PJ * v for v in s["spikes_up_to"]],
            "events": [E_SPIKE_PJ * v for v in s["events_up_to"]],
            "sops": s["snn_energy_pj"]}


def compare_runs(summaries: Mapping[str, dict], out_dir, baseline: str | None = None,
                 reference: str | None = None, timesteps: Sequence[int] | None = None, layer_t: int = 1) -> dict:
    """Table 3 layout for several runs' `analyze` summaries (e.g. {"PMSM": ..., "QCFS": ...}).

    `baseline` (default: the last run, QCFS in the paper) has ratio 1; a run's
    ratio is baseline / run (power or energy), > 1 = the run spends less.
    `reference` (default: the first run) sets the accuracy to match in the
    equal-accuracy comparison: its accuracy at T=1.
    Writes energy_comparison.csv/.json, energy_equal_accuracy.csv,
    layer_spikes_comparison.png (per-layer |s| spikes per image up to `layer_t`),
    layer_events_comparison.png and accuracy_comparison.png.
    """
    labels = list(summaries)
    if not labels:
        raise ValueError("compare_runs needs at least one summary")
    baseline = baseline or labels[-1]
    reference = reference or labels[0]
    t_common = min(s["timesteps"] for s in summaries.values())
    timesteps = list(timesteps or range(1, t_common + 1))
    if any(t < 1 or t > t_common for t in timesteps):
        raise ValueError(f"timesteps must lie in 1..{t_common}, got {timesteps}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    base = summaries[baseline]
    base_e = _run_energies(base)

    header = ["method", "ann_acc", "snn_acc", "T", "spikes_e5", "power_mw", "ratio",
              "events_e5", "power_mw_events", "ratio_events",
              "sops_e5", "snn_energy_uj", "ratio_sops", "ann_energy_uj", "ann_over_snn"]
    rows = []
    for t in timesteps:
        i = t - 1
        for label, s in summaries.items():
            rows.append([label, s["ann_accuracy"], s["snn_accuracy"][i], t,
                         s["spikes_e5"][i], s["power_mw"][i], _ratio(base["power_mw"][i], s["power_mw"][i]),
                         s["events_e5"][i], s["power_mw_events"][i],
                         _ratio(base["power_mw_events"][i], s["power_mw_events"][i]),
                         s["sops_up_to"][i] / 1e5, s["snn_energy_pj"][i] / 1e6,
                         _ratio(base["snn_energy_pj"][i], s["snn_energy_pj"][i]),
                         s["ann_energy_pj"] / 1e6, s["energy_ratio_ann_over_snn"][i]])
    _write_csv(out / "energy_comparison.csv", header, rows)

    equal = []
    ref = summaries[reference]
    ref_e = _run_energies(ref)
    for label, s in summaries.items():
        if label == reference:
            continue
        for conv, energies in _run_energies(s).items():
            r = energy_at_equal_accuracy(ref["snn_accuracy"], ref_e[conv], s["snn_accuracy"], energies, ref_t=1)
            equal.append({"convention": conv, "reference": reference, "other": label, **r})
    _write_csv(out / "energy_equal_accuracy.csv",
               ["convention", "reference", "ref_t", "ref_accuracy", "ref_energy_uj", "other", "other_t",
                "other_accuracy", "other_energy_uj", "other_over_ref", "note"],
               [(e["convention"], e["reference"], e["ref_t"], e["ref_accuracy"], e["ref_energy"] / 1e6,
                 e["other"], e["other_t"] if e["other_t"] is not None else "",
                 e["other_accuracy"], "" if e["other_energy"] is None else e["other_energy"] / 1e6,
                 "" if e["energy_ratio_other_over_ref"] is None else e["energy_ratio_other_over_ref"],
                 e["note"]) for e in equal])

    def per_layer(key: str) -> dict[str, dict[str, float]]:
        return {label: {n: float(sum(v[key][:layer_t])) for n, v in s["layers"].items()}
                for label, s in summaries.items()}

    plot_layer_spikes(out / "layer_spikes_comparison.png", per_layer("spikes_per_step"),
                      title=f"|s| spikes per image per layer, steps 1..{layer_t}")
    plot_layer_spikes(out / "layer_events_comparison.png", per_layer("events_per_step"),
                      ylabel="spike events per image", title=f"spike events per image per layer, steps 1..{layer_t}")
    plot_accuracy_over_time(out / "accuracy_comparison.png", {k: s["snn_accuracy"] for k, s in summaries.items()},
                            reference={f"{k} QANN": s["ann_accuracy"] for k, s in summaries.items()})
    result = {"baseline": baseline, "reference": reference, "timesteps": timesteps,
              "conventions": {**CONVENTIONS,
                              "ratio": f"baseline ({baseline}) / method, power or energy at the same T",
                              "equal_accuracy": f"smallest T at which a run reaches {reference}'s T=1 accuracy; "
                                                "energy per image up to that T (|s| spikes, events: 0.9 pJ each; "
                                                "sops: snn_energy_pj)"},
              "table": [dict(zip(header, r)) for r in rows], "equal_accuracy": equal,
              "files": {k: str(out / f) for k, f in (
                  ("table", "energy_comparison.csv"), ("equal_accuracy", "energy_equal_accuracy.csv"),
                  ("layer_spikes_png", "layer_spikes_comparison.png"),
                  ("layer_events_png", "layer_events_comparison.png"),
                  ("accuracy_png", "accuracy_comparison.png"))}}
    (out / "energy_comparison.json").write_text(json.dumps(result, indent=1))
    result["files"]["json"] = str(out / "energy_comparison.json")
    return result
