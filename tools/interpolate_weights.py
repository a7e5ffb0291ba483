#!/usr/bin/env python3
"""Mix weights files of one model, tensor by tensor: two by a weight, or several by their mean.

    tools/.venv/bin/python tools/interpolate_weights.py BASE TUNED --alpha 0.5 --out OUT
    tools/.venv/bin/python tools/interpolate_weights.py E90 E91 ... E100 --out OUT

With --alpha, OUT = (1 - a) * BASE + a * TUNED. A fine-tune that starts from BASE stays in
BASE's basin, so the weights on the line between the two are good models too, and a point on it
can keep most of what the fine-tune gained on its new data while losing less on the old
(Wortsman et al. 2022, "Robust fine-tuning of zero-shot models", WiSE-FT).

Without it, OUT is the plain mean of the files: snapshots of the last epochs of one run, taken
while the learning rate is low, lie around one minimum, and their mean sits nearer its centre
than any of them (Izmailov et al. 2018, "Averaging weights leads to wider optima and better
generalization", SWA). Files from different runs lie in different basins and must not be mixed.

Batch-norm running statistics are mixed like the rest, which is close enough for neighbours.
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
    ap.add_argument("files", nargs="+", help="weights files of one model: BASE TUNED with --alpha, else two or more to average")
    ap.add_argument("--alpha", type=float, help="the weight of TUNED, in [0, 1]; only with two files")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    if len(args.files) < 2:
        sys.exit("give at least two weights files")
    if args.alpha is not None:
        if len(args.files) != 2:
            sys.exit(f"--alpha mixes two files, not {len(args.files)}")
        if not 0.0 <= args.alpha <= 1.0:
            sys.exit(f"--alpha {args.alpha}: must be in [0, 1]")
        weights = [1.0 - args.alpha, args.alpha]
    else:
        weights = [1.0 / len(args.files)] * len(args.files)
    if os.path.exists(args.out) and any(os.path.samefile(args.out, p) for p in args.files):
        sys.exit(f"{args.out}: is an input; choose another --out")

    first, metadata = read(args.files[0])
    mixed = {name: weights[0] * tensor.astype(np.float64) for name, tensor in first.items()}
    for path, weight in zip(args.files[1:], weights[1:]):
        tensors, other_metadata = read(path)
        if metadata.get("model") != other_metadata.get("model"):
            sys.exit(f"{path}: another model than {args.files[0]} (their metadata's model configs differ)")
        if tensors.keys() != first.keys():
            sys.exit(f"{path}: tensors {sorted(first.keys() ^ tensors.keys())} are not in both it and {args.files[0]}")
        for name, tensor in tensors.items():
            if tensor.shape != first[name].shape:
                sys.exit(f"{path}: tensor {name} is {tensor.shape}, {first[name].shape} in {args.files[0]}")
            mixed[name] += weight * tensor.astype(np.float64)

    for key in ("val_accuracy", "epochs", "saved"):
        metadata.pop(key, None)
    metadata["interpolated"] = " + ".join(f"{w:.4g} x {p}" for p, w in zip(args.files, weights))
    tmp = args.out + ".partial"
    save_file({name: mixed[name].astype(first[name].dtype) for name in first}, tmp, metadata=metadata)
    os.replace(tmp, args.out)
    print(f"{args.out}: {metadata['interpolated']}")


if __name__ == "__main__":
    main()
