#!/usr/bin/env bash
# Paper Table 3 and Fig. 4: spikes, Eq. 11 power and their ratio, VGG-16 PMSM vs QCFS at T=1 and 2, and
# energy at equal accuracy, from the VGG-16 runs of Table 1 (sweeps/table1.sh trains them; nothing is
# retrained here). Per-layer spikes (Fig. 4) are in each record (snn.layer_spikes); sweeps/paper.sh
# plots them. Tables go to OUT (default LOGS/report).
#   LOGS=logs sweeps/table3_energy.sh
set -uo pipefail
cd "$(dirname "$0")/.."
LOGS=${LOGS:-logs}
OUT=${OUT:-$LOGS/report}
status=0
for exp in table1_vgg16_cifar10 table1_vgg16_cifar100; do
  python -m pmsm_exp.runs.report energy --logs "$LOGS" --experiment "$exp" --timesteps 1 2 --name "table3_$exp" \
    --out "$OUT" || status=1
  python -m pmsm_exp.runs.report equal --logs "$LOGS" --experiment "$exp" --name "table3_${exp}_equal" \
    --out "$OUT" || status=1
done
exit $status
