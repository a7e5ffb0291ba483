#!/usr/bin/env python3
"""Loads mien's safetensors weights into an equivalent PyTorch model and checks that its logits
match mien's on FER2013 test images (within 1e-4): the weights are portable.

    python3 tools/torch_parity.py [--weights data/models/original.safetensors] [--images 100]

Needs torch, safetensors, pillow and numpy (pip install torch safetensors pillow numpy), and a
built mien (cargo build --release). The images are copied into a temporary folder of class
folders so that mien and this script read the same files in the same order.
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
from safetensors import safe_open
from safetensors.torch import load_file

CLASSES = ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]


def build(config):
    """nn.Sequential from mien's JSON layer list; indices match the safetensors names."""
    c, h, w = config["input"]
    layers = []
    for spec in config["layers"]:
        kind = spec["type"]
        if kind == "conv2d":
            k, pad = spec["kernel"], spec.get("padding", "valid")
            layers.append(torch.nn.Conv2d(c, spec["filters"], k, padding=pad))
            c = spec["filters"]
            if pad == "valid":
                h, w = h - k + 1, w - k + 1
        elif kind == "relu":
            layers.append(torch.nn.ReLU())
        elif kind == "max_pool":
            layers.append(torch.nn.MaxPool2d(spec.get("size", 2)))
            h, w = h // spec.get("size", 2), w // spec.get("size", 2)
        elif kind == "dropout":
            layers.append(torch.nn.Dropout(spec["rate"]))
        elif kind == "batch_norm":
            # mien uses Keras' epsilon 1e-3; dense layers' batch norm sees [batch, features].
            layers.append(torch.nn.BatchNorm2d(c, eps=1e-3) if h * w > 1 else torch.nn.BatchNorm1d(c, eps=1e-3))
        elif kind == "flatten":
            layers.append(torch.nn.Flatten())
            c, h, w = c * h * w, 1, 1
        elif kind == "dense":
            layers.append(torch.nn.Linear(c * h * w, spec["units"]))
            c, h, w = spec["units"], 1, 1
        else:
            sys.exit(f"unknown layer type {kind}")
    return torch.nn.Sequential(*layers)


def main():
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", default=os.path.join(here, "data/models/original.safetensors"))
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--fer", default=os.environ.get("MIEN_FER2013", os.path.join(here, "../shared/data/fer2013")))
    ap.add_argument("--mien", default=os.path.join(here, "target/release/mien"))
    args = ap.parse_args()

    with safe_open(args.weights, "pt") as f:
        config = json.loads(f.metadata()["model"])
    model = build(config)
    model.load_state_dict(load_file(args.weights), strict=False)
    model.eval()

    # Spread the images over the classes, a few from each, in mien's loading order.
    tmp = tempfile.mkdtemp(prefix="mien-parity-")
    per_class = max(1, args.images // len(CLASSES))
    files = []
    for cls in CLASSES:
        os.makedirs(os.path.join(tmp, cls))
        names = sorted(os.listdir(os.path.join(args.fer, "test", cls)))[:per_class]
        for name in names:
            shutil.copy(os.path.join(args.fer, "test", cls, name), os.path.join(tmp, cls, name))
            files.append(os.path.join(tmp, cls, name))

    ours_path = os.path.join(tmp, "logits.json")
    subprocess.run([args.mien, "eval", "--device", "cpu", "--data", tmp, "--weights", args.weights, "--logits", ours_path],
                   check=True, stdout=subprocess.DEVNULL)
    ours = np.array(json.load(open(ours_path)), dtype=np.float32)

    batch = np.stack([np.asarray(Image.open(p).convert("L"), dtype=np.float32) / 255.0 for p in files])[:, None]
    with torch.no_grad():
        theirs = model(torch.from_numpy(batch)).numpy()
    diff = np.abs(ours - theirs).max()
    agree = (ours.argmax(1) == theirs.argmax(1)).mean()
    print(f"{len(files)} images: max |logit difference| {diff:.2e}, same prediction on {100 * agree:.1f}%")
    shutil.rmtree(tmp)
    sys.exit(0 if diff <= 1e-4 else 1)


if __name__ == "__main__":
    main()
