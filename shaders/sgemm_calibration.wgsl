// Calibration SGEMM: C = A B for row-major matrices whose sizes are multiples of 64, with
// 8x8 outputs per thread in 16 named vec4 accumulators and operands read as vec4. The
// benchmarks run it to measure what the adapter reaches on a plain, well-shaped product: the
// yardstick for the other kernels' GFLOP/s. (Accumulators in an indexed array end up in memory
// on lavapipe, so they are spelled out.)

struct Params { m: u32, n: u32, k: u32, _pad: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> b: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> c: array<vec4<f32>>;

@compute @workgroup_size(8, 8, 1)
fn sgemm(@builtin(global_invocation_id) gid: vec3<u32>) {
    let row0 = gid.y * 8u;
    let col4 = gid.x * 2u;
    if (row0 >= p.m || col4 * 4u >= p.n) {
        return;
    }
    let k4 = p.k / 4u;
    let n4 = p.n / 4u;
    var c0l = vec4<f32>(0.0);
    var c0h = vec4<f32>(0.0);
    var c1l = vec4<f32>(0.0);
    var c1h = vec4<f32>(0.0);
    var c2l = vec4<f32>(0.0);
    var c2h = vec4<f32>(0.0);
    var c3l = vec4<f32>(0.0);
    var c3h = vec4<f32>(0.0);
    var c4l = vec4<f32>(0.0);
    var c4h = vec4<f32>(0.0);
    var c5l = vec4<f32>(0.0);
    var c5h = vec4<f32>(0.0);
    var c6l = vec4<f32>(0.0);
    var c6h = vec4<f32>(0.0);
    var c7l = vec4<f32>(0.0);
    var c7h = vec4<f32>(0.0);
    for (var kk = 0u; kk < k4; kk++) {
        let br = kk * 4u * n4 + col4;
        let b0l = b[br];
        let b0h = b[br + 1u];
        let b1l = b[br + n4];
        let b1h = b[br + n4 + 1u];
        let b2l = b[br + 2u * n4];
        let b2h = b[br + 2u * n4 + 1u];
        let b3l = b[br + 3u * n4];
        let b3h = b[br + 3u * n4 + 1u];
        let a0 = a[(row0 + 0u) * k4 + kk];
        c0l = fma(vec4<f32>(a0.x), b0l, fma(vec4<f32>(a0.y), b1l, fma(vec4<f32>(a0.z), b2l, fma(vec4<f32>(a0.w), b3l, c0l))));
        c0h = fma(vec4<f32>(a0.x), b0h, fma(vec4<f32>(a0.y), b1h, fma(vec4<f32>(a0.z), b2h, fma(vec4<f32>(a0.w), b3h, c0h))));
        let a1 = a[(row0 + 1u) * k4 + kk];
        c1l = fma(vec4<f32>(a1.x), b0l, fma(vec4<f32>(a1.y), b1l, fma(vec4<f32>(a1.z), b2l, fma(vec4<f32>(a1.w), b3l, c1l))));
        c1h = fma(vec4<f32>(a1.x), b0h, fma(vec4<f32>(a1.y), b1h, fma(vec4<f32>(a1.z), b2h, fma(vec4<f32>(a1.w), b3h, c1h))));
        let a2 = a[(row0 + 2u) * k4 + kk];
        c2l = fma(vec4<f32>(a2.x), b0l, fma(vec4<f32>(a2.y), b1l, fma(vec4<f32>(a2.z), b2l, fma(vec4<f32>(a2.w), b3l, c2l))));
        c2h = fma(vec4<f32>(a2.x), b0h, fma(vec4<f32>(a2.y), b1h, fma(vec4<f32>(a2.z), b2h, fma(vec4<f32>(a2.w), b3h, c2h))));
        let a3 = a[(row0 + 3u) * k4 + kk];
        c3l = fma(vec4<f32>(a3.x), b0l, fma(vec4<f32>(a3.y), b1l, fma(vec4<f32>(a3.z), b2l, fma(vec4<f32>(a3.w), b3l, c3l))));
        c3h = fma(vec4<f32>(a3.x), b0h, fma(vec4<f32>(a3.y), b1h, fma(vec4<f32>(a3.z), b2h, fma(vec4<f32>(a3.w), b3h, c3h))));
        let a4 = a[(row0 + 4u) * k4 + kk];
        c4l = fma(vec4<f32>(a4.x), b0l, fma(vec4<f32>(a4.y), b1l, fma(vec4<f32>(a4.z), b2l, fma(vec4<f32>(a4.w), b3l, c4l))));
        c4h = fma(vec4<f32>(a4.x), b0h, fma(vec4<f32>(a4.y), b1h, fma(vec4<f32>(a4.z), b2h, fma(vec4<f32>(a4.w), b3h, c4h))));
        let a5 = a[(row0 + 5u) * k4 + kk];
        c5l = fma(vec4<f32>(a5.x), b0l, fma(vec4<f32>(a5.y), b1l, fma(vec4<f32>(a5.z), b2l, fma(vec4<f32>(a5.w), b3l, c5l))));
        c5h = fma(vec4<f32>(a5.x), b0h, fma(vec4<f32>(a5.y), b1h, fma(vec4<f32>(a5.z), b2h, fma(vec4<f32>(a5.w), b3h, c5h))));
        let a6 = a[(row0 + 6u) * k4 + kk];
        c6l = fma(vec4<f32>(a6.x), b0l, fma(vec4<f32>(a6.y), b1l, fma(vec4<f32>(a6.z), b2l, fma(vec4<f32>(a6.w), b3l, c6l))));
        c6h = fma(vec4<f32>(a6.x), b0h, fma(vec4<f32>(a6.y), b1h, fma(vec4<f32>(a6.z), b2h, fma(vec4<f32>(a6.w), b3h, c6h))));
        let a7 = a[(row0 + 7u) * k4 + kk];
        c7l = fma(vec4<f32>(a7.x), b0l, fma(vec4<f32>(a7.y), b1l, fma(vec4<f32>(a7.z), b2l, fma(vec4<f32>(a7.w), b3l, c7l))));
        c7h = fma(vec4<f32>(a7.x), b0h, fma(vec4<f32>(a7.y), b1h, fma(vec4<f32>(a7.z), b2h, fma(vec4<f32>(a7.w), b3h, c7h))));
    }
    c[(row0 + 0u) * n4 + col4] = c0l;
    c[(row0 + 0u) * n4 + col4 + 1u] = c0h;
    c[(row0 + 1u) * n4 + col4] = c1l;
    c[(row0 + 1u) * n4 + col4 + 1u] = c1h;
    c[(row0 + 2u) * n4 + col4] = c2l;
    c[(row0 + 2u) * n4 + col4 + 1u] = c2h;
    c[(row0 + 3u) * n4 + col4] = c3l;
    c[(row0 + 3u) * n4 + col4 + 1u] = c3h;
    c[(row0 + 4u) * n4 + col4] = c4l;
    c[(row0 + 4u) * n4 + col4 + 1u] = c4h;
    c[(row0 + 5u) * n4 + col4] = c5l;
    c[(row0 + 5u) * n4 + col4 + 1u] = c5h;
    c[(row0 + 6u) * n4 + col4] = c6l;
    c[(row0 + 6u) * n4 + col4 + 1u] = c6h;
    c[(row0 + 7u) * n4 + col4] = c7l;
    c[(row0 + 7u) * n4 + col4 + 1u] = c7h;
}
