// Batch-norm gradients (training mode), per channel c over its count = N * H * W elements,
// with xhat = (x - mean) * invstd:
// reduce: dgamma = sum dy * xhat, dbeta = sum dy            (one workgroup per channel)
// data:   dx = gamma * invstd / count * (count * dy - dbeta - xhat * dgamma)

struct Params { batch: u32, channels: u32, plane: u32, _pad0: u32 }

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
    let count = p.batch * p.plane;
    var g = 0.0;
    var b = 0.0;
    for (var j = lid; j < count; j += REDUCE_WG) {
        let i = ((j / p.plane) * p.channels + c) * p.plane + j % p.plane;
        g += dy[i] * (x[i] - mean[c]) * invstd[c];
        b += dy[i];
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
    let i = linear_index(wid, nwg, lid, 256u);
    if (i >= p.batch * p.channels * p.plane) {
        return;
    }
    let c = (i / p.plane) % p.channels;
    let count = f32(p.batch * p.plane);
    let xhat = (x[i] - mean[c]) * invstd[c];
    dx[i] = gamma[c] * invstd[c] / count * (count * dy[i] - dbeta[c] - xhat * dgamma[c]);
}
