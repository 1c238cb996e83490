#!/usr/bin/env python3
"""PyTorch reference timings for bcae-rs, using the reference NeuralCompression_v2 checkout's own
model classes (nothing is downloaded: random initial weights, synthetic zero-suppressed input).

Modes (one function each, so more can be added beside them):
  encoder  fp32 whole-wedge encoder throughput (inference, no autograd), steady-state median.
  decode   fp32 whole-wedge encoder + both decoder heads (inference).
  train    one optimizer step (forward, the reference BCAELoss with the 6 + 3 exp output
           transform, backward, AdamW) on random crops, as `bcae bench` times ours.

Prints one JSON object per measured row on stdout (with --json) or a table.

  python3 scripts/torch_bench.py encoder --ref /path/to/NeuralCompression_v2 \
      --models bcae-ht,bcae-2d --threads 2 --batch 4 --seconds 10
"""
import argparse
import json
import statistics
import sys
import time

# Wedge geometry (layers, azimuth, z padded to 256 as the reference's training code pads it).
LAYERS, AZIMUTH, Z_PADDED = 16, 192, 256
# Fraction of non-zero voxels in zero-suppressed sPHENIX wedges (see the repo README).
OCCUPANCY = 0.108


def build_encoder(name, ref):
    """The reference's encoder for a model name, and the input shape of one wedge."""
    sys.path.insert(0, ref)
    if name == "bcae-ht":
        from neuralcompress_v2.models.network3d import Encoder

        # train_test/train3d.py: BCAE-HT is conv_features (2, 4, 4, 8).
        return Encoder(conv_features=(2, 4, 4, 8)), (1, LAYERS, AZIMUTH, Z_PADDED)
    if name == "bcae++":
        from neuralcompress_v2.models.network3d import Encoder

        return Encoder(conv_features=(8, 16, 32, 32)), (1, LAYERS, AZIMUTH, Z_PADDED)
    if name == "bcae-2d":
        from neuralcompress_v2.models.network2d import Encoder

        # train_test/train2d.py: Encoder(16, num_encoder_layers, num_downsamples=3); (4, 8, 3).
        return Encoder(16, 4, num_downsamples=3), (LAYERS, AZIMUTH, Z_PADDED)
    raise SystemExit(f"unknown model '{name}': use bcae-ht, bcae++ or bcae-2d")


def synthetic_batch(torch, shape, batch, seed):
    """log2(ADC + 1) of a zero-suppressed wedge: ~11 % of voxels in 64..1023, the rest 0."""
    g = torch.Generator().manual_seed(seed)
    adc = torch.randint(64, 1024, (batch, *shape), generator=g).float()
    mask = torch.rand((batch, *shape), generator=g) < OCCUPANCY
    return torch.log2(adc + 1) * mask


def steady_median(step, seconds, warmup):
    """Median seconds of `step` after `warmup` calls, over at least `seconds` (and 5 calls)."""
    for _ in range(warmup):
        step()
    times = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or len(times) < 5:
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return statistics.median(times), len(times)


def mode_encoder(args, torch):
    rows = []
    for name in args.models.split(","):
        model, shape = build_encoder(name, args.ref)
        model.eval()
        x = synthetic_batch(torch, shape, args.batch, 7)
        with torch.inference_mode():
            median, n = steady_median(lambda: model(x), args.seconds, args.warmup)
        rows.append(
            {
                "mode": "encoder",
                "model": name,
                "precision": "fp32",
                "threads": torch.get_num_threads(),
                "batch": args.batch,
                "calls": n,
                "median_s_per_batch": median,
                "wedges_per_s": args.batch / median,
                "torch": torch.__version__,
            }
        )
    return rows


