//! The GPU detector: the same windows as the CPU reference (and so as OpenCV), from WGSL
//! kernels, all recorded into one command buffer. Each pass covers every pyramid level of a
//! batch (consecutive levels whose buffers fit `BATCH_BUFFER_BYTES`), each level in its own
//! regions of the batch's buffers, so a batch costs the host a fixed number of passes (set by
//! the cascade's stage groups), not that number per level:
//! - `resize.wgsl` builds the levels from the original image with taps from the host;
//! - `integral.wgsl` builds the upright, squared and (when the cascade needs it) tilted
//!   integral images, in exact wrapping u32;
//! - `haar_cascade.wgsl` runs stage 0 on every window, walks each row with OpenCV's skip rule
//!   to compact the survivors into a list, then runs the later stages in groups, compacting
//!   again after each group, with indirect dispatches sized by the GPU's own counts.
//!
//! Only the found windows come back; grouping stays on the CPU.
//!
//! The cascade is encoded for exact integer evaluation (docs/opencv-haar-semantics.md §15.3);
//! a cascade that cannot be (fractional rectangle weights, say) is refused with a reason, and
//! the caller can use the CPU detector.

use super::cascade::Cascade;
use super::cpu::{self, resize_taps, scan_plan, scan_scale, DetectParams, Integrals, ScaleScan, STAGE_THRESHOLD_EPS};
use super::group::Rect;
use crate::error::{Error, Result};
use crate::gpu::{append_timeline, pack_bytes, shaders, Finished, Gpu, GpuBuffer, GpuSlice, HostTiming, PassTiming, Readback, Recorder, Submitted};
use image::GrayImage;

const WORKGROUP: u32 = 64;

/// The most bytes one buffer of a batch of levels holds: a batch's integral tables are built
/// and then read back by the cascade, so they should stay within a large cache (the L3 of the
/// host here, a data-center GPU's 50 MB L2): an unbounded batch of a large frame's levels would
/// write its tables out to memory and read them back. 1280x720 runs in 2 batches, 32 passes.
const BATCH_BUFFER_BYTES: u64 = 32 << 20;

/// The scan parameters of haar_cascade.wgsl's `Scan`, field for field.
#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct ScanParams {
    levels: u32,
    windows: u32,
    rows: u32,
    groups: u32,
    stage_begin: u32,
    stage_end: u32,
    group: u32,
    last: u32,
    norm_w: u32,
    norm_h: u32,
    vnf_limit: f32,
    max_depth: u32,
    stages_off: u32,
    trees_off: u32,
    nodes_off: u32,
    leaves_off: u32,
    features_off: u32,
    found_off: u32,
    found_capacity: u32,
    nodes: u32,
    list_in: u32,
    list_out: u32,
    max_groups_x: u32,
    counters: u32,
    args_at: u32,
    _pad: [u32; 3],
}

/// One pyramid level of a batch: haar_cascade.wgsl's `Level`, field for field.
#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct LevelParams {
    scale: u32,
    iw: u32,
    table: u32,
    tables_at: u32,
    step: u32,
    grid_w: u32,
    grid_h: u32,
    windows_before: u32,
    rows_before: u32,
    _pad: [u32; 3],
}

/// Consecutive levels scanned together, each in its own region of the batch's buffers.
struct Batch {
    /// Index of the first level among the frame's.
    first: usize,
    levels: Vec<LevelParams>,
    /// Where each level's resized image starts in the batch's `scaled` buffer.
    scaled_at: Vec<usize>,
    /// Elements of the batch's scaled images and integral tables.
    scaled_len: usize,
    tables_len: usize,
    /// Elements of the tilted integrals' scratch (none without tilted features).
    scratch_len: usize,
    windows: usize,
    rows: usize,
}

/// Groups the frame's levels into batches whose buffers each fit one binding: every level of
/// a batch keeps its integral tables, window codes and prepared nodes at once, so a batch is
/// scanned by one dispatch per phase.
fn plan_batches(levels: &[ScaleScan], tilted: bool, nodes: u32, limit_elems: usize) -> Vec<Batch> {
    let tables_per_level = if tilted { 3 } else { 2 };
    let mut batches: Vec<Batch> = Vec::new();
    for (i, l) in levels.iter().enumerate() {
        let (sw, sh) = (l.size.0 as usize, l.size.1 as usize);
        let (grid_w, grid_h) = (l.work_width.div_ceil(l.step), l.rows_end.div_ceil(l.step));
        let table = (sw + 1) * (sh + 1);
        let windows = grid_w as usize * grid_h as usize;
        let scratch = if tilted { integral_scratch_len(sw, sh) } else { 0 };
        let fits = |b: &Batch| {
            let levels = b.levels.len() + 1;
            let lens = [b.tables_len + tables_per_level * table, b.scaled_len + sw * sh, b.scratch_len + scratch, 2 * (b.windows + windows), 6 * (b.windows + windows), 16 * nodes as usize * levels];
            lens.iter().all(|&n| n <= limit_elems)
        };
        if batches.last().is_none_or(|b| !fits(b)) {
            batches.push(Batch { first: i, levels: Vec::new(), scaled_at: Vec::new(), scaled_len: 0, tables_len: 0, scratch_len: 0, windows: 0, rows: 0 });
        }
        let b = batches.last_mut().expect("a batch");
        b.levels.push(LevelParams {
            scale: i as u32,
            iw: sw as u32 + 1,
            table: table as u32,
            tables_at: b.tables_len as u32,
            step: l.step,
            grid_w,
            grid_h,
            windows_before: b.windows as u32,
            rows_before: b.rows as u32,
            _pad: [0; 3],
        });
        b.scaled_at.push(b.scaled_len);
        b.tables_len += tables_per_level * table;
        b.scaled_len += sw * sh;
        b.scratch_len += scratch;
        b.windows += windows;
        b.rows += grid_h as usize;
    }
    batches
}

