//! The augmentation: the warp kernel (crops, affine maps, random erasing) on both backends
//! against naive loops, the crops evaluation uses, and the draws (crop offsets, the affine map
//! about the crop's centre, erased rectangles).

mod common;

use common::{assert_close, gpu, uniform};
use mien::augment::{AugmentConfig, EraseFill, Tta, ERASE_SCALE};
use mien::data::{PIXELS, SIDE};
use mien::kernels::warp::{self, Augment, NO_ERASE};
use mien::nn::{Cpu, Model, ModelConfig};
use mien::rng::Rng;
use mien::train::Recipe;

/// Seeded random bytes: `n` 48x48 images whose neighbouring pixels differ, so that any
/// misplaced sample shows.
fn images(n: usize, seed: u64) -> Vec<u8> {
    uniform(n * PIXELS, seed, 0.0, 256.0).into_iter().map(|v| v as u8).collect()
}

/// The warp written out with scalar loops and f64 arithmetic: the oracle for `warp_cpu`.
fn naive_warp(images: &[u8], augments: &[Augment], side: usize) -> Vec<f32> {
    let mut out = Vec::new();
    for (i, a) in augments.iter().enumerate() {
        let m = a.map.map(f64::from);
        let pixel = |x: usize, y: usize| images[i * PIXELS + y * SIDE + x] as f64;
        for y in 0..side {
            for x in 0..side {
                let [x0, y0, x1, y1] = a.erase.map(|v| v as usize);
                if x0 <= x && x < x1 && y0 <= y && y < y1 {
                    out.push(a.fill);
                    continue;
                }
                let (fx, fy) = (x as f64, y as f64);
                let sx = (m[0] * fx + m[1] * fy + m[2]).clamp(0.0, 47.0);
                let sy = (m[3] * fx + m[4] * fy + m[5]).clamp(0.0, 47.0);
                let (left, top) = (sx.floor() as usize, sy.floor() as usize);
                let (right, bottom) = ((left + 1).min(47), (top + 1).min(47));
                let (ax, ay) = (sx - left as f64, sy - top as f64);
                let upper = (1.0 - ax) * pixel(left, top) + ax * pixel(right, top);
                let lower = (1.0 - ax) * pixel(left, bottom) + ax * pixel(right, bottom);
                out.push((((1.0 - ay) * upper + ay * lower) / 255.0) as f32);
            }
        }
    }
    out
}

fn warp_on_cpu(images: &[u8], augments: &[Augment], side: usize) -> Vec<f32> {
    let mut out = vec![f32::NAN; augments.len() * side * side];
    warp::warp_cpu(images, augments, side, &mut out).unwrap();
    out
}

fn warp_on_gpu(images: &[u8], augments: &[Augment], side: usize) -> Vec<f32> {
    let g = gpu();
    let (pixels, augments_g, out) = (g.upload(&mien::gpu::pack_bytes(images)).unwrap(), g.upload(augments).unwrap(), g.zeros::<f32>(augments.len() * side * side).unwrap());
    g.run(|rec| warp::warp_gpu(rec, side, &pixels, &augments_g, &out)).unwrap();
    g.read(&out).unwrap()
}

/// Strong augmentation of every kind, so that samples fall outside the image and between
/// pixels.
const STRONG: AugmentConfig = AugmentConfig { rotation_deg: 30.0, shear_deg: 10.0, zoom: 0.3, shift: 0.2, horizontal_flip: true, ..AugmentConfig::CROP };

/// `n` augmentations for a side: drawn ones, and fixed ones where n allows: the centre crop,
/// its mirror image, the far corner crop, and one whose erased rectangle runs past the output's
/// right edge.
fn augmentations(n: usize, side: usize, erase_probability: f32, seed: u64) -> Vec<Augment> {
    let cfg = AugmentConfig { erase_probability, ..STRONG };
    let mut rng = Rng::new(seed);
    let mut augments: Vec<Augment> = (0..n).map(|_| cfg.draw(side, &mut rng)).collect();
    let far = SIDE - side;
    let past_the_edge = Augment { erase: [side as u32 - 3, 2, side as u32 + 5, 7], fill: 0.25, ..warp::crop(side, (far, 0), false) };
    for (slot, fixed) in augments.iter_mut().zip([warp::centre(side), warp::mirror(side), warp::crop(side, (far, far), false), past_the_edge]) {
        *slot = fixed;
    }
    augments
}

#[test]
fn warp_cpu_matches_naive_loops_and_gpu_matches_cpu() {
    for side in [48, 40, 37] {
        // Batch 1, and 13 images, whose pixel counts are no multiple of the 256-thread workgroup.
        for n in [1, 13] {
            for erase_probability in [0.0, 0.6] {
                let what = format!("warp of {n} images to {side}x{side}, erasing with probability {erase_probability}");
                let (images, augments) = (images(n, side as u64), augmentations(n, side, erase_probability, n as u64));
                let cpu = warp_on_cpu(&images, &augments, side);
                assert_close(&format!("{what} (CPU vs naive loops)"), &cpu, &naive_warp(&images, &augments, side), 1e-5);
                assert_close(&format!("{what} (GPU vs CPU)"), &warp_on_gpu(&images, &augments, side), &cpu, 1e-5);
            }
        }
    }
}

