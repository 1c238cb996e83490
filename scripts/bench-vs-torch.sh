#!/usr/bin/env bash
# The int8 encoder against PyTorch fp32, in one run per model: `firmware-sim bench` (no_std int8 on
# 1 and all threads, with dense-equivalent GMAC/s and % of the core's int8 peak) plus a PyTorch fp32
# row from the reference checkout's own encoder (scripts/torch_bench.py), for the shipped BCAE-HT
# and BCAE-2D(4,8,3).
#
#   scripts/bench-vs-torch.sh REF_CHECKOUT [--venv DIR] [--mode encoder] [--native] [--seconds N]
#                             [--rounds R]
#
# REF_CHECKOUT: a NeuralCompression_v2 checkout (nothing is downloaded at run time).
# --venv DIR: a Python venv with torch; without it, CPU torch is installed from PyPI into a
#   scratch venv (${BCAE_TORCH_VENV:-${TMPDIR:-/tmp}/bcae-torch-venv}), once.
# --native: build with RUSTFLAGS="-C target-cpu=native" (into target/native so the default build
#   is kept).
# --mode encoder (default): the int8 encoder rows above.
# --mode float: the float models on candle (`bcae bench --json`: train steps on 64x64 and 128x128
#   crops, both encoders, BCAE-HT encoder + decoders) against the same rows of the reference
#   PyTorch modules (torch_bench.py train / encoder / decode), one table with the ratio.
# --rounds R (float mode, default 3): each row runs ours then PyTorch's R times in a row; the
#   table shows both sides' medians, the median of the R per-round ratios and their range (the
#   host's speed drifts by up to 40 % over minutes, for both sides alike).
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
[[ $# -ge 1 ]] || usage 2
[[ $1 == -h || $1 == --help ]] && usage 0
REF=$1; shift
VENV="" MODE=encoder NATIVE=0 SECONDS_PER_ROW=10 THREADS=2 BATCH=4 ROUNDS=3
while [[ $# -gt 0 ]]; do
  case $1 in
    --venv) VENV=$2; shift 2 ;;
    --mode) MODE=$2; shift 2 ;;
    --native) NATIVE=1; shift ;;
    --seconds) SECONDS_PER_ROW=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    -h|--help) usage 0 ;;
    *) echo "unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
done
[[ -d $REF/neuralcompress_v2/models ]] || {
  echo "$REF: not a NeuralCompression_v2 checkout (no neuralcompress_v2/models): pass the reference checkout's path" >&2
  exit 2
}
[[ $MODE == encoder || $MODE == float ]] || { echo "unknown mode '$MODE': use --mode encoder or --mode float" >&2; exit 2; }

if [[ -z $VENV ]]; then
  VENV=${BCAE_TORCH_VENV:-${TMPDIR:-/tmp}/bcae-torch-venv}
  if ! "$VENV/bin/python" -c 'import torch' 2>/dev/null; then
    echo "installing CPU torch into $VENV (once)" >&2
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q torch
  fi
fi
PY=$VENV/bin/python
"$PY" -c 'import torch' || { echo "$PY cannot import torch: pass a venv with torch (--venv DIR)" >&2; exit 2; }

if [[ $MODE == float ]]; then
  [[ $NATIVE == 1 ]] && export RUSTFLAGS="-C target-cpu=native" CARGO_TARGET_DIR=target/native
  cargo build --release -q -p trainer --bin bcae
  BCAE=${CARGO_TARGET_DIR:-target}/release/bcae
  WORK=$(mktemp -d); trap 'rm -rf "$WORK"' EXIT
  echo "# $(date -u '+%F %T') UTC, load average $(cut -d' ' -f1-3 /proc/loadavg), $THREADS threads, batch $BATCH, $ROUNDS rounds per row"
  # Row by row, ours then PyTorch's, so the host's drift (up to 40 % over minutes on shared
  # machines) falls between rows rather than between the two sides of one ratio.
  for row in "bcae-ht train 64x64" "bcae-ht train 128x128" "bcae-2d train 64x64" \
    "bcae-2d train 128x128" "bcae-ht encode -" "bcae-2d encode -" "bcae-ht encode-decode -"; do
    read -r model work crop <<< "$row"
    crop_args=(); [[ $crop != - ]] && crop_args=(--crop "$crop")
    mode=${work/encode-decode/decode}; mode=${mode/encode/encoder}
    torch_crop=(); [[ $crop != - ]] && torch_crop=(--crops "$crop")
    for ((round = 0; round < ROUNDS; round++)); do
      RAYON_NUM_THREADS=$THREADS "$BCAE" bench --model "$model" --work "$work" "${crop_args[@]}" \
        --batch "$BATCH" --json >> "$WORK/ours.json"
      "$PY" scripts/torch_bench.py "$mode" --ref "$REF" --models "$model" "${torch_crop[@]}" \
        --threads "$THREADS" --batch "$BATCH" --seconds "$SECONDS_PER_ROW" --json >> "$WORK/torch.jsonl"
    done
  done
  "$PY" - "$WORK/ours.json" "$WORK/torch.jsonl" <<'PYEOF'
