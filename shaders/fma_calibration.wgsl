// Calibration FMA: each thread runs `iterations` rounds of 128 multiply-adds on 8 independent vec4
// chains held in registers, x <- x * m + c, and writes the sum of its chains (so the compiler
// keeps them). No memory is read in the loop, so its rate is the adapter's peak FMA throughput:
// the roof that `mien bench kernels` puts every compute-bound kernel under, as the copy
// calibration is the roof for memory-bound ones. (The calibration SGEMM, which reads its
// operands, is the yardstick for what a plain product reaches.) The chains converge to
// c / (1 - m) = 1, so no value overflows or turns denormal however long it runs.

struct Params { threads: u32, iterations: u32, _pad0: u32, _pad1: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> sums: array<f32>;

const FMA_M: f32 = 0.9990234375; // 1 - 2^-10
const FMA_C: f32 = 0.0009765625; // 2^-10

@compute @workgroup_size(256)
fn fma_peak(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = linear_index(wid, nwg, lid, 256u);
    if (t >= p.threads || t >= arrayLength(&sums)) {
        return;
    }
    // Starting values that differ per thread, so no two chains can be merged.
    let s = f32(t % 1024u) / 1024.0;
    let x0 = vec4<f32>(s, s + 0.125, s + 0.25, s + 0.375);
    var x = Chains(x0, x0 + 0.125, x0 + 0.25, x0 + 0.375, x0 + 0.5, x0 + 0.625, x0 + 0.75, x0 + 0.875);
    // 16 rounds of straight-line code an iteration: lavapipe blends each variable written in a
    // loop with the lanes' mask once per iteration, which 16 multiply-adds a chain amortise.
    for (var i = 0u; i < p.iterations; i++) {
        x = four_rounds(four_rounds(four_rounds(four_rounds(x))));
    }
    let total = (x.a + x.b) + (x.c + x.d) + (x.e + x.f) + (x.g + x.h);
    sums[t] = total.x + total.y + total.z + total.w;
}

// The 8 independent chains of a thread.
struct Chains { a: vec4<f32>, b: vec4<f32>, c: vec4<f32>, d: vec4<f32>, e: vec4<f32>, f: vec4<f32>, g: vec4<f32>, h: vec4<f32> }

fn fma_round(x: Chains) -> Chains {
    let m = vec4<f32>(FMA_M);
    let c = vec4<f32>(FMA_C);
    return Chains(fma(x.a, m, c), fma(x.b, m, c), fma(x.c, m, c), fma(x.d, m, c), fma(x.e, m, c), fma(x.f, m, c), fma(x.g, m, c), fma(x.h, m, c));
}

fn four_rounds(x: Chains) -> Chains {
    return fma_round(fma_round(fma_round(fma_round(x))));
}
