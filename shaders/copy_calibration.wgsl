// Calibration copy: dst = src in vec4s, one per thread. The benchmarks time it to learn the
// adapter's memory bandwidth (bytes read plus written per second), the yardstick for the
// memory-bound kernels as the calibration SGEMM is for the compute-bound ones.

struct Params { vec4s: u32, _pad0: u32, _pad1: u32, _pad2: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> dst: array<vec4<f32>>;

@compute @workgroup_size(256)
fn copy(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid, 256u);
    if (i < p.vec4s && i < arrayLength(&src) && i < arrayLength(&dst)) {
        dst[i] = src[i];
    }
}
