// 2-D convolution forward, stride 1, any kernel size and zero padding, NCHW activations and
// OIHW weights (see src/kernels/conv2d.rs for why). As a matrix product:
//     out[co, (img, oy, ox)] = sum over (ci, ky, kx) of w[co, (ci, ky, kx)] * x[img, ci, oy+ky-pad_h, ox+kx-pad_w]
// with the input's im2col matrix read implicitly. The data gradient runs this same kernel on dy
// with the flipped, transposed weights (conv2d_flip.wgsl).
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

fn gemm_dims() -> vec3<u32> { return vec3<u32>(p.cout, p.batch * p.oh * p.ow, p.cin * p.kh * p.kw); }
fn gemm_k_chunk() -> u32 { return p.cin * p.kh * p.kw; }
fn load_a(m: u32, k: u32) -> f32 { return wt[m * p.cin * p.kh * p.kw + k]; }

fn load_b(k: u32, n: u32) -> f32 {
    let taps = p.kh * p.kw;
    let ci = k / taps;
    let ky = (k % taps) / p.kw;
    let kx = k % p.kw;
    let plane = p.oh * p.ow;
    let img = n / plane;
    let oy = (n % plane) / p.ow;
    let ox = n % p.ow;
    // Unsigned wrap-around turns a negative coordinate into a huge one, so one compare per axis
    // catches both edges of the padding.
    let iy = oy + ky - p.pad_h;
    let ix = ox + kx - p.pad_w;
    if (iy >= p.h || ix >= p.w) {
        return 0.0;
    }
    return x[((img * p.cin + ci) * p.h + iy) * p.w + ix];
}

fn store_c(m: u32, n: u32, split: u32, value: f32) {
    let plane = p.oh * p.ow;
    let i = ((n / plane) * p.cout + m) * plane + n % plane;
    var v = value;
    if ((p.flags & 1u) != 0u) { v += bias[m]; }
    if ((p.flags & 2u) != 0u) { v += out[i]; }
    out[i] = v;
}
