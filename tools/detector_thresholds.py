"""Recall and precision of mien's face detectors against faces counted beforehand, to choose
YuNet's default --score-threshold.

Three sets of known faces:
  - the shipped photos, whose faces were counted by hand and listed with their boxes in
    PHOTO_FACES below;
  - the scenes of tools/aligned_scenes.py (FER2013 test faces pasted, enlarged and turned, into
    640x480 images; labels.json knows where each one is);
  - FER2013's test images themselves, as a user would point mien at a folder of them: one face
    each, filling the 48x48 image.
A detection is right when its box's centre lies within half the face's size of a known face's
centre and no other detection took that face; every other detection is a false one.

YuNet runs once at a low threshold with --json, and each candidate threshold keeps the faces
scoring at least that much; the Haar cascade (OpenCV's defaults) has no score and gives one row.

Run: tools/.venv/bin/python tools/detector_thresholds.py --scenes /tmp/scenes [--mien target/release/mien]
"""

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

# Counted by hand: (centre x, centre y, size) of every face in each shipped photo.
PHOTO_FACES = {
    "astronaut.png": [(224, 120, 100)],
    "grace_hopper.jpg": [(266, 230, 190)],
}
THRESHOLDS = [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]


def detect(mien, images, extra):
    with tempfile.TemporaryDirectory() as annotated:
        result = subprocess.run([mien, "detect", *images, "--out", annotated, "--json", "-", "--no-emotion", *extra], capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"mien detect failed:\n{result.stderr[-2000:]}")
    folder = os.path.dirname(os.path.commonprefix(images)) if len(images) > 1 else os.path.dirname(images[0])
    return {os.path.relpath(r["image"], folder): r["faces"] for r in json.loads(result.stdout)}


def count(truth, detected, threshold):
    """(faces found, faces known, detections kept) over all images."""
    found = known = kept = 0
    for image, faces in truth.items():
        boxes = [b for b in detected.get(image, []) if b.get("score", 1.0) >= threshold]
        kept += len(boxes)
        known += len(faces)
        taken = set()
        for cx, cy, size in faces:
            near = [(np.hypot(b["x"] + b["w"] / 2 - cx, b["y"] + b["h"] / 2 - cy), i) for i, b in enumerate(boxes) if i not in taken]
            near = [(d, i) for d, i in near if d < size / 2]
            if near:
                taken.add(min(near)[1])
                found += 1
    return found, known, kept


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenes", required=True)
    ap.add_argument("--photos", default="data/photos")
    ap.add_argument("--fer", default=os.path.join(os.environ.get("MIEN_FER_DIR", "../shared/data/fer2013"), "test"))
    ap.add_argument("--mien", default="target/release/mien")
    args = ap.parse_args()

    with open(os.path.join(args.scenes, "labels.json")) as f:
        scenes = {r["image"]: [(p["cx"], p["cy"], p["size"]) for p in r["faces"]] for r in json.load(f)}
    fer = {os.path.relpath(p, args.fer): [(23.5, 23.5, 48)] for p in sorted(glob.glob(os.path.join(args.fer, "*", "*.jpg")))}
    sets = [("shipped photos", args.photos, PHOTO_FACES), ("turned FER2013 faces in scenes", args.scenes, scenes), ("FER2013 test images, 48x48", args.fer, fer)]
    print(f"{'set':32s} {'detector':14s} {'found':>12s} {'recall':>7s} {'precision':>9s}")
    for title, folder, truth in sets:
        images = [os.path.join(folder, name) for name in truth]
        rows = [(f"yunet >= {t}", "yunet", t) for t in THRESHOLDS] + [("haar", "haar", 0.0)]
        yunet = detect(args.mien, images, ["--score-threshold", str(min(THRESHOLDS))])
        haar = detect(args.mien, images, ["--detector", "haar"])
        for name, which, threshold in rows:
            found, known, kept = count(truth, yunet if which == "yunet" else haar, threshold)
            precision = found / kept if kept else float("nan")
            print(f"{title:32s} {name:14s} {found:5d} of {known:5d} {found / known:7.1%} {precision:9.1%}")


if __name__ == "__main__":
    sys.exit(main())
