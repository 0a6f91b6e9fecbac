"""The spikingjelly cross-check's table (benchmarks/crosscheck_spikingjelly.py writes the record,
runs/campaign.py publishes it): our IF conversion of a QCFS checkpoint beside spikingjelly's, and a
sentence on where they differ, worked out from the numbers."""
from __future__ import annotations

SCALED, UNSCALED = "spikingjelly", "spikingjelly_threshold_lambda"


def pct(v: float) -> str:
    return f"{100 * v:.2f}"


def differences(result: dict) -> str:
    rows = result["rows"]
    differ = [r["T"] for r in rows if r["ours"] != r[SCALED]]
    if not differ:
        text = "Ours and spikingjelly's ann2snn neuron give the same accuracy at every T."
    else:
        gap = max(abs(r["ours"] - r[SCALED]) for r in rows)
        text = (f"Ours and spikingjelly's ann2snn neuron differ in accuracy at T={', '.join(map(str, differ))} "
                f"(at most {100 * gap:.2f} points); they predict the same class on "
                f"{pct(min(r['same_prediction_' + SCALED] for r in rows))}% of the images or more at every T.")
    if UNSCALED not in rows[0]:
        return text
    unscaled_same = all(r[f"same_prediction_{UNSCALED}"] == 1.0 for r in rows)
    if differ and unscaled_same:
        text += (" spikingjelly's IFNode at threshold λ without the input scaler predicts as ours on every image "
                 "at every T: the differences come from the rescaling (v/λ >= 1 in float32 against v >= λ), which "
                 "flips spikes whose potential lies within rounding of the threshold, not from the neuron model.")
    elif not unscaled_same:
        worst = min(r[f"same_prediction_{UNSCALED}"] for r in rows)
        text += (f" spikingjelly's IFNode at threshold λ (no input scaler) differs from ours too (same prediction on "
                 f"{pct(worst)}% of the images or more), so the rescaling is not the only source: the two neurons' "
                 f"own arithmetic differs on some images (not traced further here).")
    return text


def markdown(result: dict) -> str:
    rows = result["rows"]
    unscaled = UNSCALED in rows[0]
    head = "| T | ours (pmsm_exp IF) | spikingjelly ann2snn (scalers, threshold 1) | same prediction |"
    rule = "|---|---|---|---|"
    if unscaled:
        head += " spikingjelly IFNode (threshold λ) | same prediction |"
        rule += "---|---|"
    lines = [f"QCFS checkpoint `{result['checkpoint']}`: QANN {pct(result['qann_acc'])}% on the first "
             f"{result['images']} CIFAR-10 test images; SNN accuracy (%) after T steps.", "", head, rule]
    for r in rows:
        line = f"| {r['T']} | {pct(r['ours'])} | {pct(r[SCALED])} | {pct(r['same_prediction_' + SCALED])}% |"
        if unscaled:
            line += f" {pct(r[UNSCALED])} | {pct(r['same_prediction_' + UNSCALED])}% |"
        lines.append(line)
    return "\n".join(lines + ["", differences(result)]) + "\n"
