//! The host's side of FaceDetectorYN's decoding (the backend's lists of candidates read back,
//! or an image decoded from its heads), and its non-maximum suppression.

use super::model::{all_cells, decode_shapes, Level};
use super::{FaceBox, YuNetParams};
use crate::error::Result;
use crate::kernels::yunet_decode::{self, RECORD};
use std::cmp::Ordering;

/// The faces of the first `count` records of an image's list (see [`yunet_decode`]), in
/// FaceDetectorYN's decoding order, which the backend's list need not keep.
pub(super) fn candidates(records: &[f32], count: usize) -> Vec<FaceBox> {
    yunet_decode::in_decoding_order(records, count)
        .into_iter()
        .map(|r| FaceBox { x: r[0], y: r[1], w: r[2], h: r[3], landmarks: std::array::from_fn(|n| [r[4 + 2 * n], r[5 + 2 * n]]), score: r[14] })
        .collect()
}

/// Every candidate of one image from its heads (`heads` holds the outputs of `levels` in
/// order, each as channel planes), through the CPU kernel with room for every cell: for an
/// image whose list overflowed on the backend.
pub(super) fn decode(levels: &[Level], heads: &[&[f32]], padded: (usize, usize), threshold: f32) -> Result<Vec<FaceBox>> {
    let all = all_cells(levels, padded);
    let (mut count, mut records) = ([0], vec![0.0; all * RECORD]);
    for (shape, outputs) in decode_shapes(levels, 1, padded, all, threshold)?.into_iter().zip(heads.chunks_exact(4)) {
        yunet_decode::forward_cpu(shape, [outputs[0], outputs[1], outputs[2], outputs[3]], &mut count, &mut records)?;
    }
    Ok(candidates(&records, count[0] as usize))
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
    fn candidates_come_in_decoding_order_and_stop_at_the_count() {
        // Three records in the order a GPU's threads wrote them, and a fourth slot past the count.
        let record = |order: f32, score: f32| std::iter::repeat_n(order, 14).chain([score, order]).collect::<Vec<f32>>();
        let records = [record(7.0, 0.7), record(2.0, 0.9), record(5.0, 0.8), record(1.0, 1.0)].concat();
        let faces = candidates(&records, 3);
        assert_eq!(faces.iter().map(|f| (f.x, f.score)).collect::<Vec<_>>(), [(2.0, 0.9), (5.0, 0.8), (7.0, 0.7)]);
        assert_eq!(faces[0].landmarks, [[2.0; 2]; 5]);
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
