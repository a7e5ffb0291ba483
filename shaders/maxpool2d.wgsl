// Max pooling with a square window and a stride equal to its size (Keras' MaxPooling2D(2) with
// 'valid' padding: rows and columns that don't fill a window are dropped). NCHW; the planes
// are the batch's N*C channel images. The forward pass keeps, for each output, the in-plane
// index of the input it took, so the backward pass routes the gradient without searching.

struct Params { planes: u32, h: u32, w: u32, size: u32, oh: u32, ow: u32, _pad0: u32, _pad1: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> argmax: array<u32>;
@group(0) @binding(3) var<storage, read_write> dst: array<f32>;

// src = x, dst = y; one thread per output.
@compute @workgroup_size(256)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid, 256u);
    let plane_out = p.oh * p.ow;
    if (i >= p.planes * plane_out) {
        return;
    }
    let pl = i / plane_out;
    let oy = (i % plane_out) / p.ow;
    let ox = i % p.ow;
    var best_at = (oy * p.size) * p.w + ox * p.size;
    var best = src[pl * p.h * p.w + best_at];
    for (var dy = 0u; dy < p.size; dy++) {
        for (var dx = 0u; dx < p.size; dx++) {
            let at = (oy * p.size + dy) * p.w + ox * p.size + dx;
            let v = src[pl * p.h * p.w + at];
            // Strictly greater: the first maximum in row-major order wins, as on the CPU.
            if (v > best) {
                best = v;
                best_at = at;
            }
        }
    }
    dst[i] = best;
    argmax[i] = best_at;
}

// src = dy, dst = dx; one thread per input element. Windows don't overlap, so each input has at
// most one output to take a gradient from, and no atomics are needed.
@compute @workgroup_size(256)
fn backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid, 256u);
    let plane_in = p.h * p.w;
    if (i >= p.planes * plane_in) {
        return;
    }
    let pl = i / plane_in;
    let at = i % plane_in;
    let oy = (at / p.w) / p.size;
    let ox = (at % p.w) / p.size;
    var g = 0.0;
    if (oy < p.oh && ox < p.ow) {
        let o = (pl * p.oh + oy) * p.ow + ox;
        if (argmax[o] == at) {
            g = src[o];
        }
    }
    dst[i] = g;
}
