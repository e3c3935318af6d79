#!/usr/bin/env bash
# Does AWQ's scale search need more than 8,192 calibration tokens? brown-llama AWQ with
# --awq-tokens 8192 and 16384 over calibration seeds, each scored by perplexity and by KL from the source
# (eval-ppl --kl-base) on the first 100 windows of 512 of WikiText-2; prints every run, then mean ± sd per
# sample size and in how many seeds each size beats the largest (strictly lower perplexity, KL; bench/seed-summary.ts).
#
#   bash bench/awq-tokens.sh [w4|w3]        w4: 4-bit per row asymmetric, compressed-tensors (default);
#                                           w3: 3-bit g128 asymmetric, gptq format
#
# Calibration C4 128 × 512 (65,536 tokens: 16,384 = the first 32 windows, 8,192 = the first 16).
# Environment: Q (the CLI, default `node dist/bin/quant4.js`), WORK (default out/awq-tokens), SEEDS
# (default "0 1 2 3 4"), TOKENS (default "8192 16384"), THREADS, REUSE=1 (see bench/table-lib.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
read -r -a TOKLIST <<< "${TOKENS-8192 16384}"
read -r -a SEEDLIST <<< "${SEEDS-0 1 2 3 4}"
# shellcheck source=bench/table-lib.sh
source bench/table-lib.sh

scheme=${1:-w4}
brown_scheme "$scheme"
EVAL=(--text wikitext2 --seqlen 512 --max-windows 100)
W="${WORK:-out/awq-tokens}/$scheme"
mkdir -p "$W"
ROWS="$W/rows.tsv"
: > "$ROWS"
for seed in "${SEEDLIST[@]}"; do
  for t in "${TOKLIST[@]}"; do
    d="$W/s$seed-t$t"
    OUTFILE="$d.quantize.json"
    run "${QA[@]}" quantize "$MODEL" "$d" --overwrite --method awq "${FLAGS[@]}" --awq-tokens "$t" "${CALIB[@]}" --seed "$seed" "${THR[@]}" --json
    secs=$(jget "$OUTFILE" 'report.totalSeconds.toFixed(1)' 2>/dev/null || echo "?")
    OUTFILE="$d.eval.json"
    run "${QA[@]}" eval-ppl "$d" "${EVAL[@]}" --kl-base "$MODEL" "${THR[@]}" --json
    echo "$seed	$t	$(jget "$OUTFILE" 'ppl.toFixed(4)')	$(jget "$OUTFILE" 'kl.meanKl.toExponential(4)')	$secs" >> "$ROWS"
  done
done
echo
echo "### brown-llama AWQ ${FLAGS[*]}, ${CALIB[*]}; eval ${EVAL[*]}"
node --import tsx bench/seed-summary.ts "$ROWS" --setting awq-tokens --ref "${TOKLIST[${#TOKLIST[@]}-1]}" --extra "quantize s"
