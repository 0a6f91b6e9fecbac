#!/usr/bin/env bash
# Publish a campaign: copy every run's metrics.json (small, strict JSON) from LOGS into OUT/runs/,
# keeping the run folders' relative paths (with ':' as '=', so the repository checks out on
# Windows; the report matches a convert run to its training run either way), and rebuild the
# tables and the plot from that copy, so the committed tables are exactly what the report prints
# from the committed files (tests/test_results.py rebuilds and compares them).
#   sweeps/publish_results.sh LOGS [OUT=results]      e.g. sweeps/publish_results.sh logs/results_cpu
set -euo pipefail
cd "$(dirname "$0")/.."
LOGS=${1:?give the campaign log folder (paths.log_dir of its runs)}
OUT=${2:-results}
rm -rf "$OUT/runs"
(cd "$LOGS" && find . -name metrics.json -not -path "*/wandb/*") | while read -r f; do
  dest="$OUT/runs/${f//:/=}"
  mkdir -p "$(dirname "$dest")" && cp "$LOGS/$f" "$dest"
done
python -m pmsm_exp.runs.report accuracy --logs "$OUT/runs" --experiment table1_resnet20_cifar10 \
  --timesteps 1 2 4 8 16 32 --name table1_resnet20_cifar10 --out "$OUT"
python -m pmsm_exp.runs.report plot --logs "$OUT/runs" --experiment table1_resnet20_cifar10 --name table1_over_t --out "$OUT"
python -m pmsm_exp.runs.report ablation --logs "$OUT/runs" --experiment ablation_alpha --param alpha --timesteps 1 \
  --name fig3a_alpha --out "$OUT"
