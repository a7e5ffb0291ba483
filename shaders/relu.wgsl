// ReLU and its gradient, element-wise.

struct Params { n: u32, _pad0: u32, _pad1: u32, _pad2: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> dy: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid, 256u);
    if (i < p.n) {
        // select, not max(): NaN passes through, as on the CPU, so a diverging run is seen.
        out[i] = select(x[i], 0.0, x[i] <= 0.0);
    }
}

// The gradient passes where the input was positive (0 at exactly 0, as Keras and PyTorch do).
@compute @workgroup_size(256)
fn backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid, 256u);
    if (i < p.n) {
        out[i] = select(0.0, dy[i], x[i] > 0.0);
    }
}
