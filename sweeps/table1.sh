#!/usr/bin/env bash
# Paper Table 1: VGG-16 / ResNet-20 on CIFAR-10 / CIFAR-100, PMSM and QCFS, accuracy at T=1 and T=8.
# Extra arguments are Hydra overrides for every job, e.g.  sweeps/table1.sh trainer=gpu data.num_workers=8
set -euo pipefail
cd "$(dirname "$0")/.."
LOGS=${LOGS:-logs}
python train.py -m experiment=table1_vgg16_cifar10,table1_resnet20_cifar10,table1_vgg16_cifar100,table1_resnet20_cifar100 \
  pqa=pmsm,qcfs paths.log_dir="$LOGS" "$@"
python -m pmsm_exp.report accuracy --logs "$LOGS" --timesteps 1 8 --name table1 \
  --experiment table1_vgg16_cifar10 table1_resnet20_cifar10 table1_vgg16_cifar100 table1_resnet20_cifar100
