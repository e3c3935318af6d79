#!/usr/bin/env bash
# Is AWQ's perplexity against RTN's on a text signal or noise? brown-llama RTN (no seed) and AWQ over
# calibration seeds, each evaluated on every window of one text with the source as --kl-base and
# --per-window; then bench/paired-ppl.ts prints per model ppl, ln(ppl / source ppl) and KL from the source
# (± one standard error over windows), AWQ − RTN window by window, and that difference split between the
# eval windows overlapping AWQ's scale-search windows (the first --awq-tokens of the calibration) and the rest
# (on c4, the calibration text, only).
#
#   bash bench/awq-seeds.sh [w3|w4] [text]     w3: 3-bit g128 asym, gptq (default); w4: 4-bit per row asym,
#                                              compressed-tensors; text: c4 (default, the calibration text) or wikitext2
#
# Calibration C4 128 × 512 as the README's AWQ table. Environment: Q (the CLI, default `node dist/bin/quant4.js`),
# WORK (default out/awq-seeds), SEEDS (default "0 1 2 3 4"), THREADS, REUSE=1 (bench/table-lib.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
read -r -a SEEDLIST <<< "${SEEDS-0 1 2 3 4}"
# shellcheck source=bench/table-lib.sh
source bench/table-lib.sh

scheme=${1:-w3}
TEXT=${2:-c4}
brown_scheme "$scheme"
# AWQ's scale-search sample, given explicitly (the default) so that the fitted windows below follow from it.
AWQ_TOKENS=8192
FIT=$((AWQ_TOKENS / 512))
W="${WORK:-out/awq-seeds}/$scheme"
mkdir -p "$W"
evalrun() { # dir
  OUTFILE="$1.eval-$TEXT.json"
  run "${QA[@]}" eval-ppl "$1" --text "$TEXT" --seqlen 512 --kl-base "$MODEL" --per-window "${THR[@]}" --json
}
OUTFILE="$W/rtn.quantize.json"
run "${QA[@]}" quantize "$MODEL" "$W/rtn" --overwrite --method rtn "${FLAGS[@]}" "${THR[@]}" --json
evalrun "$W/rtn"
specs=()
for seed in "${SEEDLIST[@]}"; do
  d="$W/awq-s$seed"
  OUTFILE="$d.quantize.json"
  run "${QA[@]}" quantize "$MODEL" "$d" --overwrite --method awq --awq-tokens "$AWQ_TOKENS" "${FLAGS[@]}" "${CALIB[@]}" --seed "$seed" "${THR[@]}" --json
  evalrun "$d"
  specs+=("awq seed $seed=$d.eval-$TEXT.json@$seed")
done
echo
echo "### brown-llama ${FLAGS[*]}, AWQ calibration ${CALIB[*]} (scale search on the first $FIT windows); eval $TEXT seqlen 512"
# The split by overlap with AWQ's fitted windows only means something on the calibration text itself.
SPLIT=()
if [ "$TEXT" = c4 ]; then SPLIT=(--calib c4 --model "$MODEL" --nsamples 128 --seqlen 512 --fit-windows "$FIT"); fi
node --import tsx bench/paired-ppl.ts --ref "rtn=$W/rtn.eval-$TEXT.json" "${SPLIT[@]}" "${specs[@]}"
