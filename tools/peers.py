#!/usr/bin/env python3
"""mien beside its peers in one session: PyTorch for training and inference, OpenCV for detection,
fer for video.

    tools/.venv/bin/python tools/peers.py [--mien target/release/mien] [--reps N] [--quick]
                                          [--one-thread] [--out out]
    tools/.venv/bin/python tools/peers.py --render out/peers.json   # the table again, nothing run

Runs, back to back on the same machine:
  1. `mien bench train --device cpu --json`       (CPU backend, rayon's default threads)
  2. `tools/torch_bench.py --json`                 (PyTorch CPU, its default threads)
  3. `mien bench detect --json`                    (CPU detectors, Haar and YuNet, 1 thread and
                                                    all threads)
  4. `tools/opencv_bench.py`                       (detectMultiScale and FaceDetectorYN on the
                                                    same frames, 1 thread and OpenCV's default
                                                    threads)
  5. `mien bench video --device cpu --json`       (detect on video clips end to end: decoding,
                                                    YuNet, expressions, tracking, drawing, H.264)
  6. `tools/fer_video.py`                          (fer's Video.analyze on the same clips; needs
                                                    fer and TensorFlow in the venv, see README;
                                                    skipped with a note when they are missing)
  with --one-thread also 1 and 2 on one thread (RAYON_NUM_THREADS=1, torch --threads 1);
and writes OUT/peers.json (every tool's raw output plus the machine: CPU model, cores, date,
load average before and after, mien's adapters and version, git commit) and OUT/peers.md (the
figures side by side with ratios). Ratios are "mien speed / peer speed": above 1 mien is
faster (for latencies, the peer's milliseconds over mien's).

--quick: 1 timed repetition after the warm-up everywhere and 0.2 s per OpenCV case, to check the
plumbing; its figures are not worth quoting. Run it with the venv's Python (torch and OpenCV);
the two peer scripts run under the same interpreter.
"""
import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
TOOLS = os.path.join(ROOT, "tools")


