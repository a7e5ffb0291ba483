// Weight gradient of a 'valid' stride-1 convolution (NCHW, OIHW; padding is applied beforehand
// by conv2d_pad.wgsl):
//     dw[co, ci, ky, kx] = sum over (img, oy, ox) of dy[img, co, oy, ox] * x[img, ci, oy + ky, ox + kx]
// Each thread owns 8 (wide: 16) output channels x two input channels x a 3x3 block of taps (a
// 3x3 kernel is one block; other sizes take several, the taps past the kernel's edge are
// computed and dropped), in 36 (72) named vec4 registers whose lanes are output channels.
// Walking along an output row, the three input rows' windows of each input channel slide by one
// column, so a pixel costs 8 (16) loads of dy and 6 new loads of x for 144 (288)
// multiply-adds. lavapipe gathers every load lane by lane, so loads per multiply-add set its
// speed: hence two input channels a thread (one would take 11 loads for 72), and no
// matrix-product formulation, which would need an integer division per element.
// The bias gradient db[co] = sum of dy[img, co, oy, ox] comes out of the same walk: the threads
// of input channel 0 and the first tap block store their running sums of dy. A pass of its own
// would read all of dy again, which at conv1 is as costly as this whole kernel.
// The reduction runs over every output row of the batch while the result is small, so the rows
// are split across threads (`rows_per_split`) and the partial sums are added by reduce.wgsl.
// Flags: bit 1 adds into dw and db; bit 2 writes split s's partial sums to dw[s * len(dw) + ...]
// and db[s * cout + ...].

