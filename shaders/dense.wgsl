// Dense-layer products on row-major matrices with arbitrary strides, so one kernel serves
//     forward       y  = x W + b        A = x,    B = W
//     backward dx   dx = dy W^T         A = dy,   B = W read transposed
//     backward dW   dW = x^T dy         A = x read transposed, B = dy
// as C[m, n] = sum over k of A[m * a_row + k * a_col] * B[k * b_row + n * b_col].
//
// Each thread accumulates a 16x8 block of C in 32 named vec4 registers (an indexed array can end
// up in memory on lavapipe): 24 loads per 128 multiply-adds, against the calibration SGEMM's
// 16 per 64. On CPU Vulkan drivers every load is a per-lane gather, so that ratio is what sets
// the speed (8x8 blocks ran at 77-89 % of the calibration, 16x8 at 91-111 %), and
// workgroup-memory tiling with barriers is slower there. Rows and columns past the edge are
// clamped to the last one, so every load is in bounds; their results are dropped at the store.
// Flags: bit 0 adds bias[n] (in split 0 only); bit 1 adds into C instead of overwriting; bit 2
// writes the partial product of split `z` (the k range z * k_chunk ..) to C[z * M * N + ...] for
// reduce.wgsl to sum.

struct Params {
    m: u32, n: u32, k: u32, k_chunk: u32,
    a_row: u32, a_col: u32, b_row: u32, b_col: u32,
    flags: u32, _pad0: u32, _pad1: u32, _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> c: array<f32>;

const WG: u32 = 8u;
const TILE_N: u32 = 8u;
const TILE_M: u32 = 16u;

@compute @workgroup_size(8, 8, 1)
fn gemm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let m0 = (wid.y * WG + lid.y) * TILE_M;
    let n0 = (wid.x * WG + lid.x) * TILE_N;
    if (m0 >= p.m || n0 >= p.n) {
        return;
    }
    let lm = p.m - 1u;
    let ln = p.n - 1u;
    // Where row m0 + i of A and column n0 + j of B start.
    let a0 = min(m0 + 0u, lm) * p.a_row;
    let a1 = min(m0 + 1u, lm) * p.a_row;
    let a2 = min(m0 + 2u, lm) * p.a_row;
    let a3 = min(m0 + 3u, lm) * p.a_row;
    let a4 = min(m0 + 4u, lm) * p.a_row;
    let a5 = min(m0 + 5u, lm) * p.a_row;
    let a6 = min(m0 + 6u, lm) * p.a_row;
    let a7 = min(m0 + 7u, lm) * p.a_row;
    let a8 = min(m0 + 8u, lm) * p.a_row;
    let a9 = min(m0 + 9u, lm) * p.a_row;
    let a10 = min(m0 + 10u, lm) * p.a_row;
    let a11 = min(m0 + 11u, lm) * p.a_row;
    let a12 = min(m0 + 12u, lm) * p.a_row;
    let a13 = min(m0 + 13u, lm) * p.a_row;
    let a14 = min(m0 + 14u, lm) * p.a_row;
    let a15 = min(m0 + 15u, lm) * p.a_row;
    let b0 = min(n0 + 0u, ln) * p.b_col;
    let b1 = min(n0 + 1u, ln) * p.b_col;
    let b2 = min(n0 + 2u, ln) * p.b_col;
    let b3 = min(n0 + 3u, ln) * p.b_col;
    let b4 = min(n0 + 4u, ln) * p.b_col;
    let b5 = min(n0 + 5u, ln) * p.b_col;
    let b6 = min(n0 + 6u, ln) * p.b_col;
    let b7 = min(n0 + 7u, ln) * p.b_col;
    // acc<i>l / acc<i>h: columns n0 .. n0+3 / n0+4 .. n0+7 of row m0 + i.
    var acc0l = vec4<f32>(0.0); var acc0h = vec4<f32>(0.0);
    var acc1l = vec4<f32>(0.0); var acc1h = vec4<f32>(0.0);
    var acc2l = vec4<f32>(0.0); var acc2h = vec4<f32>(0.0);
    var acc3l = vec4<f32>(0.0); var acc3h = vec4<f32>(0.0);
    var acc4l = vec4<f32>(0.0); var acc4h = vec4<f32>(0.0);
    var acc5l = vec4<f32>(0.0); var acc5h = vec4<f32>(0.0);
    var acc6l = vec4<f32>(0.0); var acc6h = vec4<f32>(0.0);
    var acc7l = vec4<f32>(0.0); var acc7h = vec4<f32>(0.0);
    var acc8l = vec4<f32>(0.0); var acc8h = vec4<f32>(0.0);
    var acc9l = vec4<f32>(0.0); var acc9h = vec4<f32>(0.0);
    var acc10l = vec4<f32>(0.0); var acc10h = vec4<f32>(0.0);
    var acc11l = vec4<f32>(0.0); var acc11h = vec4<f32>(0.0);
    var acc12l = vec4<f32>(0.0); var acc12h = vec4<f32>(0.0);
    var acc13l = vec4<f32>(0.0); var acc13h = vec4<f32>(0.0);
    var acc14l = vec4<f32>(0.0); var acc14h = vec4<f32>(0.0);
    var acc15l = vec4<f32>(0.0); var acc15h = vec4<f32>(0.0);
    let k_begin = wid.z * p.k_chunk;
    let k_end = min(p.k, k_begin + p.k_chunk);
    var ka = k_begin * p.a_col;
    var kb = k_begin * p.b_row;
    for (var k = k_begin; k < k_end; k++) {
        let bl = vec4<f32>(b[kb + b0], b[kb + b1], b[kb + b2], b[kb + b3]);
        let bh = vec4<f32>(b[kb + b4], b[kb + b5], b[kb + b6], b[kb + b7]);
        var av = vec4<f32>(a[a0 + ka]); acc0l = fma(av, bl, acc0l); acc0h = fma(av, bh, acc0h);
        av = vec4<f32>(a[a1 + ka]); acc1l = fma(av, bl, acc1l); acc1h = fma(av, bh, acc1h);
        av = vec4<f32>(a[a2 + ka]); acc2l = fma(av, bl, acc2l); acc2h = fma(av, bh, acc2h);
        av = vec4<f32>(a[a3 + ka]); acc3l = fma(av, bl, acc3l); acc3h = fma(av, bh, acc3h);
        av = vec4<f32>(a[a4 + ka]); acc4l = fma(av, bl, acc4l); acc4h = fma(av, bh, acc4h);
        av = vec4<f32>(a[a5 + ka]); acc5l = fma(av, bl, acc5l); acc5h = fma(av, bh, acc5h);
        av = vec4<f32>(a[a6 + ka]); acc6l = fma(av, bl, acc6l); acc6h = fma(av, bh, acc6h);
        av = vec4<f32>(a[a7 + ka]); acc7l = fma(av, bl, acc7l); acc7h = fma(av, bh, acc7h);
        av = vec4<f32>(a[a8 + ka]); acc8l = fma(av, bl, acc8l); acc8h = fma(av, bh, acc8h);
        av = vec4<f32>(a[a9 + ka]); acc9l = fma(av, bl, acc9l); acc9h = fma(av, bh, acc9h);
        av = vec4<f32>(a[a10 + ka]); acc10l = fma(av, bl, acc10l); acc10h = fma(av, bh, acc10h);
        av = vec4<f32>(a[a11 + ka]); acc11l = fma(av, bl, acc11l); acc11h = fma(av, bh, acc11h);
        av = vec4<f32>(a[a12 + ka]); acc12l = fma(av, bl, acc12l); acc12h = fma(av, bh, acc12h);
        av = vec4<f32>(a[a13 + ka]); acc13l = fma(av, bl, acc13l); acc13h = fma(av, bh, acc13h);
        av = vec4<f32>(a[a14 + ka]); acc14l = fma(av, bl, acc14l); acc14h = fma(av, bh, acc14h);
        av = vec4<f32>(a[a15 + ka]); acc15l = fma(av, bl, acc15l); acc15h = fma(av, bh, acc15h);
        ka += p.a_col;
        kb += p.b_row;
    }
    var rows = array<vec4<f32>, 32>(acc0l, acc0h, acc1l, acc1h, acc2l, acc2h, acc3l, acc3h, acc4l, acc4h, acc5l, acc5h, acc6l, acc6h, acc7l, acc7h, acc8l, acc8h, acc9l, acc9h, acc10l, acc10h, acc11l, acc11h, acc12l, acc12h, acc13l, acc13h, acc14l, acc14h, acc15l, acc15h);
    for (var i = 0u; i < TILE_M; i++) {
        let m = m0 + i;
        if (m >= p.m) {
            break;
        }
        for (var j = 0u; j < TILE_N; j++) {
            let n = n0 + j;
            if (n < p.n) {
                store_c(m, n, wid.z, rows[2u * i + j / 4u][j % 4u]);
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
