#!/usr/bin/env python3
"""OpenCV 4.14's cv::FaceDetectorYN::detect, step by step in numpy, from cv2.dnn's raw outputs.

    tools/.venv/bin/python tools/yunet_reference.py IMAGE... [--score 0.9] [--nms 0.3] [--top-k 5000]
    tools/.venv/bin/python tools/yunet_reference.py --depthwise-bug

prints, for each image, FaceDetectorYN's rows and this module's rows and their largest difference
(--depthwise-bug: OpenCV's depthwise convolution against its definition on 1-pixel-wide maps,
which makes FaceDetectorYN's output wrong and run-dependent on images 32 pixels or less a side).
tools/yunet_fixtures.py imports it to check every fixture. It follows
modules/objdetect/src/face_detect.cpp and modules/dnn/src/nms.cpp (NMSBoxes, NMSFast_) and
keeps their float32 arithmetic, integer truncations and orders:

1. pad_to_divisor: copyMakeBorder(img, 0, padH - h, 0, padW - w, BORDER_CONSTANT, 0) with
   padW = ((w - 1) / 32 + 1) * 32 (integer division), same for padH: zeros at the bottom and right.
2. blobFromImage(pad) with its defaults: 1 x 3 x padH x padW float32, channels in BGR order as
   read, values 0..255 unscaled (scalefactor 1, no mean, no swapRB, no resize, no crop).
3. net.forward of cls_8, cls_16, cls_32, obj_*, bbox_*, kps_* (each [1, rows*cols, C], cell index
   r * cols + c with cols = padW / stride, rows = padH / stride).
4. decode: for stride 8, 16, 32 in that order, cells in row-major order:
       cls, obj clamped to [0, 1];  score = sqrt(cls * obj)             (float32)
       skip the cell if score < score_threshold
       cx = (c + bbox[0]) * s;  cy = (r + bbox[1]) * s
       w = exp(bbox[2]) * s;    h = exp(bbox[3]) * s
       x1 = cx - w / 2;         y1 = cy - h / 2
       landmark n (0..4): ((kps[2n] + c) * s, (kps[2n+1] + r) * s)
   Row: x1, y1, w, h, re_x, re_y, le_x, le_y, nt_x, nt_y, rcm_x, rcm_y, lcm_x, lcm_y, score.
   No anchor sizes: one prior per cell, its centre at the cell's top-left corner times the stride.
5. If more than one row survives: NMSBoxes(Rect2i(int(x1), int(y1), int(w), int(h)) [C++ casts:
   truncation toward zero], scores, score_threshold, nms_threshold, eta 1, top_k):
       keep rows with score > score_threshold (strictly: a row exactly at the threshold is dropped
       here, though step 4 let it in), stable-sort them by score, descending, cut to the first
       top_k (if top_k > 0) BEFORE suppression, then greedily keep a row unless its overlap with
       an already kept row is > nms_threshold, where overlap = 1.f - (float)(1.0 - I / (A + B - I))
       on integer areas (I = 0 for disjoint rects; overlap 1 if A + B == 0).
   The output is the kept rows in that order (descending score). With exactly one row, it is
   returned as is; with none, FaceDetectorYN returns no rows (None in Python).
"""
import argparse
import sys

import cv2
import numpy as np

OUTPUT_NAMES = ["cls_8", "cls_16", "cls_32", "obj_8", "obj_16", "obj_32",
                "bbox_8", "bbox_16", "bbox_32", "kps_8", "kps_16", "kps_32"]
STRIDES = (8, 16, 32)
DIVISOR = 32


