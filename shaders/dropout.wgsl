// Inverted dropout with a counter-based mask: element i (counted from `offset`, so chunked
// dispatches agree) is kept when hash(seed, i) >= threshold, and kept values are scaled by
// 1 / (1 - rate). Nothing is stored: the backward pass applies the same mask to dy by running
// this kernel again with the same seed. src/kernels/dropout.rs has the same hash for the CPU.

struct Params { n: u32, offset: u32, seed: u32, threshold: u32, scale: f32, _pad0: u32, _pad1: u32, _pad2: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;

// A 32-bit integer finaliser with low bias (constants from Chris Wellons' hash-prospector).
fn mix32(v: u32) -> u32 {
    var x = v;
    x ^= x >> 16u;
    x *= 0x7feb352du;
    x ^= x >> 15u;
    x *= 0x846ca68bu;
    x ^= x >> 16u;
    return x;
}

@compute @workgroup_size(256)
fn apply_mask(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid, 256u);
    if (i >= p.n) {
        return;
    }
    let keep = mix32((p.offset + i) ^ mix32(p.seed)) >= p.threshold;
    dst[i] = select(0.0, src[i] * p.scale, keep);
}
