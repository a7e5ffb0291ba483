// Copies a strided matrix operand of dense.wgsl into its k-major layout:
//     packed[k * width_pad + i] = src[k * k_stride + i * i_stride]   for i < width, 0 up to width_pad
// (i is m for A and n for B).

struct Params { k: u32, width: u32, width_pad: u32, k_stride: u32, i_stride: u32, _pad0: u32, _pad1: u32, _pad2: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> packed: array<f32>;

// One thread per element of `packed`.
@compute @workgroup_size(256)
fn pack(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = linear_index(wid, nwg, lid, 256u);
    if (t >= p.k * p.width_pad) {
        return;
    }
    let k = t / p.width_pad;
    let i = t % p.width_pad;
    var v = 0.0;
    if (i < p.width) {
        // In bounds for a well-formed call; clamped all the same.
        v = src[min(k * p.k_stride + i * p.i_stride, arrayLength(&src) - 1u)];
    }
    packed[t] = v;
}
