// Packs OIHW weights for conv2d.wgsl: the weights of one tap (ci, ky, kx) for output channels
// co .. co+7 lie together, zero past the last channel, so a thread of conv2d.wgsl reads its
// 8 channels' weights as two vec4 loads instead of eight scalar ones (lavapipe gathers each
// load per lane: the change was worth about 20 % on conv2-4 there).
//     packed[((ci * kh + ky) * kw + kx) * co_pad + co] = W[co, ci, ky, kx]   (co_pad = cout rounded up to 8)
// W is the convolution's own weights w, or with `flip` = 1 those of its data gradient, the
// convolution that maps dy back to dx: W[co, ci, ky, kx] = w[ci, co, kh-1-ky, kw-1-kx], where
// `cin`/`cout` are the data gradient's (w's cout/cin).

struct Params { cout: u32, cin: u32, kh: u32, kw: u32, co_pad: u32, flip: u32, _pad0: u32, _pad1: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> w: array<f32>;
@group(0) @binding(2) var<storage, read_write> packed: array<f32>;

@compute @workgroup_size(256)
fn pack(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid, 256u);
    let taps = p.kh * p.kw;
    if (i >= p.cin * taps * p.co_pad) {
        return;
    }
    let co = i % p.co_pad;
    let tap = i / p.co_pad;
    let ci = tap / taps;
    let ky = (tap % taps) / p.kw;
    let kx = tap % p.kw;
    var v = 0.0;
    if (co < p.cout) {
        if (p.flip != 0u) {
            v = w[((ci * p.cout + co) * p.kh + (p.kh - 1u - ky)) * p.kw + (p.kw - 1u - kx)];
        } else {
            v = w[((co * p.cin + ci) * p.kh + ky) * p.kw + kx];
        }
    }
    packed[i] = v;
}
