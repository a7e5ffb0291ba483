// Element-wise a + b, then a ReLU when `relu` is set.

struct Params { n: u32, relu: u32, _pad0: u32, _pad1: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn add(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid, 256u);
    if (i < p.n) {
        let v = a[i] + b[i];
        // select, not max(): NaN passes through, as on the CPU.
        out[i] = select(v, 0.0, p.relu != 0u && v <= 0.0);
    }
}
