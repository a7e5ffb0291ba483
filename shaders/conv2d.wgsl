// 'Valid' 2-D convolution forward, stride 1, any kernel size, NCHW activations and OIHW weights
// (see src/kernels/conv2d.rs for why):
//     out[img, co, oy, ox] = bias[co] + sum over (ci, ky, kx) of
//                            w[co, ci, ky, kx] * x[img, ci, oy + ky, ox + kx]
// Zero padding is applied beforehand by conv2d_pad.wgsl, which also widens the rows to a
// multiple of 4 so that they are read here as vec4s; `zero_top` and `zero_bottom` say how many
// rows of the input are such padding, so windows lying wholly in them are skipped (a fifth of
// the work of the 10x10 data gradient). The weights come packed by conv2d_pack.wgsl:
// packed[(ci, ky, kx)][co] with co padded to a multiple of 8 (16), also read as vec4s. The data
// gradient runs this kernel on padded dy with the flipped, transposed weights that
// conv2d_pack.wgsl also writes.
//
// Outputs are computed at every column q % w of the flattened input width, q = oy * w + ox, so
// the input a tap reads is the flat plane shifted by ky * w + kx: a 16-output window slides along
// a kernel row by one element per tap, across row ends as well. The w - ow columns past the
// output's edge are computed and dropped (2 of 24 at conv3), which wastes far less than row
// tiles at the narrow layers (8 columns padded to 16).
//
// Each thread computes 8 (wide: 16) output channels x 16 consecutive outputs in 32 (64) named
// vec4 registers. A kernel row costs 5 vec4 input loads (one more per 4 taps past the fifth),
// and a tap 2 vec4 weight loads for 128 multiply-adds. lavapipe turns every load into a per-lane
// gather, so loads per multiply-add is what sets its speed there: hence vec4 loads of weights
// and inputs rather than scalar ones, and a tile as large as the registers allow, since a
// thread with fewer channels or outputs loads the same inputs and weights for fewer
// multiply-adds. 16 x 16 holds 256 accumulators, too many for a real GPU's registers: it is the
// wide variant, for CPU adapters (a larger tile spills its accumulators even there). Loops run
// over (ci, ky, kx) with no integer division inside them: on CPU Vulkan drivers vector integer
// division is split into scalar divisions, which would swamp an implicit-im2col formulation's
// multiply-adds. (Accumulators in an indexed array can end up in memory there, hence the
// names.)
// Flags: bit 0 adds bias[co]; bit 1 applies a ReLU to the outputs (the model fuses a ReLU that
// follows a convolution).

