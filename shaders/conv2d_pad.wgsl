// Copies NCHW planes into larger zero-bordered ones: padded[plane, py, px] = x[plane, py - top,
// px - left], or 0 outside x. The convolution kernel only handles 'valid' convolutions, whose
// input windows are plain shifts of the flattened plane; 'same' padding and the data gradient
// (a full convolution) go through this first.

struct Params { planes: u32, h: u32, w: u32, top: u32, left: u32, ph: u32, pw: u32, _pad: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> padded: array<vec4<f32>>;

// Padded rows are a multiple of 4 long, so the output is written as vec4s that never straddle a
// row. Each thread writes 4 consecutive ones: the integer divisions that locate the first
// (which CPU Vulkan drivers split into scalar ones) are shared by four, and the next three step
// along with carries, which on lavapipe costs less than a thread per padded row; on a GPU
// neighbouring threads write neighbouring memory. Padding rows skip their loads, so a pad with
// many of them (a data gradient's) pays little more than its stores for those rows.
const VEC4S_PER_THREAD: u32 = 4u;

@compute @workgroup_size(64)
fn pad(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let first = linear_index(wid, nwg, lid, 64u) * VEC4S_PER_THREAD;
    let row_vec4s = p.pw / 4u;
    let total = p.planes * p.ph * row_vec4s;
    let row = first / row_vec4s;
    let col = first - row * row_vec4s;
    let plane = row / p.ph;
    let py = row - plane * p.ph;
    var at = vec3<u32>(plane, py, col);
    for (var k = 0u; k < VEC4S_PER_THREAD; k++) {
        // Rows above x wrap around to huge values, so one compare finds the padding rows.
        let iy = at.y - p.top;
        if (first + k < total) {
            if (iy < p.h) {
                padded[first + k] = row_vec4((at.x * p.h + iy) * p.w, 4u * at.z - p.left);
            } else {
                padded[first + k] = vec4<f32>(0.0);
            }
        }
        // The next vec4, carrying into the next row and plane.
        let next_row = at.z + 1u == row_vec4s;
        let next_plane = next_row && at.y + 1u == p.ph;
        at = select(vec3<u32>(at.x, at.y + u32(next_row), select(at.z + 1u, 0u, next_row)), vec3<u32>(at.x + 1u, 0u, 0u), next_plane);
    }
}

// Columns ix .. ix + 3 of the row of x at src, 0 outside it (columns left of it wrap around to
// huge values, so one compare each).
fn row_vec4(src: u32, ix: u32) -> vec4<f32> {
    return vec4<f32>(element(src, ix), element(src, ix + 1u), element(src, ix + 2u), element(src, ix + 3u));
}

fn element(src: u32, ix: u32) -> f32 {
    return select(0.0, x[src + min(ix, p.w - 1u)], ix < p.w);
}
