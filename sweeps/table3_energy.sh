#!/usr/bin/env bash
# Paper Table 3 and Fig. 4: spikes, power and SOPs of VGG-16, PMSM vs QCFS, at T=1 and 2
# (plus the steps QCFS needs to reach PMSM's T=1 accuracy), with per-layer spike plots.
# A failed job does not stop the sweep (its metrics.json says "failed"): the table is built from the
# jobs that finished, and the script exits non-zero at the end. Relaunching skips finished jobs.
set -euo pipefail
cd "$(dirname "$0")/.."
LOGS=${LOGS:-logs}
status=0
python train.py -m experiment=table3_vgg16_cifar10,table3_vgg16_cifar100 pqa=pmsm,qcfs paths.log_dir="$LOGS" "$@" || status=$?
python -m pmsm_exp.runs.report energy --logs "$LOGS" --timesteps 1 2 --name table3 \
  --experiment table3_vgg16_cifar10 table3_vgg16_cifar100
# Fig. 4 and energy at equal accuracy, per data set: newest PMSM and QCFS runs of each experiment
for exp in table3_vgg16_cifar10 table3_vgg16_cifar100; do
  pmsm=$(python -m pmsm_exp.runs.report latest --logs "$LOGS" --experiment "$exp" --method pmsm)   # newest by time
  qcfs=$(python -m pmsm_exp.runs.report latest --logs "$LOGS" --experiment "$exp" --method qcfs)
  python -m pmsm_exp.analysis.compare PMSM="$pmsm" QCFS="$qcfs" --out "results/$exp"
done
exit $status
