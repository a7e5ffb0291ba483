//! Data augmentation like Keras' ImageDataGenerator: random rotation, shear, zoom, shifts and
//! horizontal flips, drawn per image on the host as one 2x3 affine map; `kernels::warp` applies
//! the maps on either backend.

use crate::data::SIDE;
use crate::rng::Rng;

#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AugmentConfig {
    /// Rotation drawn from [-r, r] degrees.
    pub rotation_deg: f32,
    /// Shear angle drawn from [-s, s] degrees (Keras' shear_range is in degrees too).
    pub shear_deg: f32,
    /// Zoom factors drawn from [1 - z, 1 + z], independently for x and y.
    pub zoom: f32,
    /// Shifts drawn from [-f, f] of the image size, independently for x and y.
    pub shift: f32,
    pub horizontal_flip: bool,
}

impl AugmentConfig {
    pub const NONE: AugmentConfig = AugmentConfig { rotation_deg: 0.0, shear_deg: 0.0, zoom: 0.0, shift: 0.0, horizontal_flip: false };

    /// The affine map (output pixel -> source pixel) for one image:
    /// `src = [a b c; d e f] * (x, y, 1)`.
    pub fn draw(&self, rng: &mut Rng) -> [f32; 6] {
        let theta = rng.uniform(-self.rotation_deg, self.rotation_deg).to_radians();
        let shear = rng.uniform(-self.shear_deg, self.shear_deg).to_radians();
        let zx = rng.uniform(1.0 - self.zoom, 1.0 + self.zoom);
        let zy = rng.uniform(1.0 - self.zoom, 1.0 + self.zoom);
        let tx = rng.uniform(-self.shift, self.shift) * SIDE as f32;
        let ty = rng.uniform(-self.shift, self.shift) * SIDE as f32;
        let flip = self.horizontal_flip && rng.next_u32() & 1 == 1;
        // About the image centre: rotate, shear, then zoom (Keras' order), then shift.
        let (sin, cos) = theta.sin_cos();
        let (a, b) = (cos * zx, (-sin + cos * shear.tan()) * zy);
        let (d, e) = (sin * zx, (cos + sin * shear.tan()) * zy);
        let (a, d) = if flip { (-a, -d) } else { (a, d) };
        let centre = (SIDE as f32 - 1.0) / 2.0;
        [a, b, centre + tx - a * centre - b * centre, d, e, centre + ty - d * centre - e * centre]
    }
}