/// A cascade flattened into one u32 buffer for exact evaluation: stages (first tree, tree
/// count, threshold as i64), trees (first node, first leaf), nodes (feature, threshold bits,
/// left, right), leaves (i64) and features (three packed rectangles, three integer weights,
/// tilted flag). Leaves and thresholds are fixed point: value * 2^frac_bits.
struct Encoded {
    words: Vec<u32>,
    stages_off: u32,
    trees_off: u32,
    nodes_off: u32,
    leaves_off: u32,
    features_off: u32,
    max_depth: u32,
    nodes: u32,
}

fn unsupported(reason: impl Into<String>) -> Error {
    Error::Unsupported { what: "GPU detector".into(), reason: reason.into() }
}

/// The smallest power-of-two exponent F such that v * 2^F is an integer; None for NaN and the
/// infinities, which no doubling makes integral. A finite f32 needs at most 149 doublings, all
/// exact in f64.
fn fraction_bits(v: f32) -> Option<i32> {
    if !v.is_finite() {
        return None;
    }
    let (mut f, mut x) = (0, v as f64);
    while x.fract() != 0.0 {
        x *= 2.0;
        f += 1;
    }
    Some(f)
}

fn encode(cascade: &Cascade) -> Result<Encoded> {
    let (ww, wh) = cascade.window;
    if ww > 255 || wh > 255 || ww < 3 || wh < 3 {
        return Err(unsupported(format!("a {ww}x{wh} window (the GPU encoding takes 3 to 255 pixels)")));
    }
    // The parser keeps rectangles inside the window, but a cascade built in code need not be:
    // packed into bytes, one outside would read another window's pixels.
    for (i, f) in cascade.features.iter().enumerate() {
        if !f.rects.iter().all(|r| r.fits(f.tilted, cascade.window)) {
            return Err(unsupported(format!("feature {i} has a rectangle outside the {ww}x{wh} window")));
        }
    }
    for (si, stage) in cascade.stages.iter().enumerate() {
        for tree in &stage.trees {
            if let Some(fault) = tree.fault(cascade.features.len()) {
                return Err(unsupported(format!("stage {si}: {fault}")));
            }
            // WGSL leaves comparisons with NaN to the implementation.
            if let Some(split) = tree.splits.iter().find(|s| !s.threshold.is_finite()) {
                return Err(unsupported(format!("stage {si} has a split threshold of {}", split.threshold)));
            }
        }
    }
    // Feature sums must be exact integers in f32, as OpenCV's are for the shipped cascades.
    for (i, f) in cascade.features.iter().enumerate() {
        let mut bound = 0f64;
        for r in &f.rects {
            if r.weight.fract() != 0.0 {
                return Err(unsupported(format!("feature {i} has a weight {}, not an integer", r.weight)));
            }
            bound += r.weight.abs() as f64 * 255.0 * r.w as f64 * r.h as f64;
        }
        if f.rects.iter().any(|r| r.weight.abs() > 127.0) {
            return Err(unsupported(format!("feature {i} has a weight beyond +-127 (packed as a byte)")));
        }
        if bound >= (1u64 << 24) as f64 || f.rects.len() > 3 {
            return Err(unsupported(format!("feature {i} can sum to {bound}, not exact in f32")));
        }
    }
    // Fixed point for the stage sums: every leaf and threshold an exact integer, every partial
    // sum below 2^53 so that OpenCV's f64 sums are exact too and the order does not matter.
    let thresholds: Vec<f32> = cascade.stages.iter().map(|s| s.threshold - STAGE_THRESHOLD_EPS).collect();
    let leaves = cascade.stages.iter().flat_map(|s| &s.trees).flat_map(|t| &t.leaves);
    let mut frac = 0;
    for (si, stage) in cascade.stages.iter().enumerate() {
        for &v in stage.trees.iter().flat_map(|t| &t.leaves).chain([&thresholds[si]]) {
            frac = frac.max(fraction_bits(v).ok_or_else(|| unsupported(format!("stage {si} holds {v}, which has no fixed-point value")))?);
        }
    }
    let scale = 2f64.powi(frac);
    for (si, stage) in cascade.stages.iter().enumerate() {
        let reach: f64 = stage.trees.iter().map(|t| t.leaves.iter().fold(0f64, |m, &l| m.max(l.abs() as f64))).sum();
        if reach.max(thresholds[si].abs() as f64) * scale >= 2f64.powi(53) {
            return Err(unsupported(format!("stage {si}'s sums need more than 53 bits at 2^-{frac}")));
        }
    }
    let fixed = |v: f32| {
        let i = (v as f64 * scale) as i64;
        [i as u32, (i >> 32) as u32]
    };
    let stages_off = 0u32;
    let trees_off = stages_off + 4 * cascade.stages.len() as u32;
    let tree_count: usize = cascade.stages.iter().map(|s| s.trees.len()).sum();
    let nodes_off = trees_off + 2 * tree_count as u32;
    let node_count: usize = cascade.stages.iter().flat_map(|s| &s.trees).map(|t| t.splits.len()).sum();
    let leaves_off = nodes_off + 4 * node_count as u32;
    let leaf_count = leaves.count();
    let features_off = leaves_off + 2 * leaf_count as u32;
    let (mut stages, mut trees, mut nodes, mut leaf_words) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut node_at, mut leaf_at) = (0u32, 0u32);
    let mut max_depth = 1;
    for (si, stage) in cascade.stages.iter().enumerate() {
        stages.extend([(trees.len() / 2) as u32, stage.trees.len() as u32]);
        stages.extend(fixed(thresholds[si]));
        for tree in &stage.trees {
            trees.extend([node_at, leaf_at]);
            for split in &tree.splits {
                nodes.extend([split.feature, split.threshold.to_bits(), split.left as u32, split.right as u32]);
            }
            leaf_words.extend(tree.leaves.iter().flat_map(|&l| fixed(l)));
            node_at += tree.splits.len() as u32;
            leaf_at += tree.leaves.len() as u32;
            max_depth = max_depth.max(tree.splits.len() as u32);
        }
    }
    let mut features = Vec::new();
    for f in &cascade.features {
        let mut rects = [0u32; 3];
        let mut weights = [0u32; 3];
        for (i, r) in f.rects.iter().enumerate() {
            rects[i] = r.x | r.y << 8 | r.w << 16 | r.h << 24;
            weights[i] = (r.weight as i32) as u32;
        }
        features.extend(rects);
        features.extend(weights);
        features.extend([f.tilted as u32, 0]);
    }
    let words = [stages, trees, nodes, leaf_words, features].concat();
    Ok(Encoded { words, stages_off, trees_off, nodes_off, leaves_off, features_off, max_depth, nodes: node_count as u32 })
}

