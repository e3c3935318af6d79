#!/usr/bin/env bash
# Regenerates the README's AWQ table: RTN, GPTQ, AWQ and AWQ+GPTQ at 4-bit per-row asymmetric and at
# 3-bit grouped asymmetric, one calibration set for every row of a model, perplexity on two texts, each
# quantize's wall time (report.totalSeconds of `quantize --json`), the mean relative output error; the AWQ
# methods run with both --propagate quantized and --propagate fp (given explicitly: the CLI's default,
# auto, is fp for AWQ). Every command is printed ("$ ...") as it runs; the tables follow, then a
# per-Linear comparison of AWQ with plain rounding. The KL column is eval-ppl --kl-base against the source
# on the first KL_WINDOWS (default 100) windows of the first text: mean KL(source ‖ quantized) per
# prediction and how often both pick the same top token.
#
#   bash bench/awq-table.sh [brown|stories|all]            (default: all)
#
#   brown    ../shared/models/brown-llama; calibration C4 (bundled sample) 128 × 512; eval seqlen 512 on
#            wikitext2 and c4 (no text like its training data, Brown corpus + King James Bible, is bundled
#            or shared); 4-bit per-row asym → compressed-tensors, 3-bit g128 asym → gptq.
#   stories  models/stories260K; calibration C4 32 × 256; eval seqlen 256 on tinystories (in-domain) and
#            wikitext2; 4-bit per-row asym → compressed-tensors; 3-bit g32 asym → gptq (its 172-wide MLP
#            Linears do not fit GPTQ's layout and stay fp16; no stories260K Linear is 128 wide).
#
# Environment: Q (the CLI, default `node dist/bin/quant4.js`; run `npm run build` first), WORK (default
# out/awq-table), METHODS (default "rtn gptq awq awq-gptq"), FP_METHODS (methods run with both
# propagations, the others with the CLI's default, default "awq awq-gptq"), THREADS (--threads for every
# command), REUSE=1 (keep a row whose quantize and eval outputs already exist in WORK: the command is
# printed with "(reused)", its numbers are the earlier run's).
# RTN gets the same --calib as the others: it does not change RTN's weights, only measures its errors.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK_ROOT=${WORK:-out/awq-table}
read -r -a METHODS <<< "${METHODS-rtn gptq awq awq-gptq}"
read -r -a FP_METHODS <<< "${FP_METHODS-awq awq-gptq}"
# shellcheck source=bench/table-lib.sh
source bench/table-lib.sh

