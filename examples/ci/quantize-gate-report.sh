#!/usr/bin/env bash
# quant4 in CI as a plain shell script: quantize with a recipe (one calibration pass, every output the
# recipe lists), gate each output on perplexity against the source, verify its files against its
# manifest, write the report (HTML, and markdown for a pull-request comment), and collect everything
# to upload in one artifact directory.
#
#   bash examples/ci/quantize-gate-report.sh [recipe.yaml] [artifact-dir]
#
# Run it from the directory the recipe's paths are relative to (the repository root for
# examples/ci/recipe.yaml). Environment:
#   QUANT4            the quant4 command (default: `node dist/bin/quant4.js` here, installing with
#                     scripts/install.sh when not built; else `npx quant4`)
#   EVAL_TEXT         the gate's text (default wikitext2); EVAL_SEQLEN, EVAL_MAX_WINDOWS: its windows
#   MAX_INCREASE      largest allowed perplexity increase over the source, percent (default 5)
#
# Exit codes, quant4's own (README "Exit codes"): 0 every output passed the gate and verify; 1 a gate or
# verify failed (the report and the artifacts are still written, showing why); 2 bad input or usage
# (a bad recipe, a missing model, an output already there); 3 internal error (a bug in quant4).
set -uo pipefail

RECIPE="${1:-examples/ci/recipe.yaml}"
ART="${2:-artifacts}"
EVAL_TEXT="${EVAL_TEXT:-wikitext2}"
MAX_INCREASE="${MAX_INCREASE:-5}"

say() { echo "ci: $*" >&2; }

# 1. Install quant4 (once per machine; CI caches npm).
if [ -z "${QUANT4:-}" ]; then
  if [ -f scripts/install.sh ] && [ -f package.json ] && grep -q '"name": "quant4"' package.json; then
    [ -f dist/bin/quant4.js ] || bash scripts/install.sh || exit 2
    QUANT4="node dist/bin/quant4.js"
  else
    QUANT4="npx quant4"
  fi
fi
read -r -a Q <<< "$QUANT4"

# Stop with quant4's exit code unless it is 0 or (for gates and verify) 1.
fatal_unless_ok_or_1() {
  local rc=$1 what=$2
  if [ "$rc" -ge 2 ]; then say "$what failed with exit $rc"; exit "$rc"; fi
}

mkdir -p "$ART" || exit 2

# 2. Quantize with the recipe. --overwrite (a flag over the recipe) lets a rerun replace old outputs.
say "quantize --recipe $RECIPE"
"${Q[@]}" quantize --recipe "$RECIPE" --overwrite --json > "$ART/quantize.json"
rc=$?
if [ "$rc" -ne 0 ]; then say "quantize failed with exit $rc"; exit "$rc"; fi

# The outputs, and the source model, from the result (the first output is the quantized one).
mapfile -t OUTS < <(node -e 'const j=JSON.parse(require("fs").readFileSync(process.argv[1],"utf8")); for (const d of [j.out, ...(j.outputs??[]).map(o=>o.out)]) console.log(d)' "$ART/quantize.json")
MODEL=$(node -e 'console.log(JSON.parse(require("fs").readFileSync(process.argv[1],"utf8")).model)' "$ART/quantize.json")
[ "${#OUTS[@]}" -ge 1 ] || { say "quantize --json named no output"; exit 3; }

# 3. The source's perplexity, once, then the gate on every output (same protocol: eval-ppl checks it).
EVAL_ARGS=(--text "$EVAL_TEXT")
[ -n "${EVAL_SEQLEN:-}" ] && EVAL_ARGS+=(--seqlen "$EVAL_SEQLEN")
[ -n "${EVAL_MAX_WINDOWS:-}" ] && EVAL_ARGS+=(--max-windows "$EVAL_MAX_WINDOWS")
say "eval-ppl $MODEL (the baseline)"
"${Q[@]}" eval-ppl "$MODEL" "${EVAL_ARGS[@]}" --json > "$ART/baseline.json"
rc=$?
if [ "$rc" -ne 0 ]; then say "eval-ppl of the source failed with exit $rc"; exit "$rc"; fi

failed=0
EVALS=()
for d in "${OUTS[@]}"; do
  name=$(basename "$d")
  say "gate: eval-ppl $d --baseline --max-increase $MAX_INCREASE"
  "${Q[@]}" eval-ppl "$d" "${EVAL_ARGS[@]}" --baseline "$ART/baseline.json" --max-increase "$MAX_INCREASE" --json > "$ART/eval-$name.json"
  rc=$?
  fatal_unless_ok_or_1 "$rc" "eval-ppl $d"
  [ "$rc" -eq 1 ] && failed=1
  EVALS+=(--eval "$ART/eval-$name.json")

  # 4. Verify: every file against the sha256 its manifest recorded.
  say "verify $d"
  "${Q[@]}" verify "$d" >&2
  rc=$?
  fatal_unless_ok_or_1 "$rc" "verify $d"
  [ "$rc" -eq 1 ] && failed=1
done

# 5. The report: HTML for people, markdown for the pull-request comment (the gate's verdict in both).
for fmt in html md; do
  say "report -o $ART/report.$fmt"
  "${Q[@]}" report "${OUTS[@]}" --baseline "$ART/baseline.json" "${EVALS[@]}" --max-increase "$MAX_INCREASE" -o "$ART/report.$fmt"
  rc=$?
  fatal_unless_ok_or_1 "$rc" "report"
done

# 6. Collect the artifact: the outputs (weights, configs, manifests) beside the report and results.
mkdir -p "$ART/models"
for d in "${OUTS[@]}"; do cp -R "$d" "$ART/models/" || exit 2; done
say "artifact: $ART ($(du -sh "$ART" | cut -f1))"

if [ "$failed" -ne 0 ]; then say "FAILED: a perplexity gate or verify failed (see $ART/report.md)"; exit 1; fi
say "ok: every output passed the gate and verify"
exit 0
