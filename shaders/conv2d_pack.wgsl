// Packs OIHW weights for conv2d.wgsl: the weights of one tap (ci, ky, kx) for output channels
// co .. co+7 lie together, zero past the last channel, so a thread of conv2d.wgsl reads its
// 8 channels' weights as two vec4 loads instead of eight scalar ones (lavapipe gathers each
// load per lane, so fewer loads per multiply-add run faster there).
//     packed[((ci * kh + ky) * kw + kx) * co_pad + co] = W[co, ci, ky, kx]   (co_pad = cout rounded up to 8)
// W is the convolution's own weights w, or with `flip` = 1 those of its data gradient, the
// convolution that maps dy back to dx: W[co, ci, ky, kx] = w[ci, co, kh-1-ky, kw-1-kx], where
// `cin`/`cout` are the data gradient's (w's cout/cin).

struct Params { cout: u32, cin: u32, kh: u32, kw: u32, co_pad: u32, flip: u32, _pad0: u32, _pad1: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> w: array<f32>;
@group(0) @binding(2) var<storage, read_write> packed: array<vec4<f32>>;

// One thread per tap and block of 8 output channels, so the divisions that locate the tap are
// done once per 8 weights: lavapipe splits vector integer division into scalar ones, and one
// thread per weight with five divisions each would make packing a large share of a batch-1
// forward pass.
@compute @workgroup_size(64)
fn pack(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid, 64u);
    let blocks = p.co_pad / 8u;
    let taps = p.kh * p.kw;
    if (i >= p.cin * taps * blocks) {
        return;
    }
    let cb = i % blocks;
    let tap = i / blocks;
    let ci = tap / taps;
    let ky = (tap % taps) / p.kw;
    let kx = tap % p.kw;
    // W[co, ci, ky, kx] sits at first + co * stride.
    var first = ((ci * p.kh + ky) * p.kw) + kx;
    var stride = p.cin * taps;
    if (p.flip != 0u) {
        first = (ci * p.cout * p.kh + (p.kh - 1u - ky)) * p.kw + (p.kw - 1u - kx);
        stride = taps;
    }
    let co = cb * 8u;
    let out = tap * (p.co_pad / 4u) + cb * 2u;
    packed[out] = vec4<f32>(weight(first, stride, co), weight(first, stride, co + 1u), weight(first, stride, co + 2u), weight(first, stride, co + 3u));
    packed[out + 1u] = vec4<f32>(weight(first, stride, co + 4u), weight(first, stride, co + 5u), weight(first, stride, co + 6u), weight(first, stride, co + 7u));
}

// W[co, ...] at first + co * stride, or 0 past the last output channel.
fn weight(first: u32, stride: u32, co: u32) -> f32 {
    return select(0.0, w[min(first + co * stride, arrayLength(&w) - 1u)], co < p.cout);
}
