#!/usr/bin/env bash
# Regenerates the README's perplexity table: FP16/FP32 baseline, RTN and GPTQ at 4 and 3 bits, with and
# without act-order, on a model directory. Every number is printed with the exact commands that gave it.
#   bash bench/ppl-table.sh <model-dir> <group-size> <format> <calib> <nsamples> <seqlen> <eval-text>...
# e.g.
#   bash bench/ppl-table.sh ../shared/models/brown-llama 128 gptq c4 128 512 wikitext2
#   bash bench/ppl-table.sh models/stories260K 32 gptq tinystories 128 256 tinystories wikitext2
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=$1; GS=$2; FMT=$3; CALIB=$4; NS=$5; SEQ=$6; shift 6
TEXTS=("$@")
Q="node dist/bin/quant4.js"
WORK=${WORK:-out/ppl-table/$(basename "$MODEL")-g$GS-$FMT}
mkdir -p "$WORK"
ppl() { # dir text -> ppl
  $Q eval-ppl "$1" --text "$2" --seqlen "$SEQ" --json | node -e "let s='';process.stdin.on('data',d=>s+=d).on('end',()=>console.log(JSON.parse(s).ppl.toFixed(4)))"
}
row() { # label dir
  local line="| $1 |"
  for t in "${TEXTS[@]}"; do line="$line $(ppl "$2" "$t") |"; done
  echo "$line"
}
header="| $(basename "$MODEL") g$GS ($FMT, calib $CALIB ${NS}×$SEQ) |"
sep="|---|"
for t in "${TEXTS[@]}"; do header="$header $t ppl (seqlen $SEQ) |"; sep="$sep---|"; done
echo "$header"; echo "$sep"
row "baseline (unquantized)" "$MODEL"
for BITS in 4 3; do
  for V in "rtn" "gptq" "gptq --act-order"; do
    NAME="${V// /}"; NAME="${NAME//--/-}"
    DIR="$WORK/$NAME-w$BITS"
    $Q quantize "$MODEL" "$DIR" --overwrite --method $V --bits "$BITS" --group-size "$GS" --format "$FMT" \
      --calib "$CALIB" --nsamples "$NS" --seqlen "$SEQ" > /dev/null 2>&1
    row "$V ${BITS}-bit" "$DIR"
  done
done
echo
echo "commands: $Q quantize $MODEL <out> --method <rtn|gptq> [--act-order] --bits <4|3> --group-size $GS --format $FMT --calib $CALIB --nsamples $NS --seqlen $SEQ"
echo "          $Q eval-ppl <dir> --text <text> --seqlen $SEQ"
