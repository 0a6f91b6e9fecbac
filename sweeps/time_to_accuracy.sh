#!/usr/bin/env bash
# The short-budget recipe (conf/recipe/fast.yaml, chosen by sweeps/recipe_select.sh on a validation
# split) on all 50,000 training images, evaluated once on the 10,000 test images: PMSM (SNN at
# T=1..8) and QCFS with the same recipe (SNN at T=1..32). Time the PMSM run alone: its
# training.wall_s is the recipe's time to accuracy on this machine. Relaunching resumes.
#   LOGS=logs/tta sweeps/time_to_accuracy.sh [pmsm|qcfs|all] [extra overrides]
set -uo pipefail
cd "$(dirname "$0")/.."
LOGS=${LOGS:-logs/tta}
WHICH=${1:-all}
shift || true
status=0
if [[ $WHICH == pmsm || $WHICH == all ]]; then
  python train.py -m experiment=table1_resnet20_cifar10 recipe=fast pqa=pmsm snn.timesteps=8 logger=csv \
    paths.log_dir="$LOGS" "$@" || status=1
fi
if [[ $WHICH == qcfs || $WHICH == all ]]; then
  python train.py -m experiment=table1_resnet20_cifar10 recipe=fast pqa=qcfs snn.timesteps=32 logger=csv \
    paths.log_dir="$LOGS" "$@" || status=1
fi
exit $status
