#!/usr/bin/env bash
# Paper Table 2: ViT-S on CIFAR-10, CIFAR-100 (224 px) and ImageNet, PMSM at T=1 and T=16.
# Needs a GPU and starting weights, e.g.
#   CONVERT_ARGS=trainer=gpu sweeps/table2_vit.sh trainer=gpu model.pretrained=true
# A failed job does not stop the sweep (its metrics.json says "failed"): the table is built from the
# jobs that finished, and the script exits non-zero at the end. Relaunching skips finished jobs.
set -euo pipefail
cd "$(dirname "$0")/.."
LOGS=${LOGS:-logs}
status=0
python train.py -m experiment=table2_vit_s_cifar10,table2_vit_s_cifar100,table2_vit_s_imagenet paths.log_dir="$LOGS" "$@" || status=$?
# the SpikeZIP-TF baseline on the same checkpoints: ST-BIF+ neurons (one spike per step), 64 steps
for exp in table2_vit_s_cifar10 table2_vit_s_cifar100 table2_vit_s_imagenet; do
  m=$(python -m pmsm_exp.runs.report latest --logs "$LOGS" --experiment "$exp" --task train)/metrics.json || continue   # newest finished, by time
  ckpt=$(python -c "import json,sys; print(json.load(open(sys.argv[1]))['run']['checkpoint'])" "$m")
  python convert.py ckpt_path="$ckpt" snn.neuron=stbif snn.timesteps=64 experiment_name="$exp" paths.log_dir="$LOGS" ${CONVERT_ARGS:-} || status=$?
done
python -m pmsm_exp.runs.report accuracy --logs "$LOGS" --timesteps 1 16 64 --name table2 \
  --experiment table2_vit_s_cifar10 table2_vit_s_cifar100 table2_vit_s_imagenet
exit $status
