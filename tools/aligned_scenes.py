"""Do aligned face crops help the expression model on tilted faces? Makes scenes of FER2013 test
faces pasted, enlarged and turned, into larger images with their labels recorded, runs
`mien detect --json` on them with and without `--no-align`, and scores both against the labels.

  make:  every test face (or every Nth) gets a border of its own pixels mirrored (a quarter
         of its side each way: the context a photo has around a face, so that turning the face
         back does not bring the scene's background into the crop's corners), is enlarged 2-4x
         (bicubic), turned by an angle drawn from [-max, max] degrees, and pasted at a random
         free place of a 640x480 scene (four faces a scene) over smooth random background.
         Each scene has an unturned twin in unturned/: the same faces, sizes and places, not
         turned. labels.json records each face's class, centre, size (of the face without its
         border) and angle.
  crops: a training set framed as mien frames faces: runs `mien detect --crops` on the scenes
         (made from the training split: `make --split train`) and files each found face's
         48x48 crop under <out>/train/<class>/, beside copies of every original training image
         and of the test split, ready for `mien train --data <out>` (to fine-tune the
         expression model on detector-framed crops as well as FER2013's own).
  score: runs mien detect twice (aligned, then --no-align) on the scenes and on their
         unturned twins, matches each pasted face to the detected box whose centre lies
         nearest, inside half the face's size, and prints recall and accuracy per run, overall
         and by angle, beside `mien eval` on the same faces upright at 48x48 (on all of them,
         and on just the ones each run found), then the accuracy of each run on the faces found
         both turned and unturned: what turning costs once a face has gone through a scene.
  peer:  the same scenes, turned and unturned, through `fer` (PyPI fer 25.10.3, the Python
         tool: OpenCV's Haar cascade, then its mini-Xception) and through mien detect, both
         with their defaults: faces found, labelled right, and boxes on no face, then the two
         expression models on the faces both found.

Run: tools/.venv/bin/python tools/aligned_scenes.py make --out /tmp/scenes [--every 1 --max-angle 30 --split test]
     tools/.venv/bin/python tools/aligned_scenes.py crops --scenes /tmp/train-scenes --out /tmp/framed
     tools/.venv/bin/python tools/aligned_scenes.py score --scenes /tmp/scenes [--mien target/release/mien]
     tools/.venv/bin/python tools/aligned_scenes.py peer --scenes /tmp/scenes   (needs fer in the venv; see the README)
"""

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys

import cv2
import numpy as np

CLASSES = ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]
SCENE = (640, 480)
FACES_PER_SCENE = 4
# The mirrored border around each face, as a fraction of its side.
CONTEXT = 0.25


def background(rng):
    """Smooth random grey-brown shading: something for the detector to ignore."""
    small = rng.uniform(40, 200, size=(6, 8, 3)).astype(np.float32)
    return cv2.resize(small, SCENE, interpolation=cv2.INTER_CUBIC).clip(0, 255).astype(np.uint8)


def paste(scene, face, centre, angle):
    """Pastes a square grey face turned by `angle` degrees with its centre at `centre`."""
    side = face.shape[0]
    m = cv2.getRotationMatrix2D(((side - 1) / 2, (side - 1) / 2), angle, 1.0)
    m[:, 2] += np.array(centre) - (side - 1) / 2
    turned = cv2.warpAffine(cv2.cvtColor(face, cv2.COLOR_GRAY2BGR), m, SCENE, flags=cv2.INTER_LINEAR)
    mask = cv2.warpAffine(np.full((side, side), 255, np.uint8), m, SCENE, flags=cv2.INTER_NEAREST)
    scene[mask > 0] = turned[mask > 0]