/// Later stages in groups of doubling length after stage 0: each stage rejects a good share of
/// what reaches it, so the lists shrink fast and short early groups compact them early.
fn stage_groups(stages: usize) -> Vec<(u32, u32)> {
    let mut groups = Vec::new();
    let (mut begin, mut len) = (1, 1);
    while begin < stages {
        let end = (begin + len).min(stages);
        groups.push((begin as u32, end as u32));
        begin = end;
        len *= 2;
    }
    groups
}

/// The largest f32 v with area * v < 0.1 in f64: OpenCV's variance test, `area * vnf < 0.1`,
/// becomes `vnf <= limit`, exactly.
fn vnf_limit(area: f64) -> f32 {
    let next = |v: f32| f32::from_bits(v.to_bits() + 1);
    let prev = |v: f32| f32::from_bits(v.to_bits() - 1);
    let mut v = (0.1 / area) as f32;
    while area * v as f64 >= 0.1 {
        v = prev(v);
    }
    while (area * next(v) as f64) < 0.1 {
        v = next(v);
    }
    v
}

/// The detector for one cascade on one device; reusable across images.
pub struct GpuDetector<'g> {
    gpu: &'g Gpu,
    cascade: Cascade,
    encoded: GpuBuffer<u32>,
    layout: Encoded,
    groups: Vec<(u32, u32)>,
    vnf_limit: f32,
    /// What the last image's scans cost the host (recording and submitting their passes).
    host: std::cell::Cell<HostTiming>,
    /// With profiling on, every pass timed since the last `take_timings`.
    timings: std::cell::RefCell<Option<Vec<PassTiming>>>,
}

/// Buffers for one frame, sized for its largest batch of levels; the batches run one after
/// the other and reuse them.
struct Frame {
    image: GpuBuffer<u32>,
    taps: GpuBuffer<u32>,
    scaled: GpuBuffer<u32>,
    tables: GpuBuffer<u32>,
    scratch: GpuBuffer<u32>,
    codes: GpuBuffer<u32>,
    lists: GpuBuffer<u32>,
    state: GpuBuffer<u32>,
    prepared: GpuBuffer<u32>,
    args: GpuBuffer<u32>,
}

impl<'g> GpuDetector<'g> {
    pub fn new(gpu: &'g Gpu, cascade: &Cascade) -> Result<Self> {
        let layout = encode(cascade)?;
        let encoded = gpu.upload(&layout.words)?;
        let (nw, nh) = (cascade.window.0 - 2, cascade.window.1 - 2);
        Ok(GpuDetector {
            gpu,
            cascade: cascade.clone(),
            encoded,
            groups: stage_groups(cascade.stages.len()),
            vnf_limit: vnf_limit((nw * nh) as f64),
            layout,
            host: Default::default(),
            timings: Default::default(),
        })
    }

