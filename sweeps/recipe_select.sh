#!/usr/bin/env bash
# Choosing the short-budget recipe on a validation split (never the test set): ResNet-20 PMSM,
# 45,000 training images, 5,000 held out (data.val_fraction=0.1, seeded), EPOCHS epochs each, one
# lever changed per run from the first CPU campaign's recipe (conf/experiment/recipe_select.yaml).
# Relaunching resumes: finished jobs are skipped, killed ones continue from their checkpoint.
#   LOGS=logs/recipe EPOCHS=6 sweeps/recipe_select.sh [extra overrides for every job]
set -uo pipefail
cd "$(dirname "$0")/.."
LOGS=${LOGS:-logs/recipe}
EPOCHS=${EPOCHS:-6}
LEVERS=(
  ""                                        # the first campaign's recipe
  "pqa.threshold=2"                         # lambda0 = 2: theta = 1/4 on unit-scale BatchNorm outputs
  "pqa.threshold=4"
  "optim.label_smoothing=0.1"
  "optim.nesterov=true optim.lr=0.2"
  "optim.ema_decay=0.998"                   # evaluate an exponential moving average of the weights
  "data.batch_size=256 optim.lr=0.2"
  "pqa.threshold=2 optim.nesterov=true optim.lr=0.2"   # the two levers that helped, together
)
status=0
for lever in "${LEVERS[@]}"; do
  # shellcheck disable=SC2086
  python train.py -m experiment=recipe_select seed=42 epochs="$EPOCHS" $lever paths.log_dir="$LOGS" "$@" || status=1
done
python -m pmsm_exp.runs.report ablation --logs "$LOGS" --experiment recipe_select --param alpha --timesteps 1 \
  --name recipe_select --out "$LOGS/report" || status=1
exit $status
