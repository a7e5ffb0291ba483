// Haar-cascade evaluation over a batch of pyramid levels at once, exact to OpenCV's CPU
// detector (docs/opencv-haar-semantics.md, §15). Each level has its own integral tables,
// prepared nodes and window codes, described by `levels`; one dispatch covers every level of
// the batch, as do resize.wgsl's and integral.wgsl's, so a batch records a fixed number of
// passes instead of that number per level (a 1280x720 frame has 36 levels in 2 batches), and
// the host's recording cost does not cap the frame rate. Entry points, recorded once per batch:
//   prepare_nodes one thread per (level, node): each node's rectangles as corner offsets;
//   scan_windows  one thread per window on the levels' step grids: variance normalisation
//                 and stage 0;
//   walk_rows     one thread per grid row: OpenCV skips the right-hand neighbour of a window
//                 that stage 0 rejected, a sequential rule along each row, so the rows are
//                 walked here and the survivors compacted into a list;
//   list_args     one thread: turns a list's length into indirect dispatch arguments;
//   scan_list     one thread per listed window: a group of later stages, compacting the
//                 survivors again, so late stages run on dense lists instead of idle lanes.
//
// Exactness without f64 or i64:
// - Integral differences wrap in u32, as OpenCV's i32 buffers do.
// - nf = area * sqsum - sum^2 needs ~42 bits: two-limb integers.
// - OpenCV's norm factor is f32(1 / sqrt(nf)) through two f64 roundings. We take the
//   correctly rounded f32, found by comparing the f32 rounding midpoints m with the exact value
//   through integer tests of m^2 * nf against 1 (128-bit). The two disagree only when the exact
//   value lies within ~2^-51 of a midpoint; such windows are reported as ambiguous and the
//   host redoes that scale on the CPU (about one window in 2^27).
// - Feature sums are integers (the host checks the weights are), so f32(ret) is exact and
//   f32(ret) * vnf is OpenCV's single rounding.
// - Stage sums are exact fixed-point integers (the host picks the scale and checks that the
//   sums fit 53 bits, so OpenCV's f64 sums are exact too), summed as two-limb i64.

