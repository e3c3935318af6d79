#!/usr/bin/env bash
# How much of a perplexity difference is the calibration sample: GPTQ asymmetric (quant4 format) with
# --outliers 0 / 0.005 / 0.01 over calibration seeds, each scored by perplexity and by KL from the source
# (eval-ppl --kl-base) on the same windows; prints every run, then mean ± sd per outlier fraction and in
# how many seeds each fraction beats --outliers 0 of the same seed.
#
#   bash bench/seed-spread.sh [stories-c4|stories-tinystories|brown]      (default: stories-c4)
#
#   stories-c4           models/stories260K, 3-bit g32, calibration C4 32 × 256, seeds 0–4; eval: the whole
#                        tinystories sample (60 windows of 256, in-domain)
#   stories-tinystories  the same with calibration on the tinystories sample (in-domain calibration)
#   brown                ../shared/models/brown-llama, 3-bit g128, calibration C4 128 × 512, seeds 0–2; eval:
#                        the first 100 windows of 512 of WikiText-2
#
# Environment: Q (the CLI, default `node dist/bin/quant4.js`), WORK (default out/seed-spread), SEEDS,
# OUTLIERS (default "0 0.005 0.01"), THREADS, REUSE=1 (see bench/table-lib.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
read -r -a OUTLIERS <<< "${OUTLIERS-0 0.005 0.01}"
# shellcheck source=bench/table-lib.sh
source bench/table-lib.sh

preset=${1:-stories-c4}
case $preset in
  stories-c4|stories-tinystories)
    MODEL=models/stories260K; FLAGS=(--bits 3 --group-size 32)
    CALIB=(--calib "${preset#stories-}" --nsamples 32 --seqlen 256); EVAL=(--text tinystories --seqlen 256)
    read -r -a SEEDLIST <<< "${SEEDS-0 1 2 3 4}" ;;
  brown)
    MODEL=../shared/models/brown-llama; FLAGS=(--bits 3 --group-size 128)
    CALIB=(--calib c4 --nsamples 128 --seqlen 512); EVAL=(--text wikitext2 --seqlen 512 --max-windows 100)
    read -r -a SEEDLIST <<< "${SEEDS-0 1 2}" ;;
  *) echo "unknown preset $preset (stories-c4, stories-tinystories, brown)" >&2; exit 2 ;;
esac
if [ ! -f "$MODEL/config.json" ]; then echo "(skipping $preset: $MODEL not found)"; exit 0; fi
W="${WORK:-out/seed-spread}/$preset"
mkdir -p "$W"
ROWS="$W/rows.tsv"
: > "$ROWS"
for seed in "${SEEDLIST[@]}"; do
  for o in "${OUTLIERS[@]}"; do
    d="$W/s$seed-o$o"
    OUTFILE="$d.quantize.json"
    run "${QA[@]}" quantize "$MODEL" "$d" --overwrite --method gptq --asym --format quant4 "${FLAGS[@]}" --outliers "$o" "${CALIB[@]}" --seed "$seed" "${THR[@]}" --json
    OUTFILE="$d.eval.json"
    run "${QA[@]}" eval-ppl "$d" "${EVAL[@]}" --kl-base "$MODEL" "${THR[@]}" --json
    echo "$seed	$o	$(jget "$OUTFILE" 'ppl.toFixed(4)')	$(jget "$OUTFILE" 'kl.meanKl.toExponential(4)')" >> "$ROWS"
  done
done
echo
echo "### $preset: GPTQ ${FLAGS[*]} --asym, ${CALIB[*]}; eval ${EVAL[*]}"
node --import tsx bench/seed-summary.ts "$ROWS" --setting outliers --ref "${OUTLIERS[0]}"
