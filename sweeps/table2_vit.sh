#!/usr/bin/env bash
# Paper Table 2: ViT-S on CIFAR-10, CIFAR-100 (224 px) and ImageNet, PMSM at T=1 and T=16.
# Needs a GPU and starting weights, e.g.  sweeps/table2_vit.sh trainer=gpu model.pretrained=true
set -euo pipefail
cd "$(dirname "$0")/.."
LOGS=${LOGS:-logs}
python train.py -m experiment=table2_vit_s_cifar10,table2_vit_s_cifar100,table2_vit_s_imagenet paths.log_dir="$LOGS" "$@"
python -m pmsm_exp.report accuracy --logs "$LOGS" --timesteps 1 16 --name table2 \
  --experiment table2_vit_s_cifar10 table2_vit_s_cifar100 table2_vit_s_imagenet