def build_pair(name, ref):
    """The reference's encoder and two-headed decoder, and whether it takes (N, 1, ...) input."""
    sys.path.insert(0, ref)
    if name in ("bcae-ht", "bcae++"):
        from neuralcompress_v2.models.network3d import BiDecoder, Encoder

        feats = (2, 4, 4, 8) if name == "bcae-ht" else (8, 16, 32, 32)
        return Encoder(conv_features=feats), BiDecoder(), True
    if name == "bcae-2d":
        from neuralcompress_v2.models.network2d import BiDecoder, Encoder

        # train_test/train2d.py: BCAE-2D(4, 8, 3).
        return Encoder(16, 4, num_downsamples=3), BiDecoder(16, 8, num_downsamples=3), False
    raise SystemExit(f"unknown model '{name}': use bcae-ht, bcae++ or bcae-2d")


def mode_decode(args, torch):
    rows = []
    for name in args.models.split(","):
        enc, dec, three_d = build_pair(name, args.ref)
        enc.eval()
        dec.eval()
        x = synthetic_batch(torch, (LAYERS, AZIMUTH, Z_PADDED), args.batch, 7)
        x = x.unsqueeze(1) if three_d else x
        with torch.inference_mode():
            median, n = steady_median(lambda: dec(enc(x)), args.seconds, args.warmup)
        rows.append({"mode": "decode", "model": name, "precision": "fp32", "threads": torch.get_num_threads(),
                     "batch": args.batch, "calls": n, "median_s_per_batch": median,
                     "wedges_per_s": args.batch / median, "torch": torch.__version__})
    return rows


def mode_train(args, torch):
    from itertools import chain

    sys.path.insert(0, args.ref)
    from neuralcompress_v2.models.loss import BCAELoss

    rows = []
    for name in args.models.split(","):
        for crop in args.crops.split(","):
            az, z = (int(v) for v in crop.split("x"))
            enc, dec, three_d = build_pair(name, args.ref)
            loss_fn = BCAELoss(clf_threshold=0.5, reg_loss="mae")
            opt = torch.optim.AdamW(chain(enc.parameters(), dec.parameters()), lr=1e-4)
            batches = [synthetic_batch(torch, (LAYERS, az, z), args.batch, s) for s in range(4)]
            state = {"i": 0}

            def step():
                x = batches[state["i"] % len(batches)]
                state["i"] += 1
                x = x.unsqueeze(1) if three_d else x
                clf, reg = dec(enc(x))
                res = loss_fn(clf, 6.0 + 3.0 * torch.exp(reg), x > 0, x)
                opt.zero_grad()
                res["loss"].backward()
                opt.step()

            median, n = steady_median(step, args.seconds, args.warmup)
            rows.append({"mode": "train", "model": name, "crop": crop, "precision": "fp32",
                         "threads": torch.get_num_threads(), "batch": args.batch, "calls": n,
                         "median_s_per_batch": median, "crops_per_s": args.batch / median,
                         "torch": torch.__version__})
    return rows


MODES = {"encoder": mode_encoder, "decode": mode_decode, "train": mode_train}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=sorted(MODES))
    p.add_argument("--ref", required=True, help="NeuralCompression_v2 checkout")
    p.add_argument("--models", default="bcae-ht,bcae-2d")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seconds", type=float, default=10.0, help="minimum measuring time per row")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--crops", default="64x64,128x128", help="train mode: AZIMUTHxZ crops")
    p.add_argument("--json", action="store_true", help="one JSON object per row")
    args = p.parse_args()
    try:
        import torch
    except ImportError as e:
        raise SystemExit(f"PyTorch is not importable ({e}): run scripts/bench-vs-torch.sh, which installs it into a venv")
    torch.set_num_threads(args.threads)
    for row in MODES[args.mode](args, torch):
        if args.json:
            print(json.dumps(row), flush=True)
        else:
            rate = (f"{row['crops_per_s']:.2f} crops/s ({row['crop']})" if "crops_per_s" in row
                    else f"{row['wedges_per_s']:.2f} wedges/s")
            print(f"{row['mode']:<7} {row['model']:<8} {row['precision']} threads {row['threads']} batch {row['batch']}: "
                  f"{rate} (median {row['median_s_per_batch'] * 1e3:.1f} ms/batch, {row['calls']} calls)")


if __name__ == "__main__":
    main()
