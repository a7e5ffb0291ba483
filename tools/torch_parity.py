#!/usr/bin/env python3
"""Loads mien's safetensors weights into an equivalent PyTorch model and checks that its logits
match mien's on FER2013 test images (within 1e-4): the weights are portable.

    tools/.venv/bin/python tools/torch_parity.py [--weights data/models/vgg.safetensors] [--images 100]

Needs torch, safetensors, pillow and numpy (pip install torch safetensors pillow numpy), and a
built mien (cargo build --release; --mien names another binary). The model is built by
tools/mien_torch.py from the config in the weights file's metadata.

The test images are decoded once here (Pillow) and written as PNGs into a temporary folder of
class folders, so that mien and PyTorch see the same pixels in the same order: JPEG decoders
can differ in the last bit (enough to move logits by ~1e-2), and that is not what this check is
about. Models whose input is smaller than 48 (data/models/vgg.json, 40) are compared on the
centre crops, which is what `mien eval --logits` reports. `--jpeg` hands mien
the original JPEGs instead, to see the decoders' effect; the 1e-4 bound is then not applied.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import torch
from PIL import Image

from mien_torch import CLASSES, ROOT, build, load_config, load_weights

TOLERANCE = 1e-4


def pick_files(test_dir, n):
    """n test images spread over the classes (the first ones by name in each), in mien's
    loading order: class folders in class order, files sorted by name."""
    names = {c: sorted(os.listdir(os.path.join(test_dir, c))) for c in CLASSES}
    per_class = [n // len(CLASSES) + (i < n % len(CLASSES)) for i in range(len(CLASSES))]
    return [(c, name) for c, k in zip(CLASSES, per_class) for name in names[c][:k]]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", default=os.path.join(ROOT, "data/models/vgg.safetensors"))
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--fer", default=os.environ.get("MIEN_FER2013", os.path.join(ROOT, "../shared/data/fer2013")),
                    help="FER2013 folder with test/ (default: $MIEN_FER2013 or ../shared/data/fer2013)")
    ap.add_argument("--mien", default=os.path.join(ROOT, "target/release/mien"))
    ap.add_argument("--jpeg", action="store_true", help="give mien the original JPEGs (decoder differences included)")
    args = ap.parse_args()
    if not os.access(args.mien, os.X_OK):
        sys.exit(f"{args.mien}: no mien binary (cargo build --release, or pass --mien)")

    config = load_config(args.weights)
    model = load_weights(build(config), args.weights).eval()
    test_dir = os.path.join(args.fer, "test")
    files = pick_files(test_dir, args.images)

    tmp = tempfile.mkdtemp(prefix="mien-parity-")
    try:
        pixels = []
        for cls in CLASSES:
            os.makedirs(os.path.join(tmp, cls))
        for cls, name in files:
            src = os.path.join(test_dir, cls, name)
            img = np.asarray(Image.open(src).convert("L"))
            pixels.append(img)
            if args.jpeg:
                shutil.copy(src, os.path.join(tmp, cls, name))
            else:
                # Same stem, so the sorted order within a class is unchanged.
                Image.fromarray(img).save(os.path.join(tmp, cls, os.path.splitext(name)[0] + ".png"))

        ours_path = os.path.join(tmp, "logits.json")  # outside the class folders
        subprocess.run([args.mien, "--precision", "f32", "eval", "--device", "cpu", "--data", tmp, "--weights", args.weights, "--logits", ours_path],
                       check=True, stdout=subprocess.DEVNULL)
        with open(ours_path) as f:
            ours = np.array(json.load(f), dtype=np.float32)
    finally:
        shutil.rmtree(tmp)

    # mien's logits are those of each face's centre crop at the model's input side (the whole
    # 48x48 face for a 48x48 model).
    side = config["input"][1]
    top = (48 - side) // 2
    batch = np.stack(pixels).astype(np.float32)[:, None, top:top + side, top:top + side] / 255.0
    with torch.inference_mode():
        theirs = model(torch.from_numpy(batch)).numpy()
    if ours.shape != theirs.shape:
        sys.exit(f"mien returned logits of shape {ours.shape}, PyTorch {theirs.shape}")
    diff = np.abs(ours - theirs).max()
    agree = (ours.argmax(1) == theirs.argmax(1)).mean()
    source = "original JPEGs to mien" if args.jpeg else "same decoded pixels"
    print(f"{len(files)} images ({source}): max |logit difference| {diff:.2e} "
          f"(largest |logit| {np.abs(theirs).max():.2f}), same prediction on {100 * agree:.1f}%")
    sys.exit(0 if args.jpeg or diff <= TOLERANCE else 1)


if __name__ == "__main__":
    main()
