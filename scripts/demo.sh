#!/usr/bin/env bash
# The quick-start job on the bundled stories260K model (no other data needed):
# fp baseline perplexity → GPTQ INT4 quantization → perplexity of the packed model, gated at +10%
# against the baseline → a greedy sample from the INT4 model.
set -euo pipefail
cd "$(dirname "$0")/.."
Q="node dist/bin/quant4.js"
OUT=out/demo
mkdir -p "$OUT"

echo "== 1. baseline perplexity (fp32 stories260K, in-domain text)"
$Q eval-ppl models/stories260K --text tinystories --seqlen 256 --json > "$OUT/baseline.json"
node -e "const r=require('./$OUT/baseline.json'); console.log('perplexity', r.ppl.toFixed(4), '-', r.protocolDescription)"

echo "== 2. GPTQ 4-bit act-order, per-row asymmetric, compressed-tensors (holds every Linear of this model)"
$Q quantize models/stories260K "$OUT/stories260K-gptq" --overwrite --method gptq --act-order --bits 4 --group-size -1 --asym \
  --format compressed-tensors --calib tinystories --nsamples 128 --seqlen 256

echo "== 3. perplexity of the INT4 model, CI gate: at most +10% over the baseline"
$Q eval-ppl "$OUT/stories260K-gptq" --text tinystories --seqlen 256 --baseline "$OUT/baseline.json" --max-increase 10

echo "== 4. greedy sample from the INT4 model"
$Q generate "$OUT/stories260K-gptq" --max-tokens 64
