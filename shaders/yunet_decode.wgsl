// FaceDetectorYN's decoding of one stride's head outputs, as src/kernels/yunet_decode.rs
// describes it: a thread a cell of an image; a cell scoring at least the threshold takes the
// next slot of its image's list (an atomic count, which keeps counting past the list's end so
// that the host sees the overflow) and writes its record there.

struct Params { images: u32, cells: u32, cols: u32, stride: u32, first: u32, capacity: u32, threshold: f32, _pad: u32 }

const RECORD: u32 = 16u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> cls: array<f32>;
@group(0) @binding(2) var<storage, read> obj: array<f32>;
@group(0) @binding(3) var<storage, read> bbox: array<f32>;
@group(0) @binding(4) var<storage, read> kps: array<f32>;
@group(0) @binding(5) var<storage, read_write> counts: array<atomic<u32>>;
@group(0) @binding(6) var<storage, read_write> records: array<f32>;

@compute @workgroup_size(256)
fn decode(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = linear_index(wid, nwg, lid, 256u);
    if (t >= p.images * p.cells) {
        return;
    }
    let score = sqrt(clamp(cls[t], 0.0, 1.0) * clamp(obj[t], 0.0, 1.0));
    if (score < p.threshold) {
        return;
    }
    let image = t / p.cells;
    let i = t % p.cells;
    let slot = atomicAdd(&counts[image], 1u);
    if (slot >= p.capacity) {
        return;
    }
    let cells = p.cells;
    let s = f32(p.stride);
    let c = f32(i % p.cols);
    let r = f32(i / p.cols);
    let b = image * 4u * cells + i;
    let k = image * 10u * cells + i;
    let cx = (c + bbox[b]) * s;
    let cy = (r + bbox[b + cells]) * s;
    let w = exp(bbox[b + 2u * cells]) * s;
    let h = exp(bbox[b + 3u * cells]) * s;
    let o = (image * p.capacity + slot) * RECORD;
    records[o] = cx - w / 2.0;
    records[o + 1u] = cy - h / 2.0;
    records[o + 2u] = w;
    records[o + 3u] = h;
    for (var n = 0u; n < 5u; n++) {
        records[o + 4u + 2u * n] = (kps[k + 2u * n * cells] + c) * s;
        records[o + 5u + 2u * n] = (kps[k + (2u * n + 1u) * cells] + r) * s;
    }
    records[o + 14u] = score;
    records[o + 15u] = f32(p.first + i);
}
