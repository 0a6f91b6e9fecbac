#!/usr/bin/env bash
# Paper Fig. 2 and Fig. 5: entropy ratio H(PQA)/H(BN) over alpha x beta (L=8, lambda=8), the three
# lambda/L regimes, and the entropy-guided alpha/beta choice. Closed form; seconds on a CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pmsm_exp.analysis.entropy --out "${OUT:-results/entropy}" --levels 8 --threshold 8 "$@"
