// Copies NCHW planes into larger zero-bordered ones: padded[plane, py, px] = x[plane, py - top,
// px - left], or 0 outside x. The convolution kernel only handles 'valid' convolutions, whose
// input windows are plain shifts of the flattened plane; 'same' padding and the data gradient
// (a full convolution) go through this first.

struct Params { planes: u32, h: u32, w: u32, top: u32, left: u32, ph: u32, pw: u32, _pad: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> padded: array<f32>;

// One thread per padded row: the integer divisions that locate it happen once per row, not
// per element (CPU Vulkan drivers split vector integer division into scalar ones).
@compute @workgroup_size(64)
fn pad(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = linear_index(wid, nwg, lid, 64u);
    if (row >= p.planes * p.ph) {
        return;
    }
    let plane = row / p.ph;
    // Rows and columns above or left of x wrap around to huge values, so one compare per axis.
    let iy = row % p.ph - p.top;
    let out = row * p.pw;
    if (iy >= p.h) {
        for (var px = 0u; px < p.pw; px++) {
            padded[out + px] = 0.0;
        }
        return;
    }
    let src = (plane * p.h + iy) * p.w;
    for (var px = 0u; px < p.pw; px++) {
        let ix = px - p.left;
        padded[out + px] = select(0.0, x[src + min(ix, p.w - 1u)], ix < p.w);
    }
}
