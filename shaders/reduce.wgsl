// Sums shared by several ops.
// sum_splits: out[i] = sum over s of partial[s * len + i]   (split-K partial products)
// sum_channels: x seen as [outer, channels, inner]; out[c] = sum over (o, i) of x[o, c, i]
//   (bias gradients of conv and dense layers, the mean loss of a batch)
// Flags: bit 1 adds into out.

struct Params { outer: u32, channels: u32, inner: u32, flags: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

fn finish(i: u32, total: f32) {
    var v = total;
    if ((p.flags & 2u) != 0u) { v += out[i]; }
    out[i] = v;
}

// Here `outer` is the number of splits and `inner` the length of each.
@compute @workgroup_size(256)
fn sum_splits(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid, 256u);
    if (i >= p.inner) {
        return;
    }
    var total = 0.0;
    for (var s = 0u; s < p.outer; s++) {
        total += x[s * p.inner + i];
    }
    finish(i, total);
}

// One thread per channel. The sums here are short (a dense layer's bias gradient: 1,024 channels
// of one value per image; the loss: one channel of the batch), so a workgroup per channel, with
// barriers between the steps of its tree sum, would leave most of its threads idle and pay for
// the barriers (coroutine switches on lavapipe).
@compute @workgroup_size(64)
fn sum_channels(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let c = linear_index(wid, nwg, lid, 64u);
    if (c >= p.channels) {
        return;
    }
    var total = 0.0;
    for (var o = 0u; o < p.outer; o++) {
        let row = (o * p.channels + c) * p.inner;
        for (var i = 0u; i < p.inner; i++) {
            total += x[row + i];
        }
    }
    finish(c, total);
}