def make(args):
    rng = np.random.default_rng(args.seed)
    faces = []
    for label, name in enumerate(CLASSES):
        for path in sorted(glob.glob(os.path.join(args.data, args.split, name, "*.jpg")))[:: args.every]:
            faces.append((path, label))
    order = rng.permutation(len(faces))
    os.makedirs(os.path.join(args.out, "unturned"), exist_ok=True)
    records = []
    for start in range(0, len(order), FACES_PER_SCENE):
        scene, placed = background(rng), []
        unturned = scene.copy()
        for index in order[start : start + FACES_PER_SCENE]:
            path, label = faces[index]
            side = int(rng.integers(96, 193))
            angle = float(rng.uniform(-args.max_angle, args.max_angle))
            # The turned square's reach from its centre, so that faces neither overlap nor leave.
            reach = side * (1 + 2 * CONTEXT) * 0.5 * (abs(np.cos(np.radians(angle))) + abs(np.sin(np.radians(angle))))
            for _ in range(200):
                centre = (float(rng.uniform(reach, SCENE[0] - reach)), float(rng.uniform(reach, SCENE[1] - reach)))
                if all(np.hypot(centre[0] - p["cx"], centre[1] - p["cy"]) > reach + p["reach"] for p in placed):
                    break
            else:
                continue
            grey = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
            border = round(48 * CONTEXT)
            grey = cv2.copyMakeBorder(grey, border, border, border, border, cv2.BORDER_REFLECT_101)
            padded = round(side * grey.shape[0] / 48)
            face = cv2.resize(grey, (padded, padded), interpolation=cv2.INTER_CUBIC)
            paste(scene, face, centre, angle)
            paste(unturned, face, centre, 0.0)
            placed.append({"source": os.path.relpath(path, args.data), "label": CLASSES[label], "cx": centre[0], "cy": centre[1], "size": side, "angle": angle, "reach": reach})
        name = f"scene-{start // FACES_PER_SCENE:04d}.png"
        cv2.imwrite(os.path.join(args.out, name), scene)
        cv2.imwrite(os.path.join(args.out, "unturned", name), unturned)
        records.append({"image": name, "faces": placed})
    with open(os.path.join(args.out, "labels.json"), "w") as f:
        json.dump(records, f, indent=1)
    print(f"{sum(len(r['faces']) for r in records)} faces in {len(records)} scenes under {args.out}")


def run(cmd):
    """The command's standard output; its error output and a non-zero exit stop the script."""
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{' '.join(cmd[:3])} ... failed:\n{result.stderr[-2000:]}")
    return result.stdout


def read_records(scenes):
    """The scenes' labels.json, as `make` wrote it."""
    with open(os.path.join(scenes, "labels.json")) as f:
        return json.load(f)


def detect(mien, scenes, extra, out):
    """mien detect's faces in each scene of the folder `scenes`, by scene file name."""
    images = sorted(glob.glob(os.path.join(scenes, "scene-*.png")))
    cmd = [mien, "detect", *images, "--out", out, "--json", "-", *extra]
    return {os.path.basename(r["image"]): r["faces"] for r in json.loads(run(cmd))}


def matched(records, detected):
    """Each pasted face (in `records` order) with the detected box whose centre lies nearest
    it, inside half the face's size, or None."""
    for record in records:
        boxes = detected.get(record["image"], [])
        for face in record["faces"]:
            best, best_distance = None, face["size"] / 2
            for box in boxes:
                d = np.hypot(box["x"] + box["w"] / 2 - face["cx"], box["y"] + box["h"] / 2 - face["cy"])
                if d < best_distance:
                    best, best_distance = box, d
            yield record, face, best


def score_run(records, detected):
    """(angle, found, correct, index of the face in `records` order) for each pasted face."""
    rows = [(abs(face["angle"]), box is not None, box is not None and box.get("emotion") == face["label"], i) for i, (_, face, box) in enumerate(matched(records, detected))]
    return np.array(rows, dtype=float)


def copy_whole(copy, source, target):
    """`copy(source, target)` unless `target` exists, through a hidden temporary name (which
    `mien train` skips) renamed into place: a run cut short leaves no half copy that a later
    run would take as done."""
    if os.path.lexists(target):
        return
    folder, name = os.path.split(target)
    partial = os.path.join(folder, f".{name}.partial")
    if os.path.isdir(partial):
        shutil.rmtree(partial)
    copy(source, partial)
    os.replace(partial, target)


def crops(args):
    records = read_records(args.scenes)
    detected = detect(args.mien, args.scenes, ["--no-emotion", "--crops", *args.detect_args], os.path.join(args.scenes, "detected_crops"))
    train = os.path.join(args.out, "train")
    # Copies, not links (about 130 MB on disk): the folder then outlives a move, or a restore
    # that keeps no links.
    for name in CLASSES:
        os.makedirs(os.path.join(train, name), exist_ok=True)
        for source in sorted(glob.glob(os.path.join(os.path.abspath(args.data), "train", name, "*.jpg"))):
            copy_whole(shutil.copyfile, source, os.path.join(train, name, os.path.basename(source)))
    copy_whole(shutil.copytree, os.path.join(os.path.abspath(args.data), "test"), os.path.join(args.out, "test"))
    found = 0
    for record, face, box in matched(records, detected):
        if box is not None:
            stem = os.path.splitext(os.path.basename(face["source"]))[0]
            os.replace(box["crop"], os.path.join(train, face["label"], f"framed-{stem}.png"))
            found += 1
    total = sum(len(r["faces"]) for r in records)
    print(f"{found} of {total} faces found and framed; with the originals under {train}")


