// 2-D convolution with stride, zero padding on each side and groups, for inference (see
// src/kernels/conv2d_grouped.rs), NCHW activations and OIHW weights [cout, cin / groups, kh, kw]:
//     out[n, co, oy, ox] = bias[co] + sum over (ci, ky, kx) of
//         w[co, ci, ky, kx] * x[n, g * cin_per_group + ci, oy * sh + ky - pad_top, ox * sw + kx - pad_left]
// with g = co / cout_per_group and x zero outside the image, then a ReLU when `relu` is set.
// Input rows and columns above or left of the image come out of the u32 subtraction as huge
// values, so one compare against h or w finds every padding position.
//
// Two entry points. `depthwise` (groups of one input channel): a workgroup computes an 8 x 64
// tile of one output plane; its 128 threads first copy the tile's input patch into workgroup
// memory, neighbouring threads reading neighbouring addresses, so each input is read from
// memory once instead of kh * kw / (sh * sw) times. `grouped` (everything else): an implicit
// matrix product per group, a workgroup computing 16 output channels x 64 output pixels while
// walking the (ci, ky, kx) axis 16 steps at a time, with the steps' weights and im2col inputs
// staged in workgroup memory: each input loaded serves 16 output channels and each weight 64
// pixels. Neither divides inside its loops (each thread steps its (ci, ky, kx) with carries):
// CPU Vulkan drivers split vector integer division into scalar ones.