#[test]
fn erased_rectangles_hold_exactly_the_fill_and_nothing_else_changes() {
    let (side, n) = (37, 9);
    let images = images(n, 1);
    let cfg = AugmentConfig { erase_probability: 1.0, ..STRONG };
    let mut rng = Rng::new(2);
    let augments: Vec<Augment> = (0..n).map(|_| cfg.draw(side, &mut rng)).collect();
    let plain: Vec<Augment> = augments.iter().map(|a| Augment::warp(a.map)).collect();
    for (device, warped, unerased) in
        [("CPU", warp_on_cpu(&images, &augments, side), warp_on_cpu(&images, &plain, side)), ("GPU", warp_on_gpu(&images, &augments, side), warp_on_gpu(&images, &plain, side))]
    {
        for (i, a) in augments.iter().enumerate() {
            let [x0, y0, x1, y1] = a.erase.map(|v| v as usize);
            assert!(x0 < x1 && y0 < y1, "image {i}: nothing erased: {a:?}");
            for (p, (&got, &before)) in warped[i * side * side..][..side * side].iter().zip(&unerased[i * side * side..]).enumerate() {
                let (x, y) = (p % side, p / side);
                let want = if (x0..x1).contains(&x) && (y0..y1).contains(&y) { a.fill } else { before };
                assert_eq!(got.to_bits(), want.to_bits(), "{device}, image {i}, pixel ({x}, {y}) of {a:?}");
            }
        }
    }
}

/// The `side` x `side` window at (x, y) of image `i`, optionally mirrored, as floats.
fn window(images: &[u8], i: usize, side: usize, (x, y): (usize, usize), mirrored: bool) -> Vec<f32> {
    let rows = images[i * PIXELS..][..PIXELS].chunks(SIDE).skip(y).take(side);
    rows.flat_map(|row| {
        let mut row = row[x..x + side].to_vec();
        if mirrored {
            row.reverse();
        }
        row.into_iter().map(|b| b as f32 / 255.0)
    })
    .collect()
}

#[test]
fn crops_copy_their_window_of_the_image_exactly() {
    let images = images(3, 7);
    for side in [48, 40, 37, 1] {
        let (far, mid) = (SIDE - side, (SIDE - side) / 2);
        let views = [warp::centre(side), warp::mirror(side)].into_iter().chain(warp::ten_crops(side)).collect::<Vec<_>>();
        let places = [
            ((mid, mid), false),
            ((mid, mid), true),
            ((0, 0), false),
            ((0, 0), true),
            ((far, 0), false),
            ((far, 0), true),
            ((0, far), false),
            ((0, far), true),
            ((far, far), false),
            ((far, far), true),
            ((mid, mid), false),
            ((mid, mid), true),
        ];
        for (view, (at, mirrored)) in views.into_iter().zip(places) {
            let augments = [view; 3];
            let want: Vec<f32> = (0..3).flat_map(|i| window(&images, i, side, at, mirrored)).collect();
            assert_eq!(warp_on_cpu(&images, &augments, side), want, "side {side}, window at {at:?}, mirrored {mirrored}");
            // WGSL's division is not correctly rounded, so the GPU is held to a tolerance.
            assert_close(&format!("GPU crop of side {side} at {at:?}"), &warp_on_gpu(&images, &augments, side), &want, 1e-6);
        }
    }
    // At 48 the centre crop and its mirror image are the maps a 48x48 model always used.
    assert_eq!(warp::centre(48), Augment::warp([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]));
    assert_eq!(warp::mirror(48), Augment::warp([-1.0, 0.0, 47.0, 0.0, 1.0, 0.0]));
}

/// Where `a` sends output pixel (x, y).
fn source(a: &Augment, (x, y): (f32, f32)) -> (f32, f32) {
    let m = a.map;
    (m[0] * x + m[1] * y + m[2], m[3] * x + m[4] * y + m[5])
}

