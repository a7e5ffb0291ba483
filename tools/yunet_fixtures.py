#!/usr/bin/env python3
"""Records OpenCV 4.14's cv2.FaceDetectorYN results as fixtures for mien's YuNet detector.

    python3 -m venv tools/.venv
    tools/.venv/bin/pip install opencv-python-headless==4.14.0.94 numpy safetensors
    tools/.venv/bin/python tools/yunet_fixtures.py

Run from anywhere (paths are resolved from this file). The model is
../shared/data/yunet/yunet_n_320_320.onnx, the file data/yunet/yunet_n.safetensors was converted
from. Writes, under data/fixtures/yunet/:

- <scene>.png: synthetic BGR scenes made here from faces cut out of the two public-domain photos
  in data/photos, pasted (scaled, mirrored, rotated) on smooth backgrounds: odd sizes (641x479,
  1920x1080, 100x100, 61x50, 31x31, smaller than the 32-pixel divisor), a plain grey image and a
  grid of 20 small faces. PNG, so that decoding is exact. The two photos themselves are used from
  data/photos (grace_hopper.jpg is a JPEG: the manifest gives the sha256 of the BGR pixels
  cv2.imread decoded, so a test can tell whether its decoder agrees before comparing).
- manifest.json: for each scene its file (relative to the repository root), size, padded size,
  the BGR pixels' sha256, how it was made, and one run per parameter set (score_threshold 0.5 and
  0.9, nms_threshold 0.3, top_k 5000; the grid also with top_k 10, which OpenCV applies to the
  candidates before suppression): "faces" in OpenCV's output order (descending score), each
  {"box": [x, y, w, h], "landmarks": [[x, y] x 5], "score": s}, the float32 values written in
  their shortest decimal form. Also per run: "candidates" (rows before NMS); "score_margin" (the
  smallest |score - score_threshold| over all cells); "nms_margin" (the smallest |overlap -
  nms_threshold| among the overlaps NMS compared, on OpenCV's integer-truncated boxes);
  "stable_to_1e-3" (the faces stay the same when the threshold moves by 1e-3 either way, i.e. a
  test with scores within 1e-3 cannot gain or lose a face; true for every run recorded);
  "onnx_interpreter_max_diff" (how far an independent implementation, the numpy interpreter of
  data/yunet/yunet_n.json in tools/yunet_convert.py, lands from these faces).
  Per scene, "dnn_vs_onnx_max_abs" compares cv2.dnn's raw outputs with that interpreter's (null where
  OpenCV is wrong), and
  "expected_from" says where the faces come from: "opencv" (FaceDetectorYN's rows) everywhere but
  tiny_31x31, "onnx" there: with a padded side of 32 the stride-32 maps are one pixel wide, and
  OpenCV 4.14's 3x3 depthwise convolution gives wrong, memory-dependent values on such maps (its
  detections there change from run to run), so the faces are those the ONNX graph defines (the
  interpreter's outputs through the same decoding and NMS).
- heads_641x479.safetensors: the 12 raw outputs cls_8 ... kps_32 of cv2.dnn (the same net and
  forward call FaceDetectorYN makes) for scene odd_641x479 (padded to 672x480), float32, shapes
  as OpenCV returns them ([1, cells, C]).
- layers_small_61x50.safetensors: the padded input blob ("input", 1x3x64x64) and, for scene
  small_61x50, every block output keyed by its node name in data/yunet/yunet_n.json: each ReLU,
  pool, upsample, add, head convolution, to_rows and sigmoid (the convolutions that feed another
  convolution or a ReLU are left out to keep the file small), as cv2.dnn computes them when those
  layers are requested.

Every run is also reproduced in numpy by tools/yunet_reference.py from the raw outputs and must
agree with FaceDetectorYN to 1e-4 (same rows, same order): the script stops otherwise.
OpenCV runs single-threaded. Deterministic: a rerun writes identical files.
"""
import hashlib
import json
import os
import sys

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")  # modest CPU use: numpy's BLAS on one thread

import cv2  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import yunet_convert  # noqa: E402
import yunet_reference as ref  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
ONNX = os.path.join(ROOT, "..", "shared", "data", "yunet", "yunet_n_320_320.onnx")
OUT = os.path.join(ROOT, "data", "fixtures", "yunet")
ARCH = os.path.join(ROOT, "data", "yunet", "yunet_n.json")
PHOTOS = os.path.join(ROOT, "data", "photos")