    /// Every window the cascade accepts, before grouping, in OpenCV's order.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn raw_windows(&self, img: &GrayImage, p: &DetectParams) -> Result<Vec<Rect>> {
        self.submit(img, p)?.raw_windows()
    }

    /// Queues the detection of `img` without waiting for it: its faces come from
    /// [`FrameInFlight::faces`]. Submitting frame N + 1 before taking frame N's faces keeps the
    /// GPU busy while the host records (a video stream; see [`GpuDetector::detect_stream`]).
    pub fn submit<'d, 'i>(&'d self, img: &'i GrayImage, p: &DetectParams) -> Result<FrameInFlight<'d, 'g, 'i>> {
        let levels = scan_plan(&self.cascade, (img.width(), img.height()), p)?;
        self.host.take();
        // Enough for the found windows of any frame we have seen; a frame with more is
        // scanned again with room for all of them.
        const CAPACITY: usize = 4096;
        let scan = if levels.is_empty() { None } else { Some(self.submit_scan(img, &levels, CAPACITY)?) };
        Ok(FrameInFlight { detector: self, img, params: *p, levels, scan })
    }

    /// OpenCV's `detectMultiScale` on each frame, one frame in flight: frame N + 1 is queued
    /// before frame N's windows are read back. `each` gets each frame's index and faces.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn detect_stream<'i>(&self, frames: impl IntoIterator<Item = &'i GrayImage>, p: &DetectParams, mut each: impl FnMut(usize, Vec<Rect>)) -> Result<()> {
        let mut in_flight: Option<(usize, FrameInFlight)> = None;
        for (i, img) in frames.into_iter().enumerate() {
            let next = self.submit(img, p)?;
            if let Some((j, frame)) = in_flight.replace((i, next)) {
                each(j, frame.faces()?);
            }
        }
        if let Some((j, frame)) = in_flight {
            each(j, frame.faces()?);
        }
        Ok(())
    }

    /// What the last image cost the host: the passes recorded (a handful per pyramid level),
    /// and the time to record and submit them, which a fast GPU waits on.
    pub fn last_host_timing(&self) -> HostTiming {
        self.host.get()
    }

    /// Times every pass with timestamp queries from now on (or no longer).
    pub fn set_profiling(&self, on: bool) {
        *self.timings.borrow_mut() = on.then(Vec::new);
    }

    /// The passes timed since profiling began or the last call, submissions laid end to end;
    /// forgets them.
    pub fn take_timings(&self) -> Vec<PassTiming> {
        self.timings.borrow_mut().as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// OpenCV's `detectMultiScale` on a grey image; refuses parameters that fail
    /// [`DetectParams::validate_for`], as every entry point here does through `submit`.
    pub async fn detect_multi_scale_async(&self, img: &GrayImage, p: &DetectParams) -> Result<Vec<Rect>> {
        self.submit(img, p)?.faces_async().await
    }

    /// [`GpuDetector::detect_multi_scale_async`], waited for.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn detect_multi_scale(&self, img: &GrayImage, p: &DetectParams) -> Result<Vec<Rect>> {
        pollster::block_on(self.detect_multi_scale_async(img, p))
    }

    /// Orders the found (level, x, y) triples as OpenCV lists them and maps them to
    /// rectangles. A level with an ambiguous norm factor is scanned again on the CPU.
    fn windows(&self, img: &GrayImage, levels: &[ScaleScan], mut found: Vec<[u32; 3]>) -> Vec<Rect> {
        const AMBIGUOUS: u32 = 1 << 31;
        let redo: Vec<u32> = found.iter().filter(|f| f[0] & AMBIGUOUS != 0).map(|f| f[0] & !AMBIGUOUS).collect();
        found.retain(|f| f[0] & AMBIGUOUS == 0 && !redo.contains(&f[0]));
        found.sort_by_key(|&[level, x, y]| (level, y, x));
        let mut out = Vec::with_capacity(found.len());
        let mut next = 0;
        for (i, level) in levels.iter().enumerate() {
            if redo.contains(&(i as u32)) {
                log::debug!("level {i}: a norm factor too close to call in f32; scanned on the CPU");
                out.extend(scan_scale(&self.cascade, img, level));
                continue;
            }
            while next < found.len() && found[next][0] == i as u32 {
                out.push(level.rect(found[next][1], found[next][2]));
                next += 1;
            }
        }
        out
    }

    /// Records and submits the scan of every level, with room for `capacity` found triples.
    fn submit_scan(&self, img: &GrayImage, levels: &[ScaleScan], capacity: usize) -> Result<ScanInFlight<'g>> {
        let gpu = self.gpu;
        let tilted = self.cascade.tilted_features();
        let nodes = self.layout.nodes;
        let limit = gpu.binding_limit().min(BATCH_BUFFER_BYTES) / 4;
        let batches = plan_batches(levels, tilted, nodes, limit as usize);
        let largest = |f: fn(&Batch) -> usize| batches.iter().map(f).max().unwrap_or(1).max(1);
        let groups = self.groups.len();
        // State: the found count, each batch's list lengths, then the found windows.
        let found_off = 1 + batches.len() * (groups + 1);
        let mut taps = Vec::new();
        let mut tap_offsets = Vec::new();
        for l in levels {
            tap_offsets.push((taps.len() as u32, (taps.len() + l.size.0 as usize) as u32));
            taps.extend(packed_taps(img.dimensions(), l.size));
        }
        let mut rec = gpu.recorder(self.timings.borrow().is_some());
        // Scratch buffers, so that a stream of frames of one size reuses the last frame's.
        let uploaded = |rec: &mut Recorder, data: &[u32]| -> Result<GpuBuffer<u32>> {
            let buf = rec.scratch(data.len())?;
            gpu.write(&buf, data)?;
            Ok(buf)
        };
        let windows = largest(|b| b.windows);
        let frame = Frame {
            image: uploaded(&mut rec, &pack_bytes(img.as_raw()))?,
            taps: uploaded(&mut rec, &taps)?,
            scaled: rec.scratch(largest(|b| b.scaled_len))?,
            tables: rec.scratch(largest(|b| b.tables_len))?,
            scratch: rec.scratch(largest(|b| b.scratch_len))?,
            codes: rec.scratch(2 * windows)?,
            lists: rec.scratch(6 * windows)?,
            state: rec.scratch(found_off + 3 * capacity)?,
            prepared: rec.scratch(16 * nodes as usize * largest(|b| b.levels.len()))?,
            args: rec.scratch(3 * groups.max(1) * batches.len())?,
        };
        rec.clear(&frame.state);
        let l = &self.layout;
        for (bi, batch) in batches.iter().enumerate() {
            let sizes: Vec<(u32, u32)> = levels[batch.first..][..batch.levels.len()].iter().map(|l| l.size).collect();
            let resize_levels = resize_levels(&sizes, &tap_offsets[batch.first..], &batch.scaled_at);
            let resize_table = uploaded(&mut rec, bytemuck::cast_slice(&resize_levels))?;
            record_resize(&mut rec, &frame.image, img.dimensions(), &frame.taps, &resize_levels, &resize_table, frame.scaled.all().rw())?;
            let tables_at: Vec<usize> = batch.levels.iter().map(|l| l.tables_at as usize).collect();
            let (integral_levels, totals) = integral_levels(&sizes, &batch.scaled_at, &tables_at, tilted);
            let integral_table = uploaded(&mut rec, bytemuck::cast_slice(&integral_levels))?;
            let integral_bindings = [frame.scaled.all(), frame.tables.all().rw(), frame.scratch.all().rw(), integral_table.all()];
            record_integrals(&mut rec, totals, &integral_bindings, tilted)?;
            let level_table = uploaded(&mut rec, bytemuck::cast_slice(&batch.levels))?;
            let mut params = ScanParams {
                levels: batch.levels.len() as u32,
                windows: batch.windows as u32,
                rows: batch.rows as u32,
                groups: groups as u32,
                norm_w: self.cascade.window.0 - 2,
                norm_h: self.cascade.window.1 - 2,
                vnf_limit: self.vnf_limit,
                max_depth: l.max_depth,
                stages_off: l.stages_off,
                trees_off: l.trees_off,
                nodes_off: l.nodes_off,
                leaves_off: l.leaves_off,
                features_off: l.features_off,
                found_off: found_off as u32,
                found_capacity: capacity as u32,
                nodes,
                max_groups_x: gpu.limits.max_compute_workgroups_per_dimension,
                counters: (1 + bi * (groups + 1)) as u32,
                args_at: (3 * groups * bi) as u32,
                ..Default::default()
            };
            let bindings = [frame.tables.all(), self.encoded.all(), frame.codes.all().rw(), frame.lists.all().rw(), frame.state.all().rw(), frame.prepared.all().rw(), level_table.all()];
            let cascade = &shaders::HAAR_CASCADE;
            rec.dispatch_linear("haar nodes", cascade, "prepare_nodes", &params, &bindings, batch.levels.len() * nodes as usize, WORKGROUP)?;
            rec.dispatch_linear("haar stage 0", cascade, "scan_windows", &params, &bindings, batch.windows, WORKGROUP)?;
            rec.dispatch_linear("haar row walk", cascade, "walk_rows", &params, &bindings, batch.rows, WORKGROUP)?;
            let half = 3 * windows as u32;
            for (g, &(begin, end)) in self.groups.iter().enumerate() {
                params.group = g as u32;
                params.stage_begin = begin;
                params.stage_end = end;
                params.last = (g + 1 == groups) as u32;
                params.list_in = half * (g as u32 % 2);
                params.list_out = half * ((g as u32 + 1) % 2);
                let with_args = [bindings[0], bindings[1], bindings[2], bindings[3], bindings[4], bindings[5], bindings[6], frame.args.all().rw()];
                rec.dispatch("haar list size", cascade, "list_args", &params, &with_args, [1, 1, 1])?;
                rec.dispatch_indirect("haar stages", cascade, "scan_list", &params, &bindings, &frame.args, params.args_at as usize + 3 * g)?;
            }
        }
        // Copied out in the same submission: one wait a frame, not two.
        let state = rec.read_back(&frame.state);
        let submitted = rec.submit()?;
        let mut total = self.host.get();
        total += submitted.host();
        self.host.set(total);
        Ok(ScanInFlight { state, submitted, found_off, capacity })
    }

    /// Waits for a scan; returns up to its capacity of found triples and how many there were.
    async fn finish_scan(&self, scan: ScanInFlight<'_>) -> Result<(Vec<[u32; 3]>, usize)> {
        let state = scan.state.wait_async(self.gpu).await?;
        let Finished { passes, .. } = scan.submitted.wait_async().await?;
        if let Some(timings) = self.timings.borrow_mut().as_mut() {
            append_timeline(timings, passes);
        }
        let count = state[0] as usize;
        let found = state[scan.found_off..].chunks_exact(3).take(count.min(scan.capacity)).map(|c| [c[0], c[1], c[2]]).collect();
        Ok((found, count))
    }
}

