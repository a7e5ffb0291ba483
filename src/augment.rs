//! Data augmentation like Keras' ImageDataGenerator (random rotation, shear, zoom, shifts and
//! horizontal flips), torchvision's RandomCrop and RandomErasing, drawn per image on the host
//! as one [`Augment`]: an affine map and an erased rectangle that `kernels::warp` applies on
//! either backend.

use crate::data::SIDE;
use crate::kernels::warp::{self, Augment};
use crate::rng::Rng;

/// Test-time augmentation: the views of a face whose class probabilities are averaged to label
/// it. Each view costs a forward pass.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum Tta {
    /// The centre crop alone.
    None,
    /// The centre crop and its mirror image.
    #[default]
    Mirror,
    /// The four corner crops and the centre crop, each also mirrored (for models whose input is
    /// a crop of the 48x48 face; on a 48x48 model it is the same as `mirror`).
    TenCrop,
}

impl Tta {
    /// The distinct views for a model whose input side is `side`, the centre crop first.
    pub fn views(self, side: usize) -> Vec<Augment> {
        let all = match self {
            Tta::None => vec![warp::centre(side)],
            Tta::Mirror => vec![warp::centre(side), warp::mirror(side)],
            Tta::TenCrop => {
                let mut crops = warp::ten_crops(side).to_vec();
                // The centre crop first, so the first view is always the single-image one.
                let centre = crops.iter().position(|v| *v == warp::centre(side)).expect("ten crops include the centre");
                crops.swap(0, centre);
                crops
            }
        };
        all.iter().enumerate().filter(|(i, v)| !all[..*i].contains(v)).map(|(_, v)| *v).collect()
    }
}

/// The erased area as a fraction of the image's (torchvision's RandomErasing `scale`).
pub const ERASE_SCALE: (f32, f32) = (0.02, 0.33);
/// The erased rectangle's height / width, drawn log-uniformly (RandomErasing's `ratio`).
pub const ERASE_RATIO: (f32, f32) = (0.3, 3.3);

#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AugmentConfig {
    /// Rotation drawn from [-r, r] degrees.
    pub rotation_deg: f32,
    /// Shear angle drawn from [-s, s] degrees (Keras' shear_range is in degrees too).
    pub shear_deg: f32,
    /// Zoom factors drawn from [1 - z, 1 + z], independently for x and y.
    pub zoom: f32,
    /// Shifts drawn from [-f, f] of the model's input side, independently for x and y.
    pub shift: f32,
    pub horizontal_flip: bool,
    /// When the model's input is smaller than the 48x48 images, crop it at an offset drawn
    /// uniformly in whole pixels (torchvision's RandomCrop) instead of at the centre. Runs saved
    /// before crops existed had 48x48 inputs, which have nothing to crop.
    #[serde(default = "crop_by_default")]
    pub random_crop: bool,
    /// Random erasing (Zhong et al. 2017, torchvision's RandomErasing): the probability that a
    /// rectangle of [`ERASE_SCALE`] of the image's area with a height / width in
    /// [`ERASE_RATIO`] is filled with `erase_fill`. Runs saved before it existed had none.
    #[serde(default)]
    pub erase_probability: f32,
    #[serde(default)]
    pub erase_fill: EraseFill,
}

fn crop_by_default() -> bool {
    true
}

/// What an erased rectangle is filled with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum EraseFill {
    /// One grey drawn uniformly in [0, 1] per image (torchvision's 'random' draws one per pixel,
    /// which the warp kernel's single fill value cannot hold).
    #[default]
    Random,
    /// Black: torchvision's default value 0.
    Zero,
}

impl AugmentConfig {
    pub const NONE: AugmentConfig =
        AugmentConfig { rotation_deg: 0.0, shear_deg: 0.0, zoom: 0.0, shift: 0.0, horizontal_flip: false, random_crop: false, erase_probability: 0.0, erase_fill: EraseFill::Random };
    /// Random crops alone (of a model input smaller than the images): what the recipes add
    /// their ranges to.
    pub const CROP: AugmentConfig = AugmentConfig { random_crop: true, ..Self::NONE };

    /// The augmentation of one image for a model whose input side is `side` (at most 48): the
    /// affine map (output pixel -> source pixel) `src = [a b c; d e f] * (x, y, 1)` of a crop of
    /// that side, and the rectangle random erasing fills. Nothing is drawn for what is off (no
    /// flips, nothing to crop, no erasing), so each setting draws the same numbers as before it
    /// existed.
    pub fn draw(&self, side: usize, rng: &mut Rng) -> Augment {
        let theta = rng.uniform(-self.rotation_deg, self.rotation_deg).to_radians();
        let shear = rng.uniform(-self.shear_deg, self.shear_deg).to_radians();
        let zx = rng.uniform(1.0 - self.zoom, 1.0 + self.zoom);
        let zy = rng.uniform(1.0 - self.zoom, 1.0 + self.zoom);
        let tx = rng.uniform(-self.shift, self.shift) * side as f32;
        let ty = rng.uniform(-self.shift, self.shift) * side as f32;
        let flip = self.horizontal_flip && rng.next_u32() & 1 == 1;
        let far = SIDE - side;
        let (ox, oy) = if self.random_crop && far > 0 { (rng.below(far + 1), rng.below(far + 1)) } else { (warp::centre_offset(side), warp::centre_offset(side)) };
        // About the crop's centre: rotate, shear, then zoom (Keras' order), then shift; the
        // crop's offset then places that centre in the image. The centre crop of a 48x48
        // input has offset 0, which leaves the sums as they were before crops.
        let (sin, cos) = theta.sin_cos();
        let (a, b) = (cos * zx, (-sin + cos * shear.tan()) * zy);
        let (d, e) = (sin * zx, (cos + sin * shear.tan()) * zy);
        let (a, d) = if flip { (-a, -d) } else { (a, d) };
        let centre = (side as f32 - 1.0) / 2.0;
        let (cx, cy) = (ox as f32 + centre, oy as f32 + centre);
        let mut augment = Augment::warp([a, b, cx + tx - a * centre - b * centre, d, e, cy + ty - d * centre - e * centre]);
        if self.erase_probability > 0.0 && rng.uniform(0.0, 1.0) < self.erase_probability {
            if let Some(rect) = erase_rect(side, rng) {
                augment.erase = rect;
                augment.fill = match self.erase_fill {
                    EraseFill::Random => rng.uniform(0.0, 1.0),
                    EraseFill::Zero => 0.0,
                };
            }
        }
        augment
    }
}

/// torchvision's RandomErasing.get_params for a `side` x `side` image: up to ten tries at a
/// rectangle that fits inside it, as [x0, y0, x1, y1); none when all ten fail.
fn erase_rect(side: usize, rng: &mut Rng) -> Option<[u32; 4]> {
    let area = (side * side) as f32;
    let (lo, hi) = (ERASE_RATIO.0.ln(), ERASE_RATIO.1.ln());
    (0..10).find_map(|_| {
        let target = area * rng.uniform(ERASE_SCALE.0, ERASE_SCALE.1);
        let ratio = rng.uniform(lo, hi).exp();
        let (h, w) = ((target * ratio).sqrt().round() as usize, (target / ratio).sqrt().round() as usize);
        (h < side && w < side).then(|| {
            let (y, x) = (rng.below(side - h + 1), rng.below(side - w + 1));
            [x, y, x + w, y + h].map(|v| v as u32)
        })
    })
}
