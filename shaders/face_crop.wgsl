// Face crops for the expression model: each crop is a 48x48 grey image whose pixel (x, y) is
// the mean of samples x samples bilinear samples of the source image around the point
// maps[c].map * (x, y, 1) (a 2x3 similarity drawn on the host, see src/align.rs). Several
// samples a pixel make a large face shrink by averaging, as an area filter does, instead of
// aliasing. Source coordinates are clamped to the image, so its edge pixels repeat outside it.
// The source and the crops are bytes packed four to a u32; a thread writes one u32 of a crop
// (four neighbouring pixels of a row), so no two threads write the same word. bilinear.wgsl
// samples the source.

struct Params { width: u32, height: u32, crops: u32, _pad: u32 }

// As src/kernels/face_crop.rs's CropMap.
struct CropMap { map: array<f32, 6>, samples: u32 }

const SIDE: u32 = 48u;
const WORDS_PER_ROW: u32 = 12u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> pixels: array<u32>;
@group(0) @binding(2) var<storage, read> maps: array<CropMap>;
@group(0) @binding(3) var<storage, read_write> out: array<u32>;

@compute @workgroup_size(256)
fn face_crop(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid, 256u);
    let words = SIDE * WORDS_PER_ROW;
    if (i >= p.crops * words) {
        return;
    }
    let crop = i / words;
    let y = (i % words) / WORDS_PER_ROW;
    let x_first = (i % WORDS_PER_ROW) * 4u;
    let m = maps[crop].map;
    // Clamped as on the CPU: a map's sample count never makes a thread loop without bound.
    let n = clamp(maps[crop].samples, 1u, 8u);
    let step = 1.0 / f32(n);
    var word = 0u;
    for (var k = 0u; k < 4u; k++) {
        var sum = 0.0;
        for (var j = 0u; j < n; j++) {
            let fy = f32(y) + (f32(j) + 0.5) * step - 0.5;
            for (var q = 0u; q < n; q++) {
                let fx = f32(x_first + k) + (f32(q) + 0.5) * step - 0.5;
                sum += bilinear(0u, p.width, p.height, m[0] * fx + m[1] * fy + m[2], m[3] * fx + m[4] * fy + m[5]);
            }
        }
        let value = clamp(floor(sum / f32(n * n) + 0.5), 0.0, 255.0);
        word |= u32(value) << (8u * k);
    }
    out[i] = word;
}
