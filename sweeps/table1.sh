#!/usr/bin/env bash
# Paper Table 1: VGG-16 / ResNet-20 on CIFAR-10 / CIFAR-100, PMSM and QCFS, accuracy at T=1 and T=8.
# Extra arguments are Hydra overrides for every job, e.g.  sweeps/table1.sh trainer=gpu data.num_workers=8
# A failed job does not stop the sweep (its metrics.json says "failed"): the table is built from the
# jobs that finished, and the script exits non-zero at the end. Relaunching skips finished jobs.
set -uo pipefail
cd "$(dirname "$0")/.."
LOGS=${LOGS:-logs}
OUT=${OUT:-$LOGS/report}
status=0
python train.py -m experiment=table1_vgg16_cifar10,table1_resnet20_cifar10,table1_vgg16_cifar100,table1_resnet20_cifar100 \
  pqa=pmsm,qcfs paths.log_dir="$LOGS" "$@" || status=$?
python -m pmsm_exp.runs.report accuracy --logs "$LOGS" --timesteps 1 8 --name table1 --out "$OUT" \
  --experiment table1_vgg16_cifar10 table1_resnet20_cifar10 table1_vgg16_cifar100 table1_resnet20_cifar100
exit $status
