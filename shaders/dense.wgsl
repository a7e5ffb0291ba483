// Dense-layer products C[m, n] = sum over k of A[m, k] B[k, n] (+ bias[n]) (+ C), on operands
// laid out k-major: A as a[k, m] with rows padded to a multiple of 16, B as b[k, n] with rows
// padded to a multiple of TILE_N (8, or 16), the padding zero. src/kernels/dense.rs passes an
// operand as it is when it already has that layout (W in the forward product, x and dy in the
// weight gradient) and packs it with dense_pack.wgsl (or dense_transpose.wgsl, for a
// transpose) otherwise.
//
// Each thread accumulates a 16x8 (wide: 16x16) block of C in 32 (64) named vec4 registers (an
// indexed array can end up in memory on lavapipe). A step of k loads four vec4s of A and two of
// B for 128 multiply-adds; on CPU Vulkan drivers every load is a per-lane gather, so loads per
// multiply-add set the speed (hence vec4 loads rather than 24 scalar ones per 128, and blocks
// larger than 8x8). The padding keeps every load in bounds; outputs past m and n are dropped at
// the store.
// Flags: bit 0 adds bias[n] (in split 0 only); bit 1 adds into C instead of overwriting; bit 2
// writes the partial product of split `z` (the k range z * k_chunk ..) to C[z * M * N + ...] for
// reduce.wgsl to sum.

