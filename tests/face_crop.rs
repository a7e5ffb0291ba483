//! The face-crop kernel (48x48 crops cut from a whole image through a map, averaging several
//! samples a pixel) on both backends against naive f64 loops, and the aligned crop of a tilted
//! face against the upright one.

mod common;

use common::{gpu, uniform};
use mien::align::{self, FER_LANDMARKS};
use mien::data::{PIXELS, SIDE};
use mien::gpu::pack_bytes;
use mien::kernels::face_crop::{self, CropMap, MAX_SAMPLES};
use mien::nn::{Backend, Cpu, GpuBackend};

/// The crop written with scalar loops and f64 arithmetic: the oracle for `face_crops_cpu`.
fn naive_crops(image: &[u8], (width, height): (usize, usize), maps: &[CropMap]) -> Vec<u8> {
    let at = |x: usize, y: usize| image[y * width + x] as f64;
    let bilinear = |px: f64, py: f64| {
        let (sx, sy) = (px.clamp(0.0, (width - 1) as f64), py.clamp(0.0, (height - 1) as f64));
        let (x0, y0) = (sx.floor() as usize, sy.floor() as usize);
        let (x1, y1) = ((x0 + 1).min(width - 1), (y0 + 1).min(height - 1));
        let (ax, ay) = (sx - x0 as f64, sy - y0 as f64);
        (1.0 - ay) * ((1.0 - ax) * at(x0, y0) + ax * at(x1, y0)) + ay * ((1.0 - ax) * at(x0, y1) + ax * at(x1, y1))
    };
    let mut out = Vec::with_capacity(maps.len() * PIXELS);
    for c in maps {
        let m = c.map.map(|v| v as f64);
        let n = c.samples.clamp(1, MAX_SAMPLES) as usize;
        for y in 0..SIDE {
            for x in 0..SIDE {
                let mut sum = 0.0;
                for j in 0..n {
                    for q in 0..n {
                        let fx = x as f64 + (q as f64 + 0.5) / n as f64 - 0.5;
                        let fy = y as f64 + (j as f64 + 0.5) / n as f64 - 0.5;
                        sum += bilinear(m[0] * fx + m[1] * fy + m[2], m[3] * fx + m[4] * fy + m[5]);
                    }
                }
                out.push((sum / (n * n) as f64 + 0.5).floor().clamp(0.0, 255.0) as u8);
            }
        }
    }
    out
}

fn crops_on_cpu(image: &[u8], size: (usize, usize), maps: &[CropMap]) -> Vec<u8> {
    let mut out = vec![0; maps.len() * PIXELS];
    face_crop::face_crops_cpu(image, size, maps, &mut out).unwrap();
    out
}

fn crops_on_gpu(image: &[u8], size: (usize, usize), maps: &[CropMap]) -> Vec<u8> {
    let g = gpu();
    let (pixels, maps_g) = (g.upload(&pack_bytes(image)).unwrap(), g.upload(maps).unwrap());
    let out = g.zeros::<u32>(maps.len() * PIXELS / 4).unwrap();
    g.run(|rec| face_crop::face_crops_gpu(rec, size, &pixels, &maps_g, &out)).unwrap();
    bytemuck::cast_slice(&g.read(&out).unwrap()).to_vec()
}

/// Bytes that may differ by one where an f32 sum lands on the other side of a rounding edge.
fn assert_within_one(what: &str, got: &[u8], want: &[u8]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let off: Vec<usize> = (0..got.len()).filter(|&i| got[i] != want[i]).collect();
    assert!(off.iter().all(|&i| got[i].abs_diff(want[i]) <= 1), "{what}: a byte differs by more than 1, first at {:?}", off.iter().find(|&&i| got[i].abs_diff(want[i]) > 1));
    assert!(off.len() * 100 <= got.len(), "{what}: {} of {} bytes differ", off.len(), got.len());
}

fn random_image((width, height): (usize, usize), seed: u64) -> Vec<u8> {
    uniform(width * height, seed, 0.0, 256.0).into_iter().map(|v| v as u8).collect()
}

/// Maps of every kind: one image pixel a crop pixel, rotated, shrinking by more than the
/// sample cap, enlarging, half outside the image, and mirrored.
fn maps_for((width, height): (usize, usize)) -> Vec<CropMap> {
    let (w, h) = (width as f32, height as f32);
    let turned = |deg: f32, scale: f32, x: f32, y: f32| {
        let (sin, cos) = deg.to_radians().sin_cos();
        CropMap::new([scale * cos, -scale * sin, x, scale * sin, scale * cos, y])
    };
    vec![
        CropMap::new([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]),
        turned(23.0, w / 60.0, w / 3.0, h / 5.0),
        turned(-40.0, 20.0, w / 2.0, 0.0),
        CropMap::new([0.3, 0.0, w / 2.0, 0.0, 0.3, h / 2.0]),
        CropMap::new([2.0, 0.0, w - 40.0, 0.0, 2.0, h - 40.0]),
        CropMap::new([-1.5, 0.0, w - 1.0, 0.0, 1.5, 3.0]),
        CropMap { samples: 1000, ..turned(90.0, 3.0, w, 0.0) },
    ]
}