def upright_correct(args, records):
    """mien eval on the same faces as FER2013 gives them (48x48, upright), and whether each face
    (in `records` order) is labelled right with the views `mien detect` takes by default: the
    centre crop and its mirror image, each given to `mien eval --tta none --logits` (in
    folders of the faces and of their mirror images) and their probabilities averaged."""
    faces = [face for record in records for face in record["faces"]]
    folders = {view: os.path.join(args.scenes, "upright" + view) for view in ["", "-mirrored"]}
    for face in faces:
        source = os.path.join(os.path.abspath(args.data), face["source"])
        name = face["source"].split(os.sep, 1)[1]
        for view, folder in folders.items():
            target = os.path.join(folder, "test", name)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            if os.path.exists(target):
                continue
            if view:
                cv2.imwrite(target.replace(".jpg", ".png"), cv2.flip(cv2.imread(source, cv2.IMREAD_GRAYSCALE), 1))
            else:
                os.symlink(source, target)
    summary = next(line for line in run([args.mien, "eval", "--data", os.path.join(folders[""], "test"), *args.eval_args]).splitlines() if "accuracy" in line)
    probabilities = {}
    for view, folder in folders.items():
        logits_file = os.path.join(folder, "logits.json")
        run([args.mien, "eval", "--data", os.path.join(folder, "test"), "--tta", "none", "--logits", logits_file, *args.eval_args])
        with open(logits_file) as f:
            logits = np.array(json.load(f))
        # mien eval's order: class folders in class order, files sorted by name.
        names = [os.path.join(c, n) for c in CLASSES for n in sorted(os.listdir(os.path.join(folder, "test", c)))]
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        for n, p in zip(names, exp / exp.sum(axis=1, keepdims=True)):
            key = os.path.splitext(n)[0]
            probabilities[key] = probabilities.get(key, 0) + p
    correct = [CLASSES[int(np.argmax(probabilities[os.path.splitext(face["source"].split(os.sep, 1)[1])[0]]))] == face["label"] for face in faces]
    return summary, np.array(correct, dtype=float)


def score(args):
    records = read_records(args.scenes)
    summary, upright = upright_correct(args, records)
    print(f"upright 48x48 faces, mien eval: {summary}; the views' probabilities averaged here: {upright.mean():.2%}")
    bins = [0, 10, 20, 30, 45]
    runs = {}
    for title, extra in [("aligned", []), ("not aligned (--no-align)", ["--no-align"])]:
        name = "".join(extra).replace("-", "_")
        turned = score_run(records, detect(args.mien, args.scenes, extra + args.detect_args, os.path.join(args.scenes, "detected" + name)))
        unturned = score_run(records, detect(args.mien, os.path.join(args.scenes, "unturned"), extra + args.detect_args, os.path.join(args.scenes, "detected_unturned" + name)))
        runs[title] = (turned, unturned)
        found = turned[:, 1] == 1
        same = upright[turned[found, 3].astype(int)].mean()
        print(f"{title}: {len(turned)} faces, found {found.mean():.1%}, accuracy {turned[found, 2].mean():.2%} of those found ({turned[:, 2].mean():.2%} of all); the same faces upright: {same:.2%}")
        for lo, hi in zip(bins, bins[1:]):
            sel = found & (turned[:, 0] >= lo) & (turned[:, 0] < hi)
            if sel.any():
                print(f"  |angle| {lo:2d}-{hi:2d} deg: {sel.sum():5d} found, accuracy {turned[sel, 2].mean():.2%}, upright {upright[turned[sel, 3].astype(int)].mean():.2%}")
    # Faces every run found, turned and unturned: the same faces through the same scenes.
    both = np.all([rows[:, 1] == 1 for pair in runs.values() for rows in pair], axis=0)
    print(f"the {both.sum()} faces found by every run, turned and unturned:")
    angles = next(iter(runs.values()))[0][:, 0]
    for lo, hi in [(0, 90)] + list(zip(bins, bins[1:])):
        sel = both & (angles >= lo) & (angles < hi)
        if sel.any():
            figures = ", ".join(f"{title} {turned[sel, 2].mean():.2%} turned, {unturned[sel, 2].mean():.2%} unturned" for title, (turned, unturned) in runs.items())
            print(f"  {'all angles' if hi == 90 else f'|angle| {lo:2d}-{hi:2d} deg'} ({sel.sum()}): {figures}")


