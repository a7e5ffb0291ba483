#!/usr/bin/env python3
"""Times OpenCV's Haar and YuNet face detection, the references mien's detectors are compared with.

    tools/.venv/bin/python tools/opencv_bench.py [--seconds 3] [--cascade NAME] [--yunet ONNX]
                                                 [--out FILE]

(The venv as in tools/opencv_fixtures.py: opencv-python-headless==4.14.0.94 and numpy.)

Frames are greyscale 640x480, 1280x720 and 1920x1080, made deterministically from
data/fixtures/haar/montage.png (nine faces, 700x430; written by tools/opencv_fixtures.py): the
montage is scaled to fit the frame with INTER_LINEAR_EXACT and centred on a mid-grey (128)
background, exactly as `mien bench detect` makes them (src/bench/detect.rs detect_frame: the same
bit-exact bilinear resize, sizes rounded half away from zero), so both time the same pixels.
Each frame goes through CascadeClassifier.detectMultiScale(frame) at the defaults (scaleFactor 1.1, minNeighbors 3) with
haarcascade_frontalface_default.xml, then as BGR (the grey repeated in each channel, as
`mien bench detect` gives its YuNet the frame: the montage is greyscale) through
FaceDetectorYN.detect with ../shared/data/yunet/yunet_n_320_320.onnx, the file mien's YuNet
weights were converted from, at `mien detect`'s defaults (score 0.5, NMS 0.3, top 5000) and
setInputSize to the frame's; each first with cv2.setNumThreads(1), then with OpenCV's default
thread count; OpenCL is off. After one warm-up call, calls repeat until --seconds have passed
(at least 3 calls). Prints JSON (and writes it to --out if given): per frame size and thread
setting (and detector: "haar" or "yunet"), the number of calls, the median and minimum milliseconds per call, frames per second
from the median, and how many faces were found.
"""
import argparse
import json
import math
import os
import platform
import statistics
import sys
import time

import cv2
import numpy as np

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
MONTAGE = os.path.join(ROOT, "data", "fixtures", "haar", "montage.png")
SIZES = [(640, 480), (1280, 720), (1920, 1080)]
YUNET_ONNX = os.path.join(ROOT, "..", "shared", "data", "yunet", "yunet_n_320_320.onnx")
# `mien detect`'s defaults (src/bench/detect.rs YUNET_BENCH_PARAMS).
YUNET_SCORE, YUNET_NMS, YUNET_TOP_K = 0.5, 0.3, 5000


def cascade_path(name):
    for folder in (os.path.join(ROOT, "..", "shared", "data", "haarcascades"),
                   cv2.data.haarcascades):
        path = os.path.join(folder, name)
        if os.path.exists(path):
            return path
    sys.exit(f"cascade {name} not found")


def make_frame(montage, w, h):
    """The montage scaled to fit w x h, centred on mid-grey: mien's detect_frame."""
    mh, mw = montage.shape
    s = min(w / mw, h / mh)
    # Rust's f64::round rounds halves away from zero; Python's round() to even.
    sw, sh = min(w, math.floor(mw * s + 0.5)), min(h, math.floor(mh * s + 0.5))
    scaled = cv2.resize(montage, (sw, sh), interpolation=cv2.INTER_LINEAR_EXACT)
    frame = np.full((h, w), 128, np.uint8)
    x, y = (w - sw) // 2, (h - sh) // 2
    frame[y:y + sh, x:x + sw] = scaled
    return frame


def haar_detect(classifier):
    """One Haar detection of a grey frame at OpenCV's defaults; returns the face count."""
    return lambda frame: len(classifier.detectMultiScale(frame, scaleFactor=1.1, minNeighbors=3))


def yunet_detect(yunet):
    """One YuNet detection of a BGR frame; returns the face count. setInputSize stays inside the
    timed call because mien's YuNet also sizes itself to each frame inside its call (a no-op
    for both when the size is unchanged)."""
    def detect(frame):
        h, w = frame.shape[:2]
        yunet.setInputSize((w, h))
        _, faces = yunet.detect(frame)
        return 0 if faces is None else len(faces)
    return detect


def time_detect(detect, frame, seconds):
    faces = detect(frame)  # warm-up
    times = []
    start = time.perf_counter()
    while len(times) < 3 or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        detect(frame)
        times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    return {
        "calls": len(times),
        "median_ms": round(median * 1e3, 3),
        "min_ms": round(min(times) * 1e3, 3),
        "fps": round(1.0 / median, 2),
        "faces": int(faces),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=3.0, help="timing per case (default 3)")
    ap.add_argument("--cascade", default="haarcascade_frontalface_default.xml")
    ap.add_argument("--yunet", default=YUNET_ONNX, help="FaceDetectorYN's ONNX file (default: ../shared/data/yunet/yunet_n_320_320.onnx)")
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args()

    montage = cv2.imread(MONTAGE, cv2.IMREAD_GRAYSCALE)
    if montage is None:
        sys.exit(f"cannot read {MONTAGE}; run tools/opencv_fixtures.py first")
    cv2.ocl.setUseOpenCL(False)
    classifier = cv2.CascadeClassifier(cascade_path(args.cascade))
    if classifier.empty():
        sys.exit(f"cannot load {args.cascade}")
    if not os.path.exists(args.yunet):
        sys.exit(f"{args.yunet}: no YuNet ONNX file (pass --yunet)")
    # The input size given here is replaced per frame by setInputSize.
    yunet = cv2.FaceDetectorYN.create(args.yunet, "", (320, 320), YUNET_SCORE, YUNET_NMS, YUNET_TOP_K)

    default_threads = cv2.getNumThreads()
    grey = [(w, h, make_frame(montage, w, h)) for w, h in SIZES]
    detectors = [
        ("haar", haar_detect(classifier), grey),
        ("yunet", yunet_detect(yunet), [(w, h, cv2.cvtColor(f, cv2.COLOR_GRAY2BGR)) for w, h, f in grey]),
    ]
    results = []
    for name, detect, frames in detectors:
        for threads in (1, default_threads):
            cv2.setNumThreads(threads)
            for w, h, frame in frames:
                r = {"detector": name, "width": w, "height": h, "threads": threads}
                r.update(time_detect(detect, frame, args.seconds))
                results.append(r)
                print(f"{name} {w}x{h} threads={threads}: {r['fps']} fps ({r['median_ms']} ms median, "
                      f"{r['calls']} calls, {r['faces']} faces)", file=sys.stderr)
    cv2.setNumThreads(default_threads)

    report = {
        "tool": "opencv",
        "opencv_version": cv2.__version__,
        "cascade": args.cascade,
        "scale_factor": 1.1,
        "min_neighbors": 3,
        "yunet": {"onnx": os.path.basename(args.yunet), "score_threshold": YUNET_SCORE,
                  "nms_threshold": YUNET_NMS, "top_k": YUNET_TOP_K},
        "frames": "data/fixtures/haar/montage.png scaled to fit (INTER_LINEAR_EXACT), centred on grey 128; "
                  "YuNet's as BGR, the grey repeated",
        "default_threads": default_threads,
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "results": results,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