def run(label, cmd, env=None, parse_json=True):
    """Runs cmd in the repository root; returns its parsed JSON stdout (or the text)."""
    print(f"[peers] {label}: {' '.join(cmd)}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, capture_output=True, text=True)
    took = time.perf_counter() - start
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        sys.exit(f"[peers] {label} failed (exit {proc.returncode})")
    print(f"[peers]   done in {took:.1f} s", file=sys.stderr, flush=True)
    if not parse_json:
        return proc.stdout
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError as e:
        sys.stderr.write(proc.stdout[-2000:])
        sys.exit(f"[peers] {label}: output is not JSON ({e})")


def cpuinfo():
    model, physical = None, set()
    try:
        with open("/proc/cpuinfo") as f:
            phys = core = None
            for line in f:
                key, _, value = line.partition(":")
                key, value = key.strip(), value.strip()
                if key == "model name" and model is None:
                    model = value
                elif key == "physical id":
                    phys = value
                elif key == "core id":
                    core = value
                elif not key and phys is not None and core is not None:
                    physical.add((phys, core))
                    phys = core = None
    except OSError:
        pass
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((l.split(":", 1)[1] for l in f if l.startswith("flags")), "")
    except OSError:
        pass
    simd = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile") if f" {f}" in f" {flags}"]
    return {
        "cpu_model": model or platform.processor() or platform.machine(),
        "logical_cpus": os.cpu_count(),
        "physical_cores": len(physical) or None,
        "affinity_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "simd": simd,
    }


def loadavg():
    try:
        with open("/proc/loadavg") as f:
            return [float(v) for v in f.read().split()[:3]]
    except OSError:
        return None


def git_commit():
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        return head + ("-dirty" if dirty else "") if head else None
    except OSError:
        return None


def mien_threads(device):
    """The thread count inside mien's device string "CPU backend (N threads)"."""
    m = re.search(r"\((\d+) threads?\)", device or "")
    return int(m.group(1)) if m else None


def ratio(ours, theirs, lower_is_better=False):
    if not ours or not theirs:
        return None
    return theirs / ours if lower_is_better else ours / theirs


def fmt(v, digits=1):
    return "n/a" if v is None else f"{v:.{digits}f}"


def fmt_ratio(r):
    return "n/a" if r is None else f"{r:.2f}x"


TRAIN_METRICS = [
    ("training step, batch {batch} (images/s)", "train_images_per_second", False, 1),
    ("inference, batch {batch} (images/s)", "inference_images_per_second", False, 1),
    ("batch-1 latency (ms)", "inference_batch1_ms", True, 2),
]


def train_table(pairs):
    """pairs: (title, mien results list, torch report); one table per pairing."""
    lines = []
    for title, mien, torch_report in pairs:
        by_model = {r["model"]: r for r in torch_report["results"]}
        mien_t = mien_threads(mien[0]["device"]) if mien else None
        lines += [f"### {title}", "",
                  f"| model | figure | mien CPU ({mien_t} threads) | PyTorch {torch_report['torch_version']} CPU "
                  f"({torch_report['threads']} threads) | mien / PyTorch |",
                  "|---|---|---:|---:|---:|"]
        for r in mien:
            t = by_model.get(r["model"])
            for label, key, lower, digits in TRAIN_METRICS:
                theirs = t[key] if t else None
                lines.append(f"| {r['model']} | {label.format(batch=r['batch'])} | {fmt(r[key], digits)} | "
                             f"{fmt(theirs, digits)} | {fmt_ratio(ratio(r[key], theirs, lower))} |")
        lines.append("")
    return lines


def detect_table(mien_rows, opencv, detector):
    """The rows of one detector ("haar" or "yunet"); runs from before YuNet have Haar rows only,
    with no "detector" field."""
    mien_rows = [r for r in mien_rows if r.get("detector", "haar") == detector]
    gpu = {(r["width"], r["height"]): r for r in mien_rows if r.get("device", "cpu") != "cpu"}
    mien = [r for r in mien_rows if r.get("device", "cpu") == "cpu"]
    if not mien:
        return [f"No {detector} rows in this run.", ""]
    cv = {(r["width"], r["height"], r["threads"]): r for r in opencv["results"] if r.get("detector", "haar") == detector}
    ours = {(r["width"], r["height"], r["threads"]): r for r in mien}
    sizes = sorted({(r["width"], r["height"]) for r in mien}, key=lambda s: s[0] * s[1])
    mien_all = max(r["threads"] for r in mien)
    cv_all = opencv["default_threads"]
    lines = ["| frame | mien, 1 thread | OpenCV, 1 thread | ratio | "
             f"mien, {mien_all} threads | OpenCV, {cv_all} threads | ratio | faces (mien / OpenCV) |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    mismatches = []
    for w, h in sizes:
        m1, c1 = ours.get((w, h, 1)), cv.get((w, h, 1))
        mn, cn = ours.get((w, h, mien_all)), cv.get((w, h, cv_all))
        faces_m = {r["faces"] for r in (m1, mn) if r}
        faces_c = {r["faces"] for r in (c1, cn) if r}
        if faces_m != faces_c:
            mismatches.append(f"{w}x{h}")
        g = lambda r: r["fps"] if r else None
        lines.append(f"| {w}x{h} | {fmt(g(m1), 2)} fps | {fmt(g(c1), 2)} fps | {fmt_ratio(ratio(g(m1), g(c1)))} | "
                     f"{fmt(g(mn), 2)} fps | {fmt(g(cn), 2)} fps | {fmt_ratio(ratio(g(mn), g(cn)))} | "
                     f"{'/'.join(map(str, sorted(faces_m)))} / {'/'.join(map(str, sorted(faces_c)))} |")
    if gpu:
        lines.append("")
        lines.append(f"mien's GPU detector on {next(iter(gpu.values()))['device']}: " + ", ".join(
            f"{w}x{h} {fmt(r['fps'], 2)} fps ({r['faces']} faces)" for (w, h), r in sorted(gpu.items(), key=lambda kv: kv[0][0] * kv[0][1])))
    lines.append("")
    if mien_all != cv_all:
        lines.append(f"Note: mien's all-threads run used {mien_all} threads, OpenCV's {cv_all}.")
    if mismatches:
        lines.append(f"**Face counts differ at {', '.join(mismatches)}**: the two are not doing the same work there.")
    else:
        lines.append("Same number of faces found by both at every size (same frames, same model, same parameters).")
    lines.append("")
    return lines


def busy_warning(before, cpus):
    """A warning when something else was running: on a loaded machine every figure is low, and
    multi-threaded PyTorch most (its OpenMP threads wait for each other at every layer, so one
    descheduled thread stalls them all: batch-1 latency suffers worst)."""
    if not before or before[0] < 0.25 * (cpus or 1):
        return ""
    return (" **The machine was busy before the run (1-minute load {:.2f} on {} CPUs)**: every figure is "
            "low, multi-threaded PyTorch's most (its OpenMP threads wait for each other at every layer); "
            "`--one-thread` adds single-thread rows, which suffer less.".format(before[0], cpus))


def markdown(report):
    m = report["machine"]
    load = report["load_average"]
    lines = [
        "# mien and its peers",
        "",
        f"{report['date']}, " + ("quick run (plumbing check, figures not meaningful)." if report["quick"]
                                 else f"{report['reps']} timed repetitions after a warm-up."),
        "",
        f"Machine: {m['cpu_model']}, {m['logical_cpus']} logical CPUs"
        + (f" ({m['physical_cores']} physical cores)" if m.get("physical_cores") else "")
        + (f", SIMD {' '.join(m['simd'])}" if m.get("simd") else "")
        + f"; {m['os']}. mien {report['mien']['version']} (commit {report['mien']['commit']}); "
          f"`--device auto` would run on {report['mien']['auto_device']}; these runs use the CPU backend.",
        "",
        f"Load average (1/5/15 min) before the run {load['before']}, after {load['after']}."
        + busy_warning(load["before"], m["logical_cpus"]),
        "",
        "## Training and inference (`mien bench train` vs `tools/torch_bench.py`)",
        "",
        "Synthetic images, the same models (built from data/models/*.json), training step = forward, "
        "cross-entropy, backward, Adam; median over the repetitions (batch-1 latency: over 20 times as many calls). mien's training step starts from "
        "u8 pixels (its u8-to-float conversion is inside the step); PyTorch's from a float tensor.",
        "",
    ]
    pairs = [("Default threads", report["results"]["mien_train"], report["results"]["torch"])]
    if "mien_train_1thread" in report["results"]:
        pairs.append(("One thread", report["results"]["mien_train_1thread"], report["results"]["torch_1thread"]))
    lines += train_table(pairs)
    cv = report["results"]["opencv"]
    lines += [
        "## Face detection (`mien bench detect` vs `tools/opencv_bench.py`)",
        "",
        f"Frames from data/fixtures/haar/montage.png; "
        f"OpenCV {cv['opencv_version']} (opencv-python), OpenCL off; frames per second from the median.",
        "",
        "### Haar cascade (`detectMultiScale`)",
        "",
        "Frontal-face cascade, scale 1.1, 3 neighbours.",
        "",
    ]
    lines += detect_table(report["results"]["mien_detect"], cv, "haar")
    video = report["results"].get("mien_video")
    if video:
        fer = report["results"].get("fer_video") or {}
        lines += [
            "## Video end to end (`mien bench video` vs `tools/fer_video.py`)",
            "",
            "Clips panned across a portrait (one face) and the montage (nine faces), 30 fps H.264, every frame analysed; "
            "mien: YuNet on frames shrunk to 640 px, the shipped expression model with mirror averaging, tracking, annotated H.264 out; "
            "fer 25.10.3: `Video.analyze(FER())` (Haar cascade, mini-Xception in TensorFlow Lite), annotated video out.",
            "",
            "| clip | size | mien CPU fps | faces | fer fps | faces | mien / fer |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in video:
            theirs = fer.get(r["clip"]) or fer.get(os.path.relpath(r["clip"], ROOT)) or {}
            lines.append(f"| {r['scene']} | {r['width']}x{r['height']} | {fmt(r['fps'])} | {r['face_frames']} | "
                         f"{fmt(theirs.get('fps'))} | {theirs.get('faces', '-')} | {fmt_ratio(ratio(r['fps'], theirs.get('fps')))} |")
        lines.append("")
    yunet = cv.get("yunet")
    if yunet:
        lines += [
            "### YuNet-n (`FaceDetectorYN`)",
            "",
            f"{yunet['onnx']} in OpenCV, mien's conversion of it (data/yunet/) in mien; score {yunet['score_threshold']}, "
            f"NMS {yunet['nms_threshold']}, top {yunet['top_k']}; the same frames as colour, the grey repeated in each channel.",
            "",
        ]
        lines += detect_table(report["results"]["mien_detect"], cv, "yunet")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mien", default=os.path.join(ROOT, "target/release/mien"))
    ap.add_argument("--reps", type=int, default=5, help="timed repetitions for mien and PyTorch (default 5, as mien)")
    ap.add_argument("--opencv-seconds", type=float, default=3.0, help="timing per OpenCV case (default 3)")
    ap.add_argument("--quick", action="store_true", help="1 repetition, 0.2 s per OpenCV case: a plumbing check")
    ap.add_argument("--one-thread", action="store_true", help="also the training benchmarks on one thread")
    ap.add_argument("--gpu-detect", action="store_true", help="also mien's GPU detector (slow on lavapipe)")
    ap.add_argument("--out", default=os.path.join(ROOT, "out"))
    ap.add_argument("--render", metavar="PEERS_JSON", help="only print the Markdown of an earlier run's peers.json")
    args = ap.parse_args()
    if args.render:
        with open(args.render) as f:
            print(markdown(json.load(f)))
        return
    if args.quick:
        args.reps, args.opencv_seconds = 1, 0.2
    mien = os.path.abspath(args.mien)
    if not os.access(mien, os.X_OK):
        sys.exit(f"{mien}: no mien binary (cargo build --release, or pass --mien)")
    py = sys.executable
    reps = str(args.reps)

    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "quick": args.quick,
        "reps": args.reps,
        "opencv_seconds": args.opencv_seconds,
        "machine": {**cpuinfo(), "os": platform.platform(), "python": platform.python_version()},
        "load_average": {"before": loadavg()},
        "mien": {
            "binary": mien,
            "version": run("mien version", [mien, "--version"], parse_json=False).strip().removeprefix("mien "),
            "commit": git_commit(),
        },
        "results": {},
    }
    # Adapters (and what --device auto picks); listing them is quick and opens no device.
    report["mien"]["adapters"] = run("mien devices", [mien, "devices", "--json"])
    auto = run("mien devices (auto pick)", [mien, "devices"], parse_json=False).splitlines()
    report["mien"]["auto_device"] = next((l.split(" runs on ", 1)[1] for l in auto if " runs on " in l), "unknown")

    res = report["results"]
    res["mien_train"] = run("mien bench train", [mien, "bench", "train", "--device", "cpu", "--json", "--reps", reps])
    res["torch"] = run("PyTorch", [py, os.path.join(TOOLS, "torch_bench.py"), "--json", "--reps", reps])
    if args.one_thread:
        res["mien_train_1thread"] = run("mien bench train, 1 thread", [mien, "bench", "train", "--device", "cpu", "--json", "--reps", reps],
                                        env={"RAYON_NUM_THREADS": "1"})
        res["torch_1thread"] = run("PyTorch, 1 thread", [py, os.path.join(TOOLS, "torch_bench.py"), "--json", "--reps", reps, "--threads", "1"])
    # The GPU detector only with --gpu-detect: on lavapipe it takes seconds per frame.
    res["mien_detect"] = run("mien bench detect", [mien, "bench", "detect", "--json", "--reps", reps] + ([] if args.gpu_detect else ["--device", "cpu"]))
    with tempfile.TemporaryDirectory() as tmp:
        cv_out = os.path.join(tmp, "opencv.json")
        run("OpenCV", [py, os.path.join(TOOLS, "opencv_bench.py"), "--seconds", str(args.opencv_seconds), "--out", cv_out], parse_json=False)
        with open(cv_out) as f:
            res["opencv"] = json.load(f)
    res["mien_video"] = run("mien bench video", [mien, "bench", "video", "--device", "cpu", "--json", "--frames", "30" if args.quick else "150"])
    try:
        import fer  # noqa: F401  (only to learn whether the peer is installed)
        res["fer_video"] = run("fer video", [py, os.path.join(TOOLS, "fer_video.py")] + [r["clip"] for r in res["mien_video"]])
    except ImportError:
        print("[peers] fer is not installed in this venv: no fer column (see the README)", file=sys.stderr)
    report["load_average"]["after"] = loadavg()

    os.makedirs(args.out, exist_ok=True)
    json_path, md_path = os.path.join(args.out, "peers.json"), os.path.join(args.out, "peers.md")
    with open(json_path, "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    text = markdown(report)
    with open(md_path, "w") as f:
        f.write(text + "\n")
    print(text)
    print(f"[peers] wrote {json_path} and {md_path}", file=sys.stderr)


if __name__ == "__main__":
    main()
