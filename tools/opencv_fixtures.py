#!/usr/bin/env python3
"""Generates the OpenCV reference fixtures for mien's Haar-cascade face detector.

    python3 -m venv tools/.venv
    tools/.venv/bin/pip install opencv-python-headless==4.14.0.94 numpy
    tools/.venv/bin/python tools/opencv_fixtures.py

Run from the repository root (or anywhere: paths are resolved from this file). It writes, under
data/fixtures/haar/:

- <name>.png: greyscale test images built from the two public-domain photos in data/photos
  (never from FER2013): the photos themselves, resized variants, a crop, a "group photo"
  montage of face crops at several scales, tiny images around the 24x24 window, a flat image.
- <name>.json: what cv2.CascadeClassifier.detectMultiScale returns on that image, per cascade
  and parameter set, in OpenCV's own order (not sorted). Every image gets the defaults
  (scaleFactor 1.1, minNeighbors 3) and the raw windows behind them (1.1, 0); the two photos
  and the montage also get (1.2, 5), (1.05, 0), minSize 40 with maxSize 160, and minSize 100;
  grace_hopper also gets the eye cascade.
      {"image": "<name>.png", "width": W, "height": H, "opencv_version": "4.14.0",
       "source": "...how the image was made...",
       "runs": [{"cascade": "haarcascade_frontalface_default.xml", "scale_factor": 1.1,
                 "min_neighbors": 3, "min_size": [w, h] | null, "max_size": [w, h] | null,
                 "rects": [[x, y, w, h], ...]}, ...],
       "reject_levels_runs": [...]}   # photos only: detectMultiScale3(outputRejectLevels=True)
- grey_conversion.json: sampled BGR pixels of the colour photos (as cv2.imread decodes them) with
  cv2.cvtColor(COLOR_BGR2GRAY)'s value, plus synthetic BGR triples, so the colour-to-grey step can
  be checked exactly. For astronaut.png (lossless) the grey PNG alone would do, but grace_hopper.jpg
  is a JPEG whose decoded BGR depends on the decoder (OpenCV uses libjpeg-turbo), so the samples
  carry the BGR input explicitly.

The cascades are read from ../shared/data/haarcascades (the files that opencv-python-headless
4.14.0.94 ships in cv2/data), falling back to cv2.data.haarcascades. OpenCV runs single-threaded
with OpenCL off, so the reference is the plain CPU path and the raw-window order is deterministic.
The script is deterministic: running it again rewrites identical files.
"""
import glob
import hashlib
import json
import os
import sys

import cv2
import numpy as np

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
PHOTOS = os.path.join(ROOT, "data", "photos")
OUT = os.path.join(ROOT, "data", "fixtures", "haar")
SHARED_CASCADES = os.path.join(ROOT, "..", "shared", "data", "haarcascades")

FACE_CASCADES = [
    "haarcascade_frontalface_default.xml",
    "haarcascade_frontalface_alt.xml",
    "haarcascade_frontalface_alt2.xml",
]
EYE_CASCADE = "haarcascade_eye.xml"
# Tilted (45 degree) features: only the smile cascade has them.
SMILE_CASCADE = "haarcascade_smile.xml"
SMILE_IMAGES = {"astronaut", "montage"}
# The one cascade in OpenCV's old XML format (from the wheel's cv2/data, copied next to the
# fixtures): it checks that old-format files load and detect identically.
OLD_FORMAT_CASCADE = "haarcascade_license_plate_rus_16stages.xml"

# (scale_factor, min_neighbors, min_size, max_size)
DEFAULTS = (1.1, 3, None, None)
RAW_DEFAULTS = (1.1, 0, None, None)  # the windows that the defaults' grouping starts from
EXTRA_PARAMS = [
    (1.2, 5, None, None),
    (1.05, 0, None, None),  # minNeighbors 0: the raw, ungrouped windows
    (1.1, 3, (40, 40), (160, 160)),
    (1.1, 3, (100, 100), None),
]


def cascade_path(name):
    for folder in (SHARED_CASCADES, cv2.data.haarcascades):
        path = os.path.join(folder, name)
        if os.path.exists(path):
            return path
    sys.exit(f"cascade {name} not found in {SHARED_CASCADES} or {cv2.data.haarcascades}")


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def read_grey(path):
    bgr = cv2.imread(path, cv2.IMREAD_COLOR)
    if bgr is None:
        sys.exit(f"cannot read {path}")
    return bgr, cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)


