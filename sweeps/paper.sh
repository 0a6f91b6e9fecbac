#!/usr/bin/env bash
# The whole paper in miniature: every table and figure of the PMSM paper, run through the framework at
# one budget, published with its records, and a verdict for each of the paper's claims (CLAIMS.md).
#
#   BUDGET=smoke|cpu|paper LOGS=logs/paper-cpu OUT=results sweeps/paper.sh [Hydra overrides for every job]
#
# BUDGET   paper: the paper's own recipes (Tables 4 and 5; a GPU: add trainer=gpu); cpu: about an hour of
#          training per Table 1 model on a 2-core CPU with the short-budget recipe, the rest sized to
#          fit (conf/budget/cpu.yaml); smoke: every step on tiny data, minutes in all (tests the pipeline).
# LOGS     the run folders (default logs/paper-$BUDGET); OUT: tables, figures, CLAIMS.md (default results/),
#          with the records under OUT/runs/paper-$BUDGET/ and small checkpoints under OUT/checkpoints/.
# STEPS    which steps to run (default: all, in this order): table1_resnet20 crosscheck fig3 table2_vit
#          table1_vgg16 entropy_guided qcfs_own_levels stand_in_data publish. Fig. 2/5 (closed form), Fig. 4, Fig. 6 and
#          Table 3 come from these runs' records (no run of their own), in the publish step.
# VIT_ARGS overrides for the ViT jobs only, e.g. VIT_ARGS="model.pretrained=true" at BUDGET=paper.
#
# Relaunching resumes: finished jobs are skipped, killed ones continue from their checkpoint, failed
# ones are retried once in the same launch and then reported (the campaign goes on; exit status 1).
# On a machine without LOGS (a new session), the finished runs already published under OUT are
# written back into LOGS first (publish --restore), so only what is missing runs.
# Each step's wall time goes to LOGS/steps.tsv. Run a campaign from one commit (git stash/worktree).
set -uo pipefail
cd "$(dirname "$0")/.."
BUDGET=${BUDGET:-cpu}
LOGS=${LOGS:-logs/paper-$BUDGET}
OUT=${OUT:-results}
STEPS=${STEPS:-table1_resnet20 crosscheck fig3 table2_vit table1_vgg16 entropy_guided qcfs_own_levels stand_in_data publish}
case $BUDGET in
  smoke) PMSM_T=4; QCFS_T=8;  VGG_QCFS_T=8;  FIG6_T=8;  VIT_T=4;  STBIF_T=8;  STBIF_IMAGES=64;   XCHECK_IMAGES=64;    XCHECK_T="1 2 4 8"
         ALPHAS=-0.25,-0.5; BETAS=0.5,1.0 ;;
  cpu)   PMSM_T=8; QCFS_T=64; VGG_QCFS_T=32; FIG6_T=32; VIT_T=16; STBIF_T=64; STBIF_IMAGES=1000; XCHECK_IMAGES=2000;  XCHECK_T="1 2 4 8 16 32 64"
         ALPHAS=-0.125,-0.25,-0.375,-0.5,-0.75,-1.0; BETAS=0.125,0.25,0.5,0.625,0.75,1.0 ;;
  paper) PMSM_T=8; QCFS_T=64; VGG_QCFS_T=64; FIG6_T=32; VIT_T=16; STBIF_T=64; STBIF_IMAGES=null; XCHECK_IMAGES=10000; XCHECK_T="1 2 4 8 16 32 64"
         ALPHAS=-0.125,-0.25,-0.375,-0.5,-0.625,-0.75,-0.875,-1.0; BETAS=0.125,0.25,0.375,0.5,0.625,0.75,0.875,1.0 ;;
  *) echo "error: BUDGET: got '$BUDGET'; allowed: smoke, cpu, paper" >&2; exit 2 ;;
esac
for step in $STEPS; do
  case $step in table1_resnet20|crosscheck|fig3|table2_vit|table1_vgg16|entropy_guided|qcfs_own_levels|stand_in_data|publish) ;;
    *) echo "error: STEPS: got '$step'; allowed: table1_resnet20 crosscheck fig3 table2_vit table1_vgg16 entropy_guided" \
            "qcfs_own_levels stand_in_data publish" >&2; exit 2 ;;
  esac