#[test]
fn face_crops_on_the_cpu_match_naive_loops_and_on_the_gpu_match_the_cpu() {
    // Odd sizes (rows not a multiple of 4, so packed words straddle rows), a 1x1 image, a
    // photo-sized one; one crop (batch 1) and several.
    for size in [(641, 479), (1, 1), (37, 5), (1280, 720)] {
        let image = random_image(size, size.0 as u64);
        let maps = maps_for(size);
        for batch in [&maps[1..2], &maps[..]] {
            let what = format!("{} crops of a {}x{} image", batch.len(), size.0, size.1);
            let cpu = crops_on_cpu(&image, size, batch);
            assert_within_one(&format!("{what} (CPU vs naive loops)"), &cpu, &naive_crops(&image, size, batch));
            assert_within_one(&format!("{what} (GPU vs CPU)"), &crops_on_gpu(&image, size, batch), &cpu);
        }
    }
}

/// The crops of several frames joined into one set (a video's faces for one batch through the
/// model) are each frame's crops one after another, on either backend.
#[test]
fn joined_crops_of_several_frames_follow_one_another() {
    let frames = [((641, 479), 3), ((641, 479), 4), ((37, 5), 5)].map(|(size, seed)| (size, random_image(size, seed), maps_for(size)));
    let want: Vec<u8> = frames.iter().flat_map(|(size, image, maps)| crops_on_cpu(image, *size, maps)).collect();
    let cpu_parts = frames.iter().map(|(size, image, maps)| Cpu.cut_faces(image, *size, maps)).collect::<Result<Vec<_>, _>>().unwrap();
    assert_eq!(Cpu.join_faces(&cpu_parts).unwrap(), want);
    let backend = GpuBackend::new(gpu());
    let gpu_parts = frames.iter().map(|(size, image, maps)| backend.cut_faces(image, *size, maps)).collect::<Result<Vec<_>, _>>().unwrap();
    let joined = pollster::block_on(backend.read_faces_async(&backend.join_faces(&gpu_parts).unwrap())).unwrap();
    assert_within_one("joined GPU crops vs the CPU's", &joined, &want);
}

#[test]
fn a_map_of_one_pixel_a_pixel_copies_the_image() {
    let size = (50, 49);
    let image = random_image(size, 7);
    let shifted = CropMap::new([1.0, 0.0, 2.0, 0.0, 1.0, 1.0]);
    let want: Vec<u8> = (0..SIDE).flat_map(|y| image[(y + 1) * 50 + 2..][..SIDE].to_vec()).collect();
    assert_eq!(crops_on_cpu(&image, size, &[shifted]), want);
    assert_eq!(crops_on_gpu(&image, size, &[shifted]), want);
}

#[test]
fn the_aligned_crop_of_a_tilted_enlarged_face_is_the_upright_one() {
    // A synthetic "face" drawn in the 48x48 template frame, then drawn again into a larger
    // image turned by 30 degrees and three times as large: aligning by its landmarks must give
    // back the upright face (up to resampling blur).
    let pattern = |x: f32, y: f32| -> u8 { (128.0 + 60.0 * (x * 0.35).sin() + 60.0 * (y * 0.2).cos()).clamp(0.0, 255.0) as u8 };
    let upright: Vec<u8> = (0..SIDE * SIDE).map(|i| pattern((i % SIDE) as f32, (i / SIDE) as f32)).collect();
    let (scale, (sin, cos), shift) = (3.0f32, 30f32.to_radians().sin_cos(), [150.0f32, 60.0]);
    let (width, height) = (400usize, 300usize);
    let photo: Vec<u8> = (0..width * height)
        .map(|i| {
            let (px, py) = ((i % width) as f32 - shift[0], (i / width) as f32 - shift[1]);
            // The inverse of template -> photo: rotate back and shrink.
            pattern((cos * px + sin * py) / scale, (-sin * px + cos * py) / scale)
        })
        .collect();
    let landmarks = FER_LANDMARKS.map(|[x, y]| [scale * (cos * x - sin * y) + shift[0], scale * (sin * x + cos * y) + shift[1]]);
    let crop = crops_on_cpu(&photo, (width, height), &[align::aligned(&landmarks)]);
    let mean_error = crop.iter().zip(&upright).map(|(a, b)| a.abs_diff(*b) as f64).sum::<f64>() / PIXELS as f64;
    assert!(mean_error < 3.0, "aligned crop differs from the upright face by {mean_error:.2} levels on average");
}

#[test]
fn bad_shapes_are_errors() {
    let mut out = vec![0; PIXELS];
    let map = [CropMap::new([1.0, 0.0, 0.0, 0.0, 1.0, 0.0])];
    assert!(face_crop::face_crops_cpu(&[0; 10], (3, 3), &map, &mut out).is_err(), "image of the wrong size");
    assert!(face_crop::face_crops_cpu(&[], (0, 0), &map, &mut out).is_err(), "empty image");
    assert!(face_crop::face_crops_cpu(&[0; 9], (3, 3), &map, &mut out[1..]).is_err(), "output of the wrong size");
}
