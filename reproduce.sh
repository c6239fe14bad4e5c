#!/usr/bin/env bash
# Regenerate the paper's tables and figures from real runs (README "Results").
#
#   bash reproduce.sh [--quick] [--launcher local|slurm] [--jobs N] [--data-dir DIR] [--runs DIR] [--out DIR]
#                     [--only STAGE,...] [-- OVERRIDES...]
#
# Full mode (the default) runs every stage of sections 4 and 7.4 at the paper's scale through the sweep
# launchers (README "Results" gives the compute); --quick runs every stage at a reduced scale (fewer seeds,
# settings and epochs; each stage's reduction is below) in about 24 minutes on a 2-core CPU, offline.
# Stages: table1 poker fig3 mnist rectangles_images convex. Runs go to --runs (default runs/reproduce or
# runs/quick), tables and figures to --out (default results or results/quick). Every run sets
# resume_existing=true: launched again, reproduce.sh skips the finished runs and resumes the stopped ones;
# a stage whose settings or picks changed since its last launch stops the script (move its runs away).
# --jobs: runs at once (local: 2, one thread each; slurm: the random search's trials at once, 64).
# OVERRIDES after -- go to every train.py call (e.g. -- hydra.launcher.partition=cpu); every train.py
# call is a multirun on the launcher, while Table 1 and the baselines run where reproduce.sh runs.
set -eo pipefail
trap 'echo "reproduce.sh: stopped by a signal; launch it again to resume" >&2; exit 130' INT TERM

STAGES="table1 poker fig3 mnist rectangles_images convex"
QUICK=0 LAUNCHER=local JOBS="" DATA="" RUNS="" OUT="" ONLY="" EXTRA=()
die() { echo "reproduce.sh: $*" >&2; exit 2; }
abs() { case "$1" in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }  # paths are the caller's, not the repo's
while [ $# -gt 0 ]; do
  case "$1" in
    --launcher|--jobs|--data-dir|--runs|--out|--only) [ $# -ge 2 ] || die "$1 needs a value (see --help)" ;;
  esac
  case "$1" in
    --quick) QUICK=1 ;;
    --launcher) LAUNCHER="$2"; shift ;;
    --jobs) JOBS="$2"; shift ;;
    --data-dir) DATA="$(abs "$2")"; shift ;;
    --runs) RUNS="$(abs "$2")"; shift ;;
    --out) OUT="$(abs "$2")"; shift ;;
    --only) ONLY="$2"; shift ;;
    --) shift; EXTRA=("$@"); break ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) die "unknown argument $1 (see bash reproduce.sh --help)" ;;
  esac
  shift
done
for stage in ${ONLY//,/ }; do
  [[ " $STAGES " == *" $stage "* ]] || die "--only: no stage $stage (the stages: ${STAGES// /, })"
done
case "$LAUNCHER" in
  local) JOBS="${JOBS:-2}"
         LAUNCH=(hydra/launcher=joblib "hydra.launcher.n_jobs=$JOBS")
         export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" ;;  # one thread per job: JOBS jobs share the cores
  slurm) JOBS="${JOBS:-64}"
         LAUNCH=(hydra/launcher=slurm) ;;
  *) die "--launcher must be local or slurm, got $LAUNCHER" ;;
esac
DATA="${DATA:-$(abs data)}"  # the config's default, data/, in the caller's directory
if [ "$QUICK" = 1 ]; then RUNS="${RUNS:-$(abs runs/quick)}" OUT="${OUT:-$(abs results/quick)}"
else RUNS="${RUNS:-$(abs runs/reproduce)}" OUT="${OUT:-$(abs results)}"; fi
ARGS="--data-dir $DATA --runs $RUNS --out $OUT"  # for the hints below
if [ "$QUICK" = 1 ]; then ARGS="--quick $ARGS"; fi
cd "$(dirname "$0")"
mkdir -p "$RUNS" "$OUT"
COMMON=(data_dir="$DATA" trainer.enable_progress_bar=false resume_existing=true "${EXTRA[@]}")
START=$SECONDS SKIPPED=()