def padded_size(w, h):
    return ((w - 1) // DIVISOR + 1) * DIVISOR, ((h - 1) // DIVISOR + 1) * DIVISOR


def blob(bgr):
    """The network input FaceDetectorYN builds: zero-padded bottom/right, BGR float32 0..255, NCHW."""
    h, w = bgr.shape[:2]
    pw, ph = padded_size(w, h)
    pad = np.zeros((ph, pw, 3), np.float32)
    pad[:h, :w] = bgr
    return pad.transpose(2, 0, 1)[None].copy()


def raw_outputs(net, bgr):
    b = blob(bgr)
    assert np.array_equal(b, cv2.dnn.blobFromImage(cv2.copyMakeBorder(
        bgr, 0, b.shape[2] - bgr.shape[0], 0, b.shape[3] - bgr.shape[1], cv2.BORDER_CONSTANT, value=0)))
    net.setInput(b)
    return dict(zip(OUTPUT_NAMES, net.forward(OUTPUT_NAMES)))


def scores(raw):
    """All cells' scores, in decode order (stride 8, 16, 32; row-major)."""
    out = []
    for s in STRIDES:
        cls = np.clip(raw[f"cls_{s}"].reshape(-1), np.float32(0), np.float32(1))
        obj = np.clip(raw[f"obj_{s}"].reshape(-1), np.float32(0), np.float32(1))
        out.append(np.sqrt(cls * obj).astype(np.float32))
    return np.concatenate(out)


def decode(raw, pw, ph, score_threshold):
    f32 = np.float32
    rows = []
    for s in STRIDES:
        cols, nrows = pw // s, ph // s
        cls = np.clip(raw[f"cls_{s}"].reshape(-1), f32(0), f32(1))
        obj = np.clip(raw[f"obj_{s}"].reshape(-1), f32(0), f32(1))
        bbox = raw[f"bbox_{s}"].reshape(-1, 4)
        kps = raw[f"kps_{s}"].reshape(-1, 10)
        assert cls.size == cols * nrows, (cls.size, cols, nrows)
        score = np.sqrt(cls * obj).astype(f32)
        idx = np.nonzero(~(score < f32(score_threshold)))[0]
        c = (idx % cols).astype(f32)
        r = (idx // cols).astype(f32)
        st = f32(s)
        cx = (c + bbox[idx, 0]) * st
        cy = (r + bbox[idx, 1]) * st
        # exp in double rounded to float (glibc's expf is correctly rounded too)
        w = np.exp(bbox[idx, 2].astype(np.float64)).astype(f32) * st
        h = np.exp(bbox[idx, 3].astype(np.float64)).astype(f32) * st
        x1 = cx - w / f32(2)
        y1 = cy - h / f32(2)
        out = np.zeros((idx.size, 15), f32)
        out[:, 0], out[:, 1], out[:, 2], out[:, 3] = x1, y1, w, h
        for n in range(5):
            out[:, 4 + 2 * n] = (kps[idx, 2 * n] + c) * st
            out[:, 5 + 2 * n] = (kps[idx, 2 * n + 1] + r) * st
        out[:, 14] = score[idx]
        rows.append(out)
    return np.concatenate(rows) if rows else np.zeros((0, 15), np.float32)


def int_rect(row):
    # C++ int(float): truncation toward zero
    return tuple(int(np.trunc(v)) for v in row[:4])


def overlap(a, b):
    """1.f - (float)jaccardDistance(Rect a, Rect b), as OpenCV's rectOverlap."""
    area_a, area_b = a[2] * a[3], b[2] * b[3]
    if area_a + area_b <= 0:
        return np.float32(1.0)
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    iw = min(a[0] + a[2], b[0] + b[2]) - x1
    ih = min(a[1] + a[3], b[1] + b[3]) - y1
    inter = iw * ih if iw > 0 and ih > 0 else 0
    dist = 1.0 - inter / float(area_a + area_b - inter)
    return np.float32(1.0) - np.float32(dist)


def nms(cands, score_threshold, nms_threshold, top_k, log=None):
    """NMSBoxes(..., eta=1, top_k); returns the kept indices in order. `log`, if a list, gets
    every (overlap, suppressed?) comparison made."""
    thr = np.float32(score_threshold)
    order = [i for i in range(len(cands)) if cands[i, 14] > thr]
    order.sort(key=lambda i: -float(cands[i, 14]))  # Python's sort is stable, as std::stable_sort
    if top_k > 0:
        order = order[:top_k]
    rects = [int_rect(r) for r in cands]
    kept = []
    limit = np.float32(nms_threshold)
    for i in order:
        keep = True
        for k in kept:
            ov = overlap(rects[i], rects[k])
            if log is not None:
                log.append(float(ov))
            if not ov <= limit:
                keep = False
                break
        if keep:
            kept.append(i)
    return kept


def detect_rows(raw, pw, ph, score_threshold, nms_threshold, top_k, log=None):
    cands = decode(raw, pw, ph, score_threshold)
    if len(cands) > 1:
        return cands[nms(cands, score_threshold, nms_threshold, top_k, log)], cands
    return cands, cands


def detect(net, bgr, score_threshold=0.9, nms_threshold=0.3, top_k=5000):
    h, w = bgr.shape[:2]
    pw, ph = padded_size(w, h)
    rows, _ = detect_rows(raw_outputs(net, bgr), pw, ph, score_threshold, nms_threshold, top_k)
    return rows


def opencv_rows(onnx_path, bgr, score_threshold, nms_threshold, top_k):
    h, w = bgr.shape[:2]
    det = cv2.FaceDetectorYN.create(onnx_path, "", (w, h), score_threshold, nms_threshold, top_k)
    _, faces = det.detect(bgr)
    return np.zeros((0, 15), np.float32) if faces is None else faces


def depthwise_bug_demo():
    """OpenCV 4.14's 3x3 depthwise convolution (padding 1) on a map one pixel high or wide: a
    one-node ONNX graph against the definition. YuNet meets such maps at stride 32 whenever the
    padded width or height is 32, i.e. for images 32 pixels or less on a side."""
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    worst = {}
    for c, h, w in [(64, 1, 1), (64, 1, 3), (64, 3, 1), (64, 2, 2), (64, 5, 7)]:
        wt = rng.standard_normal((c, 1, 3, 3)).astype(np.float32)
        b = rng.standard_normal(c).astype(np.float32)
        graph = helper.make_graph(
            [helper.make_node("Conv", ["x", "w", "b"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=c)], "dw",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, h, w])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, c, h, w])],
            [numpy_helper.from_array(wt, "w"), numpy_helper.from_array(b, "b")])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
        net = cv2.dnn.readNetFromONNX(np.frombuffer(model.SerializeToString(), np.uint8))
        x = rng.standard_normal((1, c, h, w)).astype(np.float32)
        net.setInput(x)
        y = net.forward()[0]
        xp = np.pad(x[0].astype(np.float64), ((0, 0), (1, 1), (1, 1)))
        want = b[:, None, None].astype(np.float64) + sum(
            wt[:, 0, i, j, None, None] * xp[:, i:i + h, j:j + w] for i in range(3) for j in range(3))
        worst[f"{c}x{h}x{w}"] = float(np.max(np.abs(y - want)))
        print(f"depthwise 3x3 on {c} channels of {h}x{w}: OpenCV {cv2.__version__} differs from the definition by {worst[f'{c}x{h}x{w}']:.3g}")
    return worst


