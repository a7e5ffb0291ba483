// Copies NCHW planes into larger zero-bordered ones: padded[plane, py, px] = x[plane, py - top,
// px - left], or 0 outside x. The convolution kernel only handles 'valid' convolutions, whose
// input windows are plain shifts of the flattened plane; 'same' padding and the data gradient
// (a full convolution) go through this first.

struct Params { planes: u32, h: u32, w: u32, top: u32, left: u32, ph: u32, pw: u32, _pad: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> padded: array<f32>;

@compute @workgroup_size(256)
fn pad(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid, 256u);
    if (i >= p.planes * p.ph * p.pw) {
        return;
    }
    let px = i % p.pw;
    let py = (i / p.pw) % p.ph;
    let plane = i / (p.pw * p.ph);
    // Rows and columns above or left of x wrap around to huge values, so one compare per axis.
    let iy = py - p.top;
    let ix = px - p.left;
    var v = 0.0;
    if (iy < p.h && ix < p.w) {
        v = x[(plane * p.h + iy) * p.w + ix];
    }
    padded[i] = v;
}
