"""Where YuNet puts the five landmarks on a FER2013 face: the template that mien's aligned crops
(src/align.rs) map each detected face onto, so that a face in a photo reaches the expression
model framed as the training faces were.

Each test face (every third, about 1,200) is upscaled 4x with bicubic interpolation (YuNet misses
48-pixel faces), given a 64-pixel replicated border (a face filling its image has no context for
the detector) and passed to OpenCV's FaceDetectorYN. The landmarks of the best face are mapped
back to the 48x48 image with pixel centres at integers, and the median of each coordinate is
printed, with the left-right symmetrised template that src/align.rs holds.

Run: tools/.venv/bin/python tools/fer_landmarks.py [--data ../shared/data/fer2013]
"""

import argparse
import glob
import os

import cv2
import numpy as np

UPSCALE = 4
BORDER = 64
NAMES = ["right eye", "left eye", "nose tip", "right mouth corner", "left mouth corner"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=os.environ.get("MIEN_FER_DIR", "../shared/data/fer2013"))
    ap.add_argument("--onnx", default="../shared/data/yunet/yunet_n_320_320.onnx")
    ap.add_argument("--every", type=int, default=3)
    args = ap.parse_args()

    detector = cv2.FaceDetectorYN.create(args.onnx, "", (320, 320), 0.5, 0.3, 5000)
    files = sorted(glob.glob(os.path.join(args.data, "test", "*", "*.jpg")))[:: args.every]
    landmarks, missed = [], 0
    for path in files:
        grey = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
        up = cv2.resize(grey, (48 * UPSCALE, 48 * UPSCALE), interpolation=cv2.INTER_CUBIC)
        padded = cv2.copyMakeBorder(up, BORDER, BORDER, BORDER, BORDER, cv2.BORDER_REPLICATE)
        bgr = cv2.cvtColor(padded, cv2.COLOR_GRAY2BGR)
        detector.setInputSize((bgr.shape[1], bgr.shape[0]))
        _, faces = detector.detect(bgr)
        if faces is None or len(faces) == 0:
            missed += 1
            continue
        best = max(faces, key=lambda f: f[14])
        # cv2.resize maps destination pixel d to source (d + 0.5) / s - 0.5.
        landmarks.append((best[4:14].reshape(5, 2) - BORDER + 0.5) / UPSCALE - 0.5)
    landmarks = np.array(landmarks)
    median = np.median(landmarks, axis=0)
    print(f"{len(files)} faces, {missed} missed; median landmarks in the 48x48 image (x, y), spread (std):")
    for name, m, s in zip(NAMES, median, landmarks.std(axis=0)):
        print(f"  {name:20s} ({m[0]:6.2f}, {m[1]:6.2f})  +- ({s[0]:.2f}, {s[1]:.2f})")
    # Mirror pairs share their height and sit symmetrically about the face's midline.
    mid = median[:, 0].mean()
    eye_dx, mouth_dx = (median[1, 0] - median[0, 0]) / 2, (median[4, 0] - median[3, 0]) / 2
    eye_y, mouth_y = median[:2, 1].mean(), median[3:, 1].mean()
    template = [(mid - eye_dx, eye_y), (mid + eye_dx, eye_y), (mid, median[2, 1]), (mid - mouth_dx, mouth_y), (mid + mouth_dx, mouth_y)]
    print("symmetrised template: [" + ", ".join(f"[{x:.2f}, {y:.2f}]" for x, y in template) + "]")


if __name__ == "__main__":
    main()