def main():
    import os
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("images", nargs="*")
    ap.add_argument("--depthwise-bug", action="store_true", help="show OpenCV's depthwise convolution on 1-pixel-wide maps")
    ap.add_argument("--onnx", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "yunet", "yunet_n_320_320.onnx"))
    ap.add_argument("--score", type=float, default=0.9)
    ap.add_argument("--nms", type=float, default=0.3)
    ap.add_argument("--top-k", type=int, default=5000)
    args = ap.parse_args()
    cv2.setNumThreads(1)
    if args.depthwise_bug:
        depthwise_bug_demo()
    net = cv2.dnn.readNet(args.onnx)
    bad = 0
    for path in args.images:
        bgr = cv2.imread(path, cv2.IMREAD_COLOR)
        ours = detect(net, bgr, args.score, args.nms, args.top_k)
        ref = opencv_rows(args.onnx, bgr, args.score, args.nms, args.top_k)
        diff = float(np.max(np.abs(ours - ref))) if ours.shape == ref.shape and ours.size else (0.0 if ours.shape == ref.shape else float("inf"))
        print(f"{path}: OpenCV {len(ref)} faces, numpy {len(ours)}, largest difference {diff:.3g}")
        for r in ref:
            print("  " + " ".join(f"{v:.4f}" for v in r))
        bad += diff > 1e-4
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
