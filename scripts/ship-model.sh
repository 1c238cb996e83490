#!/usr/bin/env bash
# ship-model.sh NAME RUN [DATA] — put a trained run into weights/ and measure what its model card
# states. Copies the float model (config.json, model.safetensors, log.csv) to weights/NAME/,
# quantizes it into weights/NAME.bcae.postcard, and writes the Table-1 metrics as JSON into
# target/ship/NAME/: float f32 and f16 and the int8 path, on DATA's held-out test split and on the
# real wedge (../shared/data/auau_sample.npy, or $REAL) when it is there, and the card's table
# (value metrics included) into target/ship/NAME/card.md.
#
#   scripts/ship-model.sh bcae-ht runs/ht-lr5e-3
#   BCAE=target/release/bcae REAL=/data/auau_sample.npy scripts/ship-model.sh bcae-2d runs/2d data/synth
set -euo pipefail
cd "$(dirname "$0")/.."

[ $# -ge 2 ] || { sed -n '2,9p' "$0"; exit 2; }
NAME=$1
RUN=$2
DATA=${3:-data/synth}
REAL=${REAL:-../shared/data/auau_sample.npy}
BCAE=${BCAE:-target/release/bcae}
OUT=weights/$NAME
REPORT=target/ship/$NAME
WEIGHTS=weights/$NAME.bcae.postcard

[ -x "$BCAE" ] || { echo "$BCAE not found: cargo build --release --bin bcae first" >&2; exit 1; }
for f in config.json model.safetensors; do
  [ -f "$RUN/$f" ] || { echo "$RUN/$f not found: RUN must be a run directory of bcae train" >&2; exit 1; }
done
mkdir -p "$OUT" "$REPORT"
# The float model only: the optimizer state stays behind (it is 2x the model and not needed).
cp "$RUN/config.json" "$RUN/model.safetensors" "$OUT/"
[ -f "$RUN/log.csv" ] && cp "$RUN/log.csv" "$OUT/"

run() { echo "+ $*" >&2; "$@"; }
run "$BCAE" quantize --run "$OUT" --calib "$DATA" --wedges 64 --eval-wedges 8 --check-wedges 8 \
  --out "$WEIGHTS" --force | tee "$REPORT/quantize.txt"
run "$BCAE" eval --run "$OUT" --data "$DATA" --split test --precision f32,f16 --json >"$REPORT/float-test.json"
run "$BCAE" compress --weights "$WEIGHTS" "$DATA" --split test -o "$REPORT/test.bcae" --force --json \
  >"$REPORT/compress-test.json"
run "$BCAE" eval --stream "$REPORT/test.bcae" --truth "$DATA" --run "$OUT" --json >"$REPORT/int8-test.json"
if [ -f "$REAL" ]; then
  run "$BCAE" eval --run "$OUT" --data "$REAL" --precision f32,f16 --json >"$REPORT/float-real.json"
  run "$BCAE" compress --weights "$WEIGHTS" "$REAL" -o "$REPORT/real.bcae" --force --json \
    >"$REPORT/compress-real.json"
  run "$BCAE" eval --stream "$REPORT/real.bcae" --truth "$(dirname "$REAL")" --run "$OUT" --json \
    >"$REPORT/int8-real.json"
else
  echo "no real wedge at $REAL: the card's real-data rows stay unmeasured" >&2
fi

# The model card's table, value metrics included, from the JSON just written (weights/README.md
# format): MAE etc. over all voxels; TP MAE / TP corr on the true positives; "<ADC64" the share of
# reconstructed hits below the zero-suppression threshold (the floor of 6 + 3 exp(r)); "top value"
# the largest share of hits at one ADC value. A collapsed regression head shows as ~100 % there.
card_row() { # DATA_LABEL PATH_LABEL JSON_MEAN WEDGES RATIO ZERO_MAE
  local m=$3
  num() { jq -r "$1 // \"NaN\"" <<<"$m"; }
  pct() { jq -r "if $1 == null then \"-\" else (($1 * 1000 | round) / 10 | tostring) + \" %\" end" <<<"$m"; }
  printf '| %s | %s | %s | %.4f | %.2f | %.4f | %.4f | %.4f | %.3f | %s | %s @%s | %s | %.4f |\n' \
    "$1" "$2" "$4" "$(num .mae)" "$(num .psnr_db)" "$(num .precision)" "$(num .recall)" \
    "$(num .tp_mae)" "$(num .tp_correlation)" "$(pct .below_threshold_share)" \
    "$(pct .mode_share)" "$(num .mode_adc)" "$5" "$6"
}
card_rows() { # DATA_LABEL FLOAT_JSON INT8_JSON
  local zero n
  zero=$(jq -r '.[0].all_zero.mae' "$2")
  n=$(jq -r '.[0].mean.wedges' "$2")
  card_row "$1" "float f32" "$(jq -c '.[] | select(.precision == "f32") | .mean' "$2")" "$n" 31.125 "$zero"
  card_row "$1" "float, f16 encoder + code" "$(jq -c '.[] | select(.precision == "f16") | .mean' "$2")" "$n" 31.125 "$zero"
  card_row "$1" "int8 encoder, f32 decoders" "$(jq -c .mean "$3")" "$(jq -r .wedges "$3")" \
    "$(jq -r '.ratio_on_disk * 100 | round / 100' "$3")" "$zero"
}
{
  echo '| data | path | wedges | MAE | PSNR (dB) | precision | recall | TP MAE | TP corr | <ADC64 | top value | ratio | all-zero MAE |'
  echo '|---|---|---|---|---|---|---|---|---|---|---|---|---|'
  card_rows "synthetic test" "$REPORT/float-test.json" "$REPORT/int8-test.json"
  if [ -f "$REPORT/int8-real.json" ]; then
    card_rows "real wedge" "$REPORT/float-real.json" "$REPORT/int8-real.json"
  fi
} >"$REPORT/card.md"
cat "$REPORT/card.md"
if jq -e '.mean.below_threshold_share >= 0.5 or .mean.mode_share >= 0.5' "$REPORT/int8-test.json" >/dev/null; then
  echo "WARNING: $NAME's regression head has collapsed (half or more of its hits at one value or below ADC 64): do not ship it" >&2
fi
ls -l "$WEIGHTS" "$OUT" "$REPORT"
