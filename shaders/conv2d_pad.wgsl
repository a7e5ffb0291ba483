// Copies NCHW planes into larger zero-bordered ones: padded[plane, py, px] = x[plane, py - top,
// px - left], or 0 outside x. The convolution kernel only handles 'valid' convolutions, whose
// input windows are plain shifts of the flattened plane; 'same' padding and the data gradient
// (a full convolution) go through this first.

struct Params { planes: u32, h: u32, w: u32, top: u32, left: u32, ph: u32, pw: u32, _pad: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> padded: array<vec4<f32>>;

// One thread per padded row: the integer divisions that locate it happen once per row, not
// per element (CPU Vulkan drivers split vector integer division into scalar ones). Padded rows
// are a multiple of 4 long, so they are written as vec4s: a quarter of the stores, which
// lavapipe scatters lane by lane (a step's six pads 8.8-9.1 -> 6.6-6.7 ms each there).
@compute @workgroup_size(64)
fn pad(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = linear_index(wid, nwg, lid, 64u);
    if (row >= p.planes * p.ph) {
        return;
    }
    let plane = row / p.ph;
    // Rows and columns above or left of x wrap around to huge values, so one compare per axis.
    let iy = row % p.ph - p.top;
    let out = row * p.pw / 4u;
    if (iy >= p.h) {
        for (var q = 0u; q < p.pw / 4u; q++) {
            padded[out + q] = vec4<f32>(0.0);
        }
        return;
    }
    let src = (plane * p.h + iy) * p.w;
    for (var q = 0u; q < p.pw / 4u; q++) {
        let ix = 4u * q - p.left;
        padded[out + q] = vec4<f32>(element(src, ix), element(src, ix + 1u), element(src, ix + 2u), element(src, ix + 3u));
    }
}

// Column ix of the row at src, or 0 outside it.
fn element(src: u32, ix: u32) -> f32 {
    return select(0.0, x[src + min(ix, p.w - 1u)], ix < p.w);
}