/// A scan submitted by [`GpuDetector::submit_scan`].
struct ScanInFlight<'g> {
    state: Readback<u32>,
    submitted: Submitted<'g>,
    found_off: usize,
    capacity: usize,
}

/// A frame queued by [`GpuDetector::submit`], its windows still on their way back.
pub struct FrameInFlight<'d, 'g, 'i> {
    detector: &'d GpuDetector<'g>,
    img: &'i GrayImage,
    params: DetectParams,
    levels: Vec<ScaleScan>,
    /// None when no window fits the image.
    scan: Option<ScanInFlight<'g>>,
}

impl FrameInFlight<'_, '_, '_> {
    /// The faces: the windows grouped as `detectMultiScale` groups them.
    pub async fn faces_async(self) -> Result<Vec<Rect>> {
        let (img, params) = (self.img, self.params);
        Ok(cpu::group_and_clip(&self.raw_windows_async().await?, &params, (img.width(), img.height())))
    }

    /// [`FrameInFlight::faces_async`], waited for.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn faces(self) -> Result<Vec<Rect>> {
        pollster::block_on(self.faces_async())
    }

    /// [`FrameInFlight::raw_windows_async`], waited for.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn raw_windows(self) -> Result<Vec<Rect>> {
        pollster::block_on(self.raw_windows_async())
    }

    /// Every window the cascade accepts, before grouping, in OpenCV's order.
    pub async fn raw_windows_async(self) -> Result<Vec<Rect>> {
        let FrameInFlight { detector, img, levels, scan, .. } = self;
        let Some(mut scan) = scan else { return Ok(Vec::new()) };
        loop {
            let capacity = scan.capacity;
            let (found, count) = detector.finish_scan(scan).await?;
            if count <= capacity {
                return Ok(detector.windows(img, &levels, found));
            }
            scan = detector.submit_scan(img, &levels, count.next_power_of_two())?;
        }
    }
}