struct Scan {
    levels: u32,        // levels in this batch
    windows: u32,       // grid windows over them
    rows: u32,          // grid rows over them
    groups: u32,        // stage groups after stage 0
    stage_begin: u32,   // scan_list: stages [stage_begin, stage_end)
    stage_end: u32,
    group: u32,         // scan_list: which group this is (its input list counter)
    last: u32,          // scan_list: 1 when the group ends the cascade
    norm_w: u32,        // the normalisation rectangle: window less a 1-pixel border
    norm_h: u32,
    vnf_limit: f32,     // largest norm factor OpenCV accepts: area * vnf < 0.1 in f64
    max_depth: u32,     // nodes in the deepest tree
    stages_off: u32,    // offsets into the cascade buffer
    trees_off: u32,
    nodes_off: u32,
    leaves_off: u32,
    features_off: u32,
    found_off: u32,     // offsets into the state buffer
    found_capacity: u32,
    nodes: u32,         // the cascade's node count
    list_in: u32,       // offsets into the lists buffer
    list_out: u32,
    max_groups_x: u32,  // the device's workgroups-per-dimension limit
    counters: u32,      // this batch's list lengths in `state`: list g at counters + g
    args_at: u32,       // this batch's indirect arguments in `args`
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

// One pyramid level of the batch.
struct Level {
    scale: u32,          // its index among the frame's levels, reported with found windows
    iw: u32,             // integral row width (scaled width + 1)
    table: u32,          // entries per integral table: sum, sqsum and tilted follow each other
    tables_at: u32,      // where its tables start in `integrals`
    step: u32,           // 1 or 2 pixels between windows
    grid_w: u32,         // windows per row on the step grid
    grid_h: u32,         // rows on the step grid (after OpenCV's stripe limit)
    windows_before: u32, // grid windows of the batch's earlier levels
    rows_before: u32,    // grid rows of the batch's earlier levels
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Scan;
@group(0) @binding(1) var<storage, read> integrals: array<u32>;
@group(0) @binding(2) var<storage, read> cascade: array<u32>;
// Per grid window of the batch, level after level: outcome code, then the norm factor's bits.
@group(0) @binding(3) var<storage, read_write> codes: array<u32>;
// Two lists of (x | y << 16, norm factor bits, level), at list_in and list_out.
@group(0) @binding(4) var<storage, read_write> lists: array<u32>;
// [0] found count; [counters + g] list lengths; found windows (scale, x, y) at found_off; a
// window whose norm factor was too close to call is found with bit 31 set.
@group(0) @binding(5) var<storage, read_write> state: array<atomic<u32>>;
// The nodes laid out by prepare_nodes, level after level: per node, the four corner offsets
// of each rectangle from the window's top-left entry (the level's tables and table section
// included), then the packed weights, threshold bits, left and right. Four vector loads per
// node in the hot loop.
@group(0) @binding(6) var<storage, read_write> prepared: array<vec4<u32>>;
@group(0) @binding(7) var<storage, read> levels: array<Level>;
// Indirect dispatch arguments, three per (batch, group); only list_args binds it, since a
// buffer cannot be both an indirect source and writable storage in one dispatch.
@group(0) @binding(8) var<storage, read_write> args: array<u32>;

const REJECTED_FIRST: u32 = 0u;
const FLAT: u32 = 1u;
const PASSED_FIRST: u32 = 2u;
const AMBIGUOUS: u32 = 3u;

// Loads clamp their index: the host validates every offset, and the clamp keeps a bug from
// reading outside the buffer on drivers without robust access.
fn ii(i: u32) -> u32 {
    return integrals[min(i, arrayLength(&integrals) - 1u)];
}

// The same for the counters in `state` (its first word, the found count, is always there):
// an index past the end would be an atomic on memory outside the buffer.
fn in_state(i: u32) -> u32 {
    return min(i, arrayLength(&state) - 1u);
}

fn cas(i: u32) -> u32 {
    return cascade[min(i, arrayLength(&cascade) - 1u)];
}

fn level(l: u32) -> Level {
    return levels[min(l, arrayLength(&levels) - 1u)];
}

// The level holding item i, where an item is a grid window, or with `rows` a grid row: a
// binary search over the levels' running counts.
fn level_of(i: u32, rows: bool) -> u32 {
    var lo = 0u;
    var hi = p.levels;
    while (hi - lo > 1u) {
        let mid = (lo + hi) / 2u;
        let l = level(mid);
        if (select(l.windows_before, l.rows_before, rows) <= i) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    return lo;
}

// ---- two- and four-limb unsigned integers, least significant limb first ----

// The full 64-bit product of two u32.
fn mul_wide(a: u32, b: u32) -> vec2<u32> {
    let al = a & 0xffffu;
    let ah = a >> 16u;
    let bl = b & 0xffffu;
    let bh = b >> 16u;
    let ll = al * bl;
    let lh = al * bh;
    let hl = ah * bl;
    let mid = (ll >> 16u) + (lh & 0xffffu) + (hl & 0xffffu);
    return vec2<u32>((ll & 0xffffu) | (mid << 16u), ah * bh + (lh >> 16u) + (hl >> 16u) + (mid >> 16u));
}

fn add64(a: vec2<u32>, b: vec2<u32>) -> vec2<u32> {
    let lo = a.x + b.x;
    return vec2<u32>(lo, a.y + b.y + select(0u, 1u, lo < a.x));
}

fn sub64(a: vec2<u32>, b: vec2<u32>) -> vec2<u32> {
    return vec2<u32>(a.x - b.x, a.y - b.y - select(0u, 1u, a.x < b.x));
}

// a < b for two's-complement 64-bit values.
fn less_i64(a: vec2<u32>, b: vec2<u32>) -> bool {
    if (a.y != b.y) {
        return bitcast<i32>(a.y) < bitcast<i32>(b.y);
    }
    return a.x < b.x;
}

// The 128-bit product of two 64-bit values.
fn mul128(a: vec2<u32>, b: vec2<u32>) -> vec4<u32> {
    let p00 = mul_wide(a.x, b.x);
    let p01 = mul_wide(a.x, b.y);
    let p10 = mul_wide(a.y, b.x);
    let p11 = mul_wide(a.y, b.y);
    // Column sums with carries, in 64-bit pieces.
    let c1 = add64(add64(vec2<u32>(p00.y, 0u), vec2<u32>(p01.x, 0u)), vec2<u32>(p10.x, 0u));
    let c2 = add64(add64(add64(vec2<u32>(p01.y, 0u), vec2<u32>(p10.y, 0u)), vec2<u32>(p11.x, 0u)), vec2<u32>(c1.y, 0u));
    return vec4<u32>(p00.x, c1.x, c2.x, p11.y + c2.y);
}

// How m^2 * nf compares with 1, for the midpoint m = mant * 2^-shift_half: the sign of
// mant^2 * nf - 2^(2 * shift_half), and whether it is within 2^-49 (relative) of zero, where
// OpenCV's two f64 roundings could land on either side.
struct Side { above: bool, near: bool }

fn compare_midpoint(mant: u32, shift_half: u32, nf: vec2<u32>) -> Side {
    let prod = mul128(mul_wide(mant, mant), nf);
    let t = 2u * shift_half;
    var pow2 = vec4<u32>(0u);
    if (t < 128u) {
        pow2[t / 32u] = 1u << (t % 32u);
    }
    // d = prod - 2^t, then |d|.
    var d = vec4<u32>(0u);
    var borrow = 0u;
    for (var i = 0u; i < 4u; i++) {
        let x = prod[i] - pow2[i];
        let b1 = select(0u, 1u, prod[i] < pow2[i]);
        let y = x - borrow;
        let b2 = select(0u, 1u, x < borrow);
        d[i] = y;
        borrow = b1 + b2;
    }
    let negative = borrow != 0u;
    if (negative) {
        var carry = 1u;
        for (var i = 0u; i < 4u; i++) {
            let v = ~d[i] + carry;
            carry = select(0u, 1u, carry == 1u && v == 0u);
            d[i] = v;
        }
    }
    // near: |d| < 2^(t - 49), i.e. no bit at or above t - 49.
    let lim = max(i32(t) - 49, 0);
    var near = true;
    for (var i = 0u; i < 4u; i++) {
        let lo_bit = i32(i) * 32;
        if (lo_bit + 32 <= lim) {
            continue;
        }
        let first_bit = u32(max(lim - lo_bit, 0));
        if ((d[i] >> first_bit) != 0u) {
            near = false;
        }
    }
    return Side(!negative && (d.x | d.y | d.z | d.w) != 0u, near);
}

// The midpoint between positive normal f32 a and the next float up, as (mantissa, shift):
// a = ra * 2^(e - 150) and the next is rb * 2^(eb - 150), so the midpoint is
// (ra + rb * 2^(eb - e)) * 2^(e - 151).
fn midpoint_above(a: f32) -> vec2<u32> {
    let ua = bitcast<u32>(a);
    let ub = ua + 1u;
    let ea = (ua >> 23u) & 0xffu;
    let eb = (ub >> 23u) & 0xffu;
    let ra = (ua & 0x7fffffu) | 0x800000u;
    let rb = (ub & 0x7fffffu) | 0x800000u;
    return vec2<u32>(ra + (rb << (eb - ea)), 151u - ea);
}

struct Norm { vnf: f32, ambiguous: bool }

// f32(1 / sqrt(nf)) as OpenCV gets it, for 0 < nf < 2^63.
fn norm_factor(nf: vec2<u32>) -> Norm {
    var r = 1.0 / sqrt(f32(nf.y) * 4294967296.0 + f32(nf.x));
    var ambiguous = false;
    // The estimate is a few ulps off at most; walk to the float whose rounding interval holds
    // the exact value.
    for (var k = 0u; k < 16u; k++) {
        let hi = midpoint_above(r);
        let upper = compare_midpoint(hi.x, hi.y, nf);
        let lo = midpoint_above(bitcast<f32>(bitcast<u32>(r) - 1u));
        let lower = compare_midpoint(lo.x, lo.y, nf);
        ambiguous = upper.near || lower.near;
        if (!upper.above) {
            // m_hi^2 * nf < 1: the exact value is above the upper midpoint.
            r = bitcast<f32>(bitcast<u32>(r) + 1u);
        } else if (lower.above) {
            r = bitcast<f32>(bitcast<u32>(r) - 1u);
        } else {
            return Norm(r, ambiguous);
        }
    }
    return Norm(r, true);
}

// Four-corner sum of a rectangle in one table, as the i32 OpenCV computes.
fn rect_sum(table_base: u32, a: u32, b: u32, c: u32, d: u32) -> i32 {
    return bitcast<i32>(ii(table_base + a) - ii(table_base + b) - ii(table_base + c) + ii(table_base + d));
}

// One rectangle's sum from its four corner offsets, as the i32 OpenCV computes.
fn corner_sum(base: u32, o: vec4<u32>) -> i32 {
    return bitcast<i32>(ii(base + o.x) - ii(base + o.y) - ii(base + o.z) + ii(base + o.w));
}

// A weight packed as a signed byte.
fn weight(packed: u32, i: u32) -> i32 {
    return bitcast<i32>(packed << (24u - 8u * i)) >> 24u;
}

// The weighted sum of node `n`'s feature at window origin `base`: an exact integer
// (host-checked), returned as f32. `weights` is the node's packed weights (the x of its last
// vector, which the caller has loaded anyway). Zero weights contribute nothing, so a
// two-rectangle feature's empty third rectangle costs four cheap loads rather than a branch.
fn feature_value(n: u32, weights: u32, base: u32) -> f32 {
    let last = arrayLength(&prepared) - 1u;
    var ret = weight(weights, 0u) * corner_sum(base, prepared[min(4u * n, last)]);
    ret += weight(weights, 1u) * corner_sum(base, prepared[min(4u * n + 1u, last)]);
    let w2 = weight(weights, 2u);
    if (w2 != 0i) {
        ret += w2 * corner_sum(base, prepared[min(4u * n + 2u, last)]);
    }
    return f32(ret);
}

// Whether the window at `base` with norm factor `vnf` passes stage `stage`; the level's
// prepared nodes start at node0.
fn stage_passes(stage: u32, node0: u32, base: u32, vnf: f32) -> bool {
    let s = p.stages_off + stage * 4u;
    let first_tree = cas(s);
    let trees = cas(s + 1u);
    var sum = vec2<u32>(0u);
    for (var t = 0u; t < trees; t++) {
        let tr = p.trees_off + (first_tree + t) * 2u;
        let first_node = cas(tr);
        let first_leaf = cas(tr + 1u);
        var node = 0u;
        var leaf = 0u;
        for (var depth = 0u; depth < p.max_depth; depth++) {
            let n = node0 + first_node + node;
            let tail = prepared[min(4u * n + 3u, arrayLength(&prepared) - 1u)];
            let value = feature_value(n, tail.x, base) * vnf;
            let next = bitcast<i32>(select(tail.w, tail.z, value < bitcast<f32>(tail.y)));
            if (next <= 0i) {
                leaf = u32(-next);
                break;
            }
            node = u32(next);
        }
        let l = p.leaves_off + (first_leaf + leaf) * 2u;
        sum = add64(sum, vec2<u32>(cas(l), cas(l + 1u)));
    }
    return !less_i64(sum, vec2<u32>(cas(s + 2u), cas(s + 3u)));
}

@compute @workgroup_size(64)
fn scan_windows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let id = linear_index(wid, nwg, lid, 64u);
    if (id >= p.windows || 2u * id + 1u >= arrayLength(&codes)) {
        return;
    }
    let l = level_of(id, false);
    let lv = level(l);
    let local = id - lv.windows_before;
    let x = (local % lv.grid_w) * lv.step;
    let y = (local / lv.grid_w) * lv.step;
    let iw = lv.iw;
    let corner = (y + 1u) * iw + x + 1u;
    let far = corner + p.norm_h * iw;
    let sum = u32(rect_sum(lv.tables_at, corner, corner + p.norm_w, far, far + p.norm_w));
    let sqsum = u32(rect_sum(lv.tables_at + lv.table, corner, corner + p.norm_w, far, far + p.norm_w));
    let nf = sub64(mul_wide(p.norm_w * p.norm_h, sqsum), mul_wide(sum, sum));
    var code = FLAT;
    var vnf = 1.0;
    if (bitcast<i32>(nf.y) >= 0i && (nf.x | nf.y) != 0u) {
        let norm = norm_factor(nf);
        vnf = norm.vnf;
        if (norm.ambiguous) {
            code = AMBIGUOUS;
        } else if (vnf <= p.vnf_limit) {
            code = select(REJECTED_FIRST, PASSED_FIRST, stage_passes(0u, l * p.nodes, y * iw + x, vnf));
        }
    }
    codes[2u * id] = code;
    codes[2u * id + 1u] = bitcast<u32>(vnf);
}

fn append_found(scale: u32, x: u32, y: u32, flags: u32) {
    let k = atomicAdd(&state[0], 1u);
    let at = p.found_off + 3u * k;
    if (k < p.found_capacity && at + 2u < arrayLength(&state)) {
        atomicStore(&state[at], scale | flags);
        atomicStore(&state[at + 1u], x);
        atomicStore(&state[at + 2u], y);
    }
}

fn append_list(counter: u32, x: u32, y: u32, vnf_bits: u32, l: u32) {
    let k = atomicAdd(&state[in_state(counter)], 1u);
    let at = p.list_out + 3u * k;
    if (at + 2u < arrayLength(&lists)) {
        lists[at] = x | (y << 16u);
        lists[at + 1u] = vnf_bits;
        lists[at + 2u] = l;
    }
}

@compute @workgroup_size(64)
fn walk_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = linear_index(wid, nwg, lid, 64u);
    if (r >= p.rows) {
        return;
    }
    let l = level_of(r, true);
    let lv = level(l);
    let row = r - lv.rows_before;
    var gx = 0u;
    while (gx < lv.grid_w) {
        let id = lv.windows_before + row * lv.grid_w + gx;
        let code = codes[min(2u * id, arrayLength(&codes) - 2u)];
        let x = gx * lv.step;
        let y = row * lv.step;
        if (code == PASSED_FIRST) {
            if (p.groups == 0u) {
                append_found(lv.scale, x, y, 0u);
            } else {
                append_list(p.counters, x, y, codes[min(2u * id + 1u, arrayLength(&codes) - 1u)], l);
            }
        } else if (code == AMBIGUOUS) {
            append_found(lv.scale, x, y, 0x80000000u);
        }
        gx += select(1u, 2u, code == REJECTED_FIRST);
    }
}

@compute @workgroup_size(1)
fn list_args() {
    let n = atomicLoad(&state[in_state(p.counters + p.group)]);
    let groups = (n + 63u) / 64u;
    let x = min(groups, p.max_groups_x);
    let y = select(0u, (groups + x - 1u) / max(x, 1u), x > 0u);
    let at = p.args_at + 3u * p.group;
    if (at + 2u >= arrayLength(&args)) {
        return;
    }
    args[at] = x;
    args[at + 1u] = y;
    args[at + 2u] = 1u;
}

// One thread per (level, node): the node's feature as corner offsets for the level's integral
// width and tables. Tilted rectangles read the tilted table at (x, y), (x - h, y + h),
// (x + w, y + w) and (x + w - h, y + w + h); the parser guarantees x >= h.
@compute @workgroup_size(64)
fn prepare_nodes(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let id = linear_index(wid, nwg, lid, 64u);
    if (id >= p.levels * p.nodes || 4u * id + 3u >= arrayLength(&prepared)) {
        return;
    }
    let lv = level(id / p.nodes);
    let node = p.nodes_off + 4u * (id % p.nodes);
    let f = p.features_off + cas(node) * 8u;
    let tilted = cas(f + 6u) != 0u;
    let table = lv.tables_at + select(0u, 2u * lv.table, tilted);
    let iw = lv.iw;
    var packed = 0u;
    for (var i = 0u; i < 3u; i++) {
        let r = cas(f + i);
        let x = r & 0xffu;
        let y = (r >> 8u) & 0xffu;
        let w = (r >> 16u) & 0xffu;
        let h = r >> 24u;
        let at = table + y * iw + x;
        if (tilted) {
            prepared[4u * id + i] = vec4<u32>(at, at + h * iw - h, at + w * iw + w, at + (w + h) * iw + w - h);
        } else {
            prepared[4u * id + i] = vec4<u32>(at, at + w, at + h * iw, at + h * iw + w);
        }
        packed |= (cas(f + 3u + i) & 0xffu) << (8u * i);
    }
    prepared[4u * id + 3u] = vec4<u32>(packed, cas(node + 1u), cas(node + 2u), cas(node + 3u));
}

// The norm factor on its own, for the tests: nf as two limbs from `lists`, OpenCV's factor and
// the ambiguity flag into `codes`.
@compute @workgroup_size(64)
fn norm_probe(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let k = linear_index(wid, nwg, lid, 64u);
    if (2u * k + 1u >= arrayLength(&lists) || 2u * k + 1u >= arrayLength(&codes)) {
        return;
    }
    let norm = norm_factor(vec2<u32>(lists[2u * k], lists[2u * k + 1u]));
    codes[2u * k] = bitcast<u32>(norm.vnf);
    codes[2u * k + 1u] = select(0u, 1u, norm.ambiguous);
}

@compute @workgroup_size(64)
fn scan_list(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let k = linear_index(wid, nwg, lid, 64u);
    if (k >= atomicLoad(&state[in_state(p.counters + p.group)])) {
        return;
    }
    let at = p.list_in + 3u * k;
    if (at + 2u >= arrayLength(&lists)) {
        return;
    }
    let xy = lists[at];
    let vnf_bits = lists[at + 1u];
    let l = lists[at + 2u];
    let lv = level(l);
    let x = xy & 0xffffu;
    let y = xy >> 16u;
    let base = y * lv.iw + x;
    for (var s = p.stage_begin; s < p.stage_end; s++) {
        if (!stage_passes(s, l * p.nodes, base, bitcast<f32>(vnf_bits))) {
            return;
        }
    }
    if (p.last != 0u) {
        append_found(lv.scale, x, y, 0u);
    } else {
        append_list(p.counters + p.group + 1u, x, y, vnf_bits, l);
    }
}
