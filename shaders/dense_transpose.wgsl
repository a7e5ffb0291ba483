// dense_pack.wgsl's copy for the common transpose: a source whose k is contiguous (k_stride 1)
// with k and i_stride multiples of 4, such as W read transposed in the data gradient. Each
// thread moves a 4x4 block, four vec4 loads along k and four vec4 stores along i: with one
// element per thread the lanes would stride a whole row apart on one side or the other, a
// cache line per element, and on lavapipe the transpose would cost about as much as the
// product it feeds.

struct Params { k: u32, width: u32, width_pad: u32, k_stride: u32, i_stride: u32, _pad0: u32, _pad1: u32, _pad2: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> packed: array<vec4<f32>>;

fn load_row(i: u32, kb: u32) -> vec4<f32> {
    if (i >= p.width) {
        return vec4<f32>(0.0);
    }
    return src[min(i * (p.i_stride / 4u) + kb, arrayLength(&src) - 1u)];
}

@compute @workgroup_size(64)
fn transpose(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = linear_index(wid, nwg, lid, 64u);
    let k_blocks = p.k / 4u;
    let i_blocks = p.width_pad / 4u;
    if (t >= k_blocks * i_blocks) {
        return;
    }
    // Neighbouring threads take neighbouring blocks along k, so their loads are neighbours.
    let kb = t % k_blocks;
    let ib = t / k_blocks;
    let r0 = load_row(ib * 4u, kb);
    let r1 = load_row(ib * 4u + 1u, kb);
    let r2 = load_row(ib * 4u + 2u, kb);
    let r3 = load_row(ib * 4u + 3u, kb);
    let out = kb * 4u * i_blocks + ib;
    packed[out] = vec4<f32>(r0.x, r1.x, r2.x, r3.x);
    packed[out + i_blocks] = vec4<f32>(r0.y, r1.y, r2.y, r3.y);
    packed[out + 2u * i_blocks] = vec4<f32>(r0.z, r1.z, r2.z, r3.z);
    packed[out + 3u * i_blocks] = vec4<f32>(r0.w, r1.w, r2.w, r3.w);
}