struct Params {
    batch: u32, cin: u32, h: u32, w: u32,
    cout: u32, cin_per_group: u32, cout_per_group: u32, kh: u32,
    kw: u32, sh: u32, sw: u32, pad_top: u32,
    pad_left: u32, oh: u32, ow: u32, relu: u32,
    // Tiles along a workgroup's two axes: depthwise, output columns and rows; grouped, output
    // channels of a group and output pixels.
    tiles_a: u32, tiles_b: u32, _pad0: u32, _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> wt: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

// Row iy, column ix of the input plane at `plane`, or 0 in the padding.
fn input_at(plane: u32, iy: u32, ix: u32) -> f32 {
    if (iy < p.h && ix < p.w) {
        return x[plane + iy * p.w + ix];
    }
    return 0.0;
}

// The ReLU if asked for. select, not max(): NaN passes through, as on the CPU.
fn activate(v: f32) -> f32 {
    return select(v, 0.0, p.relu != 0u && v <= 0.0);
}

// Mirrored in src/kernels/conv2d_grouped.rs, which sends shapes whose patch does not fit to
// `grouped`. 9 KiB of patch (WebGPU guarantees 16 KiB of workgroup memory) holds the 17 x 129
// inputs of a 3x3 window at stride 2.
const DW_ROWS: u32 = 8u;
const DW_COLS: u32 = 64u;
const DW_PATCH: u32 = 2304u;
const DW_THREADS: u32 = 128u;
var<workgroup> dw_patch: array<f32, DW_PATCH>;

// Thread (r, c) of the 8 x 16 threads computes outputs (r, c + 16 j), j < 4, of the tile:
// neighbouring threads read neighbouring patch values (no bank conflicts at stride 1) and
// store to neighbouring addresses.
@compute @workgroup_size(128)
fn depthwise(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    // A folded grid (Recorder::dispatch_linear) can hold a few workgroups past the last tile.
    let tile = linear_index(wid, nwg, 0u, 1u);
    if (tile >= p.batch * p.cout * p.tiles_a * p.tiles_b) {
        return;
    }
    let rest = tile / p.tiles_a;
    let tile_x = tile - rest * p.tiles_a;
    let plane = rest / p.tiles_b; // n * cout + co
    let tile_y = rest - plane * p.tiles_b;
    let n = plane / p.cout;
    let co = plane - n * p.cout;
    let in_plane = (n * p.cin + co / p.cout_per_group) * p.h * p.w;
    let oy0 = tile_y * DW_ROWS;
    let ox0 = tile_x * DW_COLS;
    let pr = (DW_ROWS - 1u) * p.sh + p.kh;
    let pc = (DW_COLS - 1u) * p.sw + p.kw;
    // The host sends only shapes whose patch fits. Every patch index below is under pr * pc
    // (the last output's last tap is patch value pr * pc - 1), so this one check bounds them.
    if (pr * pc > DW_PATCH) {
        return;
    }
    let iy0 = oy0 * p.sh - p.pad_top;
    let ix0 = ox0 * p.sw - p.pad_left;
    // The patch, row-major, DW_THREADS values at a time: (r, c) steps on with a carry.
    var r = lid / pc;
    var c = lid - r * pc;
    for (var i = lid; i < pr * pc; i += DW_THREADS) {
        dw_patch[i] = input_at(in_plane, iy0 + r, ix0 + c);
        c += DW_THREADS;
        while (c >= pc) {
            c -= pc;
            r += 1u;
        }
    }
    workgroupBarrier();

    let ty = lid / 16u;
    let tx = lid - ty * 16u;
    let lane_gap = 16u * p.sw;
    var acc = vec4<f32>(bias[co]);
    var w_at = co * p.kh * p.kw;
    let last_w = arrayLength(&wt) - 1u;
    for (var ky = 0u; ky < p.kh; ky++) {
        var at = (ty * p.sh + ky) * pc + tx * p.sw;
        for (var kx = 0u; kx < p.kw; kx++) {
            acc += wt[min(w_at, last_w)] * vec4<f32>(dw_patch[at], dw_patch[at + lane_gap], dw_patch[at + 2u * lane_gap], dw_patch[at + 3u * lane_gap]);
            w_at += 1u;
            at += 1u;
        }
    }
    let out_plane = plane * p.oh * p.ow;
    let oy = oy0 + ty;
    let ox = ox0 + tx;
    if (oy < p.oh) {
        store_row(out_plane + oy * p.ow, ox + vec4<u32>(0u, 16u, 32u, 48u), p.ow, acc);
    }
}

// Mirrored in src/kernels/conv2d_grouped.rs.
const G_CHANNELS: u32 = 16u;
const G_PIXELS: u32 = 64u;
// Steps of the (ci, ky, kx) axis staged at a time.
const G_STEPS: u32 = 16u;
// [step][channel / 4]: a thread reads its 4 channels' weights of a step as one vec4.
var<workgroup> w_tile: array<vec4<f32>, G_STEPS * G_CHANNELS / 4u>;
// [step][pixel / 4]: a thread reads its 4 pixels' inputs of a step as one vec4.
var<workgroup> x_tile: array<vec4<f32>, G_STEPS * G_PIXELS / 4u>;

// Loading, thread t stages pixel t of the tile at every step, and 4 steps of channel t / 4's
// weights. Computing, thread (r, c) of the 4 x 16 threads takes channels 4r .. 4r + 3 and
// pixels 4c .. 4c + 3 in four vec4 accumulators (one per channel, a lane per pixel): two
// vec4 loads from workgroup memory a step for 16 multiply-adds, neighbouring threads reading
// neighbouring 16-byte words (no bank conflicts), and storing to neighbouring addresses.
@compute @workgroup_size(64)
fn grouped(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let groups = p.cin / p.cin_per_group;
    let tile = linear_index(wid, nwg, 0u, 1u);
    if (tile >= p.batch * groups * p.tiles_a * p.tiles_b) {
        return;
    }
    let rest = tile / p.tiles_a;
    let tile_co = tile - rest * p.tiles_a;
    let image_group = rest / p.tiles_b; // n * groups + g
    let tile_px = rest - image_group * p.tiles_b;
    let n = image_group / groups;
    let g = image_group - n * groups;
    let plane = p.oh * p.ow;
    let taps = p.cin_per_group * p.kh * p.kw;

    let px = tile_px * G_PIXELS + lid;
    let oy = px / p.ow;
    let iy0 = oy * p.sh - p.pad_top;
    let ix0 = (px - oy * p.ow) * p.sw - p.pad_left;
    // The next step this thread stages: its channel's plane and its tap.
    var in_plane = (n * p.cin + g * p.cin_per_group) * p.h * p.w;
    var ky = 0u;
    var kx = 0u;
    let w_channel = lid / 4u;
    let w_step = (lid - w_channel * 4u) * 4u;
    let w_co = tile_co * G_CHANNELS + w_channel;
    let w_row = (g * p.cout_per_group + w_co) * taps;

    let r = lid / 16u;
    let c = lid - r * 16u;
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var k0 = 0u; k0 < taps; k0 += G_STEPS) {
        // The last steps' values are still being read.
        workgroupBarrier();
        for (var s = 0u; s < G_STEPS; s++) {
            var v = 0.0;
            if (px < plane && k0 + s < taps) {
                v = input_at(in_plane, iy0 + ky, ix0 + kx);
            }
            x_tile[s * G_PIXELS / 4u + lid / 4u][lid % 4u] = v;
            kx += 1u;
            if (kx == p.kw) {
                kx = 0u;
                ky += 1u;
                if (ky == p.kh) {
                    ky = 0u;
                    in_plane += p.h * p.w;
                }
            }
        }
        for (var s = 0u; s < 4u; s++) {
            let k = k0 + w_step + s;
            var v = 0.0;
            if (w_co < p.cout_per_group && k < taps) {
                v = wt[w_row + k];
            }
            w_tile[(w_step + s) * 4u + w_channel / 4u][w_channel % 4u] = v;
        }
        workgroupBarrier();
        for (var s = 0u; s < G_STEPS; s++) {
            let a = w_tile[s * 4u + r];
            let b = x_tile[s * G_PIXELS / 4u + c];
            acc0 += a.x * b;
            acc1 += a.y * b;
            acc2 += a.z * b;
            acc3 += a.w * b;
        }
    }
    let co = tile_co * G_CHANNELS + 4u * r;
    let px0 = tile_px * G_PIXELS + 4u * c;
    store_channel(n, g, co, px0, acc0);
    store_channel(n, g, co + 1u, px0, acc1);
    store_channel(n, g, co + 2u, px0, acc2);
    store_channel(n, g, co + 3u, px0, acc3);
}

// Pixels px0 .. px0 + 3 of output channel co of group g of image n, with its bias: the
// plane's pixels seen as one row.
fn store_channel(n: u32, g: u32, co: u32, px0: u32, acc: vec4<f32>) {
    if (co < p.cout_per_group) {
        let channel = g * p.cout_per_group + co;
        store_row((n * p.cout + channel) * p.oh * p.ow, px0 + vec4<u32>(0u, 1u, 2u, 3u), p.oh * p.ow, acc + bias[channel]);
    }
}

// Elements `at` of the output row at `row`, those of them before `end`.
fn store_row(row: u32, at: vec4<u32>, end: u32, v: vec4<f32>) {
    for (var j = 0u; j < 4u; j++) {
        if (at[j] < end) {
            out[row + at[j]] = activate(v[j]);
        }
    }
}
