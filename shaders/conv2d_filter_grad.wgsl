// Weight gradient of a stride-1 convolution (NCHW, OIHW):
//     dw[co, (ci, ky, kx)] = sum over (img, oy, ox) of dy[img, co, oy, ox] * x[img, ci, oy+ky-pad_h, ox+kx-pad_w]
// The reduction runs over every output pixel of the batch while the result is small, so the
// reduction is split across grid z and the partial sums are added by reduce.wgsl.
// Flags: bit 1 adds into dw; bit 2 writes split z's partial sum to dw[z * M * N + ...].

struct Params {
    batch: u32, cin: u32, h: u32, w: u32,
    cout: u32, oh: u32, ow: u32, kh: u32,
    kw: u32, pad_h: u32, pad_w: u32, flags: u32,
    k_chunk: u32, _pad0: u32, _pad1: u32, _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> dy: array<f32>;
@group(0) @binding(3) var<storage, read_write> dw: array<f32>;

fn gemm_dims() -> vec3<u32> { return vec3<u32>(p.cout, p.cin * p.kh * p.kw, p.batch * p.oh * p.ow); }
fn gemm_k_chunk() -> u32 { return p.k_chunk; }

fn load_a(m: u32, k: u32) -> f32 {
    let plane = p.oh * p.ow;
    return dy[((k / plane) * p.cout + m) * plane + k % plane];
}

fn load_b(k: u32, n: u32) -> f32 {
    let taps = p.kh * p.kw;
    let ci = n / taps;
    let ky = (n % taps) / p.kw;
    let kx = n % p.kw;
    let plane = p.oh * p.ow;
    let img = k / plane;
    let oy = (k % plane) / p.ow;
    let ox = k % p.ow;
    let iy = oy + ky - p.pad_h;
    let ix = ox + kx - p.pad_w;
    if (iy >= p.h || ix >= p.w) {
        return 0.0;
    }
    return x[((img * p.cin + ci) * p.h + iy) * p.w + ix];
}

fn store_c(m: u32, n: u32, split: u32, value: f32) {
    let cols = p.cin * p.kh * p.kw;
    if ((p.flags & 4u) != 0u) {
        dw[(split * p.cout + m) * cols + n] = value;
        return;
    }
    let i = m * cols + n;
    var v = value;
    if ((p.flags & 2u) != 0u) { v += dw[i]; }
    dw[i] = v;
}