struct Params {
    batch: u32, cin: u32, h: u32, w: u32,
    cout: u32, oh: u32, ow: u32, kh: u32,
    kw: u32, zero_top: u32, zero_bottom: u32, flags: u32,
    // Images whose windows follow one another for a channel block, and the threads they take:
    // one image and its windows, but in the wide variant, whose subgroups must not straddle two
    // channel blocks, rounded up to whole subgroups (see src/kernels/conv2d.rs).
    group: u32, group_threads: u32, _pad0: u32, _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> wt: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

// Set for 3-wide kernels (src/kernels/conv2d.rs picks the pipeline): a kernel row then runs as
// straight-line code. lavapipe blends every write to a variable inside a loop with the lanes'
// mask (a load, a blend and a store per accumulator), so a row in one block writes each
// accumulator once instead of three times. It has to be known when the pipeline is compiled:
// behind a run-time test of p.kw the same code gains nothing over the loop. (Whole 3x3 windows
// in one block gain nothing over rows either.)
override THREE_TAPS: bool = false;

// Output channels a thread takes, in vec4s: 8 channels, or 16 in the "wide" variant for CPU
// adapters with subgroups of at least 8 lanes, such as lavapipe (src/kernels/conv2d.rs picks;
// the variant compiles the lines that start `//wide: ` and drops those that start `//!wide: `).
// There a window's input loads serve twice the multiply-adds. A real GPU's registers would not
// hold its 64 vec4 accumulators. (Those lines are a variant rather than statements under an
// `override`'s branch, which lavapipe runs slower, and the tile is this constant rather than a
// variable, which would give back much of the gain.)
//
// The wide variant also shares the weights across a subgroup. Its lanes take neighbouring
// windows of one channel block, so they need the same 12 vec4s of weights per kernel row: two
// loads, each lane taking one vec4, then broadcasts, instead of 12 loads in every lane: on
// lavapipe each load is a loop over the 8 lanes, while a broadcast is a register shuffle. This
// takes subgroups to be runs of consecutive invocations, as on CPU adapters (the tests check
// it).
override CO_TILE4: u32 = 2u;
const Q_TILE: u32 = 16u;

@compute @workgroup_size(64)
fn forward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    //wide: @builtin(subgroup_invocation_id) lane: u32,
) {
    let t = linear_index(wid, nwg, lid, 64u);
    // Neighbouring threads take neighbouring output windows, so their loads are close: the
    // windows of a group of images (usually one), then the next channel block, then the next
    // group. A group's inputs stay in cache while its channel blocks are computed (taking each
    // block over the whole batch instead would bring the batch's inputs back from memory for
    // every block).
    let q_blocks = (p.oh * p.w + Q_TILE - 1u) / Q_TILE;
    let co_blocks = (p.cout + 4u * CO_TILE4 - 1u) / (4u * CO_TILE4);
    let window = t % p.group_threads;
    let qb = window % q_blocks;
    let cb = (t / p.group_threads) % co_blocks;
    // Threads past the windows still run, on the last image, since the wide variant's
    // subgroups need all their lanes; they store nothing.
    let img_wanted = (t / (p.group_threads * co_blocks)) * p.group + window / q_blocks;
    let in_range = img_wanted < p.batch && window < p.group * q_blocks;
    let img = min(img_wanted, p.batch - 1u);
    let q0 = qb * Q_TILE;
    let co0 = cb * 4u * CO_TILE4;
    // Only dropped outputs read past their plane, so a read is only clamped to the buffer.
    let in_plane = p.h * p.w;
    let last_in = arrayLength(&x) - 1u;
    // Flat input elements before zero_head and from zero_tail on are padding rows.
    let zero_head = p.zero_top * p.w;
    let zero_tail = (p.h - p.zero_bottom) * p.w;
    // Kernel rows whose windows lie wholly in padding rows are skipped: they come first or last.
    var ky_begin = 0u;
    while (ky_begin < p.kh && q0 + ky_begin * p.w + Q_TILE + p.kw - 1u <= zero_head) {
        ky_begin++;
    }
    var ky_end = p.kh;
    while (ky_end > ky_begin && q0 + (ky_end - 1u) * p.w >= zero_tail) {
        ky_end--;
    }
    // The subgroup's lanes run the same rows, for the weights they share (padding reads zeros).
    //wide: ky_begin = subgroupMin(ky_begin);
    //wide: ky_end = subgroupMax(ky_end);
    let last_w = arrayLength(&wt) - 1u;
    // acc<c>_<q>: pixels 4q .. 4q+3 of channel co0 + c.
    var acc0_0 = vec4<f32>(0.0); var acc0_1 = vec4<f32>(0.0); var acc0_2 = vec4<f32>(0.0); var acc0_3 = vec4<f32>(0.0);
    var acc1_0 = vec4<f32>(0.0); var acc1_1 = vec4<f32>(0.0); var acc1_2 = vec4<f32>(0.0); var acc1_3 = vec4<f32>(0.0);
    var acc2_0 = vec4<f32>(0.0); var acc2_1 = vec4<f32>(0.0); var acc2_2 = vec4<f32>(0.0); var acc2_3 = vec4<f32>(0.0);
    var acc3_0 = vec4<f32>(0.0); var acc3_1 = vec4<f32>(0.0); var acc3_2 = vec4<f32>(0.0); var acc3_3 = vec4<f32>(0.0);
    var acc4_0 = vec4<f32>(0.0); var acc4_1 = vec4<f32>(0.0); var acc4_2 = vec4<f32>(0.0); var acc4_3 = vec4<f32>(0.0);
    var acc5_0 = vec4<f32>(0.0); var acc5_1 = vec4<f32>(0.0); var acc5_2 = vec4<f32>(0.0); var acc5_3 = vec4<f32>(0.0);
    var acc6_0 = vec4<f32>(0.0); var acc6_1 = vec4<f32>(0.0); var acc6_2 = vec4<f32>(0.0); var acc6_3 = vec4<f32>(0.0);
    var acc7_0 = vec4<f32>(0.0); var acc7_1 = vec4<f32>(0.0); var acc7_2 = vec4<f32>(0.0); var acc7_3 = vec4<f32>(0.0);
    //wide: var acc8_0 = vec4<f32>(0.0); var acc8_1 = vec4<f32>(0.0); var acc8_2 = vec4<f32>(0.0); var acc8_3 = vec4<f32>(0.0);
    //wide: var acc9_0 = vec4<f32>(0.0); var acc9_1 = vec4<f32>(0.0); var acc9_2 = vec4<f32>(0.0); var acc9_3 = vec4<f32>(0.0);
    //wide: var acc10_0 = vec4<f32>(0.0); var acc10_1 = vec4<f32>(0.0); var acc10_2 = vec4<f32>(0.0); var acc10_3 = vec4<f32>(0.0);
    //wide: var acc11_0 = vec4<f32>(0.0); var acc11_1 = vec4<f32>(0.0); var acc11_2 = vec4<f32>(0.0); var acc11_3 = vec4<f32>(0.0);
    //wide: var acc12_0 = vec4<f32>(0.0); var acc12_1 = vec4<f32>(0.0); var acc12_2 = vec4<f32>(0.0); var acc12_3 = vec4<f32>(0.0);
    //wide: var acc13_0 = vec4<f32>(0.0); var acc13_1 = vec4<f32>(0.0); var acc13_2 = vec4<f32>(0.0); var acc13_3 = vec4<f32>(0.0);
    //wide: var acc14_0 = vec4<f32>(0.0); var acc14_1 = vec4<f32>(0.0); var acc14_2 = vec4<f32>(0.0); var acc14_3 = vec4<f32>(0.0);
    //wide: var acc15_0 = vec4<f32>(0.0); var acc15_1 = vec4<f32>(0.0); var acc15_2 = vec4<f32>(0.0); var acc15_3 = vec4<f32>(0.0);
    for (var ci = 0u; ci < p.cin; ci++) {
        // In vec4s: rows are a multiple of 4 long (Conv2dShape::padded), so windows start aligned.
        let plane = (img * p.cin + ci) * in_plane / 4u;
        for (var ky = ky_begin; ky < ky_end; ky++) {
            // The input window: flat elements s + kx .. s + kx + 15 of the plane at tap kx.
            let s = q0 + ky * p.w;
            let s4 = plane + s / 4u;
            var v0 = x[min(s4, last_in)];
            var v1 = x[min(s4 + 1u, last_in)];
            var v2 = x[min(s4 + 2u, last_in)];
            var v3 = x[min(s4 + 3u, last_in)];
            // The elements that slide in next, four at a time.
            var next = x[min(s4 + 4u, last_in)];
            // Channels co0 .. co0+3 and co0+4 .. co0+7 of tap kx: wt[w + kx * w_step] and the vec4
            // after it; in the wide variant co0+8 .. co0+15 are the two vec4s after those.
            let w = ((ci * p.kh + ky) * p.kw * co_blocks + cb) * CO_TILE4;
            let w_step = co_blocks * CO_TILE4;
            if (THREE_TAPS) {
                // Taps 0, 1, 2 read the window shifted by 0, 1 and 2 elements: v, u and r. Each
                // accumulator takes its three multiply-adds in a row, so it is loaded and stored once
                // a row where the driver keeps it in memory (lavapipe spills most of the 32 or 64
                // accumulators).
                let u0 = vec4<f32>(v0.yzw, v1.x); let u1 = vec4<f32>(v1.yzw, v2.x); let u2 = vec4<f32>(v2.yzw, v3.x); let u3 = vec4<f32>(v3.yzw, next.x);
                let r0 = vec4<f32>(v0.zw, v1.xy); let r1 = vec4<f32>(v1.zw, v2.xy); let r2 = vec4<f32>(v2.zw, v3.xy); let r3 = vec4<f32>(v3.zw, next.xy);
                //!wide: let w0a = wt[min(w, last_w)]; let w0b = wt[min(w + 1u, last_w)];
                //!wide: let w1a = wt[min(w + w_step, last_w)]; let w1b = wt[min(w + w_step + 1u, last_w)];
                //!wide: let w2a = wt[min(w + 2u * w_step, last_w)]; let w2b = wt[min(w + 2u * w_step + 1u, last_w)];
                // Vec4 i of the row's 12 (tap i / 4, channels co0 + 4 (i % 4) ..) is lane i of
                // shared_a for i < 8, lane i - 8 of shared_b after (see CO_TILE4).
                //wide: let shared_a = wt[min(w + (lane / 4u) * w_step + lane % 4u, last_w)];
                //wide: let shared_b = wt[min(w + (lane / 4u + 2u) * w_step + lane % 4u, last_w)];
                //wide: let w0a = subgroupBroadcast(shared_a, 0u); let w0b = subgroupBroadcast(shared_a, 1u); let w0c = subgroupBroadcast(shared_a, 2u); let w0d = subgroupBroadcast(shared_a, 3u);
                //wide: let w1a = subgroupBroadcast(shared_a, 4u); let w1b = subgroupBroadcast(shared_a, 5u); let w1c = subgroupBroadcast(shared_a, 6u); let w1d = subgroupBroadcast(shared_a, 7u);
                //wide: let w2a = subgroupBroadcast(shared_b, 0u); let w2b = subgroupBroadcast(shared_b, 1u); let w2c = subgroupBroadcast(shared_b, 2u); let w2d = subgroupBroadcast(shared_b, 3u);
                acc0_0 = fma(vec4<f32>(w2a.x), r0, fma(vec4<f32>(w1a.x), u0, fma(vec4<f32>(w0a.x), v0, acc0_0))); acc0_1 = fma(vec4<f32>(w2a.x), r1, fma(vec4<f32>(w1a.x), u1, fma(vec4<f32>(w0a.x), v1, acc0_1))); acc0_2 = fma(vec4<f32>(w2a.x), r2, fma(vec4<f32>(w1a.x), u2, fma(vec4<f32>(w0a.x), v2, acc0_2))); acc0_3 = fma(vec4<f32>(w2a.x), r3, fma(vec4<f32>(w1a.x), u3, fma(vec4<f32>(w0a.x), v3, acc0_3)));
                acc1_0 = fma(vec4<f32>(w2a.y), r0, fma(vec4<f32>(w1a.y), u0, fma(vec4<f32>(w0a.y), v0, acc1_0))); acc1_1 = fma(vec4<f32>(w2a.y), r1, fma(vec4<f32>(w1a.y), u1, fma(vec4<f32>(w0a.y), v1, acc1_1))); acc1_2 = fma(vec4<f32>(w2a.y), r2, fma(vec4<f32>(w1a.y), u2, fma(vec4<f32>(w0a.y), v2, acc1_2))); acc1_3 = fma(vec4<f32>(w2a.y), r3, fma(vec4<f32>(w1a.y), u3, fma(vec4<f32>(w0a.y), v3, acc1_3)));
                acc2_0 = fma(vec4<f32>(w2a.z), r0, fma(vec4<f32>(w1a.z), u0, fma(vec4<f32>(w0a.z), v0, acc2_0))); acc2_1 = fma(vec4<f32>(w2a.z), r1, fma(vec4<f32>(w1a.z), u1, fma(vec4<f32>(w0a.z), v1, acc2_1))); acc2_2 = fma(vec4<f32>(w2a.z), r2, fma(vec4<f32>(w1a.z), u2, fma(vec4<f32>(w0a.z), v2, acc2_2))); acc2_3 = fma(vec4<f32>(w2a.z), r3, fma(vec4<f32>(w1a.z), u3, fma(vec4<f32>(w0a.z), v3, acc2_3)));
                acc3_0 = fma(vec4<f32>(w2a.w), r0, fma(vec4<f32>(w1a.w), u0, fma(vec4<f32>(w0a.w), v0, acc3_0))); acc3_1 = fma(vec4<f32>(w2a.w), r1, fma(vec4<f32>(w1a.w), u1, fma(vec4<f32>(w0a.w), v1, acc3_1))); acc3_2 = fma(vec4<f32>(w2a.w), r2, fma(vec4<f32>(w1a.w), u2, fma(vec4<f32>(w0a.w), v2, acc3_2))); acc3_3 = fma(vec4<f32>(w2a.w), r3, fma(vec4<f32>(w1a.w), u3, fma(vec4<f32>(w0a.w), v3, acc3_3)));
                acc4_0 = fma(vec4<f32>(w2b.x), r0, fma(vec4<f32>(w1b.x), u0, fma(vec4<f32>(w0b.x), v0, acc4_0))); acc4_1 = fma(vec4<f32>(w2b.x), r1, fma(vec4<f32>(w1b.x), u1, fma(vec4<f32>(w0b.x), v1, acc4_1))); acc4_2 = fma(vec4<f32>(w2b.x), r2, fma(vec4<f32>(w1b.x), u2, fma(vec4<f32>(w0b.x), v2, acc4_2))); acc4_3 = fma(vec4<f32>(w2b.x), r3, fma(vec4<f32>(w1b.x), u3, fma(vec4<f32>(w0b.x), v3, acc4_3)));
                acc5_0 = fma(vec4<f32>(w2b.y), r0, fma(vec4<f32>(w1b.y), u0, fma(vec4<f32>(w0b.y), v0, acc5_0))); acc5_1 = fma(vec4<f32>(w2b.y), r1, fma(vec4<f32>(w1b.y), u1, fma(vec4<f32>(w0b.y), v1, acc5_1))); acc5_2 = fma(vec4<f32>(w2b.y), r2, fma(vec4<f32>(w1b.y), u2, fma(vec4<f32>(w0b.y), v2, acc5_2))); acc5_3 = fma(vec4<f32>(w2b.y), r3, fma(vec4<f32>(w1b.y), u3, fma(vec4<f32>(w0b.y), v3, acc5_3)));
                acc6_0 = fma(vec4<f32>(w2b.z), r0, fma(vec4<f32>(w1b.z), u0, fma(vec4<f32>(w0b.z), v0, acc6_0))); acc6_1 = fma(vec4<f32>(w2b.z), r1, fma(vec4<f32>(w1b.z), u1, fma(vec4<f32>(w0b.z), v1, acc6_1))); acc6_2 = fma(vec4<f32>(w2b.z), r2, fma(vec4<f32>(w1b.z), u2, fma(vec4<f32>(w0b.z), v2, acc6_2))); acc6_3 = fma(vec4<f32>(w2b.z), r3, fma(vec4<f32>(w1b.z), u3, fma(vec4<f32>(w0b.z), v3, acc6_3)));
                acc7_0 = fma(vec4<f32>(w2b.w), r0, fma(vec4<f32>(w1b.w), u0, fma(vec4<f32>(w0b.w), v0, acc7_0))); acc7_1 = fma(vec4<f32>(w2b.w), r1, fma(vec4<f32>(w1b.w), u1, fma(vec4<f32>(w0b.w), v1, acc7_1))); acc7_2 = fma(vec4<f32>(w2b.w), r2, fma(vec4<f32>(w1b.w), u2, fma(vec4<f32>(w0b.w), v2, acc7_2))); acc7_3 = fma(vec4<f32>(w2b.w), r3, fma(vec4<f32>(w1b.w), u3, fma(vec4<f32>(w0b.w), v3, acc7_3)));
                //wide: acc8_0 = fma(vec4<f32>(w2c.x), r0, fma(vec4<f32>(w1c.x), u0, fma(vec4<f32>(w0c.x), v0, acc8_0))); acc8_1 = fma(vec4<f32>(w2c.x), r1, fma(vec4<f32>(w1c.x), u1, fma(vec4<f32>(w0c.x), v1, acc8_1))); acc8_2 = fma(vec4<f32>(w2c.x), r2, fma(vec4<f32>(w1c.x), u2, fma(vec4<f32>(w0c.x), v2, acc8_2))); acc8_3 = fma(vec4<f32>(w2c.x), r3, fma(vec4<f32>(w1c.x), u3, fma(vec4<f32>(w0c.x), v3, acc8_3)));
                //wide: acc9_0 = fma(vec4<f32>(w2c.y), r0, fma(vec4<f32>(w1c.y), u0, fma(vec4<f32>(w0c.y), v0, acc9_0))); acc9_1 = fma(vec4<f32>(w2c.y), r1, fma(vec4<f32>(w1c.y), u1, fma(vec4<f32>(w0c.y), v1, acc9_1))); acc9_2 = fma(vec4<f32>(w2c.y), r2, fma(vec4<f32>(w1c.y), u2, fma(vec4<f32>(w0c.y), v2, acc9_2))); acc9_3 = fma(vec4<f32>(w2c.y), r3, fma(vec4<f32>(w1c.y), u3, fma(vec4<f32>(w0c.y), v3, acc9_3)));
                //wide: acc10_0 = fma(vec4<f32>(w2c.z), r0, fma(vec4<f32>(w1c.z), u0, fma(vec4<f32>(w0c.z), v0, acc10_0))); acc10_1 = fma(vec4<f32>(w2c.z), r1, fma(vec4<f32>(w1c.z), u1, fma(vec4<f32>(w0c.z), v1, acc10_1))); acc10_2 = fma(vec4<f32>(w2c.z), r2, fma(vec4<f32>(w1c.z), u2, fma(vec4<f32>(w0c.z), v2, acc10_2))); acc10_3 = fma(vec4<f32>(w2c.z), r3, fma(vec4<f32>(w1c.z), u3, fma(vec4<f32>(w0c.z), v3, acc10_3)));
                //wide: acc11_0 = fma(vec4<f32>(w2c.w), r0, fma(vec4<f32>(w1c.w), u0, fma(vec4<f32>(w0c.w), v0, acc11_0))); acc11_1 = fma(vec4<f32>(w2c.w), r1, fma(vec4<f32>(w1c.w), u1, fma(vec4<f32>(w0c.w), v1, acc11_1))); acc11_2 = fma(vec4<f32>(w2c.w), r2, fma(vec4<f32>(w1c.w), u2, fma(vec4<f32>(w0c.w), v2, acc11_2))); acc11_3 = fma(vec4<f32>(w2c.w), r3, fma(vec4<f32>(w1c.w), u3, fma(vec4<f32>(w0c.w), v3, acc11_3)));
                //wide: acc12_0 = fma(vec4<f32>(w2d.x), r0, fma(vec4<f32>(w1d.x), u0, fma(vec4<f32>(w0d.x), v0, acc12_0))); acc12_1 = fma(vec4<f32>(w2d.x), r1, fma(vec4<f32>(w1d.x), u1, fma(vec4<f32>(w0d.x), v1, acc12_1))); acc12_2 = fma(vec4<f32>(w2d.x), r2, fma(vec4<f32>(w1d.x), u2, fma(vec4<f32>(w0d.x), v2, acc12_2))); acc12_3 = fma(vec4<f32>(w2d.x), r3, fma(vec4<f32>(w1d.x), u3, fma(vec4<f32>(w0d.x), v3, acc12_3)));
                //wide: acc13_0 = fma(vec4<f32>(w2d.y), r0, fma(vec4<f32>(w1d.y), u0, fma(vec4<f32>(w0d.y), v0, acc13_0))); acc13_1 = fma(vec4<f32>(w2d.y), r1, fma(vec4<f32>(w1d.y), u1, fma(vec4<f32>(w0d.y), v1, acc13_1))); acc13_2 = fma(vec4<f32>(w2d.y), r2, fma(vec4<f32>(w1d.y), u2, fma(vec4<f32>(w0d.y), v2, acc13_2))); acc13_3 = fma(vec4<f32>(w2d.y), r3, fma(vec4<f32>(w1d.y), u3, fma(vec4<f32>(w0d.y), v3, acc13_3)));
                //wide: acc14_0 = fma(vec4<f32>(w2d.z), r0, fma(vec4<f32>(w1d.z), u0, fma(vec4<f32>(w0d.z), v0, acc14_0))); acc14_1 = fma(vec4<f32>(w2d.z), r1, fma(vec4<f32>(w1d.z), u1, fma(vec4<f32>(w0d.z), v1, acc14_1))); acc14_2 = fma(vec4<f32>(w2d.z), r2, fma(vec4<f32>(w1d.z), u2, fma(vec4<f32>(w0d.z), v2, acc14_2))); acc14_3 = fma(vec4<f32>(w2d.z), r3, fma(vec4<f32>(w1d.z), u3, fma(vec4<f32>(w0d.z), v3, acc14_3)));
                //wide: acc15_0 = fma(vec4<f32>(w2d.w), r0, fma(vec4<f32>(w1d.w), u0, fma(vec4<f32>(w0d.w), v0, acc15_0))); acc15_1 = fma(vec4<f32>(w2d.w), r1, fma(vec4<f32>(w1d.w), u1, fma(vec4<f32>(w0d.w), v1, acc15_1))); acc15_2 = fma(vec4<f32>(w2d.w), r2, fma(vec4<f32>(w1d.w), u2, fma(vec4<f32>(w0d.w), v2, acc15_2))); acc15_3 = fma(vec4<f32>(w2d.w), r3, fma(vec4<f32>(w1d.w), u3, fma(vec4<f32>(w0d.w), v3, acc15_3)));
                continue;
            }
            for (var kx = 0u; kx < p.kw; kx++) {
                if (kx > 0u) {
                    if (kx > 1u && kx % 4u == 1u) {
                        next = x[min(s4 + 4u + kx / 4u, last_in)];
                    }
                    v0 = vec4<f32>(v0.yzw, v1.x);
                    v1 = vec4<f32>(v1.yzw, v2.x);
                    v2 = vec4<f32>(v2.yzw, v3.x);
                    v3 = vec4<f32>(v3.yzw, next.x);
                    next = vec4<f32>(next.yzw, 0.0);
                }
                let wl = wt[min(w + kx * w_step, last_w)]; let wh = wt[min(w + kx * w_step + 1u, last_w)];
                //wide: let wl2 = wt[min(w + kx * w_step + 2u, last_w)]; let wh2 = wt[min(w + kx * w_step + 3u, last_w)];
                var wv = vec4<f32>(wl.x); acc0_0 = fma(wv, v0, acc0_0); acc0_1 = fma(wv, v1, acc0_1); acc0_2 = fma(wv, v2, acc0_2); acc0_3 = fma(wv, v3, acc0_3);
                wv = vec4<f32>(wl.y); acc1_0 = fma(wv, v0, acc1_0); acc1_1 = fma(wv, v1, acc1_1); acc1_2 = fma(wv, v2, acc1_2); acc1_3 = fma(wv, v3, acc1_3);
                wv = vec4<f32>(wl.z); acc2_0 = fma(wv, v0, acc2_0); acc2_1 = fma(wv, v1, acc2_1); acc2_2 = fma(wv, v2, acc2_2); acc2_3 = fma(wv, v3, acc2_3);
                wv = vec4<f32>(wl.w); acc3_0 = fma(wv, v0, acc3_0); acc3_1 = fma(wv, v1, acc3_1); acc3_2 = fma(wv, v2, acc3_2); acc3_3 = fma(wv, v3, acc3_3);
                wv = vec4<f32>(wh.x); acc4_0 = fma(wv, v0, acc4_0); acc4_1 = fma(wv, v1, acc4_1); acc4_2 = fma(wv, v2, acc4_2); acc4_3 = fma(wv, v3, acc4_3);
                wv = vec4<f32>(wh.y); acc5_0 = fma(wv, v0, acc5_0); acc5_1 = fma(wv, v1, acc5_1); acc5_2 = fma(wv, v2, acc5_2); acc5_3 = fma(wv, v3, acc5_3);
                wv = vec4<f32>(wh.z); acc6_0 = fma(wv, v0, acc6_0); acc6_1 = fma(wv, v1, acc6_1); acc6_2 = fma(wv, v2, acc6_2); acc6_3 = fma(wv, v3, acc6_3);
                wv = vec4<f32>(wh.w); acc7_0 = fma(wv, v0, acc7_0); acc7_1 = fma(wv, v1, acc7_1); acc7_2 = fma(wv, v2, acc7_2); acc7_3 = fma(wv, v3, acc7_3);
                //wide: wv = vec4<f32>(wl2.x); acc8_0 = fma(wv, v0, acc8_0); acc8_1 = fma(wv, v1, acc8_1); acc8_2 = fma(wv, v2, acc8_2); acc8_3 = fma(wv, v3, acc8_3);
                //wide: wv = vec4<f32>(wl2.y); acc9_0 = fma(wv, v0, acc9_0); acc9_1 = fma(wv, v1, acc9_1); acc9_2 = fma(wv, v2, acc9_2); acc9_3 = fma(wv, v3, acc9_3);
                //wide: wv = vec4<f32>(wl2.z); acc10_0 = fma(wv, v0, acc10_0); acc10_1 = fma(wv, v1, acc10_1); acc10_2 = fma(wv, v2, acc10_2); acc10_3 = fma(wv, v3, acc10_3);
                //wide: wv = vec4<f32>(wl2.w); acc11_0 = fma(wv, v0, acc11_0); acc11_1 = fma(wv, v1, acc11_1); acc11_2 = fma(wv, v2, acc11_2); acc11_3 = fma(wv, v3, acc11_3);
                //wide: wv = vec4<f32>(wh2.x); acc12_0 = fma(wv, v0, acc12_0); acc12_1 = fma(wv, v1, acc12_1); acc12_2 = fma(wv, v2, acc12_2); acc12_3 = fma(wv, v3, acc12_3);
                //wide: wv = vec4<f32>(wh2.y); acc13_0 = fma(wv, v0, acc13_0); acc13_1 = fma(wv, v1, acc13_1); acc13_2 = fma(wv, v2, acc13_2); acc13_3 = fma(wv, v3, acc13_3);
                //wide: wv = vec4<f32>(wh2.z); acc14_0 = fma(wv, v0, acc14_0); acc14_1 = fma(wv, v1, acc14_1); acc14_2 = fma(wv, v2, acc14_2); acc14_3 = fma(wv, v3, acc14_3);
                //wide: wv = vec4<f32>(wh2.w); acc15_0 = fma(wv, v0, acc15_0); acc15_1 = fma(wv, v1, acc15_1); acc15_2 = fma(wv, v2, acc15_2); acc15_3 = fma(wv, v3, acc15_3);
            }
        }
    }
    // Quad k holds the flat outputs q0 + 4k .. q0 + 4k + 3: one row, since w is a multiple of 4
    // and q0 of 16, of which the first n lie inside the output. Each accumulator is named where
    // it is stored rather than indexed in an array of them: 13 % off conv1 on lavapipe, where the
    // stores (scattered lane by lane) still take about half of that layer's time.
    if (!in_range) {
        return;
    }
    let plane_out = p.oh * p.ow;
    var oy = q0 / p.w;
    var ox = q0 % p.w;
    for (var k = 0u; k < 4u; k++) {
        if (oy < p.oh && ox < p.ow) {
            let o = (img * p.cout + co0) * plane_out + oy * p.ow + ox;
            let n = min(4u, p.ow - ox);
            store_quad(o, n, co0, quad(k, acc0_0, acc0_1, acc0_2, acc0_3));
            store_quad(o + plane_out, n, co0 + 1u, quad(k, acc1_0, acc1_1, acc1_2, acc1_3));
            store_quad(o + 2u * plane_out, n, co0 + 2u, quad(k, acc2_0, acc2_1, acc2_2, acc2_3));
            store_quad(o + 3u * plane_out, n, co0 + 3u, quad(k, acc3_0, acc3_1, acc3_2, acc3_3));
            store_quad(o + 4u * plane_out, n, co0 + 4u, quad(k, acc4_0, acc4_1, acc4_2, acc4_3));
            store_quad(o + 5u * plane_out, n, co0 + 5u, quad(k, acc5_0, acc5_1, acc5_2, acc5_3));
            store_quad(o + 6u * plane_out, n, co0 + 6u, quad(k, acc6_0, acc6_1, acc6_2, acc6_3));
            store_quad(o + 7u * plane_out, n, co0 + 7u, quad(k, acc7_0, acc7_1, acc7_2, acc7_3));
            //wide: store_quad(o + 8u * plane_out, n, co0 + 8u, quad(k, acc8_0, acc8_1, acc8_2, acc8_3));
            //wide: store_quad(o + 9u * plane_out, n, co0 + 9u, quad(k, acc9_0, acc9_1, acc9_2, acc9_3));
            //wide: store_quad(o + 10u * plane_out, n, co0 + 10u, quad(k, acc10_0, acc10_1, acc10_2, acc10_3));
            //wide: store_quad(o + 11u * plane_out, n, co0 + 11u, quad(k, acc11_0, acc11_1, acc11_2, acc11_3));
            //wide: store_quad(o + 12u * plane_out, n, co0 + 12u, quad(k, acc12_0, acc12_1, acc12_2, acc12_3));
            //wide: store_quad(o + 13u * plane_out, n, co0 + 13u, quad(k, acc13_0, acc13_1, acc13_2, acc13_3));
            //wide: store_quad(o + 14u * plane_out, n, co0 + 14u, quad(k, acc14_0, acc14_1, acc14_2, acc14_3));
            //wide: store_quad(o + 15u * plane_out, n, co0 + 15u, quad(k, acc15_0, acc15_1, acc15_2, acc15_3));
        }
        ox += 4u;
        if (ox == p.w) {
            ox = 0u;
            oy++;
        }
    }
}

// a<k>: k is the same in every thread, so this is a choice of register, not a memory access.
fn quad(k: u32, a0: vec4<f32>, a1: vec4<f32>, a2: vec4<f32>, a3: vec4<f32>) -> vec4<f32> {
    return select(select(a0, a1, k == 1u), select(a2, a3, k == 3u), k >= 2u);
}

// Outputs o .. o + n - 1 of channel co from v, plus the bias, through the ReLU.
fn store_quad(o: u32, n: u32, co: u32, acc: vec4<f32>) {
    if (co >= p.cout) {
        return;
    }
    var v = acc;
    if ((p.flags & 1u) != 0u) { v += vec4<f32>(bias[co]); }
    // select, not max(): NaN passes through, as in relu.wgsl.
    if ((p.flags & 2u) != 0u) { v = select(v, vec4<f32>(0.0), v <= vec4<f32>(0.0)); }
    out[o] = v.x;
    if (n > 1u) { out[o + 1u] = v.y; }
    if (n > 2u) { out[o + 2u] = v.z; }
    if (n > 3u) { out[o + 3u] = v.w; }
}
