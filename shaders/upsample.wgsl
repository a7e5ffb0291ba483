// Nearest-neighbour resizing of NCHW planes: output (oy, ox) takes input (oy * h / oh,
// ox * w / ow) rounded down (src/kernels/upsample.rs says which conventions that matches). A
// thread per output, so that neighbouring threads store to neighbouring addresses; the loads
// they share come from the cache.

struct Params { planes: u32, h: u32, w: u32, oh: u32, ow: u32, _pad0: u32, _pad1: u32, _pad2: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(256)
fn nearest(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid, 256u);
    let plane_out = p.oh * p.ow;
    if (i >= p.planes * plane_out) {
        return;
    }
    let plane = i / plane_out;
    let r = i - plane * plane_out;
    let oy = r / p.ow;
    let ox = r - oy * p.ow;
    y[i] = x[(plane * p.h + oy * p.h / p.oh) * p.w + ox * p.w / p.ow];
}
