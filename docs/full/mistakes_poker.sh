#!/bin/bash
# docs/full/mistakes_poker.md: the test errors of Table 2's poker nets by hand kind (docs/results.md, Table 2).
# Run from the repository root where the runs ran: it reads each run's checkpoints/last.ckpt (not committed).
# With run directories as arguments it reads those instead of the Intel Xeon's list below
# (docs/full/mistakes_poker_seeds.md: the AMD EPYC's runs of 2026-12-04).
set -euo pipefail
P=runs/full/poker
if [ $# -gt 0 ]; then RUNS=("$@"); else RUNS=(
  $P/np/table2_np_lambda1e-5
  $P/gap_max_stalls/lambda1e-6_max_stalls3
  $P/np_seeds_lambda1e-6/*/
  $P/np/table2_np_lambda1e-7
  "$P/p_table2_100-170-169-65/model.hidden_sizes=[100,170,169,65],optimizer.alpha=30"
  "$P/p_table2_231-283-274-111/model.hidden_sizes=[231,283,274,111],optimizer.alpha=300"
  "$P/p_table2_349-259-265-149/model.hidden_sizes=[349,259,265,149],optimizer.alpha=100"
  $P/p_random/trial42
  $P/gap_fresh_adarad/231-283-274-111
  $P/gap_fresh_adarad/231-283-274-111_alpha_phi30
  $P/gap_fresh_adarad/231-283-274-111_alpha_phi100
); fi
echo "# Poker: the final networks' test errors by hand kind"
echo
echo "\`bash docs/full/mistakes_poker.sh${1:+ RUN_DIR...}\` (\`python -m npnn.mistakes\`; the final network of each run's summary.json)."
echo
python -m npnn.mistakes "${RUNS[@]}"
if [ $# -eq 0 ]; then
echo
echo "lambda = 1e-6, seed 0: the run with protocol.max_stalls=3, which ends at the README default's net, VCE and test"
echo "errors (231-283-274-111, 17); the default's own checkpoint was not kept."
fi