/// One level's resize taps as resize.wgsl reads them: the x taps, then the y taps, each packed
/// (index << 9) | weight.
fn packed_taps(src: (u32, u32), dst: (u32, u32)) -> Vec<u32> {
    let pack = |(i, w): (usize, u32)| (i as u32) << 9 | w;
    resize_taps(src.0, dst.0).into_iter().chain(resize_taps(src.1, dst.1)).map(pack).collect()
}

/// resize.wgsl's `Level`, field for field.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct ResizeLevel {
    dst_w: u32,
    dst_h: u32,
    x_taps: u32,
    y_taps: u32,
    dst_at: u32,
    pixels_before: u32,
    _pad: [u32; 2],
}

/// The resize table of levels of `sizes`, whose taps start at `taps` (x, y) and whose images
/// go to `dst_at`.
fn resize_levels(sizes: &[(u32, u32)], taps: &[(u32, u32)], dst_at: &[usize]) -> Vec<ResizeLevel> {
    let mut pixels = 0;
    sizes
        .iter()
        .zip(taps)
        .zip(dst_at)
        .map(|((&(w, h), &(x_taps, y_taps)), &at)| {
            let level = ResizeLevel { dst_w: w, dst_h: h, x_taps, y_taps, dst_at: at as u32, pixels_before: pixels, _pad: [0; 2] };
            pixels += w * h;
            level
        })
        .collect()
}

/// Records the resize of every level of `levels` (uploaded as `table`) from `image` into `dst`,
/// one thread per output pixel; `taps` holds each level's x taps then y taps, packed
/// (index << 9) | weight.
fn record_resize(rec: &mut Recorder, image: &GpuBuffer<u32>, src: (u32, u32), taps: &GpuBuffer<u32>, levels: &[ResizeLevel], table: &GpuBuffer<u32>, dst: GpuSlice) -> Result<()> {
    let pixels: u32 = levels.iter().map(|l| l.dst_w * l.dst_h).sum();
    let params = [src.0, src.1, levels.len() as u32, pixels];
    rec.dispatch_linear("resize", &shaders::RESIZE, "resize", &params, &[image.all(), taps.all(), dst, table.all()], pixels as usize, WORKGROUP)
}

/// integral.wgsl's `Level`, field for field.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct IntegralLevel {
    w: u32,
    h: u32,
    img_at: u32,
    tables_at: u32,
    scratch_at: u32,
    rows_before: u32,
    cols_before: u32,
    image_rows_before: u32,
    diagonals_before: u32,
    entries_before: u32,
    _pad: [u32; 2],
}

/// Scratch elements of the tilted integral of a w x h image: row prefix sums, then the two
/// diagonal scans.
fn integral_scratch_len(w: usize, h: usize) -> usize {
    w * h + 2 * (h + 1) * (w + h + 1)
}