PARAMS = [(0.5, 0.3, 5000), (0.9, 0.3, 5000)]
EXTRA = {"grid_20": [(0.5, 0.3, 10)]}
LAYERS_SCENE = "small_61x50"

# Faces in the photos (OpenCV's own boxes at 0.9, rounded): x, y, w, h.
FACES = {"astronaut": (178, 65, 91, 111), "grace_hopper": (177, 123, 178, 212)}


def rel(path):
    return os.path.relpath(path, ROOT)


def f32(v):
    """The shortest decimal that reads back as the same float32."""
    return float(np.format_float_positional(np.float32(v), unique=True, trim="-"))


def load_photos():
    return {
        "astronaut": cv2.imread(os.path.join(PHOTOS, "astronaut.png"), cv2.IMREAD_COLOR),
        "grace_hopper": cv2.imread(os.path.join(PHOTOS, "grace_hopper.jpg"), cv2.IMREAD_COLOR),
    }


def background(w, h, seed):
    """A smooth top-to-bottom two-colour gradient with a few flat shapes: compresses well, not blank."""
    rng = np.random.default_rng(seed)
    a, b = rng.integers(40, 220, 3), rng.integers(40, 220, 3)
    t = np.repeat(np.arange(h)[:, None] / max(1, h - 1), w, axis=1)[..., None]  # rows constant: small PNGs
    img = np.round(a * (1 - t) + b * t).astype(np.uint8)
    for _ in range(4):
        colour = tuple(int(x) for x in rng.integers(30, 230, 3))
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        if rng.random() < 0.5:
            cv2.rectangle(img, (x0, y0), (x0 + int(rng.integers(w // 10 + 1, w // 3 + 2)), y0 + int(rng.integers(h // 10 + 1, h // 3 + 2))), colour, -1)
        else:
            cv2.circle(img, (x0, y0), int(rng.integers(min(w, h) // 12 + 1, min(w, h) // 5 + 2)), colour, -1)
    return img


def face_patch(photos, name, side, angle=0.0, mirror=False):
    """A square patch `side` pixels wide whose middle two thirds is the face, rotated by `angle`
    degrees (counter-clockwise) about the face centre, optionally mirrored."""
    src = photos[name]
    x, y, w, h = FACES[name]
    cx, cy = x + w / 2, y + h / 2
    half = 0.75 * max(w, h)  # face is 2/3 of the patch
    m = cv2.getRotationMatrix2D((cx, cy), angle, 1.0)
    m[:, 2] += [half - cx, half - cy]  # bring the face centre to the patch centre
    n = int(round(2 * half))
    patch = cv2.warpAffine(src, m, (n, n), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    if mirror:
        patch = patch[:, ::-1]
    return cv2.resize(patch, (side, side), interpolation=cv2.INTER_AREA)


def paste(img, patch, x, y):
    """Pastes with clipping at the image borders (a face may be cut by the edge)."""
    h, w = img.shape[:2]
    ph, pw = patch.shape[:2]
    x0, y0, x1, y1 = max(0, x), max(0, y), min(w, x + pw), min(h, y + ph)
    if x0 < x1 and y0 < y1:
        img[y0:y1, x0:x1] = patch[y0 - y:y1 - y, x0 - x:x1 - x]


def make_scenes(photos):
    scenes = []

    img = background(641, 479, 1)
    items = [("astronaut", 170, 0, False, 40, 40), ("grace_hopper", 150, 25, False, 380, 30),
             ("grace_hopper", 96, 0, True, 250, 300), ("astronaut", 150, -20, True, 450, 250),
             ("astronaut", 120, 0, False, -60, 330)]
    for name, side, angle, mirror, x, y in items:
        paste(img, face_patch(photos, name, side, angle, mirror), x, y)
    scenes.append(("odd_641x479", img, "641x479 (odd sizes, padded to 672x480): 5 pasted faces, 96-170 px patches, "
                   "one rotated 25 degrees, one mirrored and rotated -20, one cut by the left edge"))

    img = background(1920, 1080, 2)
    items = [("grace_hopper", 180, 0, False, 120, 140), ("astronaut", 150, 28, False, 560, 110),
             ("grace_hopper", 130, -22, True, 1000, 160), ("astronaut", 110, 0, True, 1400, 120),
             ("astronaut", 90, 20, False, 1700, 520), ("grace_hopper", 72, 0, False, 200, 700),
             ("astronaut", 60, 0, False, 420, 760), ("grace_hopper", 48, -25, False, 620, 820),
             ("astronaut", 40, 0, True, 820, 860), ("grace_hopper", 100, 30, False, 1100, 700),
             ("grace_hopper", 90, 0, False, 1860, 1020)]
    for name, side, angle, mirror, x, y in items:
        paste(img, face_patch(photos, name, side, angle, mirror), x, y)
    scenes.append(("wide_1920x1080", img, "1920x1080 (padded to 1920x1088): 11 pasted faces, 40-180 px patches "
                   "(faces 2/3 of that), 5 rotated 20-30 degrees, 3 mirrored, one cut by the bottom-right corner"))

    img = background(100, 100, 3)
    paste(img, face_patch(photos, "grace_hopper", 78), 12, 8)
    scenes.append(("small_100x100", img, "100x100 (padded to 128x128): one 78 px face patch"))

    img = background(61, 50, 6)
    paste(img, face_patch(photos, "astronaut", 46, 0, True), 9, 3)
    scenes.append(("small_61x50", img, "61x50 (padded to 64x64): one mirrored 46 px face patch"))

    img = cv2.resize(face_patch(photos, "astronaut", 62), (31, 31), interpolation=cv2.INTER_AREA)
    scenes.append(("tiny_31x31", img, "31x31 (smaller than the divisor, padded to 32x32): a face patch shrunk to the whole image"))

    img = np.full((129, 257, 3), 128, np.uint8)
    scenes.append(("grey_257x129", img, "257x129 plain grey (128, 128, 128), padded to 288x160: no faces"))

    img = background(436, 356, 4)
    rng = np.random.default_rng(5)
    k = 0
    for r in range(4):
        for c in range(5):
            name = "astronaut" if (r + c) % 2 == 0 else "grace_hopper"
            side = int(rng.integers(60, 82))
            angle = float(rng.uniform(-12, 12))
            paste(img, face_patch(photos, name, side, angle, bool(k % 3 == 1)), 6 + c * 86, 6 + r * 87)
            k += 1
    scenes.append(("grid_20", img, "436x356 (padded to 448x384): 20 faces in a 5x4 grid, 60-81 px patches "
                   "(faces about 40-54 px), rotated up to 12 degrees, every third mirrored"))
    return scenes


def onnx_heads(arch, tensors, bgr):
    """The 12 outputs by the ONNX graph's own semantics: yunet_convert's numpy interpreter of
    data/yunet/yunet_n.json on data/yunet/yunet_n.safetensors (float64 sums, float32 results)."""
    vals = yunet_convert.run_numpy(arch, tensors, ref.blob(bgr)[0])
    return {k: vals[k] for k in ref.OUTPUT_NAMES}


def max_diff(a, b):
    return max(float(np.max(np.abs(a[k].reshape(-1) - b[k].reshape(-1)))) for k in ref.OUTPUT_NAMES)


def rows_diff(a, b):
    if a.shape != b.shape:
        return None
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def face_list(rows):
    return [{"box": [f32(v) for v in row[:4]],
             "landmarks": [[f32(row[4 + 2 * n]), f32(row[5 + 2 * n])] for n in range(5)],
             "score": f32(row[14])} for row in rows]


def dump(v, indent=0):
    """JSON with one face, and one list of numbers, per line."""
    pad = " " * (indent + 1)
    if isinstance(v, dict) and "box" not in v:
        items = [f'{pad}{json.dumps(k)}: {dump(x, indent + 1)}' for k, x in v.items()]
        return "{\n" + ",\n".join(items) + "\n" + " " * indent + "}"
    if isinstance(v, list) and v and any(isinstance(x, dict) for x in v):
        return "[\n" + ",\n".join(pad + dump(x, indent + 1) for x in v) + "\n" + " " * indent + "]"
    return json.dumps(v)


def run_record(raw, raw_onnx, trusted, bgr, score, nms, top_k):
    """One parameter set. `raw` is cv2.dnn's heads when `trusted`, else the ONNX interpreter's."""
    h, w = bgr.shape[:2]
    pw, ph = ref.padded_size(w, h)
    log = []
    ours, cands = ref.detect_rows(raw, pw, ph, score, nms, top_k, log)
    cv = ref.opencv_rows(ONNX, bgr, score, nms, top_k)
    d = rows_diff(ours, cv)
    if trusted and (d is None or d > 1e-4):
        sys.exit(f"numpy reference disagrees with FaceDetectorYN: {ours.shape} vs {cv.shape}\n{ours}\n{cv}")
    onnx_rows, _ = ref.detect_rows(raw_onnx, pw, ph, score, nms, top_k)
    all_scores = ref.scores(raw)
    # Would scores off by 1e-3 change the faces? (the same as moving the threshold by 1e-3)
    stable = all(np.array_equal(ref.detect_rows(raw, pw, ph, score + e, nms, top_k)[0], ours) for e in (-1e-3, 1e-3))
    run = {"score_threshold": score, "nms_threshold": nms, "top_k": top_k,
           "faces": face_list(cv if trusted else ours),
           "candidates": int(len(cands)),
           "score_margin": f32(np.min(np.abs(all_scores.astype(np.float64) - np.float32(score)))),
           "nms_margin": f32(min(abs(o - np.float32(nms)) for o in log)) if log else None,
           "stable_to_1e-3": bool(stable),
           # an independent float32 implementation (the numpy interpreter) against these faces
           "onnx_interpreter_max_diff": None if rows_diff(onnx_rows, cv if trusted else ours) is None
           else f32(rows_diff(onnx_rows, cv if trusted else ours))}
    return run, (d if trusted else 0.0)


def main():
    cv2.setNumThreads(1)
    if not cv2.__version__.startswith("4.14"):
        sys.exit(f"OpenCV {cv2.__version__}: the fixtures are OpenCV 4.14's (opencv-python-headless==4.14.0.94)")
    from safetensors.numpy import load_file
    save_file = yunet_convert.save_safetensors
    os.makedirs(OUT, exist_ok=True)
    arch = json.load(open(ARCH))
    tensors = load_file(os.path.join(ROOT, "data", "yunet", "yunet_n.safetensors"))
    photos = load_photos()
    entries = [("astronaut", os.path.join(PHOTOS, "astronaut.png"), photos["astronaut"], "data/photos/astronaut.png as is"),
               ("grace_hopper", os.path.join(PHOTOS, "grace_hopper.jpg"), photos["grace_hopper"],
                "data/photos/grace_hopper.jpg as is (JPEG: compare bgr_sha256 with your decoder's pixels first)")]
    for name, img, source in make_scenes(photos):
        path = os.path.join(OUT, name + ".png")
        cv2.imwrite(path, img, [cv2.IMWRITE_PNG_COMPRESSION, 9])
        back = cv2.imread(path, cv2.IMREAD_COLOR)
        assert np.array_equal(back, img)
        entries.append((name, path, back, source))

    manifest = {
        "opencv_version": cv2.__version__,
        "model": {"onnx": "../shared/data/yunet/yunet_n_320_320.onnx",
                  "onnx_sha256": hashlib.sha256(open(ONNX, "rb").read()).hexdigest(),
                  "converted": "data/yunet/yunet_n.safetensors"},
        "detector": "cv2.FaceDetectorYN.create(onnx, '', (w, h), score_threshold, nms_threshold, top_k) created afresh for each run, then detect(bgr); one thread",
        "paths": "relative to the repository root",
        "face": "box [x, y, w, h] (top-left corner, float); landmarks right eye, left eye, nose tip, right mouth corner, left mouth corner as [x, y]; score",
        "expected_from": "opencv: FaceDetectorYN's rows. onnx: the rows the ONNX graph defines (numpy interpreter + OpenCV's decoding and NMS), "
                         "used where OpenCV 4.14's output is wrong: a padded side of 32 gives 1-pixel-wide stride-32 maps, on which "
                         "its 3x3 depthwise convolution returns wrong, memory-dependent values (what it returns there changes from run to run)",
        "scenes": [],
    }
    worst = 0.0
    raws = {}
    for name, path, img, source in entries:
        h, w = img.shape[:2]
        pw, ph = ref.padded_size(w, h)
        raw_cv = ref.raw_outputs(cv2.dnn.readNet(ONNX), img)
        raw_onnx = onnx_heads(arch, tensors, img)
        dnn_err = max_diff(raw_cv, raw_onnx)
        # OpenCV is right unless a padded side is 32 (1-pixel-wide stride-32 maps; see the docstring)
        trusted = min(pw, ph) > 32
        if trusted and dnn_err > 1e-3:
            sys.exit(f"{name}: cv2.dnn's outputs differ from the ONNX interpreter's by {dnn_err}")
        raws[name] = raw_cv
        scene = {"name": name, "file": rel(path), "width": w, "height": h, "padded": [pw, ph],
                 "bgr_sha256": hashlib.sha256(np.ascontiguousarray(img).tobytes()).hexdigest(),
                 "source": source, "expected_from": "opencv" if trusted else "onnx",
                 "dnn_vs_onnx_max_abs": f32(dnn_err) if trusted else None, "runs": []}  # None: wrong, run-dependent
        for score, nms, top_k in PARAMS + EXTRA.get(name, []):
            run, diff = run_record(raw_cv if trusted else raw_onnx, raw_onnx, trusted, img, score, nms, top_k)
            worst = max(worst, diff)
            scene["runs"].append(run)
        manifest["scenes"].append(scene)
        counts = ", ".join(f"{len(r['faces'])} at {r['score_threshold']}" + (f" top_k {r['top_k']}" if r["top_k"] != 5000 else "")
                           + f" [margins score {r['score_margin']:.2g} nms {r['nms_margin'] if r['nms_margin'] is None else format(r['nms_margin'], '.2g')};"
                           f" interp {r['onnx_interpreter_max_diff']}{'' if r['stable_to_1e-3'] else ' UNSTABLE'}]" for r in scene["runs"])
        print(f"{name:15s} {w}x{h} {scene['expected_from']:6s} dnn-onnx {dnn_err:.2g}: {counts}")

    with open(os.path.join(OUT, "manifest.json"), "w") as f:
        f.write(dump(manifest) + "\n")

    save_file(os.path.join(OUT, "heads_641x479.safetensors"), raws["odd_641x479"],
              {"scene": "data/fixtures/yunet/odd_641x479.png", "padded": "672x480", "opencv": cv2.__version__})

    # Block outputs on a 64x64-padded scene: every node but the convolutions whose output goes
    # on to another convolution or a ReLU (the head convolutions are kept).
    small = next(e[2] for e in entries if e[0] == LAYERS_SCENE)
    net = cv2.dnn.readNet(ONNX)
    blob = ref.blob(small)
    net.setInput(blob)
    nodes = [n for n in arch["nodes"] if n["type"] != "conv2d" or "head" in n]
    values = net.forward(["onnx_node!" + n["onnx_node"] for n in nodes])
    layers = {"input": blob}
    for n, v in zip(nodes, values):
        layers[n["name"]] = np.ascontiguousarray(v, np.float32)
    ours = yunet_convert.run_numpy(arch, tensors, blob[0])
    layer_err = max(float(np.max(np.abs(layers[n["name"]].reshape(-1) - ours[n["name"]].reshape(-1)))) for n in nodes)
    save_file(os.path.join(OUT, f"layers_{LAYERS_SCENE}.safetensors"), layers,
              {"scene": f"data/fixtures/yunet/{LAYERS_SCENE}.png", "padded": "64x64", "opencv": cv2.__version__,
               "names": "node names of data/yunet/yunet_n.json (block outputs), plus input"})
    for f in os.listdir(OUT):
        os.chmod(os.path.join(OUT, f), 0o644)
    total = sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT))
    print(f"numpy reference vs FaceDetectorYN: largest difference {worst:.3g} over all trusted runs")
    print(f"layers_{LAYERS_SCENE}: {len(nodes)} nodes, cv2.dnn vs numpy interpreter {layer_err:.2g}")
    print(f"wrote {rel(OUT)}/: {len(os.listdir(OUT))} files, {total / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
