#!/usr/bin/env bash
# ship-model.sh NAME RUN [DATA] — put a trained run into weights/ and measure what its model card
# states. Copies the float model (config.json, model.safetensors, log.csv) to weights/NAME/,
# quantizes it into weights/NAME.bcae.postcard, and writes the Table-1 metrics as JSON into
# target/ship/NAME/: float f32 and f16 and the int8 path, on DATA's held-out test split and on the
# real wedge (../shared/data/auau_sample.npy, or $REAL) when it is there.
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
ls -l "$WEIGHTS" "$OUT" "$REPORT"
