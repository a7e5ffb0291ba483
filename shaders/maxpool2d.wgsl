// Max pooling with a square window and a stride equal to its size (Keras' MaxPooling2D(2) with
// 'valid' padding: rows and columns that don't fill a window are dropped). NCHW; the planes
// are the batch's N*C channel images. The forward pass keeps, for each output, the in-plane
// index of the input it took, so the backward pass routes the gradient without searching.

// relu (backward only): the gradient also goes through the ReLU before the pooling, passing
// where the pooled output is positive (src/kernels/maxpool2d.rs says why that is the same).
struct Params { planes: u32, h: u32, w: u32, size: u32, oh: u32, ow: u32, relu: u32, _pad: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> argmax: array<u32>;
@group(0) @binding(3) var<storage, read_write> dst: array<f32>;
// Backward only: the pooled output.
@group(0) @binding(4) var<storage, read> pooled: array<f32>;

// One thread per output in both passes. Its plane, row and column come from two divisions
// (remainders by multiply and subtract): CPU Vulkan drivers split vector integer division into
// scalar ones, and a thread per input element with five of them would make the backward pass
// far slower than the forward one on lavapipe.
fn output_position(i: u32) -> vec3<u32> {
    let plane_out = p.oh * p.ow;
    let pl = i / plane_out;
    let r = i - pl * plane_out;
    let oy = r / p.ow;
    return vec3<u32>(pl, oy, r - oy * p.ow);
}

// src = x, dst = y.
@compute @workgroup_size(256)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid, 256u);
    if (i >= p.planes * p.oh * p.ow) {
        return;
    }
    let at = output_position(i);
    let base = at.x * p.h * p.w;
    var best_at = (at.y * p.size) * p.w + at.z * p.size;
    var best = src[base + best_at];
    for (var dy = 0u; dy < p.size; dy++) {
        for (var dx = 0u; dx < p.size; dx++) {
            let k = (at.y * p.size + dy) * p.w + at.z * p.size + dx;
            let v = src[base + k];
            // Strictly greater: the first maximum in row-major order wins, as on the CPU.
            let greater = v > best;
            best = select(best, v, greater);
            best_at = select(best_at, k, greater);
        }
    }
    dst[i] = best;
    argmax[i] = best_at;
}

// src = dy, dst = dx. Each thread writes its whole window of dx: the gradient where the maximum
// was, zero elsewhere. Windows don't overlap, so no atomics are needed; the threads of the last
// row and column also zero the rows and columns that no window covers.
@compute @workgroup_size(256)
fn backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid, 256u);
    if (i >= p.planes * p.oh * p.ow) {
        return;
    }
    let at = output_position(i);
    let base = at.x * p.h * p.w;
    let taken = argmax[i];
    var g = src[i];
    if (p.relu != 0u && !(pooled[i] > 0.0)) {
        g = 0.0;
    }
    let y0 = at.y * p.size;
    let x0 = at.z * p.size;
    let y1 = select(y0 + p.size, p.h, at.y + 1u == p.oh);
    let x1 = select(x0 + p.size, p.w, at.z + 1u == p.ow);
    for (var y = y0; y < y1; y++) {
        for (var x = x0; x < x1; x++) {
            let k = y * p.w + x;
            dst[base + k] = select(0.0, g, k == taken);
        }
    }
}