say() { printf '\n[reproduce %4ds] %s\n' "$((SECONDS - START))" "$*"; }
wanted() { [ -z "$ONLY" ] || [[ ",$ONLY," == *",$1,"* ]]; }
same_inputs() {  # what a stage ran with ($2) against its last launch's (file $1): finished runs are skipped
  mkdir -p "$(dirname "$1")"  # without comparing their settings, so a change would mix old runs in
  if [ -f "$1" ] && [ "$(cat "$1")" != "$2" ]; then
    echo "reproduce.sh: $(dirname "$1") was launched with other settings or picks than now:" >&2
    diff <(cat "$1") <(echo "$2") >&2 || true
    echo "reproduce.sh: move $(dirname "$1") away to run it again with the new ones" >&2
    exit 1
  fi
  echo "$2" > "$1"
}
sweep() {  # a multirun into $1 on the launcher. Failed runs (diverged, chance level: VCE 1 to the picks) are
  local dir="$1"; shift  # reported; a run that did not end (killed, a signal, trainer.max_time) stops the script
  same_inputs "$dir/.reproduce_args" "$(printf '%s\n' "$@" | grep -v '^hydra.sweeper.n_jobs=')"
  local rc=0
  python train.py -m "$@" "${LAUNCH[@]}" "${COMMON[@]}" "hydra.sweep.dir='$dir'" || rc=$?
  [ "$rc" = 3 ] && die "$dir holds runs of another setting (above): give this reproduction another --runs"
  [ "$rc" = 0 ] || say "a run of $dir failed"
  python - "$dir" <<'EOF'
import json, sys
from pathlib import Path
from npnn.record import FINISHED, UNFINISHED
ended = {d.parent: json.loads((d.parent / "summary.json").read_text()).get("stopped_by")
         if (d.parent / "summary.json").is_file() else None for d in Path(sys.argv[1]).glob("*/.hydra")}
open_ = [str(run) for run, how in ended.items() if how is None or how in UNFINISHED]
failed = [f"{run.name}: {how}" for run, how in ended.items() if how is not None and how not in FINISHED + UNFINISHED]
if not ended:
    sys.exit(f"reproduce.sh: the sweep {sys.argv[1]} has no runs (its log is above)")
if open_:
    sys.exit(f"reproduce.sh: {len(open_)} run(s) of {sys.argv[1]} did not end, e.g. {open_[0]}: launch "
             f"reproduce.sh again to resume them")
print(f"{sys.argv[1]}: {len(ended) - len(failed)} runs ended"
      + (f", {len(failed)} failed ({'; '.join(failed[:3])})" if failed else ""))
EOF
}
single() {  # one run into $1, as a one-job multirun on the launcher (on a node under slurm), with JOBS threads
  local dir="$1"; shift
  OMP_NUM_THREADS="$JOBS" sweep "$(dirname "$dir")" "$@" "hydra.sweep.subdir=$(basename "$dir")"
}
sizes() { python -m npnn.sweeps "$@" --representative-sizes | awk '!seen[$0]++'; }  # a,b,... a line; fails if none
grid() { python -m npnn.sweeps "$1" --grid "$2" --value best_val_error | sed -n "/^All runs/,\$p" | tee "$3"; }
have_data() {  # loads (downloading if it can) data set $1; prints the loader's message and fails if it cannot
  python - "$1" "$DATA" <<'EOF'
import sys
from npnn.baselines import load_dataset
try:
    load_dataset(sys.argv[1], sys.argv[2])
except Exception as err:
    print(f"{sys.argv[1]}: {err.__cause__ or err}")
    sys.exit(1)
EOF
}
# P picks and their seeds (7.4.1 steps 4 and 6): the best $TOP settings of sweep $1 by VCE, $SEEDS seeds each
picks_and_seeds() {
  local from="$1" to="$2" picks; picks="$(dirname "$2")/picks/$(basename "$2")"
  mkdir -p "$picks"
  python -m npnn.sweeps "$from" --top "$TOP" --write-picks "$picks" > "$picks/picks.txt"
  same_inputs "$to/.reproduce_picks" "$(grep -hv '^# rank' "$picks"/pick/top*.yaml)"  # settings, not ranks
  local names; names=$(cd "$picks/pick" && ls top*.yaml | sed 's/\.yaml$//' | paste -sd, -)
  sweep "$to" hparams_search=p_seeds "hydra.searchpath=['file://$picks']" "+pick=$names" "seed=range($SEEDS)" \
    "${P_BUDGET[@]}"
}

