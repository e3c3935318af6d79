# Shared by the bench table and seed-study scripts (sourced, not run): printing and running each
# command, reading a field of a JSON result, and the KL-from-source cell.
#
# Environment: REUSE=1 keeps a result whose output file already exists (the command is printed with
# "(reused)", its numbers are the earlier run's); KL_WINDOWS (default 100) windows of the first eval text
# for the KL cell.

# Every script runs the CLI as QA (env Q, default the built dist: `npm run build` first) with THR (env
# THREADS: --threads for every command).
read -r -a QA <<< "${Q:-node dist/bin/quant4.js}"
THR=()
if [ -n "${THREADS:-}" ]; then THR=(--threads "$THREADS"); fi

run() { # print the command, then run it (stdout to $OUTFILE, stderr to $OUTFILE.err)
  if [ "${REUSE:-}" = 1 ] && [ -s "$OUTFILE" ]; then echo "(reused) \$ $* > $OUTFILE"; return; fi
  echo "\$ $* > $OUTFILE"
  "$@" > "$OUTFILE" 2> "$OUTFILE.err" || { echo "failed (exit $?): see $OUTFILE.err" >&2; tail -5 "$OUTFILE.err" >&2; exit 1; }
}

jget() { node -e "const j=JSON.parse(require('fs').readFileSync(process.argv[1],'utf8'));console.log(eval('j.'+process.argv[2]))" "$1" "$2"; }

# klcell <quantized dir> <source model> <text> <seqlen> <work dir>: "mean KL (same top %)" of the quantized
# model against its source on the first KL_WINDOWS windows of <text> (eval-ppl --kl-base).
klcell() {
  OUTFILE="$5/$(basename "$1")-kl-$3.json"
  run "${QA[@]}" eval-ppl "$1" --kl-base "$2" --text "$3" --seqlen "$4" --max-windows "${KL_WINDOWS:-100}" "${THR[@]}" --json >&2 # the command line to the log, not into the cell
  node -e 'const j = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8")); console.log(`${j.kl.meanKl.toExponential(3)} (${(100 * j.kl.sameTop).toFixed(1)}%)`)' "$OUTFILE"
}

# preset <brown|stories>: the model, calibration, eval seqlen and texts both tables use for it (sets MODEL,
# CALIB, EVSEQ, TEXTS in the caller's scope); returns 1 for an unknown preset.
#   brown    ../shared/models/brown-llama; calibration C4 (bundled sample) 128 × 512; eval seqlen 512 on
#            wikitext2 and c4 (no text like its training data is bundled or shared; the c4 column is the
#            calibration sample itself, so it is not held out)
#   stories  models/stories260K; calibration C4 32 × 256; eval seqlen 256 on tinystories (in-domain) and wikitext2
preset() {
  case $1 in
    brown) MODEL=../shared/models/brown-llama; CALIB=(--calib c4 --nsamples 128 --seqlen 512); EVSEQ=512; TEXTS=(wikitext2 c4) ;;
    stories) MODEL=models/stories260K; CALIB=(--calib c4 --nsamples 32 --seqlen 256); EVSEQ=256; TEXTS=(tinystories wikitext2) ;;
    *) return 1 ;;
  esac
}

# brown_scheme <w4|w3>: brown-llama with the AWQ table's calibration (C4 128 × 512) and the scheme's flags
# (sets MODEL, CALIB, FLAGS; w4: 4-bit per row asym, compressed-tensors; w3: 3-bit g128 asym, gptq);
# exits 0 with a line where brown-llama is absent, 2 for an unknown scheme.
brown_scheme() {
  case $1 in
    w4) FLAGS=(--bits 4 --group-size -1 --asym --format compressed-tensors) ;;
    w3) FLAGS=(--bits 3 --group-size 128 --asym --format gptq) ;;
    *) echo "unknown scheme $1 (w4, w3)" >&2; exit 2 ;;
  esac
  MODEL=../shared/models/brown-llama
  if [ ! -f "$MODEL/config.json" ]; then echo "(skipping: $MODEL not found)"; exit 0; fi
  CALIB=(--calib c4 --nsamples 128 --seqlen 512)
}
