// The logistic function, element-wise, as src/kernels/sigmoid.rs computes it: from e^-|x|, so
// that no input overflows the exponential.

struct Params { n: u32, _pad0: u32, _pad1: u32, _pad2: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(256)
fn sigmoid(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid, 256u);
    if (i < p.n) {
        let v = x[i];
        let e = exp(-abs(v));
        let s = 1.0 / (1.0 + e);
        y[i] = select(e * s, s, v >= 0.0);
    }
}