# ---------------------------------------------------------------------------------------------- scales
if [ "$QUICK" = 1 ]; then  # each stage cut down: fewer seeds, settings and epochs (README "Results")
  T1=(--rounds 5 --steps 3)
  NP_GRID_POKER=(lambda=1e-3,1e-5 optimizer.alpha_phi=10,100 protocol=none trainer.max_epochs=1)
  T2_NP=(dataset.patience=2 dataset.anneal_patience=0.5 dataset.max_prune_epochs=3 trainer.max_epochs=12)
  T2_P=(optimizer.alpha=300,1000,3000 protocol=none trainer.max_epochs=2)
  RANDOM_POKER=(hydra.sweeper.n_trials=3 protocol=none trainer.max_epochs=1)
  F3_NP=(model.growth.until=100 trainer.max_epochs=200)
  F3_P=(trainer.max_epochs=200)
  NP_GRID=(lambda=1e-3,3e-4 optimizer.alpha_phi=10,30 protocol=none trainer.max_epochs=20)
  NP_SEEDS=("seed=range(3)" dataset.patience=20 dataset.anneal_patience=5 trainer.max_epochs=100)
  P_GRID=(optimizer=sgd,rmsprop,adam optimizer.alpha=100,300 model.norm=batchnorm_affine)
  P_BUDGET=(protocol=none trainer.max_epochs=10)
  RANDOM_SEARCH=(hydra.sweeper.n_trials=8)
  TOP=3 SEEDS=3
else
  T1=(--rounds 30 --steps 5)
  RANDOM_POKER=(hydra.sweeper.n_trials=50)
  NP_GRID_POKER=() T2_NP=() T2_P=() F3_NP=() F3_P=() NP_GRID=() NP_SEEDS=() P_GRID=() P_BUDGET=() RANDOM_SEARCH=()
  TOP=10 SEEDS=10
fi
RANDOM_SEARCH+=("hydra.sweeper.n_jobs=$JOBS")  # the optuna sweeper launches this many trials at a time
RANDOM_POKER+=("hydra.sweeper.n_jobs=$JOBS")

# ----------------------------------------------------------------------------------- Table 1 (bench)
if wanted table1; then
  say "Table 1: optimizer step cost per weight"
  OMP_NUM_THREADS="$JOBS" python -m npnn.bench table1 "${T1[@]}" --out "$OUT"
fi

