// Bilinear sampling of 8-bit grey images packed four bytes to a u32, for the shaders that
// resample faces (warp.wgsl, face_crop.wgsl); each declares the `pixels` array it reads. The
// same arithmetic as src/kernels/warp.rs's sample: coordinates clamped to the image, so its
// edge pixels repeat outside it.

fn packed_byte(index: u32) -> f32 {
    return f32((pixels[index / 4u] >> ((index % 4u) * 8u)) & 0xffu);
}

// The image of `width` x `height` pixels starting at pixel `base`, sampled at (px, py).
fn bilinear(base: u32, width: u32, height: u32, px: f32, py: f32) -> f32 {
    let sx = clamp(px, 0.0, f32(width - 1u));
    let sy = clamp(py, 0.0, f32(height - 1u));
    let x0 = u32(floor(sx));
    let y0 = u32(floor(sy));
    let x1 = min(x0 + 1u, width - 1u);
    let y1 = min(y0 + 1u, height - 1u);
    let ax = sx - f32(x0);
    let ay = sy - f32(y0);
    let t0 = packed_byte(base + y0 * width + x0);
    let t1 = packed_byte(base + y0 * width + x1);
    let b0 = packed_byte(base + y1 * width + x0);
    let b1 = packed_byte(base + y1 * width + x1);
    let upper = t0 + ax * (t1 - t0);
    let lower = b0 + ax * (b1 - b0);
    return upper + ay * (lower - upper);
}
