// 2-D convolution forward, stride 1, any kernel size and zero padding, NCHW activations and
// OIHW weights (see src/kernels/conv2d.rs for why):
//     out[img, co, oy, ox] = bias[co] + sum over (ci, ky, kx) of
//                            w[co, ci, ky, kx] * x[img, ci, oy + ky - pad_h, ox + kx - pad_w]
// The data gradient runs this same kernel on dy with flipped, transposed weights
// (conv2d_flip.wgsl).
//
// Each thread computes 8 output channels x 8 neighbouring pixels of one output row, held in
// registers as vec4s: 64 multiply-adds for every 16 loads. Loops run over (ci, ky, kx) with
// no integer division inside them: on CPU Vulkan drivers (lavapipe) vector integer division
// is split into scalar divisions, which made an implicit-im2col formulation ten times slower.
// Flags: bit 0 adds bias[co]; bit 1 adds into out.

struct Params {
    batch: u32, cin: u32, h: u32, w: u32,
    cout: u32, oh: u32, ow: u32, kh: u32,
    kw: u32, pad_h: u32, pad_w: u32, flags: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> wt: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

const CO_TILE: u32 = 8u;
const PX_TILE: u32 = 8u;

// Input pixel (row start `row`, column ix) or 0 outside the image. Column indices left of the
// image wrapped around to huge values, so one compare covers both edges.
fn input_at(row: u32, ix: u32) -> f32 {
    return select(0.0, x[row + min(ix, p.w - 1u)], ix < p.w);
}

@compute @workgroup_size(64)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = linear_index(wid, nwg, lid, 64u);
    // Neighbouring threads take neighbouring pixel blocks of a row, so their loads are close.
    let px_blocks = (p.ow + PX_TILE - 1u) / PX_TILE;
    let co_blocks = (p.cout + CO_TILE - 1u) / CO_TILE;
    let bx = t % px_blocks;
    let oy = (t / px_blocks) % p.oh;
    let cb = (t / (px_blocks * p.oh)) % co_blocks;
    let img = t / (px_blocks * p.oh * co_blocks);
    if (img >= p.batch) {
        return;
    }
    let ox0 = bx * PX_TILE;
    let co0 = cb * CO_TILE;
    let taps = p.kh * p.kw;
    let w_stride = p.cin * taps;
    var acc: array<vec4<f32>, 16>; // acc[2c], acc[2c+1]: pixels 0-3 and 4-7 of channel co0 + c
    for (var ci = 0u; ci < p.cin; ci++) {
        let plane = (img * p.cin + ci) * p.h * p.w;
        for (var ky = 0u; ky < p.kh; ky++) {
            let iy = oy + ky - p.pad_h;
            if (iy >= p.h) {
                continue; // a padding row: contributes nothing
            }
            let row = plane + iy * p.w;
            for (var kx = 0u; kx < p.kw; kx++) {
                let ix = ox0 + kx - p.pad_w;
                let lo = vec4<f32>(input_at(row, ix), input_at(row, ix + 1u), input_at(row, ix + 2u), input_at(row, ix + 3u));
                let hi = vec4<f32>(input_at(row, ix + 4u), input_at(row, ix + 5u), input_at(row, ix + 6u), input_at(row, ix + 7u));
                let tap = (ci * p.kh + ky) * p.kw + kx;
                for (var c = 0u; c < CO_TILE; c++) {
                    let wv = vec4<f32>(wt[min(co0 + c, p.cout - 1u) * w_stride + tap]);
                    acc[2u * c] = fma(wv, lo, acc[2u * c]);
                    acc[2u * c + 1u] = fma(wv, hi, acc[2u * c + 1u]);
                }
            }
        }
    }
    let plane_out = p.oh * p.ow;
    for (var c = 0u; c < CO_TILE; c++) {
        let co = co0 + c;
        if (co >= p.cout) {
            break;
        }
        var b = 0.0;
        if ((p.flags & 1u) != 0u) { b = bias[co]; }
        let base = (img * p.cout + co) * plane_out + oy * p.ow;
        for (var j = 0u; j < PX_TILE; j++) {
            let ox = ox0 + j;
            if (ox < p.ow) {
                var v = acc[2u * c + j / 4u][j % 4u] + b;
                if ((p.flags & 2u) != 0u) { v += out[base + ox]; }
                out[base + ox] = v;
            }
        }
    }
}
