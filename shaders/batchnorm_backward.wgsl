// Batch-norm gradients (training mode), per channel c over its count = N * H * W elements,
// with xhat = (x - mean) * invstd:
// reduce: dgamma = sum dy * xhat, dbeta = sum dy            (one workgroup per channel)
// data:   dx = gamma * invstd / count * (count * dy - dbeta - xhat * dgamma), ELEMENTS
//         consecutive elements per thread, as in batchnorm_forward.wgsl's normalize

struct Params { batch: u32, channels: u32, plane: u32, _pad0: u32 }

const ELEMENTS: u32 = 16u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> dy: array<f32>;
@group(0) @binding(3) var<storage, read> mean: array<f32>;
@group(0) @binding(4) var<storage, read> invstd: array<f32>;
@group(0) @binding(5) var<storage, read_write> dgamma: array<f32>;
@group(0) @binding(6) var<storage, read_write> dbeta: array<f32>;
@group(0) @binding(7) var<storage, read> gamma: array<f32>;
@group(0) @binding(8) var<storage, read_write> dx: array<f32>;

@compute @workgroup_size(256)
fn reduce(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let c = wid.y * nwg.x + wid.x;
    if (c >= p.channels) {
        return;
    }
    // Thread lid takes elements lid, lid + REDUCE_WG, ... of the channel.
    let count = p.batch * p.plane;
    let step = vec2<u32>(REDUCE_WG / p.plane, REDUCE_WG % p.plane);
    var at = vec2<u32>(lid / p.plane, lid % p.plane);
    // Loaded once: every load in the loop is a gather lane by lane on lavapipe.
    let mu = mean[c];
    let s = invstd[c];
    var g = 0.0;
    var b = 0.0;
    for (var j = lid; j < count; j += REDUCE_WG) {
        let i = (at.x * p.channels + c) * p.plane + at.y;
        g += dy[i] * (x[i] - mu) * s;
        b += dy[i];
        at = plane_step(at, step.x, step.y, p.plane);
    }
    let sg = workgroup_sum(g, lid);
    let sb = workgroup_sum(b, lid);
    if (lid == 0u) {
        dgamma[c] = sg;
        dbeta[c] = sb;
    }
}

@compute @workgroup_size(256)
fn data(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i0 = linear_index(wid, nwg, lid, 256u) * ELEMENTS;
    let end = min(i0 + ELEMENTS, p.batch * p.channels * p.plane);
    if (i0 >= end) {
        return;
    }
    var c = (i0 / p.plane) % p.channels;
    var q = i0 % p.plane;
    var k = coefficients(c);
    for (var i = i0; i < end; i++) {
        dx[i] = fma(k.x, dy[i], fma(k.y, x[i], k.z));
        q++;
        if (q == p.plane) {
            q = 0u;
            c = select(c + 1u, 0u, c + 1u == p.channels);
            k = coefficients(c);
        }
    }
}

// dx = k.x * dy + k.y * x + k.z for channel c: the formula above expanded, with
// xhat = (x - mean) * invstd.
fn coefficients(c: u32) -> vec3<f32> {
    let count = f32(p.batch * p.plane);
    let a = gamma[c] * invstd[c];
    let b = -a * invstd[c] * dgamma[c] / count;
    return vec3<f32>(a, b, -b * mean[c] - a * dbeta[c] / count);
}
