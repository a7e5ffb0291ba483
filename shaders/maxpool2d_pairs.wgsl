// maxpool2d.wgsl for 2x2 windows on planes whose rows are a multiple of 4 long (the seed
// model's 44, 20 and 8): a thread takes two neighbouring outputs, whose windows are 4 columns of
// two input rows, so every load and store moves a pair of floats. lavapipe gathers and scatters
// lane by lane, so moving one float at a time leaves much of its copy's bandwidth unused. The
// results, argmax included, are maxpool2d.wgsl's.

struct Params { planes: u32, h: u32, w: u32, size: u32, oh: u32, ow: u32, relu: u32, _pad: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<vec2<f32>>;
@group(0) @binding(2) var<storage, read_write> argmax: array<vec2<u32>>;
@group(0) @binding(3) var<storage, read_write> dst: array<vec2<f32>>;
// Backward only: the pooled output.
@group(0) @binding(4) var<storage, read> pooled: array<vec2<f32>>;

// Where thread `i`'s pair of outputs reads, in pairs of floats: the first pair of its windows'
// top row (`at`) and of their bottom row (`below`); and the in-plane index of its first input.
struct Pair { at: u32, below: u32, k: u32, last_row: bool }

fn pair_position(i: u32) -> Pair {
    let pairs_per_row = p.ow / 2u;
    let pairs_per_plane = p.oh * pairs_per_row;
    let pl = i / pairs_per_plane;
    let r = i - pl * pairs_per_plane;
    let oy = r / pairs_per_row;
    let k = 2u * oy * p.w + 4u * (r - oy * pairs_per_row);
    let at = (pl * p.h * p.w + k) / 2u;
    return Pair(at, at + p.w / 2u, k, oy + 1u == p.oh);
}

// The maximum of a window, top row then bottom row, and the in-plane index of the first one.
struct Best { v: f32, k: u32 }

fn window_max(top: vec2<f32>, bottom: vec2<f32>, k: u32) -> Best {
    var best = Best(top.x, k);
    // Strictly greater: the first maximum in row-major order wins, as in maxpool2d.wgsl.
    if (top.y > best.v) { best = Best(top.y, k + 1u); }
    if (bottom.x > best.v) { best = Best(bottom.x, k + p.w); }
    if (bottom.y > best.v) { best = Best(bottom.y, k + p.w + 1u); }
    return best;
}

// src = x, dst = y.
@compute @workgroup_size(256)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid, 256u);
    if (i >= p.planes * p.oh * p.ow / 2u) {
        return;
    }
    let at = pair_position(i);
    let first = window_max(src[at.at], src[at.below], at.k);
    let second = window_max(src[at.at + 1u], src[at.below + 1u], at.k + 2u);
    dst[i] = vec2<f32>(first.v, second.v);
    argmax[i] = vec2<u32>(first.k, second.k);
}

// src = dy, dst = dx: each thread writes its two windows of dx, the gradient where the maximum
// was and zero elsewhere, and the threads of the last output row zero an input row below it
// that no window covers (columns are all covered: w is even).
@compute @workgroup_size(256)
fn backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid, 256u);
    if (i >= p.planes * p.oh * p.ow / 2u) {
        return;
    }
    let at = pair_position(i);
    let taken = argmax[i];
    var g = src[i];
    if (p.relu != 0u) {
        g = select(vec2<f32>(0.0), g, pooled[i] > vec2<f32>(0.0));
    }
    // In-plane indices of the windows' first inputs in the top and bottom rows.
    let k = at.k;
    let kb = k + p.w;
    dst[at.at] = vec2<f32>(select(0.0, g.x, taken.x == k), select(0.0, g.x, taken.x == k + 1u));
    dst[at.at + 1u] = vec2<f32>(select(0.0, g.y, taken.y == k + 2u), select(0.0, g.y, taken.y == k + 3u));
    dst[at.below] = vec2<f32>(select(0.0, g.x, taken.x == kb), select(0.0, g.x, taken.x == kb + 1u));
    dst[at.below + 1u] = vec2<f32>(select(0.0, g.y, taken.y == kb + 2u), select(0.0, g.y, taken.y == kb + 3u));
    if (at.last_row && p.h > 2u * p.oh) {
        dst[at.below + p.w / 2u] = vec2<f32>(0.0);
        dst[at.below + p.w / 2u + 1u] = vec2<f32>(0.0);
    }
}
