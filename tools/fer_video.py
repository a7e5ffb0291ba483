"""fer's video analysis (PyPI fer 25.10.3: OpenCV's Haar cascade and a mini-Xception expression
model in TensorFlow Lite) timed on video clips: the peer of `mien bench video`.

For each clip, `Video(clip).analyze(FER(), display=False, save_frames=False, save_video=True)`
runs once untimed on the first frames (TensorFlow's start-up), then once timed on the whole
clip, writing its annotated video as mien does. Prints one JSON object: per clip the frames,
wall seconds, frames per second and faces found.

Run: tools/.venv/bin/python tools/fer_video.py CLIP... [--json]
"""

import argparse
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("clips", nargs="+")
    args = ap.parse_args()
    import cv2
    from fer.classes import Video
    from fer.fer import FER

    # fer polls a display window's keyboard even with display=False; the tools venv has
    # OpenCV's headless build (the one mien's fixtures were made with), which has no windows.
    # Both calls do nothing useful here, so they become no-ops; the work timed is unchanged.
    cv2.waitKey = lambda *_: -1
    cv2.destroyAllWindows = lambda *_: None

    def analyze(clip, out, **options):
        """fer's rows of faces; none when it found no face (its table then fails to build)."""
        try:
            return Video(clip, outdir=out).analyze(detector, display=False, save_frames=False, frequency=1, **options)
        except IndexError:
            return []

    detector = FER()
    results = {}
    clips = {clip: os.path.abspath(clip) for clip in args.clips}
    with tempfile.TemporaryDirectory() as out:
        # fer writes its table (data.csv) into the working folder: keep it out of the caller's.
        os.chdir(out)
        for clip, path in clips.items():
            analyze(path, out, save_video=False, max_results=1)
            start = time.perf_counter()
            rows = analyze(path, out, save_video=True)
            seconds = time.perf_counter() - start
            capture = cv2.VideoCapture(path)
            frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
            faces = sum(1 for row in rows for key in row if key.startswith("box"))
            results[clip] = {"frames": frames, "seconds": seconds, "fps": frames / seconds, "faces": faces}
            print(f"[fer] {clip}: {frames} frames in {seconds:.1f} s", file=sys.stderr, flush=True)
    json.dump(results, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
