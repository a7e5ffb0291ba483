// Batch normalisation over NCHW activations, per channel c over all (n, y, x):
// stats: training mode computes the batch mean and biased variance (two passes over the data,
//   which is more accurate than E[x^2] - E[x]^2) and updates the running statistics Keras-style,
//   running = momentum * running + (1 - momentum) * batch; inference mode just turns the
//   running statistics into mean and 1/std. One workgroup per channel.
// normalize: y = gamma * (x - mean) * invstd + beta, then max(y, 0) with the relu flag.

// relu: inference only, the ReLU that follows fused into `normalize`.
struct Params { batch: u32, channels: u32, plane: u32, training: u32, epsilon: f32, momentum: f32, relu: u32, _pad: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> mean: array<f32>;
@group(0) @binding(3) var<storage, read_write> invstd: array<f32>;
@group(0) @binding(4) var<storage, read_write> running_mean: array<f32>;
@group(0) @binding(5) var<storage, read_write> running_var: array<f32>;
@group(0) @binding(6) var<storage, read> gamma: array<f32>;
@group(0) @binding(7) var<storage, read> beta: array<f32>;
@group(0) @binding(8) var<storage, read_write> y: array<f32>;

// Consecutive elements per thread of `normalize`: it finds its first element's channel with
// two divisions, then loads that channel's coefficients again only when it crosses into the
// next plane, rather than four loads per element (each a per-lane gather on lavapipe).
const ELEMENTS: u32 = 16u;

// Index of (image at.x, offset at.y) in channel c.
fn element(c: u32, at: vec2<u32>) -> u32 {
    return (at.x * p.channels + c) * p.plane + at.y;
}

@compute @workgroup_size(256)
fn stats(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let c = wid.y * nwg.x + wid.x;
    if (c >= p.channels) {
        return; // whole workgroup leaves together: c is uniform
    }
    if (p.training == 0u) {
        if (lid == 0u) {
            mean[c] = running_mean[c];
            invstd[c] = inverseSqrt(running_var[c] + p.epsilon);
        }
        return;
    }
    // Thread lid takes elements lid, lid + REDUCE_WG, ... of the channel.
    let count = p.batch * p.plane;
    let first = vec2<u32>(lid / p.plane, lid % p.plane);
    let step = vec2<u32>(REDUCE_WG / p.plane, REDUCE_WG % p.plane);
    var s = 0.0;
    var at = first;
    for (var j = lid; j < count; j += REDUCE_WG) {
        s += x[element(c, at)];
        at = plane_step(at, step.x, step.y, p.plane);
    }
    let mu = workgroup_sum(s, lid) / f32(count);
    var d = 0.0;
    at = first;
    for (var j = lid; j < count; j += REDUCE_WG) {
        let e = x[element(c, at)] - mu;
        d += e * e;
        at = plane_step(at, step.x, step.y, p.plane);
    }
    let variance = workgroup_sum(d, lid) / f32(count);
    if (lid == 0u) {
        mean[c] = mu;
        invstd[c] = inverseSqrt(variance + p.epsilon);
        running_mean[c] = p.momentum * running_mean[c] + (1.0 - p.momentum) * mu;
        running_var[c] = p.momentum * running_var[c] + (1.0 - p.momentum) * variance;
    }
}

@compute @workgroup_size(256)
fn normalize(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i0 = linear_index(wid, nwg, lid, 256u) * ELEMENTS;
    let end = min(i0 + ELEMENTS, p.batch * p.channels * p.plane);
    if (i0 >= end) {
        return;
    }
    var c = (i0 / p.plane) % p.channels;
    var q = i0 % p.plane;
    var k = scale_shift(c);
    for (var i = i0; i < end; i++) {
        let v = fma(k.x, x[i], k.y);
        // select, not max(): NaN passes through, as in relu.wgsl.
        y[i] = select(v, select(v, 0.0, v <= 0.0), p.relu != 0u);
        q++;
        if (q == p.plane) {
            q = 0u;
            c = select(c + 1u, 0u, c + 1u == p.channels);
            k = scale_shift(c);
        }
    }
}

// y = scale * x + shift for channel c.
fn scale_shift(c: u32) -> vec2<f32> {
    let scale = gamma[c] * invstd[c];
    return vec2<f32>(scale, beta[c] - mean[c] * scale);
}
