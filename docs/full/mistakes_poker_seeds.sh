#!/bin/bash
# docs/full/mistakes_poker_seeds.md: the test errors by hand kind of the NP seeds and the prune-limit check run on the
# AMD EPYC on 2026-12-04 (docs/results.md, Table 2); mistakes_poker.sh holds the Intel Xeon's runs.
# Run from the repository root where the runs ran: it reads each run's checkpoints/last.ckpt (not committed).
set -euo pipefail
P=runs/full/poker
echo "# Poker: the final networks' test errors by hand kind (AMD EPYC runs)"
echo
echo "\`bash docs/full/mistakes_poker_seeds.sh\` (\`python -m npnn.mistakes\`; the final network of each run's summary.json)."
echo
python -m npnn.mistakes \
  $P/np_seeds_lambda1e-5/*/ \
  $P/np_seeds_lambda1e-7/*/ \
  $P/gap_max_prune/lambda1e-5_seed1_max_prune100