/// The integral table of levels of `sizes` (images at `img_at`, tables at `tables_at`), and the
/// batch's totals per pass, as integral.wgsl's `Params`: levels, table rows, table columns
/// (both tables), image rows, diagonals (both scans), table entries.
fn integral_levels(sizes: &[(u32, u32)], img_at: &[usize], tables_at: &[usize], tilted: bool) -> (Vec<IntegralLevel>, [u32; 8]) {
    let mut totals = [sizes.len() as u32, 0, 0, 0, 0, 0, 0, 0];
    let mut scratch = 0;
    let levels = sizes
        .iter()
        .enumerate()
        .map(|(k, &(w, h))| {
            let level = IntegralLevel {
                w,
                h,
                img_at: img_at[k] as u32,
                tables_at: tables_at[k] as u32,
                scratch_at: scratch as u32,
                rows_before: totals[1],
                cols_before: totals[2],
                image_rows_before: totals[3],
                diagonals_before: totals[4],
                entries_before: totals[5],
                _pad: [0; 2],
            };
            totals[1] += h + 1;
            totals[2] += 2 * (w + 1);
            totals[3] += h;
            totals[4] += 2 * (w + h + 1);
            totals[5] += (w + 1) * (h + 1);
            if tilted {
                scratch += integral_scratch_len(w as usize, h as usize);
            }
            level
        })
        .collect();
    (levels, totals)
}

/// Records the integral images of every level of a batch: sum, sqsum and, with `tilted`, the
/// tilted table of each level, (w + 1) * (h + 1) entries apiece. `bindings`: the levels'
/// images, their tables, the scratch, and the level table.
fn record_integrals(rec: &mut Recorder, totals: [u32; 8], bindings: &[GpuSlice; 4], tilted: bool) -> Result<()> {
    let shader = &shaders::INTEGRAL;
    let [_, rows, cols, image_rows, diagonals, entries, ..] = totals.map(|n| n as usize);
    rec.dispatch_linear("integral rows", shader, "upright_rows", &totals, bindings, rows, WORKGROUP)?;
    rec.dispatch_linear("integral columns", shader, "upright_cols", &totals, bindings, cols, WORKGROUP)?;
    if tilted {
        rec.dispatch_linear("tilted rows", shader, "tilted_rows", &totals, bindings, image_rows, WORKGROUP)?;
        rec.dispatch_linear("tilted diagonals", shader, "tilted_diagonals", &totals, bindings, diagonals, WORKGROUP)?;
        rec.dispatch_linear("tilted assemble", shader, "tilted_assemble", &totals, bindings, entries, WORKGROUP)?;
    }
    Ok(())
}

/// The resize kernel on its own: `src` scaled to (width, height), as [`cpu::resize_exact`].
pub async fn resize_gpu(gpu: &Gpu, src: &GrayImage, width: u32, height: u32) -> Result<GrayImage> {
    let (image, taps) = (gpu.upload(&pack_bytes(src.as_raw()))?, gpu.upload(&packed_taps(src.dimensions(), (width, height)))?);
    let dst = gpu.zeros::<u32>((width * height) as usize)?;
    let levels = resize_levels(&[(width, height)], &[(0, width)], &[0]);
    let table = gpu.upload(bytemuck::cast_slice::<_, u32>(&levels))?;
    gpu.run_async(|rec| record_resize(rec, &image, src.dimensions(), &taps, &levels, &table, dst.all().rw())).await?;
    let pixels = gpu.read_async(&dst).await?.into_iter().map(|v| v as u8).collect();
    Ok(GrayImage::from_raw(width, height, pixels).expect("sized buffer"))
}

/// The integral kernels on their own, as [`Integrals::new`].
pub async fn integrals_gpu(gpu: &Gpu, img: &GrayImage, tilted: bool) -> Result<Integrals> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let pixels = gpu.upload(&img.as_raw().iter().map(|&v| v as u32).collect::<Vec<_>>())?;
    let table = (w + 1) * (h + 1);
    let tables = gpu.zeros::<u32>(table * 3)?;
    let scratch = gpu.zeros::<u32>(if tilted { integral_scratch_len(w, h) } else { 1 })?;
    let (levels, totals) = integral_levels(&[img.dimensions()], &[0], &[0], tilted);
    let level_table = gpu.upload(bytemuck::cast_slice::<_, u32>(&levels))?;
    gpu.run_async(|rec| record_integrals(rec, totals, &[pixels.all(), tables.all().rw(), scratch.all().rw(), level_table.all()], tilted)).await?;
    let all: Vec<i32> = gpu.read_async(&tables).await?.into_iter().map(|v| v as i32).collect();
    Ok(Integrals { width: w + 1, sum: all[..table].to_vec(), sqsum: all[table..2 * table].to_vec(), tilted: if tilted { all[2 * table..].to_vec() } else { Vec::new() } })
}

