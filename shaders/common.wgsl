// Helpers every kernel shares; the host puts this file in front of each shader.

// The subgroup ("wide") variants share values across a subgroup inside loops whose every lane
// stays in step (the only early exit is a whole subgroup's, by subgroupAll). Tint cannot prove
// that and refuses them; this says so. (naga accepts the directive and has no such check.)
//wide: diagnostic(off, subgroup_uniformity);

// Dispatches wider than the device's per-dimension workgroup limit are folded into a 2-D grid by
// Recorder::dispatch_linear; this recovers the flat thread index.
fn linear_index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32, wg_size: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * wg_size + lid;
}

// Tree sum over one 256-thread workgroup; every thread gets the total. Call it from uniform
// control flow (all threads of the workgroup), since it contains barriers.
const REDUCE_WG: u32 = 256u;
var<workgroup> reduce_scratch: array<f32, 256>;

fn workgroup_sum(value: f32, lid: u32) -> f32 {
    reduce_scratch[lid] = value;
    workgroupBarrier();
    for (var stride = REDUCE_WG / 2u; stride > 0u; stride >>= 1u) {
        if (lid < stride) {
            reduce_scratch[lid] += reduce_scratch[lid + stride];
        }
        workgroupBarrier();
    }
    let total = reduce_scratch[0];
    workgroupBarrier();
    return total;
}

// A reduction over one channel of NCHW data seen as [batch, channels, plane] walks the
// channel's elements keeping (image, offset in the plane) and stepping it, instead of dividing
// per element: CPU Vulkan drivers split vector integer division into scalar divisions, and two
// per element would bound a reduction by the divisions rather than by memory. at.x counts
// whole planes, at.y is the offset in the plane; a step of dx planes and dy elements
// (dy < plane) carries into at.x.
fn plane_step(at: vec2<u32>, dx: u32, dy: u32, plane: u32) -> vec2<u32> {
    let y = at.y + dy;
    return select(vec2<u32>(at.x + dx, y), vec2<u32>(at.x + dx + 1u, y - plane), y >= plane);
}
