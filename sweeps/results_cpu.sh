#!/usr/bin/env bash
# The CPU campaign behind README's "Results" (results/README.md has the machine and wall times).
# Table 1 (ResNet-20 / CIFAR-10, PMSM and QCFS, one recipe) and Fig. 3(a) (the alpha ablation on the
# first 10,000 training images), cut down from the paper's 600 epochs to fit about 2 hours of a
# 2-core CPU. JOBS=2 runs two jobs at a time (Hydra's joblib launcher), one thread each. The recipe is fixed here, before any run; no checkpoint is chosen (eval_checkpoint=last,
# no validation split), so nothing is tuned on the test set.
#   PMSM_DATA_DIR=/path/with/cifar-10-batches-py sweeps/results_cpu.sh [overrides for every job]
# Training runs in bf16-mixed (the CPU's AMX) and checks T=1 in that arithmetic; every Table 1
# checkpoint is then converted and simulated again in float32 (convert.py) over T.
# Relaunching skips finished jobs and resumes killed ones (campaign machinery).
set -euo pipefail
cd "$(dirname "$0")/.."
LOGS=${LOGS:-logs/results_cpu}
OUT=${OUT:-results}
RECIPE=(data.batch_size=128 optim.warmup_epochs=1 optim.scheduler=cosine data.autoaugment=false data.cutout=0
        data.on_device=true trainer.precision=bf16-mixed snn.timesteps=1 eval_checkpoint=last paths.log_dir="$LOGS")
LAUNCH=()
JOBS=${JOBS:-1}
if [ "$JOBS" -gt 1 ]; then
  # one OpenMP thread per job: two 2-thread jobs on 2 cores stall at every op waiting for each other
  LAUNCH=(hydra/launcher=joblib hydra.launcher.n_jobs="$JOBS"); export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
fi
status=0

# Table 1: PMSM (alpha=-0.25) and QCFS (alpha=0), all 50,000 training images, 15 epochs.
python train.py -m experiment=table1_resnet20_cifar10 pqa=pmsm,qcfs epochs=15 "${RECIPE[@]}" "${LAUNCH[@]}" "$@" || status=$?
# float32 simulation of each checkpoint over T: PMSM to T=8, QCFS to T=32 (where it nears its QANN);
# with JOBS>1 both at once.
convert() {
  local method=$1 steps=$2 run
  run=$(python -m pmsm_exp.runs.report latest --logs "$LOGS" --experiment table1_resnet20_cifar10 --method "$method" --task train) || return 1
  if python -m pmsm_exp.runs.report latest --logs "$LOGS" --experiment table1_resnet20_cifar10 --method "$method" --task convert >/dev/null 2>&1; then
    echo "convert $method: done already, skipped"; return 0
  fi
  python convert.py ckpt_path="$run/checkpoints/last.ckpt" experiment_name=table1_resnet20_cifar10 \
    snn.timesteps="$steps" trainer.precision=32-true paths.log_dir="$LOGS"
}
if [ "$JOBS" -gt 1 ]; then
  convert pmsm 8 & first=$!
  convert qcfs 32 || status=$?
  wait $first || status=$?
else
  convert pmsm 8 || status=$?
  convert qcfs 32 || status=$?
fi

# Fig. 3(a): alpha in {-0.125, -0.25, -0.5, -1}, beta=1, the first 10,000 training images, 4 epochs, T=1.
python train.py -m experiment=ablation_alpha 'hydra.sweeper.params={pqa.alpha:"-0.125,-0.25,-0.5,-1"}' \
  data.train_subset=10000 epochs=4 "${RECIPE[@]}" "${LAUNCH[@]}" "$@" || status=$?

# the tables and the plot, rebuilt from a copy of every metrics.json in $OUT/runs (what is committed),
# and each table again as a W&B report run in its experiment's group (files under $LOGS/report)
sweeps/publish_results.sh "$LOGS" "$OUT"
python -m pmsm_exp.runs.report accuracy --logs "$OUT/runs" --experiment table1_resnet20_cifar10 --timesteps 1 2 4 8 16 32 \
  --name table1_resnet20_cifar10 --out "$LOGS/report" --wandb
python -m pmsm_exp.runs.report ablation --logs "$OUT/runs" --experiment ablation_alpha --param alpha --timesteps 1 \
  --name fig3a_alpha --out "$LOGS/report" --wandb
exit $status