done
SEEDS=42,43                                     # Fig. 3: two seeds a point
COMMON=(budget="$BUDGET" paths.log_dir="$LOGS")
if [ "$BUDGET" = paper ]; then CNN=(); VGG=(); else CNN=(recipe=fast); VGG=(recipe=fast_vgg); fi  # short-budget
# recipes: VGG-16 trains at batch 128, lr 0.05 (at ResNet-20's batch 32, lr 0.1 it fell to chance: conf/recipe/fast_vgg.yaml)
mkdir -p "$LOGS"
failed=()
if [ -d "$OUT/runs/paper-$BUDGET" ]; then
  python -m pmsm_exp.runs.publish --restore --logs "$LOGS" --out "$OUT" --under "paper-$BUDGET" || exit 1
fi

# run STEP CMD...: once, again if it failed (a relaunch in the same folders: finished jobs are skipped),
# then recorded in LOGS/steps.tsv with its wall time and exit status.
run() {
  local step=$1 start rc; shift
  start=$(date +%s)
  "$@"; rc=$?
  if [ $rc -ne 0 ]; then echo "paper.sh: $step failed (exit $rc); retrying once" >&2; "$@"; rc=$?; fi
  printf '%s\t%s\t%s\t%s\t%s\n' "$step" "$BUDGET" "$start" "$(( $(date +%s) - start ))" "$rc" >> "$LOGS/steps.tsv"
  [ $rc -eq 0 ] || failed+=("$step")
}
wants() { [[ " $STEPS " == *" $1 "* ]]; }

# convert_once EXPERIMENT METHOD LABEL OVERRIDES...: simulate the newest finished training run of
# EXPERIMENT/METHOD again (convert.py), unless a convert run of that experiment with method LABEL exists.
convert_once() {
  local exp=$1 method=$2 label=$3 run; shift 3
  if python -m pmsm_exp.runs.report latest --logs "$LOGS" --experiment "$exp" --method "$label" --task convert \
      >/dev/null 2>&1; then
    echo "convert $exp $label: done already, skipped"; return 0
  fi
  run=$(python -m pmsm_exp.runs.report latest --logs "$LOGS" --experiment "$exp" --method "$method" --task train) || return 1
  python convert.py ckpt_path="$run/checkpoints/last.ckpt" experiment_name="$exp" paths.log_dir="$LOGS" "$@"
}

if wants table1_resnet20; then   # Table 1 (ResNet-20); its records also give Fig. 6 (conversion error over T)
  # (analysis=full measures over snn.timesteps steps on the budget's analysis.max_batches test batches)
  run table1_resnet20_pmsm python train.py -m experiment=table1_resnet20_cifar10 pqa=pmsm snn.timesteps=$FIG6_T \
    analysis=full "${CNN[@]}" "${COMMON[@]}" "$@"
  run table1_resnet20_qcfs python train.py -m experiment=table1_resnet20_cifar10 pqa=qcfs snn.timesteps=$QCFS_T \
    analysis=full "${CNN[@]}" "${COMMON[@]}" "$@"
fi
# crosscheck: our IF conversion beside spikingjelly's (an implementation nobody here wrote) on the
# Table 1 ResNet-20 QCFS weights, once; skipped where spikingjelly is not installed (the [bench] extra)
crosscheck_once() {
  local run
  if [ -f "$LOGS/crosscheck/crosscheck.json" ]; then echo "crosscheck: done already, skipped"; return 0; fi
  if ! python -c "import spikingjelly" 2>/dev/null; then
    echo "crosscheck: spikingjelly is not installed (pip install -e '.[bench]'); skipped"; return 0
  fi
  run=$(python -m pmsm_exp.runs.report latest --logs "$LOGS" --experiment table1_resnet20_cifar10 --method qcfs \
        --task train) || return 1
  python benchmarks/crosscheck_spikingjelly.py "$run/checkpoints/last.ckpt" --images "$XCHECK_IMAGES" \
    --timesteps $XCHECK_T \
    --label "table1_resnet20_cifar10 qcfs, $(basename "$run")" --out "$LOGS/crosscheck"
}
if wants crosscheck; then
  run crosscheck crosscheck_once
fi
if wants fig3; then              # Fig. 3(a) alpha at beta=1, Fig. 3(b) beta at alpha=-0.25: ResNet-20, 2 seeds
  # (the command line's grid replaces the experiment's own sweeper grid for the same key)
  run fig3a_alpha python train.py -m experiment=ablation_alpha model=resnet20 pqa.alpha="$ALPHAS" seed=$SEEDS \
    snn.timesteps=1 "${CNN[@]}" "${COMMON[@]}" "$@"
  run fig3b_beta python train.py -m experiment=ablation_beta model=resnet20 pqa.beta="$BETAS" seed=$SEEDS \
    snn.timesteps=1 "${CNN[@]}" "${COMMON[@]}" "$@"