table() { # preset
  local preset=$1 MODEL CALIB EVSEQ TEXTS CONFIGS
  preset "$preset" || { echo "unknown preset $preset (brown, stories, all)" >&2; exit 2; }
  case $preset in
    brown) CONFIGS=("w4-perrow-asym:--bits 4 --group-size -1 --asym --format compressed-tensors"
                    "w3-g128-asym:--bits 3 --group-size 128 --asym --format gptq") ;;
    stories) CONFIGS=("w4-perrow-asym:--bits 4 --group-size -1 --asym --format compressed-tensors"
                      "w3-g32-asym:--bits 3 --group-size 32 --asym --format gptq") ;;
  esac
  if [ ! -f "$MODEL/config.json" ]; then echo "(skipping $preset: $MODEL not found)"; return; fi
  local W="$WORK_ROOT/$preset"
  mkdir -p "$W"
  local ROWS="$W/rows.tsv"
  : > "$ROWS"
  echo "## $preset: $MODEL"
  evals() { # label config dir quantize-json
    local line="$1	$2"
    for t in "${TEXTS[@]}"; do
      OUTFILE="$W/$(basename "$3")-eval-$t.json"
      run "${QA[@]}" eval-ppl "$3" --text "$t" --seqlen "$EVSEQ" "${THR[@]}" --json
      line="$line	$(jget "$OUTFILE" 'ppl.toFixed(4)')"
    done
    if [ -n "$4" ]; then
      line="$line	$(klcell "$3" "$MODEL" "${TEXTS[0]}" "$EVSEQ" "$W")	$(jget "$4" 'report.totalSeconds.toFixed(1)')	$(jget "$4" "report.layers.filter(l=>l.relError!=null).reduce((s,l,_,a)=>s+l.relError/a.length,0).toExponential(3)")"
    else line="$line			"; fi
    echo "$line" >> "$ROWS"
  }
  evals "baseline" "-" "$MODEL" ""
  for cfg in "${CONFIGS[@]}"; do
    local name=${cfg%%:*}; read -r -a flags <<< "${cfg#*:}"
    local variants=()
    for m in "${METHODS[@]}"; do
      if [[ " ${FP_METHODS[*]} " == *" $m "* ]]; then variants+=("$m:quantized" "$m:fp"); else variants+=("$m:"); fi
    done
    for v in "${variants[@]}"; do
      local m=${v%%:*} p=${v#*:}
      local d="$W/$m-$name"; local prop=() label=$m
      if [ -n "$p" ]; then prop=(--propagate "$p"); label="$m --propagate $p"; fi
      if [ "$p" = fp ]; then d="$d-propfp"; fi
      OUTFILE="$d.quantize.json"
      run "${QA[@]}" quantize "$MODEL" "$d" --overwrite --method "$m" "${flags[@]}" "${prop[@]}" "${CALIB[@]}" "${THR[@]}" --json
      evals "$label" "$name" "$d" "$d.quantize.json"
    done
  done
  echo
  local hdr="| method | setting |" sep="|---|---|"
  for t in "${TEXTS[@]}"; do hdr="$hdr $t ppl |"; sep="$sep---|"; done
  echo "### $preset ($(basename "$MODEL")): calibration ${CALIB[*]}; eval seqlen $EVSEQ"
  echo "$hdr KL from source on ${TEXTS[0]} (same top token) | quantize s | mean rel. output error |"
  echo "$sep---|---|---|"
  awk -F'\t' '{ printf "|"; for (i = 1; i <= NF; i++) printf " %s |", $i; printf "\n" }' "$ROWS"
  echo
  echo "AWQ rows against RTN of the same setting (lower perplexity is better):"
  node -e '
    const rows = require("fs").readFileSync(process.argv[1], "utf8").trim().split("\n").map((l) => l.split("\t"));
    const texts = process.argv.slice(2);
    for (const r of rows.filter((r) => r[0].startsWith("awq"))) {
      const rtn = rows.find((x) => x[0] === "rtn" && x[1] === r[1]);
      if (!rtn) continue;
      const cells = texts.map((t, i) => `${t} ${r[2 + i]} vs ${rtn[2 + i]} ${Number(r[2 + i]) < Number(rtn[2 + i]) ? "better" : "NOT better"}`);
      console.log(`  ${r[0]} ${r[1]}: ${cells.join("; ")}`);
    }
  ' "$ROWS" "${TEXTS[@]}"
  echo
  echo "Per Linear, AWQ vs plain rounding of the same weights on the same inputs (relError vs relErrorBefore):"
  for f in "$W"/awq-*.quantize.json; do
    node -e '
      const j = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
      const L = j.report.layers.filter((l) => l.relErrorBefore != null);
      const worse = L.filter((l) => l.relError >= l.relErrorBefore);
      const m = (f) => (L.reduce((s, l) => s + f(l), 0) / L.length).toExponential(3);
      console.log(`  ${process.argv[1]}: ${L.length} Linears, mean relError ${m((l) => l.relError)} vs relErrorBefore ${m((l) => l.relErrorBefore)}; ` +
        `not better in ${worse.length}` + (worse.length ? ": " + worse.map((l) => `${l.name.replace("model.layers.", "")} ${l.relError.toExponential(2)}≥${l.relErrorBefore.toExponential(2)} (α ${l.awqAlpha ?? "-"}, clip ${l.clipShrink?.toFixed(3) ?? "-"})`).join("; ") : ""));
    ' "$f"
  done
  echo
}

case ${1:-all} in
  all) table stories; table brown ;;
  *) table "$1" ;;
esac