def resize(img, w, h):
    """INTER_AREA when shrinking (both sides), INTER_LINEAR otherwise."""
    shrink = w <= img.shape[1] and h <= img.shape[0]
    return cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def build_images(astro, grace):
    """[(name, grey uint8 array, description)], all derived from the two grey photos."""
    images = [
        ("astronaut", astro, "data/photos/astronaut.png, cv2.imread + cvtColor(COLOR_BGR2GRAY)"),
        ("grace_hopper", grace,
         "data/photos/grace_hopper.jpg, cv2.imread + cvtColor(COLOR_BGR2GRAY)"),
        ("astronaut_333x401", resize(astro, 333, 401),
         "astronaut grey, cv2.resize to 333x401 INTER_AREA (aspect changed)"),
        ("grace_hopper_97x131", resize(grace, 97, 131),
         "grace_hopper grey, cv2.resize to 97x131 INTER_AREA"),
        ("grace_hopper_crop", grace[57:57 + 389, 101:101 + 317].copy(),
         "grace_hopper grey, crop x 101..418, y 57..446 (317x389)"),
    ]

    # Face crops with some margin: astronaut face is near (177,66,95,95), Grace Hopper's near
    # (155,105,222,222) (frontalface_default at defaults).
    face_a = astro[35:195, 145:305]     # 160x160
    face_g = grace[65:365, 115:415]     # 300x300
    canvas = np.full((430, 700), 128, np.uint8)
    # (crop, side, x, y, mirror): several faces from about 30 to 180 pixels, none overlapping.
    pastes = [
        (face_g, 240, 10, 10, False),
        (face_a, 150, 265, 20, False),
        (face_g, 110, 430, 20, False),
        (face_a, 70, 560, 30, False),
        (face_a, 200, 480, 200, False),
        (face_g, 60, 270, 200, False),
        (face_a, 120, 300, 290, True),
        (face_g, 40, 60, 300, False),
        (face_a, 100, 120, 300, False),
    ]
    for crop, side, x, y, mirror in pastes:
        patch = resize(crop, side, side)
        if mirror:
            patch = cv2.flip(patch, 1)
        canvas[y:y + side, x:x + side] = patch
    images.append(("montage", canvas,
                   "700x430 mid-grey (128) canvas with astronaut and grace_hopper face crops "
                   "pasted at sides 240..40 px, one mirrored; see build_images in "
                   "tools/opencv_fixtures.py"))

    images.append(("tiny_20x17", resize(face_a, 20, 17),
                   "astronaut face crop resized to 20x17 INTER_AREA (smaller than the window)"))
    images.append(("tiny_27x26", resize(face_a, 27, 26),
                   "astronaut face crop resized to 27x26 INTER_AREA (just above the window)"))
    images.append(("flat_64x48", np.full((48, 64), 128, np.uint8),
                   "64x48, every pixel 128 (no window has variance)"))
    return images


def detect(classifier, grey, sf, mn, min_size, max_size):
    kwargs = {"scaleFactor": sf, "minNeighbors": mn}
    if min_size:
        kwargs["minSize"] = min_size
    if max_size:
        kwargs["maxSize"] = max_size
    rects = classifier.detectMultiScale(grey, **kwargs)
    return [[int(v) for v in r] for r in np.asarray(rects).reshape(-1, 4)]


def run_record(cascade, sf, mn, min_size, max_size, rects):
    return {
        "cascade": cascade,
        "scale_factor": sf,
        "min_neighbors": mn,
        "min_size": list(min_size) if min_size else None,
        "max_size": list(max_size) if max_size else None,
        "rects": rects,
    }


def reject_levels_record(cascade, classifier, grey):
    """detectMultiScale3 at defaults with outputRejectLevels=True (extra debugging evidence)."""
    rects, levels, weights = classifier.detectMultiScale3(
        grey, scaleFactor=1.1, minNeighbors=3, outputRejectLevels=True)
    return {
        "cascade": cascade,
        "scale_factor": 1.1,
        "min_neighbors": 3,
        "rects": [[int(v) for v in r] for r in np.asarray(rects).reshape(-1, 4)],
        "reject_levels": [int(v) for v in np.asarray(levels).reshape(-1)],
        "level_weights": [float(v) for v in np.asarray(weights).reshape(-1)],
    }


def dumps(obj, indent=0):
    """JSON with one run (or one rect list) per line, so the files stay short and diffable."""
    pad = "  " * indent
    if isinstance(obj, dict) and indent < 2:
        items = [f'{pad}  {json.dumps(k)}: {dumps(v, indent + 1).lstrip()}' for k, v in obj.items()]
        return pad + "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, list) and obj and isinstance(obj[0], dict):
        return pad + "[\n" + ",\n".join(dumps(v, indent + 1) for v in obj) + "\n" + pad + "]"
    return pad + json.dumps(obj, separators=(", ", ": "))


def write_json(path, obj):
    with open(path, "w") as f:
        f.write(dumps(obj) + "\n")