fi
if wants table2_vit; then        # Table 2: PMSM (AIF) to T=VIT_T; ST-BIF+ (SpikeZIP-TF) on the same checkpoint
  if [ "$BUDGET" = paper ]; then VITS=(table2_vit_s_cifar10 table2_vit_s_cifar100 table2_vit_s_imagenet)
  else VITS=(vit_tiny_cifar10); fi
  for exp in "${VITS[@]}"; do    # one launch per experiment: model.* overrides then apply to the ViT
    # shellcheck disable=SC2086
    run "table2_$exp" python train.py -m experiment="$exp" snn.timesteps=$VIT_T "${COMMON[@]}" ${VIT_ARGS:-} "$@"
    run "table2_${exp}_stbif" convert_once "$exp" pmsm pmsm+stbif snn.neuron=stbif snn.timesteps=$STBIF_T \
      data.test_subset=$STBIF_IMAGES "$@"
  done
fi
if wants table1_vgg16; then      # Table 1 (VGG-16); its records also give Table 3 and Fig. 4 (no retraining)
  run table1_vgg16_pmsm python train.py -m experiment=table1_vgg16_cifar10 pqa=pmsm snn.timesteps=$PMSM_T \
    analysis=full "${VGG[@]}" "${COMMON[@]}" "$@"
  run table1_vgg16_qcfs python train.py -m experiment=table1_vgg16_cifar10 pqa=qcfs snn.timesteps=$VGG_QCFS_T \
    analysis=full "${VGG[@]}" "${COMMON[@]}" "$@"
fi
if wants entropy_guided; then    # the entropy rule's alpha/beta (paper section 3) beside Table 4's
  run entropy_guided python train.py -m experiment=table1_resnet20_cifar10 experiment_name=entropy_guided \
    pqa=pmsm pqa.alpha=auto pqa.beta=auto snn.timesteps=$PMSM_T "${CNN[@]}" "${COMMON[@]}" "$@"
fi
if wants qcfs_own_levels; then   # QCFS at a level of its own (L=4) beside QCFS at PMSM's L=8
  run qcfs_own_levels python train.py -m experiment=table1_resnet20_cifar10 experiment_name=qcfs_own_levels \
    pqa=qcfs pqa.levels=4 snn.timesteps=$QCFS_T "${CNN[@]}" "${COMMON[@]}" "$@"
fi
if wants stand_in_data && [ "$BUDGET" = smoke ]; then   # CIFAR-100 and ImageNet: not on this machine; at smoke
  # they run on stand-in files of the real layouts (random pixels), so their pipelines are exercised
  run stand_in_data python -m pmsm_exp.data.stand_in --out "$LOGS/stand_in" --sets cifar100 imagenet
  run table1_cifar100 python train.py -m experiment=table1_resnet20_cifar100,table1_vgg16_cifar100 pqa=pmsm,qcfs \
    data.data_dir="$LOGS/stand_in" snn.timesteps=$PMSM_T "${COMMON[@]}" "$@"
  run table2_vit_s_imagenet python train.py -m experiment=table2_vit_s_imagenet data.data_dir="$LOGS/stand_in/imagenet" \
    data.train_subset=32 data.test_subset=16 data.batch_size=16 data.num_workers=0 data.repeated_aug=1 \
    model.drop_path_rate=0 snn.timesteps=2 "${COMMON[@]}" "$@"
fi
if wants publish; then           # records (no machine paths) and small checkpoints into OUT, then every file
  # checkpoints over 2 MB (VGG-16, the ViT) stay out of git; ResNet-20 (~1.1 MB) is published
  run publish python -m pmsm_exp.runs.publish --logs "$LOGS" --out "$OUT" --under "paper-$BUDGET" --max-checkpoint-mb 2 \
    --checkpoints table1_resnet20_cifar10 table1_vgg16_cifar10 vit_tiny_cifar10 entropy_guided qcfs_own_levels
  run build python -m pmsm_exp.runs.campaign --runs "$OUT/runs/paper-$BUDGET" --out "$OUT" --budget "$BUDGET"
fi
if [ ${#failed[@]} -gt 0 ]; then
  echo "paper.sh: failed after a retry: ${failed[*]} (their runs' metrics.json say why; relaunch to resume)" >&2
  exit 1
fi
