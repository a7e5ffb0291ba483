#!/usr/bin/env python3
"""Interpolate two weights files of one model: (1 - a) * BASE + a * TUNED, tensor by tensor.

A fine-tune that starts from BASE stays in BASE's basin, so the weights on the line between
the two are good models too, and a point on it can keep most of what the fine-tune gained on
its new data while losing less on the old (Wortsman et al. 2022, "Robust fine-tuning of
zero-shot models", WiSE-FT). Batch-norm running statistics are interpolated like the rest.

    tools/.venv/bin/python tools/interpolate_weights.py BASE TUNED --alpha 0.5 --out OUT
"""
import argparse
import os
import sys

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file


def read(path):
    with safe_open(path, "np") as f:
        return {name: f.get_tensor(name) for name in f.keys()}, dict(f.metadata() or {})


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("base")
    ap.add_argument("tuned")
    ap.add_argument("--alpha", type=float, required=True, help="the weight of TUNED, in [0, 1]")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    if not 0.0 <= args.alpha <= 1.0:
        sys.exit(f"--alpha {args.alpha}: must be in [0, 1]")
    base, metadata = read(args.base)
    tuned, tuned_metadata = read(args.tuned)
    if metadata.get("model") != tuned_metadata.get("model"):
        sys.exit(f"{args.tuned}: another model than {args.base} (their metadata's model configs differ)")
    if base.keys() != tuned.keys():
        sys.exit(f"{args.tuned}: tensors {sorted(base.keys() ^ tuned.keys())} are not in both files")
    for name in base:
        if base[name].shape != tuned[name].shape:
            sys.exit(f"{args.tuned}: tensor {name} is {tuned[name].shape}, {base[name].shape} in {args.base}")
    if os.path.exists(args.out) and any(os.path.samefile(args.out, p) for p in (args.base, args.tuned)):
        sys.exit(f"{args.out}: is an input; choose another --out")
    mixed = {name: ((1.0 - args.alpha) * base[name].astype(np.float64) + args.alpha * tuned[name].astype(np.float64)).astype(base[name].dtype) for name in base}
    for key in ("val_accuracy", "epochs", "saved"):
        metadata.pop(key, None)
    metadata["interpolated"] = f"{1.0 - args.alpha:g} x {args.base} + {args.alpha:g} x {args.tuned}"
    tmp = args.out + ".partial"
    save_file(mixed, tmp, metadata=metadata)
    os.replace(tmp, args.out)
    print(f"{args.out}: {metadata['interpolated']}")


if __name__ == "__main__":
    main()