# ----------------------------------------------------------------------------------- Table 2 (poker)
if wanted poker; then
  say "Table 2: baselines"
  python -m npnn.baselines --datasets poker --data-dir "$DATA" --out "$OUT/baselines.json"
  say "7.4.2 step 1: the NP grid on poker (lambda x alpha_phi; its choice, alpha_phi = 10, is conf/dataset/poker.yaml's)"
  sweep "$RUNS/poker/np_grid" hparams_search=np_grid_poker "${NP_GRID_POKER[@]}"
  grid "$RUNS/poker/np_grid" optimizer.alpha_phi "$OUT/np_grid_poker.md"
  say "Table 2: the NP rows (lambda = 1e-3, 1e-5, 1e-6, 1e-7, the protocol to its end)"
  sweep "$RUNS/poker/np" experiment=table2_np_lambda1e-3,table2_np_lambda1e-5,table2_np_lambda1e-6,table2_np_lambda1e-7 \
    "${T2_NP[@]}"
  P_SIZES=$(sizes "$RUNS/poker/np")
  P_SIZES=$(echo "$P_SIZES" | sed 's/.*/[&]/' | paste -sd, -)
  say "7.4.2 step 2: RMSprop P nets at the NP sizes $P_SIZES over the step sizes alpha"
  sweep "$RUNS/poker/p" hparams_search=p_rmsprop_poker "model.hidden_sizes=$P_SIZES" "${T2_P[@]}"
  python -m npnn.figures table2 --np "$RUNS/poker/np" --p "$RUNS/poker/p" --baselines "$OUT/baselines.json" --out "$OUT"
  ROW=("$RUNS"/poker/np/*table2_np_lambda1e-3*)  # the lambda = 1e-3 row's run: one directory
  [ ${#ROW[@]} = 1 ] && [ -d "${ROW[0]}" ] || die "want one lambda = 1e-3 run under $RUNS/poker/np, found: ${ROW[*]}"
  BASE=$(sizes "${ROW[0]}" | head -1)
  say "the practical claim on poker: a random search over P nets of 1-5 times the lambda = 1e-3 row's size [$BASE]"
  sweep "$RUNS/poker/p_random" hparams_search=p_random_poker "random_search.base=[$BASE]" "${RANDOM_POKER[@]}"
  python -m npnn.figures claim --np "$RUNS/poker/np" --random "$RUNS/poker/p_random" --out "$OUT" || say "no claim on poker"
fi

# ------------------------------------------------------------------------------ Figs. 3 and 4 (mnist)
if wanted fig3; then
  say "Fig. 3: the NP run (mnist, lambda = 3e-4, alpha_phi = 10)"
  single "$RUNS/fig3/np" experiment=fig3_mnist "${F3_NP[@]}"
  F3_SIZES=$(sizes "$RUNS/fig3/np")
  say "Fig. 3: the P comparisons at the NP run's sizes [$F3_SIZES] (SGD, same step size and lambda; RMSprop alpha = 300)"
  sweep "$RUNS/fig3/p" model=parametric experiment=fig3_p_sgd,fig3_p_rmsprop "model.hidden_sizes=[$F3_SIZES]" \
    "${F3_P[@]}" 'hydra.sweep.subdir=${hydra:runtime.choices.experiment}'
  python -m npnn.figures fig3 "$RUNS/fig3/np" --sgd "$RUNS/fig3/p/fig3_p_sgd" --rmsprop "$RUNS/fig3/p/fig3_p_rmsprop" \
    --out "$OUT"
fi

# ------------------------------------------------------------------------------ Fig. 2 (per data set)
fig2_dataset() {  # data set, its Fig. 2 experiments (7.4.1 steps 1-6)
  local dataset="$1" experiments="$2" dir="$RUNS/$1" why
  if ! why=$(have_data "$dataset" 2>&1); then
    say "Fig. 2, $dataset: SKIPPED, its data cannot be loaded here: $(echo "$why" | tail -1)"
    echo "Fig. 2, $dataset: skipped, no data ($(echo "$why" | tail -1)). Put the data set where README \"Data\"" \
      "says and run: bash reproduce.sh $ARGS --only $dataset" > "$OUT/fig2_$dataset.md"
    SKIPPED+=("$dataset")
    return 0
  fi
  say "Fig. 2, $dataset, step 1: the NP grid (lambda x alpha_phi; its choice, alpha_phi = 30, is the data set's default)"
  sweep "$dir/np_grid" hparams_search=np_grid "dataset=$dataset" "${NP_GRID[@]}"
  grid "$dir/np_grid" optimizer.alpha_phi "$OUT/np_grid_$dataset.md"
  say "Fig. 2, $dataset, step 2: NP nets per lambda and seed"
  sweep "$dir/np" hparams_search=np_seeds "experiment=$experiments" "${NP_SEEDS[@]}"
  python -m npnn.sweeps "$dir/np" > "$OUT/fig2_${dataset}_representatives.txt"
  local sizes_ largest="" s p_dirs=()
  sizes_=$(sizes "$dir/np")
  for s in $sizes_; do
    say "Fig. 2, $dataset, steps 3-4: P nets of the representative's size [$s]: grid, then the best settings' seeds"
    sweep "$dir/p_grid_${s//,/-}" hparams_search=p_grid "dataset=$dataset" "model.hidden_sizes=[$s]" "${P_GRID[@]}" \
      "${P_BUDGET[@]}"
    picks_and_seeds "$dir/p_grid_${s//,/-}" "$dir/p_seeds_${s//,/-}"
    p_dirs+=("$dir/p_seeds_${s//,/-}")
    largest="$s"
  done
  say "Fig. 2, $dataset, steps 5-6: the random search over P settings and sizes (from [$largest]), then its best settings' seeds"
  sweep "$dir/p_random" hparams_search=p_random "dataset=$dataset" "random_search.base=[$largest]" "${RANDOM_SEARCH[@]}" \
    "${P_BUDGET[@]}"
  picks_and_seeds "$dir/p_random" "$dir/random_seeds"
  python -m npnn.figures claim --np "$dir/np" --random "$dir/p_random" --out "$OUT" || say "no claim on $dataset"
  python -m npnn.figures fig2 --np "$dir/np" --p "${p_dirs[@]}" --random "$dir/random_seeds" --datasets "$dataset" \
    --out "$OUT"
}
if wanted mnist; then fig2_dataset mnist fig2_np_mnist_lambda3e-3,fig2_np_mnist_lambda1e-3,fig2_np_mnist_lambda3e-4; fi
if wanted rectangles_images; then
  fig2_dataset rectangles_images fig2_np_rectangles_images_lambda3e-5,fig2_np_rectangles_images_lambda1e-6
fi
if wanted convex; then fig2_dataset convex fig2_np_convex_lambda1e-5,fig2_np_convex_lambda1e-8; fi

say "done: tables and figures in $OUT, runs in $RUNS"
ls "$OUT"
if [ ${#SKIPPED[@]} -gt 0 ]; then
  echo "skipped for want of data: ${SKIPPED[*]} (the note in $OUT/fig2_<dataset>.md says which file to put where)"
fi
