// Bilinear downscale of an 8-bit grey image with OpenCV's INTER_LINEAR_EXACT arithmetic, every
// pyramid level of a batch in one dispatch (`levels`: each level's size, taps and place in
// `dst`; a thread finds its level by a binary search over the levels' pixel counts). The taps (source index and the next pixel's weight in 1/256) are
// computed on the host in f64, as OpenCV does; WGSL has no f64, and the taps are the only part
// that needs it. Everything here is integer arithmetic, so the result is bit-exact:
//   row(y)  = src[y][i] * (256 - wx) + src[y][i + 1] * wx            (units of 1/256)
//   out     = (row(j) * (256 - wy) + row(j + 1) * wy + 2^15) >> 16
// A tap packs (index << 9) | weight, weight in 0..=256; weight 0 never reads the next pixel,
// which is how the last column and row stay inside the image.

struct Params { src_w: u32, src_h: u32, levels: u32, pixels: u32 }

struct Level { dst_w: u32, dst_h: u32, x_taps: u32, y_taps: u32, dst_at: u32, pixels_before: u32, _pad0: u32, _pad1: u32 }

@group(0) @binding(0) var<uniform> p: Params;
// The source image, bytes packed four to a u32 (little-endian).
@group(0) @binding(1) var<storage, read> src: array<u32>;
@group(0) @binding(2) var<storage, read> taps: array<u32>;
// One pixel per u32: the integral kernels read it.
@group(0) @binding(3) var<storage, read_write> dst: array<u32>;
@group(0) @binding(4) var<storage, read> levels: array<Level>;

fn level(l: u32) -> Level {
    return levels[min(l, arrayLength(&levels) - 1u)];
}

fn src_pixel(x: u32, y: u32) -> u32 {
    let i = y * p.src_w + x;
    if (x >= p.src_w || y >= p.src_h || i / 4u >= arrayLength(&src)) {
        return 0u;
    }
    return (src[i / 4u] >> ((i % 4u) * 8u)) & 0xffu;
}

fn tap(i: u32) -> vec2<u32> {
    let t = taps[min(i, arrayLength(&taps) - 1u)];
    return vec2<u32>(t >> 9u, t & 0x1ffu);
}

fn row_value(y: u32, xt: vec2<u32>) -> u32 {
    var v = src_pixel(xt.x, y) * (256u - xt.y);
    if (xt.y > 0u) {
        v += src_pixel(xt.x + 1u, y) * xt.y;
    }
    return v;
}

@compute @workgroup_size(64)
fn resize(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = linear_index(wid, nwg, lid, 64u);
    if (t >= p.pixels) {
        return;
    }
    var lo = 0u;
    var hi = p.levels;
    while (hi - lo > 1u) {
        let mid = (lo + hi) / 2u;
        if (level(mid).pixels_before <= t) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let lv = level(lo);
    let k = t - lv.pixels_before;
    let i = lv.dst_at + k;
    if (i >= arrayLength(&dst)) {
        return;
    }
    let x = k % lv.dst_w;
    let y = k / lv.dst_w;
    let xt = tap(lv.x_taps + x);
    let yt = tap(lv.y_taps + y);
    var v = row_value(yt.x, xt) * (256u - yt.y);
    if (yt.y > 0u) {
        v += row_value(yt.x + 1u, xt) * yt.y;
    }
    dst[i] = min((v + 32768u) >> 16u, 255u);
}
