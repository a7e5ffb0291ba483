// Batch normalisation over NCHW activations, per channel c over all (n, y, x):
// stats: training mode computes the batch mean and biased variance (two passes over the data,
//   which is more accurate than E[x^2] - E[x]^2) and updates the running statistics Keras-style,
//   running = momentum * running + (1 - momentum) * batch; inference mode just turns the
//   running statistics into mean and 1/std. One workgroup per channel.
// normalize: y = gamma * (x - mean) * invstd + beta, one thread per element.

struct Params { batch: u32, channels: u32, plane: u32, training: u32, epsilon: f32, momentum: f32, _pad0: u32, _pad1: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> mean: array<f32>;
@group(0) @binding(3) var<storage, read_write> invstd: array<f32>;
@group(0) @binding(4) var<storage, read_write> running_mean: array<f32>;
@group(0) @binding(5) var<storage, read_write> running_var: array<f32>;
@group(0) @binding(6) var<storage, read> gamma: array<f32>;
@group(0) @binding(7) var<storage, read> beta: array<f32>;
@group(0) @binding(8) var<storage, read_write> y: array<f32>;

fn at(c: u32, j: u32) -> u32 {
    return ((j / p.plane) * p.channels + c) * p.plane + j % p.plane;
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
    let count = p.batch * p.plane;
    var s = 0.0;
    for (var j = lid; j < count; j += REDUCE_WG) {
        s += x[at(c, j)];
    }
    let mu = workgroup_sum(s, lid) / f32(count);
    var d = 0.0;
    for (var j = lid; j < count; j += REDUCE_WG) {
        let e = x[at(c, j)] - mu;
        d += e * e;
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
    let i = linear_index(wid, nwg, lid, 256u);
    if (i >= p.batch * p.channels * p.plane) {
        return;
    }
    let c = (i / p.plane) % p.channels;
    y[i] = gamma[c] * (x[i] - mean[c]) * invstd[c] + beta[c];
}