import json, sys
def documents(text):
    # `bcae bench --json` prints one (multi-line) JSON array per row's run.
    decoder, at, out = json.JSONDecoder(), 0, []
    while text[at:].strip():
        at += len(text[at:]) - len(text[at:].lstrip())
        doc, at = decoder.raw_decode(text, at)
        out.append(doc)
    return out
ours = [r for doc in documents(open(sys.argv[1]).read()) for r in doc]
torch = [json.loads(l) for l in open(sys.argv[2]) if l.strip()]
names = {"BCAE-HT": "bcae-ht", "BCAE-2D(4,8,3)": "bcae-2d"}
def key_ours(r):
    w = r["work"]
    return (names.get(r["model"]), w["kind"], f"{w.get('azimuth')}x{w.get('z')}" if w["kind"] == "train-step" else None)
def key_torch(t):
    kind = {"train": "train-step", "encoder": "encode", "decode": "encode-decode"}[t["mode"]]
    return (t["model"], kind, t.get("crop") if kind == "train-step" else None)
def rate_torch(t):
    return t["crops_per_s"] if t["mode"] == "train" else t["wedges_per_s"]
def median(v):
    v = sorted(v)
    return v[len(v) // 2] if len(v) % 2 else (v[len(v) // 2 - 1] + v[len(v) // 2]) / 2
rows = {}
for r in ours:
    rows.setdefault(key_ours(r), {"ours": [], "torch": [], "row": r})["ours"].append(r)
for t in torch:
    if key_torch(t) in rows:
        rows[key_torch(t)]["torch"].append(rate_torch(t))
print("| work | PyTorch CPU | bcae | ratio | ratio per round | bcae peak RSS |")
print("|---|---|---|---|---|---|")
for entry in rows.values():
    r, w = entry["row"], entry["row"]["work"]
    label = {"train-step": f"{r['model']} train step, {w.get('azimuth')}x{w.get('z')} crops",
             "encode": f"{r['model']} encoder, whole wedges",
             "encode-decode": f"{r['model']} encoder + both decoders"}[w["kind"]]
    unit = "crops/s" if w["kind"] == "train-step" else "wedges/s"
    mine = [o["items_per_second"] for o in entry["ours"]]
    theirs = entry["torch"]
    rss = max((o.get("peak_rss_bytes") or 0) for o in entry["ours"])
    rss = f"{rss / 1e6:.0f} MB" if rss else "-"
    if not theirs:
        print(f"| {label} | - | {median(mine):.2f} | - | - | {rss} |")
        continue
    ratios = [m / t for m, t in zip(mine, theirs)]
    print(f"| {label} | {median(theirs):.2f} {unit} | {median(mine):.2f} | {median(ratios):.2f}x "
          f"| {min(ratios):.2f}-{max(ratios):.2f}x | {rss} |")
PYEOF
  exit 0
fi

if [[ $NATIVE == 1 ]]; then
  export RUSTFLAGS="-C target-cpu=native" CARGO_TARGET_DIR=target/native
fi
cargo build --release -q -p firmware-sim
BIN=${CARGO_TARGET_DIR:-target}/release/firmware-sim
WORK=$(mktemp -d); trap 'rm -rf "$WORK"' EXIT
# BCAE-2D(4,8,3): the shipped weights, or random weights of that shape (speed does not depend on
# their values).
W2D=weights/bcae-2d-m4n8d3.bcae.postcard
if [[ ! -f $W2D ]]; then
  W2D=$WORK/bcae-2d-483.bcae.postcard
  "$BIN" random-weights --model bcae-2d --out "$W2D" >/dev/null
fi

echo "# $(date -u '+%F %T') UTC, load average $(cut -d' ' -f1-3 /proc/loadavg), RUSTFLAGS='${RUSTFLAGS:-}'"
for W in weights/bcae-ht.bcae.postcard "$W2D"; do
  RAYON_NUM_THREADS=$THREADS "$BIN" bench --weights "$W" --batch "$BATCH" --seconds "$SECONDS_PER_ROW" \
    --torch-python "$PY" --torch-ref "$REF"
done