/// The norm-factor routine of haar_cascade.wgsl on its own: for each nf (> 0), OpenCV's
/// f32(1 / sqrt(nf)) and whether the GPU flagged it as too close to call.
pub async fn norm_factors_gpu(gpu: &Gpu, nfs: &[u64]) -> Result<Vec<(f32, bool)>> {
    let words: Vec<u32> = nfs.iter().flat_map(|&v| [v as u32, (v >> 32) as u32]).collect();
    let input = gpu.upload(&words)?;
    let out = gpu.zeros::<u32>(words.len())?;
    let (tables, cascade) = (gpu.zeros::<u32>(1)?, gpu.zeros::<u32>(1)?);
    let params = ScanParams::default();
    gpu.run_async(|rec| rec.dispatch_linear("norm factors", &shaders::HAAR_CASCADE, "norm_probe", &params, &[tables.all(), cascade.all(), out.all().rw(), input.all().rw()], nfs.len(), WORKGROUP))
        .await?;
    Ok(gpu.read_async(&out).await?.chunks_exact(2).map(|c| (f32::from_bits(c[0]), c[1] != 0)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_variance_limit_is_the_largest_float_opencv_accepts() {
        for area in [324.0, 484.0, 1.0, 17.0 * 19.0] {
            let v = vnf_limit(area);
            assert!((area * v as f64) < 0.1);
            assert!(area * f32::from_bits(v.to_bits() + 1) as f64 >= 0.1);
        }
    }

    #[test]
    fn stage_groups_cover_every_stage_after_the_first_once() {
        assert_eq!(stage_groups(25), vec![(1, 2), (2, 4), (4, 8), (8, 16), (16, 25)]);
        assert_eq!(stage_groups(1), vec![]);
        assert_eq!(stage_groups(3), vec![(1, 2), (2, 3)]);
    }

    #[test]
    fn batches_hold_consecutive_levels_within_the_limit() {
        let cascade = crate::detect::Cascade::load(std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/data/cascades/haarcascade_frontalface_default.xml"))).unwrap();
        let levels = scan_plan(&cascade, (320, 240), &DetectParams::default()).unwrap();
        let all = plan_batches(&levels, false, 100, usize::MAX);
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].levels.len(), levels.len());
        // Room for level 0's tables and a little more: several batches.
        let limit = 2 * 321 * 241 + 16 * 100;
        let split = plan_batches(&levels, false, 100, limit);
        assert!(split.len() > 1, "{} batches", split.len());
        let mut next = 0;
        for b in &split {
            assert_eq!(b.first, next);
            next += b.levels.len();
            assert!(b.tables_len <= limit && b.scaled_len <= limit && 6 * b.windows <= limit);
            let mut windows = 0;
            for (k, l) in b.levels.iter().enumerate() {
                assert_eq!(l.scale as usize, b.first + k);
                assert_eq!(l.windows_before as usize, windows);
                windows += (l.grid_w * l.grid_h) as usize;
            }
            assert_eq!(windows, b.windows);
        }
        assert_eq!(next, levels.len());
    }

    /// The encoder's verdict on `cascade`, from another thread, so that a loop fails the test
    /// instead of stalling it.
    fn encode_in_time(cascade: Cascade) -> Result<(), String> {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(encode(&cascade).map(|_| ()).map_err(|e| e.to_string())));
        rx.recv_timeout(std::time::Duration::from_secs(10)).expect("the encoder hung or panicked")
    }

    /// Cascades built in code skip the parser's checks: the encoder must refuse what it cannot
    /// encode exactly, not loop on it (as it did on infinities and NaN) or pack a rectangle
    /// that wrapped into another window's pixels.
    #[test]
    fn the_encoder_refuses_hostile_cascades() {
        use crate::detect::cascade::{Feature, Split, Stage, Tree, WeightedRect};
        let rect = |x, w, weight| WeightedRect { x, y: 0, w, h: 20, weight };
        let good = Cascade {
            window: (20, 20),
            features: vec![Feature { rects: vec![rect(0, 10, -1.0), rect(10, 10, 2.0)], tilted: false }],
            stages: vec![Stage { threshold: 0.5, trees: vec![Tree { splits: vec![Split { feature: 0, threshold: 0.25, left: 0, right: -1 }], leaves: vec![0.75, 1.0] }] }],
        };
        assert_eq!(encode_in_time(good.clone()), Ok(()));
        let mut cases: Vec<(Cascade, &str)> = Vec::new();
        for v in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut c = good.clone();
            c.stages[0].threshold = v;
            cases.push((c, "stage 0 holds"));
            let mut c = good.clone();
            c.stages[0].trees[0].leaves[1] = v;
            cases.push((c, "stage 0 holds"));
            let mut c = good.clone();
            c.stages[0].trees[0].splits[0].threshold = v;
            cases.push((c, "stage 0 has a split threshold of"));
            let mut c = good.clone();
            c.features[0].rects[0].weight = v;
            cases.push((c, "not an integer"));
        }
        let mut c = good.clone();
        c.features[0].rects[1] = rect(u32::MAX, 2, 2.0);
        cases.push((c, "feature 0 has a rectangle outside the 20x20 window"));
        let mut c = good.clone();
        c.stages[0].trees[0].splits[0].feature = 1;
        cases.push((c, "stage 0: split 0 uses feature 1 of 1"));
        let mut c = good.clone();
        c.stages[0].trees[0].splits[0].left = i32::MIN;
        cases.push((c, "stage 0: split 0 points at -2147483648"));
        let mut c = good.clone();
        c.stages[0].trees[0].splits.clear();
        cases.push((c, "stage 0: a tree without splits"));
        for (c, want) in cases {
            let err = encode_in_time(c).unwrap_err();
            assert!(err.contains(want), "{err}\n  should contain: {want}");
        }
    }

    #[test]
    fn fraction_bits_make_values_integers() {
        assert_eq!(fraction_bits(0.5), Some(1));
        assert_eq!(fraction_bits(3.0), Some(0));
        assert_eq!(fraction_bits(-f32::from_bits(0x3f00_0001)), Some(24));
        assert_eq!(fraction_bits(f32::from_bits(1)), Some(149));
        for v in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            assert_eq!(fraction_bits(v), None, "{v}");
        }
    }
}
