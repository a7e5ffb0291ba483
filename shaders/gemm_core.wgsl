// The matrix-product core shared by dense and convolution kernels:
//     C[m, n] = sum over k of A(m, k) * B(k, n)
// The kernel file placed before this one defines how its operands are addressed:
//     gemm_dims() -> vec3<u32>      (M, N, K)
//     gemm_k_chunk() -> u32         K range per split (grid z); K itself when there is no split
//     load_a(m, k) -> f32, load_b(k, n) -> f32
//     store_c(m, n, split, value)
// so a convolution reads its im2col matrix implicitly instead of materialising it.
//
// Each thread accumulates a 4x4 block of C in registers: on CPU Vulkan drivers (lavapipe) more
// multiply-adds per load is what pays, and workgroup-memory tiling with barriers is slower there.
// Loads use clamped indices (always in bounds, results past the edge are discarded at the store),
// so the loaders never see an index outside the matrix.

const GEMM_WG: u32 = 16u;
const GEMM_TILE: u32 = 4u;

@compute @workgroup_size(16, 16, 1)
fn gemm_main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let dims = gemm_dims();
    let m0 = (wid.y * GEMM_WG + lid.y) * GEMM_TILE;
    let n0 = (wid.x * GEMM_WG + lid.x) * GEMM_TILE;
    if (m0 >= dims.x || n0 >= dims.y) {
        return;
    }
    let mc = vec4<u32>(m0, min(m0 + 1u, dims.x - 1u), min(m0 + 2u, dims.x - 1u), min(m0 + 3u, dims.x - 1u));
    let nc = vec4<u32>(n0, min(n0 + 1u, dims.y - 1u), min(n0 + 2u, dims.y - 1u), min(n0 + 3u, dims.y - 1u));
    let k_begin = wid.z * gemm_k_chunk();
    let k_end = min(dims.z, k_begin + gemm_k_chunk());
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var k = k_begin; k < k_end; k++) {
        let b = vec4<f32>(load_b(k, nc.x), load_b(k, nc.y), load_b(k, nc.z), load_b(k, nc.w));
        acc0 = fma(vec4<f32>(load_a(mc.x, k)), b, acc0);
        acc1 = fma(vec4<f32>(load_a(mc.y, k)), b, acc1);
        acc2 = fma(vec4<f32>(load_a(mc.z, k)), b, acc2);
        acc3 = fma(vec4<f32>(load_a(mc.w, k)), b, acc3);
    }
    var rows = array<vec4<f32>, 4>(acc0, acc1, acc2, acc3);
    for (var i = 0u; i < GEMM_TILE; i++) {
        for (var j = 0u; j < GEMM_TILE; j++) {
            if (m0 + i < dims.x && n0 + j < dims.y) {
                store_c(m0 + i, n0 + j, wid.z, rows[i][j]);
            }
        }
    }
}
