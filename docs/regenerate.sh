#!/usr/bin/env bash
# Redraw every figure and table of docs/full from the committed run records into OUT (default docs/full);
# `bash docs/regenerate.sh /tmp/out && diff -r -x '*.pdf' /tmp/out docs/full` shows they are the same bytes.
# (baselines.json and the mistakes_poker*.md pages need training or checkpoints: docs/results.md says how.)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-docs/full}
mkdir -p "$OUT"
cp -n docs/full/baselines.json "$OUT/" 2>/dev/null || true
F=runs/full
python -m npnn.figures fig3 $F/fig3/np --sgd $F/fig3/p/fig3_p_sgd --rmsprop $F/fig3/p/fig3_p_rmsprop --out "$OUT"
python -m npnn.figures table2 --np $F/poker/np $F/poker/resume_check/table2_np_lambda1e-3_uninterrupted \
    --p $F/poker/p_table2_* --baselines docs/full/baselines.json --seeds $F/poker/np_seeds_lambda1e-* \
    --out "$OUT" > /dev/null
python -m npnn.figures fig2 --np $F/mnist/np --p $F/mnist/p_seeds_* --random $F/mnist/p_random --out "$OUT"
python -m npnn.figures claim --np $F/poker/np $F/poker/np_seeds_lambda1e-6 $F/poker/np_seeds_lambda1e-3 \
    $F/poker/np_seeds_lambda1e-5 $F/poker/np_seeds_lambda1e-7 $F/poker/resume_check/table2_np_lambda1e-3_uninterrupted \
    --random $F/poker/p_random --out "$OUT"
python -m npnn.figures claim --np $F/mnist/np --random $F/mnist/p_random --out "$OUT"
