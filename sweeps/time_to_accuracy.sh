#!/usr/bin/env bash
# Time to accuracy: ResNet-20 with a short-budget recipe (RECIPE, a conf/recipe/ choice, chosen by
# sweeps/recipe_select.sh on a validation split) on all 50,000 training images, evaluated once on the
# 10,000 test images: PMSM (SNN to T=8) and then QCFS with the same recipe (SNN to T=32). Run it with
# nothing else on the machine: the PMSM run's training.wall_s is the recipe's time to accuracy.
# Relaunching resumes (finished runs are skipped, killed ones continue from their checkpoint).
#   RECIPE=fast_views2 LOGS=logs/time-to-accuracy sweeps/time_to_accuracy.sh [extra overrides]
# (The BUDGET=cpu campaign's Table 1 ResNet-20 rows are the same measurement for recipe=fast.)
set -uo pipefail
cd "$(dirname "$0")/.."
RECIPE=${RECIPE:-fast_views2}
LOGS=${LOGS:-logs/time-to-accuracy}
if [ ! -f "conf/recipe/$RECIPE.yaml" ]; then
  echo "error: RECIPE: got '$RECIPE'; allowed: $(cd conf/recipe && ls ./*.yaml | sed 's|./||; s|.yaml||' | tr '\n' ' ')" >&2
  exit 2
fi
status=0
for method in "pmsm snn.timesteps=8" "qcfs snn.timesteps=32"; do
  # shellcheck disable=SC2086
  python train.py -m experiment=table1_resnet20_cifar10 experiment_name=time_to_accuracy recipe="$RECIPE" \
    pqa=${method} paths.log_dir="$LOGS" "$@" || status=1
done
exit $status
