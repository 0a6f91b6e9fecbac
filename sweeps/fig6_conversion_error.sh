#!/usr/bin/env bash
# Paper Fig. 6: per-layer conversion error over T for a trained checkpoint (PMSM: 0 at T=1).
#   sweeps/fig6_conversion_error.sh logs/train/runs/<date>/checkpoints/last.ckpt [overrides]
set -euo pipefail
cd "$(dirname "$0")/.."
ckpt=${1:?give a checkpoint written by train.py}; shift
python convert.py ckpt_path="$ckpt" snn.timesteps=32 analysis=full experiment_name=fig6 "$@"
