#!/usr/bin/env bash
# Paper Fig. 3: accuracy over alpha (beta=1) and over beta (alpha=-0.25), VGG-16 and ResNet-20,
# CIFAR-10 and CIFAR-100 (64 training runs at the full recipe).
# A failed job does not stop the sweep (its metrics.json says "failed"): the table is built from the
# jobs that finished, and the script exits non-zero at the end. Relaunching skips finished jobs.
# Tables go to OUT (default LOGS/report; the published ones come from sweeps/paper.sh).
set -uo pipefail
cd "$(dirname "$0")/.."
LOGS=${LOGS:-logs}
OUT=${OUT:-$LOGS/report}
status=0
python train.py -m experiment=ablation_alpha model=vgg16,resnet20 data=cifar10,cifar100 paths.log_dir="$LOGS" "$@" || status=$?
python train.py -m experiment=ablation_beta model=vgg16,resnet20 data=cifar10,cifar100 paths.log_dir="$LOGS" "$@" || status=$?
python -m pmsm_exp.runs.report ablation --logs "$LOGS" --experiment ablation_alpha --param alpha --timesteps 1 --name fig3a_alpha \
  --out "$OUT" || status=1
python -m pmsm_exp.runs.report ablation --logs "$LOGS" --experiment ablation_beta --param beta --timesteps 1 --name fig3b_beta \
  --out "$OUT" || status=1
exit $status