struct Params {
    m: u32, n: u32, k: u32, k_chunk: u32,
    // Row lengths of a and b in vec4s.
    a_row4: u32, b_row4: u32, flags: u32, _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> b: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> c: array<f32>;

const WG: u32 = 8u;
// Columns a thread takes: 8, or 16 in the "wide" variant for CPU adapters with subgroups of at
// least 8 lanes, such as lavapipe (src/kernels/dense.rs picks), which compiles the lines that
// start `//wide: ` (accumulators m and n for columns n0+8 .. n0+15) and drops those that start
// `//!wide: `. There a step of k's 8 loads then serve 256 multiply-adds instead of 6 serving
// 128. A real GPU's registers would not hold its 64 vec4 accumulators.
//
// The wide variant also shares A across a subgroup: a row of the thread grid (8 consecutive
// invocations, which subgroups of 8 or more hold whole, being runs of consecutive invocations
// on CPU adapters) takes the same rows of A, so one load gives its four vec4s to the row's
// lanes by shuffles: 5 loads a step of k instead of 8.
override TILE_N: u32 = 8u;
const TILE_M: u32 = 16u;

// Set for products of at most 4 rows (batch-1 inference: a matrix-vector product, bound by
// reading B once). The 64 threads of a workgroup then all take columns, 512 of them, and a
// step of k loads one vec4 of A, not four mostly of padding: with the general tile most
// threads would idle and B would be read far below the memory's speed.
override SMALL_M: bool = false;

@compute @workgroup_size(64)
fn gemm(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) index: u32,
    //wide: @builtin(subgroup_invocation_id) lane: u32,
) {
    // An 8 x 8 grid of threads, rows of it consecutive invocations (naga allows subgroup
    // builtins only in one-dimensional workgroups).
    let lid = vec2<u32>(index % WG, index / WG);
    var m0 = (wid.y * WG + lid.y) * TILE_M;
    var n0 = (wid.x * WG + lid.x) * TILE_N;
    if (SMALL_M) {
        m0 = 0u;
        n0 = ((wid.x * WG + lid.y) * WG + lid.x) * TILE_N;
    }
    //!wide: if (m0 >= p.m || n0 >= p.n) {
    //!wide:     return;
    //!wide: }
    // A subgroup with work runs whole, its idle lanes on the last block, storing nothing.
    //wide: let in_range = m0 < p.m && n0 < p.n;
    //wide: if (subgroupAll(!in_range)) { return; }
    //wide: m0 = min(m0, (p.m - 1u) / TILE_M * TILE_M);
    //wide: n0 = min(n0, (p.n - 1u) / TILE_N * TILE_N);
    // The first lane of this thread's row of the grid within the subgroup.
    //wide: let group_base = lane & ~7u;
    // acc<i>l / acc<i>h: columns n0 .. n0+3 / n0+4 .. n0+7 of row m0 + i.
    var acc0l = vec4<f32>(0.0); var acc0h = vec4<f32>(0.0);
    //wide: var acc0m = vec4<f32>(0.0); var acc0n = vec4<f32>(0.0);
    var acc1l = vec4<f32>(0.0); var acc1h = vec4<f32>(0.0);
    //wide: var acc1m = vec4<f32>(0.0); var acc1n = vec4<f32>(0.0);
    var acc2l = vec4<f32>(0.0); var acc2h = vec4<f32>(0.0);
    //wide: var acc2m = vec4<f32>(0.0); var acc2n = vec4<f32>(0.0);
    var acc3l = vec4<f32>(0.0); var acc3h = vec4<f32>(0.0);
    //wide: var acc3m = vec4<f32>(0.0); var acc3n = vec4<f32>(0.0);
    var acc4l = vec4<f32>(0.0); var acc4h = vec4<f32>(0.0);
    //wide: var acc4m = vec4<f32>(0.0); var acc4n = vec4<f32>(0.0);
    var acc5l = vec4<f32>(0.0); var acc5h = vec4<f32>(0.0);
    //wide: var acc5m = vec4<f32>(0.0); var acc5n = vec4<f32>(0.0);
    var acc6l = vec4<f32>(0.0); var acc6h = vec4<f32>(0.0);
    //wide: var acc6m = vec4<f32>(0.0); var acc6n = vec4<f32>(0.0);
    var acc7l = vec4<f32>(0.0); var acc7h = vec4<f32>(0.0);
    //wide: var acc7m = vec4<f32>(0.0); var acc7n = vec4<f32>(0.0);
    var acc8l = vec4<f32>(0.0); var acc8h = vec4<f32>(0.0);
    //wide: var acc8m = vec4<f32>(0.0); var acc8n = vec4<f32>(0.0);
    var acc9l = vec4<f32>(0.0); var acc9h = vec4<f32>(0.0);
    //wide: var acc9m = vec4<f32>(0.0); var acc9n = vec4<f32>(0.0);
    var acc10l = vec4<f32>(0.0); var acc10h = vec4<f32>(0.0);
    //wide: var acc10m = vec4<f32>(0.0); var acc10n = vec4<f32>(0.0);
    var acc11l = vec4<f32>(0.0); var acc11h = vec4<f32>(0.0);
    //wide: var acc11m = vec4<f32>(0.0); var acc11n = vec4<f32>(0.0);
    var acc12l = vec4<f32>(0.0); var acc12h = vec4<f32>(0.0);
    //wide: var acc12m = vec4<f32>(0.0); var acc12n = vec4<f32>(0.0);
    var acc13l = vec4<f32>(0.0); var acc13h = vec4<f32>(0.0);
    //wide: var acc13m = vec4<f32>(0.0); var acc13n = vec4<f32>(0.0);
    var acc14l = vec4<f32>(0.0); var acc14h = vec4<f32>(0.0);
    //wide: var acc14m = vec4<f32>(0.0); var acc14n = vec4<f32>(0.0);
    var acc15l = vec4<f32>(0.0); var acc15h = vec4<f32>(0.0);
    //wide: var acc15m = vec4<f32>(0.0); var acc15n = vec4<f32>(0.0);
    let k_begin = wid.z * p.k_chunk;
    let k_end = min(p.k, k_begin + p.k_chunk);
    var ka = k_begin * p.a_row4 + m0 / 4u;
    var kb = k_begin * p.b_row4 + n0 / 4u;
    for (var k = k_begin; k < k_end; k++) {
        //!wide: let a0 = a[ka];
        // (wide) Lane i of the row loads vec4 i % 4 of the step's A.
        //wide: let shared_a = a[ka + lane % 4u];
        //wide: let a0 = subgroupShuffle(shared_a, group_base);
        let bl = b[kb];
        let bh = b[kb + 1u];
        //wide: let bm = b[kb + 2u]; let bn = b[kb + 3u];
        acc0l = fma(vec4<f32>(a0.x), bl, acc0l); acc0h = fma(vec4<f32>(a0.x), bh, acc0h);
        //wide: acc0m = fma(vec4<f32>(a0.x), bm, acc0m); acc0n = fma(vec4<f32>(a0.x), bn, acc0n);
        acc1l = fma(vec4<f32>(a0.y), bl, acc1l); acc1h = fma(vec4<f32>(a0.y), bh, acc1h);
        //wide: acc1m = fma(vec4<f32>(a0.y), bm, acc1m); acc1n = fma(vec4<f32>(a0.y), bn, acc1n);
        acc2l = fma(vec4<f32>(a0.z), bl, acc2l); acc2h = fma(vec4<f32>(a0.z), bh, acc2h);
        //wide: acc2m = fma(vec4<f32>(a0.z), bm, acc2m); acc2n = fma(vec4<f32>(a0.z), bn, acc2n);
        acc3l = fma(vec4<f32>(a0.w), bl, acc3l); acc3h = fma(vec4<f32>(a0.w), bh, acc3h);
        //wide: acc3m = fma(vec4<f32>(a0.w), bm, acc3m); acc3n = fma(vec4<f32>(a0.w), bn, acc3n);
        // Rows 4-15, which the pipeline for at most 4 rows does not have.
        if (!SMALL_M) {
            //!wide: let a1 = a[ka + 1u];
            //!wide: let a2 = a[ka + 2u];
            //!wide: let a3 = a[ka + 3u];
            //wide: let a1 = subgroupShuffle(shared_a, group_base + 1u);
            //wide: let a2 = subgroupShuffle(shared_a, group_base + 2u);
            //wide: let a3 = subgroupShuffle(shared_a, group_base + 3u);
            acc4l = fma(vec4<f32>(a1.x), bl, acc4l); acc4h = fma(vec4<f32>(a1.x), bh, acc4h);
            //wide: acc4m = fma(vec4<f32>(a1.x), bm, acc4m); acc4n = fma(vec4<f32>(a1.x), bn, acc4n);
            acc5l = fma(vec4<f32>(a1.y), bl, acc5l); acc5h = fma(vec4<f32>(a1.y), bh, acc5h);
            //wide: acc5m = fma(vec4<f32>(a1.y), bm, acc5m); acc5n = fma(vec4<f32>(a1.y), bn, acc5n);
            acc6l = fma(vec4<f32>(a1.z), bl, acc6l); acc6h = fma(vec4<f32>(a1.z), bh, acc6h);
            //wide: acc6m = fma(vec4<f32>(a1.z), bm, acc6m); acc6n = fma(vec4<f32>(a1.z), bn, acc6n);
            acc7l = fma(vec4<f32>(a1.w), bl, acc7l); acc7h = fma(vec4<f32>(a1.w), bh, acc7h);
            //wide: acc7m = fma(vec4<f32>(a1.w), bm, acc7m); acc7n = fma(vec4<f32>(a1.w), bn, acc7n);
            acc8l = fma(vec4<f32>(a2.x), bl, acc8l); acc8h = fma(vec4<f32>(a2.x), bh, acc8h);
            //wide: acc8m = fma(vec4<f32>(a2.x), bm, acc8m); acc8n = fma(vec4<f32>(a2.x), bn, acc8n);
            acc9l = fma(vec4<f32>(a2.y), bl, acc9l); acc9h = fma(vec4<f32>(a2.y), bh, acc9h);
            //wide: acc9m = fma(vec4<f32>(a2.y), bm, acc9m); acc9n = fma(vec4<f32>(a2.y), bn, acc9n);
            acc10l = fma(vec4<f32>(a2.z), bl, acc10l); acc10h = fma(vec4<f32>(a2.z), bh, acc10h);
            //wide: acc10m = fma(vec4<f32>(a2.z), bm, acc10m); acc10n = fma(vec4<f32>(a2.z), bn, acc10n);
            acc11l = fma(vec4<f32>(a2.w), bl, acc11l); acc11h = fma(vec4<f32>(a2.w), bh, acc11h);
            //wide: acc11m = fma(vec4<f32>(a2.w), bm, acc11m); acc11n = fma(vec4<f32>(a2.w), bn, acc11n);
            acc12l = fma(vec4<f32>(a3.x), bl, acc12l); acc12h = fma(vec4<f32>(a3.x), bh, acc12h);
            //wide: acc12m = fma(vec4<f32>(a3.x), bm, acc12m); acc12n = fma(vec4<f32>(a3.x), bn, acc12n);
            acc13l = fma(vec4<f32>(a3.y), bl, acc13l); acc13h = fma(vec4<f32>(a3.y), bh, acc13h);
            //wide: acc13m = fma(vec4<f32>(a3.y), bm, acc13m); acc13n = fma(vec4<f32>(a3.y), bn, acc13n);
            acc14l = fma(vec4<f32>(a3.z), bl, acc14l); acc14h = fma(vec4<f32>(a3.z), bh, acc14h);
            //wide: acc14m = fma(vec4<f32>(a3.z), bm, acc14m); acc14n = fma(vec4<f32>(a3.z), bn, acc14n);
            acc15l = fma(vec4<f32>(a3.w), bl, acc15l); acc15h = fma(vec4<f32>(a3.w), bh, acc15h);
            //wide: acc15m = fma(vec4<f32>(a3.w), bm, acc15m); acc15n = fma(vec4<f32>(a3.w), bn, acc15n);
        }
        ka += p.a_row4;
        kb += p.b_row4;
    }
    // An indexed array, unlike the accumulators: lavapipe compiles stores written out one call
    // per row into code that makes the matrix-vector pipeline (SMALL_M) far slower.
    //wide: if (!in_range) { return; }
    var rows = array<vec4<f32>, 32>(acc0l, acc0h, acc1l, acc1h, acc2l, acc2h, acc3l, acc3h, acc4l, acc4h, acc5l, acc5h, acc6l, acc6h, acc7l, acc7h, acc8l, acc8h, acc9l, acc9h, acc10l, acc10h, acc11l, acc11h, acc12l, acc12h, acc13l, acc13h, acc14l, acc14h, acc15l, acc15h);
    store_block(m0, n0, wid.z, &rows);
    //wide: rows = array<vec4<f32>, 32>(acc0m, acc0n, acc1m, acc1n, acc2m, acc2n, acc3m, acc3n, acc4m, acc4n, acc5m, acc5n, acc6m, acc6n, acc7m, acc7n, acc8m, acc8n, acc9m, acc9n, acc10m, acc10n, acc11m, acc11n, acc12m, acc12n, acc13m, acc13n, acc14m, acc14n, acc15m, acc15n);
    //wide: store_block(m0, n0 + 8u, wid.z, &rows);
}

// Rows m0 .. m0+15, columns n0 .. n0+7 of C from `rows` (row i's columns in rows[2i], rows[2i+1]),
// those inside C.
fn store_block(m0: u32, n0: u32, split: u32, rows: ptr<function, array<vec4<f32>, 32>>) {
    for (var i = 0u; i < TILE_M; i++) {
        let m = m0 + i;
        if (m >= p.m) {
            break;
        }
        for (var j = 0u; j < 8u; j++) {
            let n = n0 + j;
            if (n < p.n) {
                store_c(m, n, split, (*rows)[2u * i + j / 4u][j % 4u]);
            }
        }
    }
}

fn store_c(m: u32, n: u32, split: u32, value: f32) {
    var v = value;
    // The bias belongs to one pass: the unsplit product, or split 0 of a split one.
    if ((p.flags & 1u) != 0u && split == 0u) { v += bias[n]; }
    if ((p.flags & 4u) != 0u) {
        c[(split * p.m + m) * p.n + n] = v;
        return;
    }
    let i = m * p.n + n;
    if ((p.flags & 2u) != 0u) { v += c[i]; }
    c[i] = v;
}
