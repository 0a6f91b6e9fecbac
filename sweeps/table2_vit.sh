#!/usr/bin/env bash
# Paper Table 2: ViT-S on CIFAR-10, CIFAR-100 (224 px) and ImageNet, PMSM at T=1 and T=16, and the
# SpikeZIP-TF baseline (ST-BIF+ neurons, one spike per step) on the same checkpoints up to T=64.
# Needs a GPU and starting weights, e.g.
#   sweeps/table2_vit.sh trainer=gpu model.pretrained=true
# One launch per experiment, so model.* overrides apply to the ViT (a multirun over experiment=...
# would build its base config with the default model, which has no such keys).
# A failed job does not stop the sweep (its metrics.json says "failed"): the table is built from the
# jobs that finished, and the script exits non-zero at the end. Relaunching skips finished jobs.
set -uo pipefail
cd "$(dirname "$0")/.."
LOGS=${LOGS:-logs}
OUT=${OUT:-$LOGS/report}
EXPERIMENTS=(table2_vit_s_cifar10 table2_vit_s_cifar100 table2_vit_s_imagenet)
status=0
for exp in "${EXPERIMENTS[@]}"; do
  python train.py -m experiment="$exp" paths.log_dir="$LOGS" "$@" || { status=1; continue; }
  if python -m pmsm_exp.runs.report latest --logs "$LOGS" --experiment "$exp" --method pmsm+stbif --task convert \
      >/dev/null 2>&1; then
    continue   # the baseline ran already
  fi
  run=$(python -m pmsm_exp.runs.report latest --logs "$LOGS" --experiment "$exp" --task train) || { status=1; continue; }
  convert_args=()   # convert.py takes trainer/data settings, not the model's (they come from the checkpoint)
  for a in "$@"; do [[ $a == model.* ]] || convert_args+=("$a"); done
  python convert.py ckpt_path="$run/checkpoints/last.ckpt" snn.neuron=stbif snn.timesteps=64 experiment_name="$exp" \
    paths.log_dir="$LOGS" "${convert_args[@]}" || status=1
done
python -m pmsm_exp.runs.report accuracy --logs "$LOGS" --timesteps 1 16 64 --name table2 --out "$OUT" \
  --experiment "${EXPERIMENTS[@]}" || status=1
exit $status
