// SGD with momentum, Nesterov's or plain, and L2 weight decay, in place, in PyTorch's form:
//     g = grad + weight_decay param;  buf = keep buf + g
//     param -= lr (g + momentum buf)  with Nesterov,  lr buf  without
// keep is 0 on the first step (PyTorch starts the buffer at g, whatever it held) and momentum
// after; the host chooses it.

struct Params { n: u32, lr: f32, momentum: f32, keep: f32, weight_decay: f32, nesterov: u32, _pad0: u32, _pad1: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> grad: array<f32>;
@group(0) @binding(2) var<storage, read_write> param: array<f32>;
@group(0) @binding(3) var<storage, read_write> buf: array<f32>;

@compute @workgroup_size(256)
fn step(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid, 256u);
    if (i >= p.n) {
        return;
    }
    let w = param[i];
    let g = grad[i] + p.weight_decay * w;
    let b = p.keep * buf[i] + g;
    buf[i] = b;
    let update = select(b, g + p.momentum * b, p.nesterov != 0u);
    param[i] = w - p.lr * update;
}