def grey_conversion(photos):
    """Sampled BGR -> grey pairs from each colour photo, plus synthetic triples."""
    rng = np.random.default_rng(20240501)
    out = {
        "opencv_version": cv2.__version__,
        "conversion": "cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY) on uint8",
        "note": "bgr is what cv2.imread decodes (libjpeg-turbo for the JPEG); check the "
                "conversion from these bgr values, not from another decoder's output",
        "photos": [],
    }
    for name, path, bgr, grey in photos:
        h, w = grey.shape
        ys = rng.integers(0, h, 300)
        xs = rng.integers(0, w, 300)
        samples = [[int(x), int(y), [int(c) for c in bgr[y, x]], int(grey[y, x])]
                   for x, y in zip(xs, ys)]
        out["photos"].append({
            "file": os.path.relpath(path, ROOT), "sha256": sha256(path), "width": w, "height": h,
            "samples_format": "[x, y, [b, g, r], grey]", "samples": samples,
        })
    # Synthetic: pure channels, greys, and random triples, through cvtColor on a 1-row image.
    triples = [[v, 0, 0] for v in range(0, 256, 15)] + [[0, v, 0] for v in range(0, 256, 15)] + \
        [[0, 0, v] for v in range(0, 256, 15)] + [[v, v, v] for v in (0, 1, 127, 128, 254, 255)] + \
        [[int(c) for c in t] for t in rng.integers(0, 256, (300, 3))]
    row = np.array([triples], np.uint8)
    grey = cv2.cvtColor(row, cv2.COLOR_BGR2GRAY)[0]
    out["synthetic_format"] = "[[b, g, r], grey]"
    out["synthetic"] = [[t, int(g)] for t, g in zip(triples, grey)]
    return out


def main():
    cv2.setNumThreads(1)
    cv2.ocl.setUseOpenCL(False)
    os.makedirs(OUT, exist_ok=True)
    version = cv2.__version__

    astro_path = os.path.join(PHOTOS, "astronaut.png")
    grace_path = os.path.join(PHOTOS, "grace_hopper.jpg")
    astro_bgr, astro = read_grey(astro_path)
    grace_bgr, grace = read_grey(grace_path)

    classifiers = {}
    for name in FACE_CASCADES + [EYE_CASCADE, SMILE_CASCADE, OLD_FORMAT_CASCADE]:
        c = cv2.CascadeClassifier(cascade_path(name))
        if c.empty():
            sys.exit(f"cannot load {name}")
        classifiers[name] = c

    full_params = {"astronaut", "grace_hopper", "montage"}
    summary = []
    for name, grey, source in build_images(astro, grace):
        png = os.path.join(OUT, name + ".png")
        cv2.imwrite(png, grey, [cv2.IMWRITE_PNG_COMPRESSION, 9])
        back = cv2.imread(png, cv2.IMREAD_UNCHANGED)
        assert back.dtype == np.uint8 and back.shape == grey.shape and np.array_equal(back, grey)

        params = [DEFAULTS, RAW_DEFAULTS] + (EXTRA_PARAMS if name in full_params else [])
        cascades = FACE_CASCADES + ([EYE_CASCADE] if name == "grace_hopper" else [])
        cascades += [SMILE_CASCADE, OLD_FORMAT_CASCADE] if name in SMILE_IMAGES else []
        runs = []
        for cascade in cascades:
            for sf, mn, min_size, max_size in (params if cascade in FACE_CASCADES + [EYE_CASCADE] else [DEFAULTS, RAW_DEFAULTS]):
                rects = detect(classifiers[cascade], grey, sf, mn, min_size, max_size)
                runs.append(run_record(cascade, sf, mn, min_size, max_size, rects))
        record = {
            "image": name + ".png",
            "width": int(grey.shape[1]),
            "height": int(grey.shape[0]),
            "opencv_version": version,
            "source": source,
            "runs": runs,
        }
        if name in ("astronaut", "grace_hopper"):
            record["reject_levels_runs"] = [
                reject_levels_record(c, classifiers[c], grey) for c in FACE_CASCADES]
        write_json(os.path.join(OUT, name + ".json"), record)
        defaults = {r["cascade"].replace("haarcascade_", "").replace(".xml", ""): len(r["rects"])
                    for r in runs if (r["scale_factor"], r["min_neighbors"], r["min_size"],
                                      r["max_size"]) == (1.1, 3, None, None)}
        summary.append((name, grey.shape[1], grey.shape[0], defaults))

    write_json(os.path.join(OUT, "grey_conversion.json"), grey_conversion([
        ("astronaut", astro_path, astro_bgr, astro),
        ("grace_hopper", grace_path, grace_bgr, grace),
    ]))

    print(f"OpenCV {version}; rects at defaults (scaleFactor 1.1, minNeighbors 3):")
    for name, w, h, counts in summary:
        print(f"  {name:22s} {w:4d}x{h:<4d} {counts}")


if __name__ == "__main__":
    main()
