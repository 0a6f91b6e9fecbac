#!/usr/bin/env bash
# Time to accuracy: ResNet-20 with the short-budget recipe (conf/recipe/fast.yaml, chosen by
# sweeps/recipe_select.sh on a validation split) on all 50,000 training images, evaluated once on the
# 10,000 test images: PMSM (SNN to T=32) and QCFS with the same recipe (to T=64). These are the first
# step of the CPU campaign (sweeps/paper.sh, BUDGET=cpu), so the campaign reuses them. Run it with
# nothing else on the machine: the PMSM run's training.wall_s is the recipe's time to accuracy.
#   LOGS=logs/paper-cpu sweeps/time_to_accuracy.sh [extra overrides]
set -uo pipefail
cd "$(dirname "$0")/.."
BUDGET=cpu STEPS="table1_resnet20" LOGS=${LOGS:-logs/paper-cpu} exec sweeps/paper.sh "$@"
