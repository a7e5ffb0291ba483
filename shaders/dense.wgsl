// Dense-layer products on row-major matrices with arbitrary strides, so one kernel serves
//     forward       y  = x W + b        A = x,    B = W
//     backward dx   dx = dy W^T         A = dy,   B = W read transposed
//     backward dW   dW = x^T dy         A = x read transposed, B = dy
// Flags: bit 0 adds bias[n]; bit 1 adds into C instead of overwriting; bit 2 writes the partial
// product of split `z` to C[z * M * N + ...] (a later reduce sums the splits).

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

fn gemm_dims() -> vec3<u32> { return vec3<u32>(p.m, p.n, p.k); }
fn gemm_k_chunk() -> u32 { return p.k_chunk; }
fn load_a(m: u32, k: u32) -> f32 { return a[m * p.a_row + k * p.a_col]; }
fn load_b(k: u32, n: u32) -> f32 { return b[k * p.b_row + n * p.b_col]; }

fn store_c(m: u32, n: u32, split: u32, value: f32) {
    if ((p.flags & 4u) != 0u) {
        c[(split * p.m + m) * p.n + n] = value;
        return;
    }
    var v = value;
    if ((p.flags & 1u) != 0u) { v += bias[n]; }
    let i = m * p.n + n;
    if ((p.flags & 2u) != 0u) { v += c[i]; }
    c[i] = v;
}