#[test]
fn crop_offsets_are_whole_pixels_inside_the_image_and_the_affine_map_turns_about_the_crop() {
    for side in [48, 47, 40, 37, 1] {
        let far = SIDE - side;
        let centre = (side as f32 - 1.0) / 2.0;
        let mut seen = vec![[false; 2]; far + 1];
        // Without flips (which draw one more number) the affine ranges change the numbers drawn
        // but not how many: the same seed gives both configs the same crop.
        let turned = AugmentConfig { horizontal_flip: false, shift: 0.0, ..STRONG };
        let (mut crops, mut turns) = (Rng::new(side as u64), Rng::new(side as u64));
        for _ in 0..2000 {
            let crop = AugmentConfig::CROP.draw(side, &mut crops);
            let [one, zero0, ox, zero1, one1, oy] = crop.map;
            assert_eq!((one, zero0, zero1, one1, crop.erase), (1.0, 0.0, 0.0, 1.0, NO_ERASE), "side {side}: a crop is a translation: {crop:?}");
            for (axis, o) in [ox, oy].into_iter().enumerate() {
                assert!(o.fract() == 0.0 && (0.0..=far as f32).contains(&o), "side {side}: offset {o} outside [0, {far}]");
                seen[o as usize][axis] = true;
            }
            // Rotation, shear and zoom leave the crop's centre where it is.
            let (cx, cy) = source(&turned.draw(side, &mut turns), (centre, centre));
            assert!((cx - ox - centre).abs() < 1e-4 && (cy - oy - centre).abs() < 1e-4, "side {side}: the centre went to ({cx}, {cy}), crop at ({ox}, {oy})");
        }
        assert!(seen.iter().all(|s| s[0] && s[1]), "side {side}: not every offset in [0, {far}] drawn in x and y: {seen:?}");
        // Without augmentation (--no-augment) the crop is the centre one, as in evaluation.
        assert_eq!(AugmentConfig::NONE.draw(side, &mut Rng::new(1)), warp::centre(side));
    }
}

#[test]
fn erased_rectangles_follow_torchvision_random_erasing() {
    for side in [48, 37] {
        let area = (side * side) as f32;
        for (p, fill) in [(1.0, EraseFill::Random), (0.5, EraseFill::Zero)] {
            let cfg = AugmentConfig { erase_probability: p, erase_fill: fill, ..AugmentConfig::NONE };
            let mut rng = Rng::new(3);
            let mut erased = 0;
            for _ in 0..2000 {
                let a = cfg.draw(side, &mut rng);
                if a.erase == NO_ERASE {
                    continue;
                }
                erased += 1;
                let [x0, y0, x1, y1] = a.erase.map(|v| v as usize);
                assert!(x0 < x1 && x1 <= side && y0 < y1 && y1 <= side && x1 - x0 < side && y1 - y0 < side, "side {side}: {:?}", a.erase);
                // Height and width are rounded, which moves the area by up to about a side.
                let share = ((x1 - x0) * (y1 - y0)) as f32;
                assert!(share >= ERASE_SCALE.0 * area - side as f32 && share <= ERASE_SCALE.1 * area + side as f32, "side {side}: area {share} of {area}");
                match fill {
                    EraseFill::Random => assert!((0.0..1.0).contains(&a.fill)),
                    EraseFill::Zero => assert_eq!(a.fill, 0.0),
                }
            }
            // Ten tries at a rectangle that fits almost never all fail.
            let rate = erased as f32 / 2000.0;
            assert!((rate - p).abs() < 0.05, "side {side}: erased {rate} of the images, asked for {p}");
        }
    }
}

#[test]
fn a_model_input_that_is_no_crop_of_the_images_is_refused() {
    let config = |input: &str| {
        let json = format!(r#"{{"name": "x", "input": {input}, "classes": 7, "layers": [{{"type": "flatten"}}, {{"type": "dense", "units": 7}}]}}"#);
        ModelConfig::from_json(&json, "x").unwrap()
    };
    for input in ["[1, 49, 49]", "[1, 40, 38]", "[3, 40, 40]"] {
        let err = Model::new(&Cpu, config(input), 0).err().expect(input).to_string();
        assert!(err.contains("must be [1, S, S] with S from 1 to 48"), "{input}: {err}");
    }
    let mut model = Model::new(&Cpu, config("[1, 40, 40]"), 0).unwrap();
    assert_eq!(model.input_side(), 40);
    // Images stay 48x48 whatever the input side.
    let err = model.evaluate_batch(&Cpu, &vec![0; 2 * 40 * 40], &[0, 1]).unwrap_err().to_string();
    assert!(err.contains("3200 input bytes for 2 images of 2304 bytes"), "{err}");
    assert_eq!(model.predict(&Cpu, &images(2, 1), Tta::Mirror).unwrap().len(), 14);
}

#[test]
fn recipes_saved_before_crops_and_erasing_load_as_todays() {
    for recipe in [Recipe::adam_recipe(), Recipe::plateau_recipe(), Recipe::original()] {
        let mut saved = serde_json::to_value(&recipe).unwrap();
        let augment = saved["augment"].as_object_mut().unwrap();
        for field in ["random_crop", "erase_probability", "erase_fill"] {
            assert!(augment.remove(field).is_some(), "{field}");
        }
        assert_eq!(serde_json::from_value::<Recipe>(saved).unwrap(), recipe);
    }
}
