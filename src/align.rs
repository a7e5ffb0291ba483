//! Where a face's expression crop comes from in its image. With a CNN detector's five
//! landmarks, the crop is aligned: turned, scaled and moved so that the landmarks fall as
//! near as they can to where they fall on an average FER2013 training face
//! ([`FER_LANDMARKS`]), so that a tilted face in a photo reaches the model upright and framed
//! as the faces it learnt from. Without landmarks (a Haar box) or with `--no-align`, the
//! pipeline crops the square around the box instead.

use crate::kernels::face_crop::CropMap;

/// The median landmarks YuNet finds on FER2013's test faces, in 48x48 pixels (pixel centres at
/// integers), mirror pairs made symmetric about the face's midline: right eye, left eye, nose
/// tip, right and left mouth corner. Measured by `tools/fer_landmarks.py` on 1,135 faces; each
/// point's spread across faces is about 3.5 px.
pub const FER_LANDMARKS: [[f32; 2]; 5] = [[14.80, 18.52], [32.27, 18.52], [23.53, 28.05], [16.09, 35.20], [30.97, 35.20]];

/// The crop that maps [`FER_LANDMARKS`] onto the detected `landmarks` with the least squared
/// error over a rotation, one scale and a shift (the closed-form similarity fit of Horn and
/// Umeyama, without reflections), as a map from crop pixel to image point. All five points set
/// the angle, not the eyes alone: on FER2013 faces pasted turned into scenes, the fitted angle
/// strays less from the true one and labels more faces right (tools/aligned_scenes.py).
pub fn aligned(landmarks: &[[f32; 2]; 5]) -> CropMap {
    let mean = |pts: &[[f32; 2]; 5]| [0, 1].map(|k| pts.iter().map(|v| v[k] as f64).sum::<f64>() / 5.0);
    let (pm, qm) = (mean(landmarks), mean(&FER_LANDMARKS));
    // Sums over the points of template offset . detected offset, and of their cross product:
    // the cosine and sine of the best angle, times the scale times the template's spread.
    let (mut dot, mut cross, mut spread) = (0.0, 0.0, 0.0);
    for (q, p) in FER_LANDMARKS.iter().zip(landmarks) {
        let (qx, qy) = (q[0] as f64 - qm[0], q[1] as f64 - qm[1]);
        let (px, py) = (p[0] as f64 - pm[0], p[1] as f64 - pm[1]);
        dot += qx * px + qy * py;
        cross += qx * py - qy * px;
        spread += qx * qx + qy * qy;
    }
    // Landmarks piled on one point say nothing of the face's size or angle: keep the crop
    // upright at one image pixel a crop pixel rather than divide by zero.
    let (a, d) = if dot.hypot(cross) > 0.0 { (dot / spread, cross / spread) } else { (1.0, 0.0) };
    let (b, e) = (-d, a);
    CropMap::new([a, b, pm[0] - a * qm[0] - b * qm[1], d, e, pm[1] - d * qm[0] - e * qm[1]].map(|v| v as f32))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(m: &CropMap, [x, y]: [f32; 2]) -> [f32; 2] {
        let m = m.map;
        [m[0] * x + m[1] * y + m[2], m[3] * x + m[4] * y + m[5]]
    }

    #[test]
    fn a_template_face_moved_turned_and_scaled_maps_back_onto_the_template() {
        for (angle_deg, scale, shift) in [(0.0f32, 1.0f32, [0.0f32, 0.0]), (30.0, 4.0, [300.0, 120.0]), (-75.0, 0.5, [10.0, 900.0]), (180.0, 2.5, [64.0, 64.0])] {
            let (sin, cos) = angle_deg.to_radians().sin_cos();
            let face = FER_LANDMARKS.map(|[x, y]| [scale * (cos * x - sin * y) + shift[0], scale * (sin * x + cos * y) + shift[1]]);
            let crop = aligned(&face);
            for (template, detected) in FER_LANDMARKS.iter().zip(&face) {
                let got = apply(&crop, *template);
                assert!((got[0] - detected[0]).abs() < 1e-2 && (got[1] - detected[1]).abs() < 1e-2, "{angle_deg} deg x{scale}: {got:?} vs {detected:?}");
            }
            assert_eq!(crop.samples, (scale / 2.0).ceil().max(1.0) as u32, "samples for scale {scale}");
        }
    }

    /// The summed squared distance between the mapped template and `landmarks`.
    fn residual(m: &CropMap, landmarks: &[[f32; 2]; 5]) -> f64 {
        FER_LANDMARKS.iter().zip(landmarks).map(|(q, p)| apply(m, *q).iter().zip(p).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>()).sum()
    }

    #[test]
    fn no_nearby_rotation_scale_or_shift_fits_noisy_landmarks_better() {
        let landmarks = [[110.0, 84.0], [161.0, 95.0], [131.0, 121.0], [108.0, 138.0], [149.0, 150.0]];
        let best = aligned(&landmarks);
        let fit = residual(&best, &landmarks);
        let m = best.map;
        let (scale, angle) = (m[0].hypot(m[3]), m[3].atan2(m[0]));
        for (ds, da, dx, dy) in [(1.01, 0.0, 0.0, 0.0), (0.99, 0.0, 0.0, 0.0), (1.0, 0.01, 0.0, 0.0), (1.0, -0.01, 0.0, 0.0), (1.0, 0.0, 0.5, 0.0), (1.0, 0.0, 0.0, -0.5)] {
            let (sin, cos) = (angle + da).sin_cos();
            let (s, c) = (scale * ds * sin, scale * ds * cos);
            // Turned and scaled about the template's centre, so that only one thing changes.
            let centre = apply(&best, [23.53, 27.1]);
            let map = [c, -s, centre[0] + dx - c * 23.53 + s * 27.1, s, c, centre[1] + dy - s * 23.53 - c * 27.1];
            assert!(residual(&CropMap::new(map), &landmarks) > fit, "scale x{ds}, angle {da:+}, shift ({dx}, {dy}) fits better");
        }
    }

    #[test]
    fn landmarks_on_one_point_give_a_finite_crop() {
        let crop = aligned(&[[5.0, 5.0]; 5]);
        assert!(crop.map.iter().all(|v| v.is_finite()));
    }
}
