//! FaceDetectorYN's decoding of the head outputs and its non-maximum suppression, on the host.

use super::model::Level;
use super::{FaceBox, YuNetParams};
use std::cmp::Ordering;

/// FaceDetectorYN's candidates: every cell of every stride scoring at least `threshold`, in
/// stride order then row-major, with its arithmetic in f32 and in its order. `heads` holds
/// the outputs of `levels` in order, each as channel planes.
pub(super) fn decode(levels: &[Level], heads: &[&[f32]], (pw, ph): (usize, usize), threshold: f32) -> Vec<FaceBox> {
    let mut faces = Vec::new();
    for (level, outputs) in levels.iter().zip(heads.chunks_exact(4)) {
        let [cls, obj, bbox, kps] = [outputs[0], outputs[1], outputs[2], outputs[3]];
        let (cols, rows) = (pw / level.stride, ph / level.stride);
        let cells = cols * rows;
        let s = level.stride as f32;
        for i in 0..cells {
            let score = (cls[i].clamp(0.0, 1.0) * obj[i].clamp(0.0, 1.0)).sqrt();
            if score < threshold {
                continue;
            }
            let (c, r) = ((i % cols) as f32, (i / cols) as f32);
            let (cx, cy) = ((c + bbox[i]) * s, (r + bbox[cells + i]) * s);
            // OpenCV calls glibc's expf, which rounds correctly; exp in f64 rounded to f32 gives
            // the same on any platform (tools/yunet_reference.py does this too).
            let w = (bbox[2 * cells + i] as f64).exp() as f32 * s;
            let h = (bbox[3 * cells + i] as f64).exp() as f32 * s;
            let landmarks = std::array::from_fn(|n| [(kps[2 * n * cells + i] + c) * s, (kps[(2 * n + 1) * cells + i] + r) * s]);
            faces.push(FaceBox { x: cx - w / 2.0, y: cy - h / 2.0, w, h, landmarks, score });
        }
    }
    faces
}

/// OpenCV's `NMSBoxes` as FaceDetectorYN calls it (eta 1), on the boxes truncated to integers:
/// the candidates strictly above the score threshold, best first (ties in decoding order),
/// the first `top_k`, then each kept unless it overlaps a kept one by more than the NMS
/// threshold. A single candidate is returned as it is, as FaceDetectorYN does.
///
/// On the host rather than the device: there are a few hundred candidates at most, the greedy
/// loop is sequential (each decision depends on every one before it), and the candidates have
/// been read back for decoding anyway; a GPU pass would cost a submission and a second readback
/// to save microseconds.
pub(super) fn suppress(candidates: &[FaceBox], params: &YuNetParams) -> Vec<FaceBox> {
    if candidates.len() <= 1 {
        return candidates.to_vec();
    }
    let mut order: Vec<usize> = (0..candidates.len()).filter(|&i| candidates[i].score > params.score_threshold).collect();
    order.sort_by(|&a, &b| candidates[b].score.partial_cmp(&candidates[a].score).unwrap_or(Ordering::Equal));
    if params.top_k > 0 {
        order.truncate(params.top_k);
    }
    let rects: Vec<[i64; 4]> = candidates.iter().map(|f| [f.x, f.y, f.w, f.h].map(|v| i64::from(v as i32))).collect();
    let mut kept: Vec<usize> = Vec::new();
    for i in order {
        if kept.iter().all(|&k| overlap(&rects[i], &rects[k]) <= params.nms_threshold) {
            kept.push(i);
        }
    }
    kept.into_iter().map(|i| candidates[i]).collect()
}

/// OpenCV's `rectOverlap`: `1.f - (float)jaccardDistance(a, b)`, the distance in f64 on the
/// integer areas; 1 for two empty rectangles.
fn overlap(a: &[i64; 4], b: &[i64; 4]) -> f32 {
    let (area_a, area_b) = (a[2] * a[3], b[2] * b[3]);
    if area_a + area_b <= 0 {
        return 1.0;
    }
    let iw = (a[0] + a[2]).min(b[0] + b[2]) - a[0].max(b[0]);
    let ih = (a[1] + a[3]).min(b[1] + b[3]) - a[1].max(b[1]);
    let inter = if iw > 0 && ih > 0 { iw * ih } else { 0 };
    1.0 - (1.0 - inter as f64 / (area_a + area_b - inter) as f64) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn face(x: f32, y: f32, w: f32, h: f32, score: f32) -> FaceBox {
        FaceBox { x, y, w, h, landmarks: [[0.0; 2]; 5], score }
    }

    #[test]
    fn overlap_is_opencvs_on_truncated_rectangles() {
        assert_eq!(overlap(&[0, 0, 10, 10], &[0, 0, 10, 10]), 1.0);
        assert_eq!(overlap(&[0, 0, 10, 10], &[10, 0, 10, 10]), 0.0);
        assert_eq!(overlap(&[0, 0, 10, 10], &[5, 0, 10, 10]), 1.0 - (1.0 - 50.0 / 150.0f64) as f32);
        assert_eq!(overlap(&[3, 3, 0, 0], &[3, 3, 0, 0]), 1.0);
    }

    #[test]
    fn suppression_truncates_toward_zero_and_cuts_candidates_before_nms() {
        let p = YuNetParams { score_threshold: 0.5, nms_threshold: 0.2, top_k: 0 };
        // -1.9 truncates to -1, not -2: [-1, 9) overlaps [5, 15) by 4 / 16 = 0.25 (rounding
        // down, 3 / 17 = 0.18 would keep both).
        let twins = [face(-1.9, 0.0, 10.0, 10.0, 0.9), face(5.0, 0.0, 10.0, 10.0, 0.8)];
        assert_eq!(suppress(&twins, &p), vec![twins[0]]);
        // Ties keep decoding order; a score at the threshold is dropped by NMS...
        let far = [face(0.0, 0.0, 5.0, 5.0, 0.7), face(50.0, 0.0, 5.0, 5.0, 0.7), face(90.0, 0.0, 5.0, 5.0, 0.5)];
        assert_eq!(suppress(&far, &p), vec![far[0], far[1]]);
        // ... but not when it is the only candidate.
        assert_eq!(suppress(&far[2..], &p), vec![far[2]]);
        // top_k limits the candidates, not the faces.
        assert_eq!(suppress(&[twins[0], twins[1], far[1]], &YuNetParams { top_k: 2, ..p }), vec![twins[0]]);
    }
}
