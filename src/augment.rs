//! Data augmentation like Keras' ImageDataGenerator: random rotation, shear, zoom, shifts and
//! horizontal flips, drawn per image on the host as one 2x3 affine map, then applied by a warp
//! (bilinear, edge pixels repeated outside the image, as Keras' fill_mode='nearest') that also
//! rescales bytes to [0, 1].

use crate::data::SIDE;
use crate::rng::Rng;
use rayon::prelude::*;

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

    pub fn is_identity(&self) -> bool {
        *self == Self::NONE
    }

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

/// The identity map (no augmentation).
pub const IDENTITY: [f32; 6] = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0];

/// Bilinear sample of a byte image with clamped (repeated-edge) coordinates.
fn sample(img: &[u8], sx: f32, sy: f32) -> f32 {
    let max = (SIDE - 1) as f32;
    let (sx, sy) = (sx.clamp(0.0, max), sy.clamp(0.0, max));
    let (x0, y0) = (sx.floor() as usize, sy.floor() as usize);
    let (x1, y1) = ((x0 + 1).min(SIDE - 1), (y0 + 1).min(SIDE - 1));
    let (fx, fy) = (sx - x0 as f32, sy - y0 as f32);
    let at = |x: usize, y: usize| img[y * SIDE + x] as f32;
    let top = at(x0, y0) + fx * (at(x1, y0) - at(x0, y0));
    let bottom = at(x0, y1) + fx * (at(x1, y1) - at(x0, y1));
    top + fy * (bottom - top)
}

/// Warps each 48x48 byte image of `images` by its map and writes it to `out` scaled to [0, 1].
pub fn warp_cpu(images: &[u8], maps: &[[f32; 6]], out: &mut [f32]) {
    let px = SIDE * SIDE;
    out.par_chunks_mut(px).zip(images.par_chunks(px)).zip(maps.par_iter()).for_each(|((dst, src), m)| {
        if *m == IDENTITY {
            dst.iter_mut().zip(src).for_each(|(d, &s)| *d = s as f32 / 255.0);
            return;
        }
        for y in 0..SIDE {
            for x in 0..SIDE {
                let (fx, fy) = (x as f32, y as f32);
                dst[y * SIDE + x] = sample(src, m[0] * fx + m[1] * fy + m[2], m[3] * fx + m[4] * fy + m[5]) / 255.0;
            }
        }
    });
}
