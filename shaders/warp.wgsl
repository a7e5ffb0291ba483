// Affine warp of 8-bit 48x48 grey images into out_side x out_side floats in [0, 1]: the
// augmentation kernel. For output pixel (x, y) of image i, the source point is
// augments[i].map * (x, y, 1) (a 2x3 matrix drawn on the host, see src/augment.rs; a crop is a
// translation in it), sampled bilinearly with coordinates clamped to the image, which repeats
// the edge pixels outside it (Keras' fill_mode='nearest'). Output pixels inside the image's
// erase rectangle take its fill value instead (random erasing). Pixels arrive packed four to a
// u32, as the host's byte array is; bilinear.wgsl samples them.

struct Params { images: u32, side: u32, out_side: u32, _pad: u32 }

// As src/kernels/warp.rs's Augment: erase is [x0, y0, x1, y1), in output pixels.
struct Augment { map: array<f32, 6>, erase: array<u32, 4>, fill: f32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> pixels: array<u32>;
@group(0) @binding(2) var<storage, read> augments: array<Augment>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn warp(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid, 256u);
    let plane = p.out_side * p.out_side;
    if (i >= p.images * plane) {
        return;
    }
    let img = i / plane;
    let x = i % p.out_side;
    let y = (i % plane) / p.out_side;
    let e = augments[img].erase;
    if (x >= e[0] && x < e[2] && y >= e[1] && y < e[3]) {
        out[i] = augments[img].fill;
        return;
    }
    let m = augments[img].map;
    let fx = f32(x);
    let fy = f32(y);
    let value = bilinear(img * p.side * p.side, p.side, p.side, m[0] * fx + m[1] * fy + m[2], m[3] * fx + m[4] * fy + m[5]);
    out[i] = value / 255.0;
}