def fer_detect(detector, scenes):
    """fer's faces (`detector`, a `fer.FER`) in each scene of the folder `scenes`, by scene
    file name, in mien detect's JSON shape (box and most probable class)."""
    faces = {}
    for path in sorted(glob.glob(os.path.join(scenes, "scene-*.png"))):
        found = detector.detect_emotions(cv2.imread(path))
        faces[os.path.basename(path)] = [
            {"x": f["box"][0], "y": f["box"][1], "w": f["box"][2], "h": f["box"][3], "emotion": max(f["emotions"], key=f["emotions"].get)} for f in found
        ]
    return faces


def stray_boxes(records, detected):
    """How many detected boxes no pasted face was matched to."""
    used = {id(box) for _, _, box in matched(records, detected) if box is not None}
    return sum(1 for boxes in detected.values() for box in boxes if id(box) not in used)


def peer(args):
    records = read_records(args.scenes)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from fer.fer import FER

    fer = FER()
    rows = {}
    for twin, folder in [("turned", args.scenes), ("unturned", os.path.join(args.scenes, "unturned"))]:
        for tool, detected in [
            ("fer", fer_detect(fer, folder)),
            ("mien", detect(args.mien, folder, args.detect_args, os.path.join(args.scenes, "peer_mien_" + twin))),
        ]:
            rows[tool, twin] = score_run(records, detected)
            found = rows[tool, twin][:, 1] == 1
            print(
                f"{twin} faces, {tool}: found {found.sum()} of {len(found)} ({found.mean():.1%}), {stray_boxes(records, detected)} boxes on no face; "
                f"labelled right: {rows[tool, twin][found, 2].mean():.2%} of those found, {rows[tool, twin][:, 2].mean():.2%} of all"
            )
        both = (rows["fer", twin][:, 1] == 1) & (rows["mien", twin][:, 1] == 1)
        print(f"  on the {both.sum()} {twin} faces both found: fer {rows['fer', twin][both, 2].mean():.2%}, mien {rows['mien', twin][both, 2].mean():.2%}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    m = sub.add_parser("make")
    m.add_argument("--data", default=os.environ.get("MIEN_FER_DIR", "../shared/data/fer2013"))
    m.add_argument("--out", required=True)
    m.add_argument("--every", type=int, default=1)
    m.add_argument("--max-angle", type=float, default=30.0)
    m.add_argument("--seed", type=int, default=1)
    m.add_argument("--split", default="test", choices=["train", "test"], help="the FER2013 split whose faces are pasted")
    c = sub.add_parser("crops")
    c.add_argument("--data", default=os.environ.get("MIEN_FER_DIR", "../shared/data/fer2013"))
    c.add_argument("--scenes", required=True)
    c.add_argument("--out", required=True)
    c.add_argument("--mien", default="target/release/mien")
    c.add_argument("--detect-args", nargs="*", default=[], help="more arguments for mien detect")
    s = sub.add_parser("score")
    s.add_argument("--data", default=os.environ.get("MIEN_FER_DIR", "../shared/data/fer2013"))
    s.add_argument("--scenes", required=True)
    s.add_argument("--mien", default="target/release/mien")
    s.add_argument("--detect-args", nargs="*", default=[], help="more arguments for mien detect (e.g. --weights FILE)")
    s.add_argument("--eval-args", nargs="*", default=[], help="more arguments for mien eval (e.g. --weights FILE)")
    p = sub.add_parser("peer")
    p.add_argument("--scenes", required=True)
    p.add_argument("--mien", default="target/release/mien")
    p.add_argument("--detect-args", nargs="*", default=[], help="more arguments for mien detect")
    args = ap.parse_args()
    {"make": make, "crops": crops, "score": score, "peer": peer}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