struct Params {
    batch: u32, cin: u32, h: u32, w: u32,
    cout: u32, oh: u32, ow: u32, kh: u32,
    kw: u32, _pad0: u32, _pad1: u32, flags: u32,
    // conv2d.wgsl's grouping of images, which this kernel does not use.
    _pad2: u32, _pad3: u32, _pad4: u32, _pad5: u32,
    // pair_threads: the threads a block of taps gives the pairs of input channels, one a pair,
    // rounded up to whole subgroups in the wide variant.
    rows_per_split: u32, splits: u32, pair_threads: u32, _pad6: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> dy: array<f32>;
@group(0) @binding(3) var<storage, read_write> dw: array<f32>;
@group(0) @binding(4) var<storage, read_write> db: array<f32>;

// Output channels a thread takes: 8, or 16 in the "wide" variant for CPU adapters with
// subgroups of at least 8 lanes, such as lavapipe (src/kernels/conv2d.rs picks), which compiles
// the lines that start `//wide: ` (accumulators `*_8` for channels co0+8 .. co0+15) and drops
// those that start `//!wide: `. There a pixel's 22 loads serve 288 multiply-adds instead of 14
// serving 144. A real GPU's registers would not hold its 72 vec4 accumulators.
//
// The wide variant also shares dy across a subgroup: its lanes take pairs of input channels of
// the same output channels, rows and taps, so they read the same 16 values of dy a pixel. Lane
// i loads channel co0 + i's and co0 + 8 + i's, and broadcasts hand every lane all 16: two loads
// a pixel instead of 16 in every lane (on lavapipe a load is a loop over the lanes, a broadcast
// a register shuffle). This takes subgroups to be runs of consecutive invocations, as on CPU
// adapters (the tests check it).
override CO_TILE: u32 = 8u;
const TAP_BLOCK: u32 = 3u;

@compute @workgroup_size(64)
fn filter_grad(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    //wide: @builtin(subgroup_invocation_id) lane: u32,
) {
    let t = linear_index(wid, nwg, lid, 64u);
    let kyb = (p.kh + TAP_BLOCK - 1u) / TAP_BLOCK;
    let kxb = (p.kw + TAP_BLOCK - 1u) / TAP_BLOCK;
    let co_blocks = (p.cout + CO_TILE - 1u) / CO_TILE;
    // Neighbouring threads take neighbouring pairs of input channels of one block of output
    // channels: they read the same dy. Threads past the pairs (wide variant) redo the last pair
    // for their subgroup's sake and store nothing.
    let pairs = (p.cin + 1u) / 2u;
    let pair = t % p.pair_threads;
    let in_range = pair < pairs;
    let ci = min(pair, pairs - 1u) * 2u;
    // The second channel of an odd count repeats the first; dropped at the store.
    let cj = min(ci + 1u, p.cin - 1u);
    let kx0 = ((t / p.pair_threads) % kxb) * TAP_BLOCK;
    let ky0 = ((t / (p.pair_threads * kxb)) % kyb) * TAP_BLOCK;
    let co0 = ((t / (p.pair_threads * kxb * kyb)) % co_blocks) * CO_TILE;
    let split = t / (p.pair_threads * kxb * kyb * co_blocks);
    if (split >= p.splits) {
        return;
    }
    let plane_in = p.h * p.w;
    let plane_out = p.oh * p.ow;
    let last = p.cout - 1u;
    // acc<r><c>l / acc<r><c>h: tap (ky0 + r, kx0 + c) of input channel ci for output channels
    // co0 .. co0+3 / co0+4 .. co0+7; bcc<r><c>l / bcc<r><c>h: the same for input channel cj.
    var acc00l = vec4<f32>(0.0); var acc01l = vec4<f32>(0.0); var acc02l = vec4<f32>(0.0);
    //wide: var acc00l_8 = vec4<f32>(0.0); var acc01l_8 = vec4<f32>(0.0); var acc02l_8 = vec4<f32>(0.0);
    var acc10l = vec4<f32>(0.0); var acc11l = vec4<f32>(0.0); var acc12l = vec4<f32>(0.0);
    //wide: var acc10l_8 = vec4<f32>(0.0); var acc11l_8 = vec4<f32>(0.0); var acc12l_8 = vec4<f32>(0.0);
    var acc20l = vec4<f32>(0.0); var acc21l = vec4<f32>(0.0); var acc22l = vec4<f32>(0.0);
    //wide: var acc20l_8 = vec4<f32>(0.0); var acc21l_8 = vec4<f32>(0.0); var acc22l_8 = vec4<f32>(0.0);
    var acc00h = vec4<f32>(0.0); var acc01h = vec4<f32>(0.0); var acc02h = vec4<f32>(0.0);
    //wide: var acc00h_8 = vec4<f32>(0.0); var acc01h_8 = vec4<f32>(0.0); var acc02h_8 = vec4<f32>(0.0);
    var acc10h = vec4<f32>(0.0); var acc11h = vec4<f32>(0.0); var acc12h = vec4<f32>(0.0);
    //wide: var acc10h_8 = vec4<f32>(0.0); var acc11h_8 = vec4<f32>(0.0); var acc12h_8 = vec4<f32>(0.0);
    var acc20h = vec4<f32>(0.0); var acc21h = vec4<f32>(0.0); var acc22h = vec4<f32>(0.0);
    //wide: var acc20h_8 = vec4<f32>(0.0); var acc21h_8 = vec4<f32>(0.0); var acc22h_8 = vec4<f32>(0.0);
    var bcc00l = vec4<f32>(0.0); var bcc01l = vec4<f32>(0.0); var bcc02l = vec4<f32>(0.0);
    //wide: var bcc00l_8 = vec4<f32>(0.0); var bcc01l_8 = vec4<f32>(0.0); var bcc02l_8 = vec4<f32>(0.0);
    var bcc10l = vec4<f32>(0.0); var bcc11l = vec4<f32>(0.0); var bcc12l = vec4<f32>(0.0);
    //wide: var bcc10l_8 = vec4<f32>(0.0); var bcc11l_8 = vec4<f32>(0.0); var bcc12l_8 = vec4<f32>(0.0);
    var bcc20l = vec4<f32>(0.0); var bcc21l = vec4<f32>(0.0); var bcc22l = vec4<f32>(0.0);
    //wide: var bcc20l_8 = vec4<f32>(0.0); var bcc21l_8 = vec4<f32>(0.0); var bcc22l_8 = vec4<f32>(0.0);
    var bcc00h = vec4<f32>(0.0); var bcc01h = vec4<f32>(0.0); var bcc02h = vec4<f32>(0.0);
    //wide: var bcc00h_8 = vec4<f32>(0.0); var bcc01h_8 = vec4<f32>(0.0); var bcc02h_8 = vec4<f32>(0.0);
    var bcc10h = vec4<f32>(0.0); var bcc11h = vec4<f32>(0.0); var bcc12h = vec4<f32>(0.0);
    //wide: var bcc10h_8 = vec4<f32>(0.0); var bcc11h_8 = vec4<f32>(0.0); var bcc12h_8 = vec4<f32>(0.0);
    var bcc20h = vec4<f32>(0.0); var bcc21h = vec4<f32>(0.0); var bcc22h = vec4<f32>(0.0);
    //wide: var bcc20h_8 = vec4<f32>(0.0); var bcc21h_8 = vec4<f32>(0.0); var bcc22h_8 = vec4<f32>(0.0);
    // Sums of dy for channels co0 .. co0+3 / co0+4 .. co0+7 (kept by every thread: two adds
    // beside 18 multiply-adds cost less than a branch that splits the lanes).
    var dyl = vec4<f32>(0.0); var dyh = vec4<f32>(0.0);
    //wide: var dyl_8 = vec4<f32>(0.0); var dyh_8 = vec4<f32>(0.0);
    let row_begin = split * p.rows_per_split;
    let row_end = min(row_begin + p.rows_per_split, p.batch * p.oh);
    for (var r = row_begin; r < row_end; r++) {
        let img = r / p.oh;
        let oy = r % p.oh;
        // dy rows of the 8 channels (channels past the end repeat the last; dropped at the store).
        //!wide: let d0 = (img * p.cout + co0) * plane_out + oy * p.ow;
        //!wide: let d1 = (img * p.cout + min(co0 + 1u, last)) * plane_out + oy * p.ow;
        //!wide: let d2 = (img * p.cout + min(co0 + 2u, last)) * plane_out + oy * p.ow;
        //!wide: let d3 = (img * p.cout + min(co0 + 3u, last)) * plane_out + oy * p.ow;
        //!wide: let d4 = (img * p.cout + min(co0 + 4u, last)) * plane_out + oy * p.ow;
        //!wide: let d5 = (img * p.cout + min(co0 + 5u, last)) * plane_out + oy * p.ow;
        //!wide: let d6 = (img * p.cout + min(co0 + 6u, last)) * plane_out + oy * p.ow;
        //!wide: let d7 = (img * p.cout + min(co0 + 7u, last)) * plane_out + oy * p.ow;
        // The wide variant's lanes: channel co0 + lane's row and channel co0 + 8 + lane's.
        //wide: let d_lo = (img * p.cout + min(co0 + lane, last)) * plane_out + oy * p.ow;
        //wide: let d_hi = (img * p.cout + min(co0 + 8u + lane, last)) * plane_out + oy * p.ow;
        // Input rows oy + ky0 + 0..2 from column kx0; taps past the kernel may point past the
        // plane, so every read is clamped to it.
        let x_plane = (img * p.cin + ci) * plane_in;
        let x_last = x_plane + plane_in - 1u;
        let x0 = x_plane + (oy + ky0) * p.w + kx0;
        let x1 = x0 + p.w;
        let x2 = x1 + p.w;
        var a0 = x[min(x0, x_last)]; var b0 = x[min(x0 + 1u, x_last)];
        var a1 = x[min(x1, x_last)]; var b1 = x[min(x1 + 1u, x_last)];
        var a2 = x[min(x2, x_last)]; var b2 = x[min(x2 + 1u, x_last)];
        // The same rows of input channel cj: windows f g h.
        let y_plane = (img * p.cin + cj) * plane_in;
        let y_last = y_plane + plane_in - 1u;
        let y0 = y_plane + (oy + ky0) * p.w + kx0;
        let y1 = y0 + p.w;
        let y2 = y1 + p.w;
        var f0 = x[min(y0, y_last)]; var g0 = x[min(y0 + 1u, y_last)];
        var f1 = x[min(y1, y_last)]; var g1 = x[min(y1 + 1u, y_last)];
        var f2 = x[min(y2, y_last)]; var g2 = x[min(y2 + 1u, y_last)];
        for (var ox = 0u; ox < p.ow; ox++) {
            //!wide: let dl = vec4<f32>(dy[d0 + ox], dy[d1 + ox], dy[d2 + ox], dy[d3 + ox]);
            //!wide: let dh = vec4<f32>(dy[d4 + ox], dy[d5 + ox], dy[d6 + ox], dy[d7 + ox]);
            //wide: let lo = dy[d_lo + ox];
            //wide: let hi = dy[d_hi + ox];
            //wide: let dl = vec4<f32>(subgroupBroadcast(lo, 0u), subgroupBroadcast(lo, 1u), subgroupBroadcast(lo, 2u), subgroupBroadcast(lo, 3u));
            //wide: let dh = vec4<f32>(subgroupBroadcast(lo, 4u), subgroupBroadcast(lo, 5u), subgroupBroadcast(lo, 6u), subgroupBroadcast(lo, 7u));
            //wide: let dl_8 = vec4<f32>(subgroupBroadcast(hi, 0u), subgroupBroadcast(hi, 1u), subgroupBroadcast(hi, 2u), subgroupBroadcast(hi, 3u));
            //wide: let dh_8 = vec4<f32>(subgroupBroadcast(hi, 4u), subgroupBroadcast(hi, 5u), subgroupBroadcast(hi, 6u), subgroupBroadcast(hi, 7u));
            let c0 = x[min(x0 + ox + 2u, x_last)];
            let c1 = x[min(x1 + ox + 2u, x_last)];
            let c2 = x[min(x2 + ox + 2u, x_last)];
            let h0 = x[min(y0 + ox + 2u, y_last)];
            let h1 = x[min(y1 + ox + 2u, y_last)];
            let h2 = x[min(y2 + ox + 2u, y_last)];
            dyl += dl;
            dyh += dh;
            //wide: dyl_8 += dl_8;
            //wide: dyh_8 += dh_8;
            acc00l = fma(dl, vec4<f32>(a0), acc00l); acc01l = fma(dl, vec4<f32>(b0), acc01l); acc02l = fma(dl, vec4<f32>(c0), acc02l);
            //wide: acc00l_8 = fma(dl_8, vec4<f32>(a0), acc00l_8); acc01l_8 = fma(dl_8, vec4<f32>(b0), acc01l_8); acc02l_8 = fma(dl_8, vec4<f32>(c0), acc02l_8);
            acc10l = fma(dl, vec4<f32>(a1), acc10l); acc11l = fma(dl, vec4<f32>(b1), acc11l); acc12l = fma(dl, vec4<f32>(c1), acc12l);
            //wide: acc10l_8 = fma(dl_8, vec4<f32>(a1), acc10l_8); acc11l_8 = fma(dl_8, vec4<f32>(b1), acc11l_8); acc12l_8 = fma(dl_8, vec4<f32>(c1), acc12l_8);
            acc20l = fma(dl, vec4<f32>(a2), acc20l); acc21l = fma(dl, vec4<f32>(b2), acc21l); acc22l = fma(dl, vec4<f32>(c2), acc22l);
            //wide: acc20l_8 = fma(dl_8, vec4<f32>(a2), acc20l_8); acc21l_8 = fma(dl_8, vec4<f32>(b2), acc21l_8); acc22l_8 = fma(dl_8, vec4<f32>(c2), acc22l_8);
            acc00h = fma(dh, vec4<f32>(a0), acc00h); acc01h = fma(dh, vec4<f32>(b0), acc01h); acc02h = fma(dh, vec4<f32>(c0), acc02h);
            //wide: acc00h_8 = fma(dh_8, vec4<f32>(a0), acc00h_8); acc01h_8 = fma(dh_8, vec4<f32>(b0), acc01h_8); acc02h_8 = fma(dh_8, vec4<f32>(c0), acc02h_8);
            acc10h = fma(dh, vec4<f32>(a1), acc10h); acc11h = fma(dh, vec4<f32>(b1), acc11h); acc12h = fma(dh, vec4<f32>(c1), acc12h);
            //wide: acc10h_8 = fma(dh_8, vec4<f32>(a1), acc10h_8); acc11h_8 = fma(dh_8, vec4<f32>(b1), acc11h_8); acc12h_8 = fma(dh_8, vec4<f32>(c1), acc12h_8);
            acc20h = fma(dh, vec4<f32>(a2), acc20h); acc21h = fma(dh, vec4<f32>(b2), acc21h); acc22h = fma(dh, vec4<f32>(c2), acc22h);
            //wide: acc20h_8 = fma(dh_8, vec4<f32>(a2), acc20h_8); acc21h_8 = fma(dh_8, vec4<f32>(b2), acc21h_8); acc22h_8 = fma(dh_8, vec4<f32>(c2), acc22h_8);
            bcc00l = fma(dl, vec4<f32>(f0), bcc00l); bcc01l = fma(dl, vec4<f32>(g0), bcc01l); bcc02l = fma(dl, vec4<f32>(h0), bcc02l);
            //wide: bcc00l_8 = fma(dl_8, vec4<f32>(f0), bcc00l_8); bcc01l_8 = fma(dl_8, vec4<f32>(g0), bcc01l_8); bcc02l_8 = fma(dl_8, vec4<f32>(h0), bcc02l_8);
            bcc10l = fma(dl, vec4<f32>(f1), bcc10l); bcc11l = fma(dl, vec4<f32>(g1), bcc11l); bcc12l = fma(dl, vec4<f32>(h1), bcc12l);
            //wide: bcc10l_8 = fma(dl_8, vec4<f32>(f1), bcc10l_8); bcc11l_8 = fma(dl_8, vec4<f32>(g1), bcc11l_8); bcc12l_8 = fma(dl_8, vec4<f32>(h1), bcc12l_8);
            bcc20l = fma(dl, vec4<f32>(f2), bcc20l); bcc21l = fma(dl, vec4<f32>(g2), bcc21l); bcc22l = fma(dl, vec4<f32>(h2), bcc22l);
            //wide: bcc20l_8 = fma(dl_8, vec4<f32>(f2), bcc20l_8); bcc21l_8 = fma(dl_8, vec4<f32>(g2), bcc21l_8); bcc22l_8 = fma(dl_8, vec4<f32>(h2), bcc22l_8);
            bcc00h = fma(dh, vec4<f32>(f0), bcc00h); bcc01h = fma(dh, vec4<f32>(g0), bcc01h); bcc02h = fma(dh, vec4<f32>(h0), bcc02h);
            //wide: bcc00h_8 = fma(dh_8, vec4<f32>(f0), bcc00h_8); bcc01h_8 = fma(dh_8, vec4<f32>(g0), bcc01h_8); bcc02h_8 = fma(dh_8, vec4<f32>(h0), bcc02h_8);
            bcc10h = fma(dh, vec4<f32>(f1), bcc10h); bcc11h = fma(dh, vec4<f32>(g1), bcc11h); bcc12h = fma(dh, vec4<f32>(h1), bcc12h);
            //wide: bcc10h_8 = fma(dh_8, vec4<f32>(f1), bcc10h_8); bcc11h_8 = fma(dh_8, vec4<f32>(g1), bcc11h_8); bcc12h_8 = fma(dh_8, vec4<f32>(h1), bcc12h_8);
            bcc20h = fma(dh, vec4<f32>(f2), bcc20h); bcc21h = fma(dh, vec4<f32>(g2), bcc21h); bcc22h = fma(dh, vec4<f32>(h2), bcc22h);
            //wide: bcc20h_8 = fma(dh_8, vec4<f32>(f2), bcc20h_8); bcc21h_8 = fma(dh_8, vec4<f32>(g2), bcc21h_8); bcc22h_8 = fma(dh_8, vec4<f32>(h2), bcc22h_8);
            f0 = g0; g0 = h0;
            f1 = g1; g1 = h1;
            f2 = g2; g2 = h2;
            a0 = b0; b0 = c0;
            a1 = b1; b1 = c1;
            a2 = b2; b2 = c2;
        }
    }
    if (!in_range) {
        return;
    }
    let taps = p.kh * p.kw;
    let len = p.cout * p.cin * taps;
    store_taps(ci, ky0, kx0, co0, split, len, array<vec4<f32>, 18>(acc00l, acc00h, acc01l, acc01h, acc02l, acc02h, acc10l, acc10h, acc11l, acc11h,
                                   acc12l, acc12h, acc20l, acc20h, acc21l, acc21h, acc22l, acc22h));
    if (cj != ci) {
        store_taps(cj, ky0, kx0, co0, split, len, array<vec4<f32>, 18>(bcc00l, bcc00h, bcc01l, bcc01h, bcc02l, bcc02h, bcc10l, bcc10h, bcc11l, bcc11h,
                                   bcc12l, bcc12h, bcc20l, bcc20h, bcc21l, bcc21h, bcc22l, bcc22h));
    }
    //wide: store_taps(ci, ky0, kx0, co0 + 8u, split, len, array<vec4<f32>, 18>(acc00l_8, acc00h_8, acc01l_8, acc01h_8, acc02l_8, acc02h_8, acc10l_8, acc10h_8, acc11l_8, acc11h_8, acc12l_8, acc12h_8, acc20l_8, acc20h_8, acc21l_8, acc21h_8, acc22l_8, acc22h_8));
    //wide: if (cj != ci) { store_taps(cj, ky0, kx0, co0 + 8u, split, len, array<vec4<f32>, 18>(bcc00l_8, bcc00h_8, bcc01l_8, bcc01h_8, bcc02l_8, bcc02h_8, bcc10l_8, bcc10h_8, bcc11l_8, bcc11h_8, bcc12l_8, bcc12h_8, bcc20l_8, bcc20h_8, bcc21l_8, bcc21h_8, bcc22l_8, bcc22h_8)); }
    if (ci != 0u || ky0 != 0u || kx0 != 0u) {
        return;
    }
    store_bias_grad(co0, split, dyl, dyh);
    //wide: store_bias_grad(co0 + 8u, split, dyl_8, dyh_8);
}

// The bias gradient of channels co0 .. co0+3 (lo) and co0+4 .. co0+7 (hi).
fn store_bias_grad(co0: u32, split: u32, lo: vec4<f32>, hi: vec4<f32>) {
    let sums = array<vec4<f32>, 2>(lo, hi);
    for (var c = 0u; c < 8u; c++) {
        let co = co0 + c;
        if (co >= p.cout) {
            break;
        }
        let v = sums[c / 4u][c % 4u];
        if ((p.flags & 4u) != 0u) {
            db[split * p.cout + co] = v;
        } else if ((p.flags & 2u) != 0u) {
            db[co] += v;
        } else {
            db[co] = v;
        }
    }
}

// Channels co0 .. co0+7 of input channel ci, taps (ky0, kx0) .. (ky0 + 2, kx0 + 2), from acc:
// tap (r, c) in acc[2 (3 r + c)] (channels co0 .. co0+3) and the vec4 after it.
fn store_taps(ci: u32, ky0: u32, kx0: u32, co0: u32, split: u32, len: u32, acc: array<vec4<f32>, 18>) {
    var a = acc;
    for (var i = 0u; i < 9u; i++) {
        let ky = ky0 + i / 3u;
        let kx = kx0 + i % 3u;
        if (ky >= p.kh || kx >= p.kw) {
            continue;
        }
        for (var c = 0u; c < 8u; c++) {
            let co = co0 + c;
            if (co >= p.cout) {
                break;
            }
            let o = ((co * p.cin + ci) * p.kh + ky) * p.kw + kx;
            let v = a[2u * i + c / 4u][c % 4u];
            if ((p.flags & 4u) != 0u) {
                dw[split * len + o] = v;
            } else if ((p.flags & 2u) != 0u) {
                dw[o] += v;
            } else {
                dw[o] = v;
            }
        }
    }
}
