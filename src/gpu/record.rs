//! Recording kernel dispatches into one command buffer, so a whole training step is one submit.

use super::buffer::GpuSlice;
use super::shaders::Shader;
use super::Gpu;
use crate::error::{Error, Result};
use std::marker::PhantomData;
use std::sync::{Arc, OnceLock};
use web_time::Instant;

/// Time one pass took on the GPU, from timestamp queries (or wall time of the whole submit
/// when the adapter has no timestamps).
#[derive(Clone, Debug)]
pub struct PassTiming {
    pub label: &'static str,
    /// When the pass began, from the first pass of its submission.
    pub start_ns: f64,
    pub nanos: f64,
}

const QUERIES_PER_SET: u32 = 512;

/// Bytes of one uniform buffer holding the params of a recorder's passes, each at an offset
/// aligned to the device's uniform offset alignment (256 bytes on most), written with one queue
/// write at submit. A buffer created and filled per pass cost most of a pass's recording time.
pub(super) const PARAMS_CHUNK: u64 = 64 << 10;

/// What one submission cost the host, the launch overhead a fast GPU waits on.
#[derive(Clone, Copy, Debug, Default)]
pub struct HostTiming {
    /// Passes recorded.
    pub passes: usize,
    /// Recording them: a params uniform, a bind group and a compute pass each.
    pub record_ns: f64,
    /// Finishing the command buffer (wgpu encodes the driver's commands here) and submitting it.
    pub submit_ns: f64,
}

impl std::ops::AddAssign for HostTiming {
    fn add_assign(&mut self, other: HostTiming) {
        self.passes += other.passes;
        self.record_ns += other.record_ns;
        self.submit_ns += other.submit_ns;
    }
}

/// Appends one submission's passes to a time line of earlier ones, laid end to end (each
/// submission's timestamps start from its own first pass).
pub fn append_timeline(timeline: &mut Vec<PassTiming>, passes: Vec<PassTiming>) {
    let offset = timeline.last().map_or(0.0, |t| t.start_ns + t.nanos);
    timeline.extend(passes.into_iter().map(|t| PassTiming { start_ns: t.start_ns + offset, ..t }));
}

/// A submission's results: each pass's GPU time when profiling, and the host's cost.
pub struct Finished {
    pub passes: Vec<PassTiming>,
    pub host: HostTiming,
}

pub struct Recorder<'g> {
    gpu: &'g Gpu,
    encoder: wgpu::CommandEncoder,
    profile: bool,
    query_sets: Vec<wgpu::QuerySet>,
    labels: Vec<&'static str>,
    /// Scratch buffers handed out here, back to the pool once the work has run.
    scratch: Vec<wgpu::Buffer>,
    /// Params uniform buffers with the bytes to write into each at submit.
    params: Vec<(wgpu::Buffer, Vec<u8>)>,
    /// Where to note the submission of each read recorded here.
    readbacks: Vec<Arc<OnceLock<wgpu::SubmissionIndex>>>,
    host: HostTiming,
}

/// A buffer's contents on their way back to the host. [`Recorder::read_back`] records the copy
/// in the command buffer; [`Readback::wait`] returns the values once the submission holding it
/// has run, without waiting for work submitted after it. So a training loop can submit step
/// N + 1 before it reads step N's loss, and the GPU does not idle while the host records.
pub struct Readback<T: bytemuck::Pod> {
    staging: wgpu::Buffer,
    len: usize,
    /// Set when the recorder holding the copy is submitted.
    submission: Arc<OnceLock<wgpu::SubmissionIndex>>,
    _t: PhantomData<T>,
}

impl<T: bytemuck::Pod> Readback<T> {
    /// Whether the copy has been submitted (else [`Readback::wait`] fails).
    pub fn is_submitted(&self) -> bool {
        self.submission.get().is_some()
    }

    /// [`Readback::wait_async`], waited for.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn wait(self, gpu: &Gpu) -> Result<Vec<T>> {
        pollster::block_on(self.wait_async(gpu))
    }

    pub async fn wait_async(self, gpu: &Gpu) -> Result<Vec<T>> {
        let err = |detail: String| Error::Gpu { op: "read".into(), detail };
        let index = self.submission.get().ok_or_else(|| err("waited on a read whose commands were never submitted".into()))?;
        if self.len == 0 {
            return Ok(Vec::new());
        }
        let slice = self.staging.slice(..);
        let (tx, mapped) = super::oneshot::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| tx.send(r));
        gpu.wait_for(Some(index.clone())).await?;
        mapped.await.ok_or_else(|| err("wgpu dropped the mapping request".into()))?.map_err(|e| err(e.to_string()))?;
        let view = slice.get_mapped_range().map_err(|e| err(e.to_string()))?;
        let out = bytemuck::cast_slice(&view[..]).to_vec();
        drop(view);
        self.staging.unmap();
        Ok(out)
    }
}

/// A submitted recorder, until [`Submitted::wait`] collects its results.
pub struct Submitted<'g> {
    gpu: &'g Gpu,
    index: wgpu::SubmissionIndex,
    host: HostTiming,
    /// When profiling: the resolved timestamps, and each pass's label.
    timestamps: Option<(Vec<super::GpuBuffer<u64>>, Vec<&'static str>)>,
    submitted_at: Instant,
}

impl<'g> Recorder<'g> {
    pub(super) fn new(gpu: &'g Gpu, profile: bool) -> Self {
        Recorder {
            gpu,
            encoder: gpu.device.create_command_encoder(&Default::default()),
            profile,
            query_sets: Vec::new(),
            labels: Vec::new(),
            scratch: Vec::new(),
            params: Vec::new(),
            readbacks: Vec::new(),
            host: HostTiming::default(),
        }
    }

    /// Copies `buf` out at this point of the command buffer, for [`Readback::wait`] once this
    /// recorder is submitted.
    pub fn read_back<T: bytemuck::Pod>(&mut self, buf: &super::GpuBuffer<T>) -> Readback<T> {
        let bytes = (buf.len() * std::mem::size_of::<T>()) as u64;
        let staging = self.gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size: bytes.max(4),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        if bytes > 0 {
            self.encoder.copy_buffer_to_buffer(&buf.buffer, 0, &staging, 0, bytes);
        }
        let submission = Arc::new(OnceLock::new());
        self.readbacks.push(submission.clone());
        Readback { staging, len: buf.len(), submission, _t: PhantomData }
    }

    pub fn gpu(&self) -> &'g Gpu {
        self.gpu
    }

    /// A buffer of `len` elements for intermediate results of the passes recorded here (packed
    /// weights, padded inputs, partial sums). Its contents start unspecified: a kernel that
    /// uses one writes every element that is read later. It comes from a pool the [`Gpu`]
    /// keeps and goes back there once this recorder's work has run, so a training step reuses
    /// the last step's buffers instead of allocating them: about 90 MB per step of the seed
    /// model at batch 64, each new buffer costing a driver allocation and a zero fill.
    pub fn scratch<T: bytemuck::Pod>(&mut self, len: usize) -> Result<super::GpuBuffer<T>> {
        let buf = self.gpu.take_scratch(len)?;
        self.scratch.push(buf.buffer.clone());
        Ok(buf)
    }

    /// Records one dispatch of `entry` in `shader`. Binding 0 is `params` as a uniform; the
    /// slices are bindings 1, 2, ... Sizes are checked here so that an oversized binding is an
    /// error naming the op rather than a panic inside wgpu.
    pub fn dispatch<P: bytemuck::Pod>(&mut self, label: &'static str, shader: &Shader, entry: &'static str, params: &P, bindings: &[GpuSlice<'_>], groups: [u32; 3]) -> Result<()> {
        let max = self.gpu.limits.max_compute_workgroups_per_dimension;
        if groups.iter().any(|&g| g > max) {
            return Err(Error::TooLarge {
                op: label,
                what: format!("a dispatch of {groups:?} workgroups"),
                bytes: groups.iter().copied().max().unwrap_or(0) as u64,
                limit: max as u64,
                limit_name: "max_compute_workgroups_per_dimension",
            });
        }
        if groups.contains(&0) {
            return Ok(());
        }
        self.pass(label, shader, entry, params, bindings, |pass| pass.dispatch_workgroups(groups[0], groups[1], groups[2]))
    }

    /// Records a dispatch whose workgroup counts a previous kernel wrote into `args` at
    /// element `index` (three u32: x, y, z), for work whose size only the GPU knows, such as
    /// the length of a compacted list.
    pub fn dispatch_indirect<P: bytemuck::Pod>(
        &mut self,
        label: &'static str,
        shader: &Shader,
        entry: &'static str,
        params: &P,
        bindings: &[GpuSlice<'_>],
        args: &super::GpuBuffer<u32>,
        index: usize,
    ) -> Result<()> {
        if index + 3 > args.len() {
            return Err(crate::error::shape_err(label, format!("indirect arguments at {index} of a buffer of {}", args.len())));
        }
        self.pass(label, shader, entry, params, bindings, |pass| pass.dispatch_workgroups_indirect(&args.buffer, index as u64 * 4))
    }

    /// One compute pass: checks the bindings, binds them after the params uniform, and lets
    /// `dispatch` issue the work.
    fn pass<P: bytemuck::Pod>(
        &mut self,
        label: &'static str,
        shader: &Shader,
        entry: &'static str,
        params: &P,
        bindings: &[GpuSlice<'_>],
        dispatch: impl FnOnce(&mut wgpu::ComputePass<'_>),
    ) -> Result<()> {
        let start = Instant::now();
        let gpu = self.gpu;
        let align = gpu.limits.min_storage_buffer_offset_alignment as u64;
        for (i, b) in bindings.iter().enumerate() {
            if b.size > gpu.binding_limit() {
                return Err(Error::TooLarge { op: label, what: format!("binding {}", i + 1), bytes: b.size, limit: gpu.binding_limit(), limit_name: "max_storage_buffer_binding_size" });
            }
            if b.offset % align != 0 {
                return Err(Error::Gpu { op: label.into(), detail: format!("binding {} starts at unaligned offset {}", i + 1, b.offset) });
            }
        }
        let writable: Vec<bool> = bindings.iter().map(|b| b.writable).collect();
        let pipeline = gpu.pipeline(shader, entry, &writable)?;
        let (chunk, offset) = self.params_slot(bytemuck::bytes_of(params));
        let params_binding = wgpu::BufferBinding { buffer: &self.params[chunk].0, offset, size: wgpu::BufferSize::new(std::mem::size_of::<P>() as u64) };
        let mut entries = vec![wgpu::BindGroupEntry { binding: 0, resource: wgpu::BindingResource::Buffer(params_binding) }];
        entries.extend(bindings.iter().enumerate().map(|(i, b)| wgpu::BindGroupEntry {
            binding: i as u32 + 1,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding { buffer: b.buffer, offset: b.offset, size: wgpu::BufferSize::new(b.size) }),
        }));
        let bind_group = gpu.device.create_bind_group(&wgpu::BindGroupDescriptor { label: Some(label), layout: &pipeline.layout, entries: &entries });
        let slot = self.next_timestamp_slot(label);
        let timestamp_writes =
            slot.map(|(set, local)| wgpu::ComputePassTimestampWrites { query_set: &self.query_sets[set], beginning_of_pass_write_index: Some(local), end_of_pass_write_index: Some(local + 1) });
        let mut pass = self.encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some(label), timestamp_writes });
        pass.set_pipeline(&pipeline.pipeline);
        pass.set_bind_group(0, &bind_group, &[]);
        dispatch(&mut pass);
        drop(pass);
        self.host.passes += 1;
        self.host.record_ns += start.elapsed().as_secs_f64() * 1e9;
        Ok(())
    }

    /// Places a pass's params in the current params buffer (a new one when it is full):
    /// (which buffer, byte offset).
    fn params_slot(&mut self, bytes: &[u8]) -> (usize, u64) {
        let align = self.gpu.limits.min_uniform_buffer_offset_alignment as usize;
        let len = bytes.len().next_multiple_of(align);
        if self.params.last().is_none_or(|(_, staged)| staged.len() + len > PARAMS_CHUNK as usize) {
            self.params.push((self.gpu.take_params_chunk(), Vec::with_capacity(PARAMS_CHUNK as usize)));
        }
        let (_, staged) = self.params.last_mut().expect("a params buffer");
        let offset = staged.len() as u64;
        staged.extend_from_slice(bytes);
        staged.resize(offset as usize + len, 0);
        (self.params.len() - 1, offset)
    }

    /// Dispatches enough workgroups of `workgroup_size` threads to cover `threads`, folded into
    /// a 2-D grid when one dimension would exceed the device limit. Shaders recover the linear
    /// index with `linear_id` (see shaders/common notes in each file).
    pub fn dispatch_linear<P: bytemuck::Pod>(
        &mut self,
        label: &'static str,
        shader: &Shader,
        entry: &'static str,
        params: &P,
        bindings: &[GpuSlice<'_>],
        threads: usize,
        workgroup_size: u32,
    ) -> Result<()> {
        let groups = threads.div_ceil(workgroup_size as usize) as u64;
        let max = self.gpu.limits.max_compute_workgroups_per_dimension as u64;
        let x = groups.min(max);
        let y = if x == 0 { 0 } else { groups.div_ceil(x) };
        self.dispatch(label, shader, entry, params, bindings, [x as u32, y as u32, 1])
    }

    /// Copies `src` into `dst` (same element count) inside this command buffer.
    pub fn copy<T: bytemuck::Pod>(&mut self, src: &super::GpuBuffer<T>, dst: &super::GpuBuffer<T>) {
        self.copy_at(src, dst, 0);
    }

    /// Copies `src` into `dst` from element `at` on, as much as fits, inside this command
    /// buffer. Elements of four bytes or more keep the copy's offsets aligned as wgpu requires.
    pub fn copy_at<T: bytemuck::Pod>(&mut self, src: &super::GpuBuffer<T>, dst: &super::GpuBuffer<T>, at: usize) {
        let size = std::mem::size_of::<T>();
        let bytes = (src.len().min(dst.len().saturating_sub(at)) * size) as u64;
        if bytes > 0 {
            self.encoder.copy_buffer_to_buffer(&src.buffer, 0, &dst.buffer, (at * size) as u64, bytes);
        }
    }

    /// Copies `dst.len()` elements of `src` from element `from` on into `dst`, inside this
    /// command buffer (offsets aligned as for [`Recorder::copy_at`]).
    pub fn copy_from<T: bytemuck::Pod>(&mut self, src: &super::GpuBuffer<T>, from: usize, dst: &super::GpuBuffer<T>) {
        let size = std::mem::size_of::<T>();
        let bytes = (dst.len().min(src.len().saturating_sub(from)) * size) as u64;
        if bytes > 0 {
            self.encoder.copy_buffer_to_buffer(&src.buffer, (from * size) as u64, &dst.buffer, 0, bytes);
        }
    }

    /// Zeroes a buffer inside this command buffer.
    pub fn clear<T: bytemuck::Pod>(&mut self, buf: &super::GpuBuffer<T>) {
        self.encoder.clear_buffer(&buf.buffer, 0, None);
    }

    /// Reserves a begin/end timestamp pair for the next pass: (query set, first index).
    fn next_timestamp_slot(&mut self, label: &'static str) -> Option<(usize, u32)> {
        if !(self.profile && self.gpu.timestamps) {
            return None;
        }
        let index = self.labels.len() as u32 * 2;
        self.labels.push(label);
        if index.is_multiple_of(QUERIES_PER_SET) {
            self.query_sets.push(self.gpu.device.create_query_set(&wgpu::QuerySetDescriptor { label: Some("pass timestamps"), ty: wgpu::QueryType::Timestamp, count: QUERIES_PER_SET }));
        }
        Some((self.query_sets.len() - 1, index % QUERIES_PER_SET))
    }

    /// Submits everything recorded and waits for it. With profiling on, the passes are each
    /// pass's GPU time (or one wall-clock entry when the adapter has no timestamp queries).
    pub async fn finish_async(self) -> Result<Finished> {
        self.submit()?.wait_async().await
    }

    /// [`Recorder::finish_async`], waited for.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn finish(self) -> Result<Finished> {
        pollster::block_on(self.finish_async())
    }

    /// Submits everything recorded without waiting for it to run. The scratch and params
    /// buffers go back to their pools at once: work that takes them next is submitted later,
    /// and a queue runs its submissions in order.
    pub fn submit(self) -> Result<Submitted<'g>> {
        let Recorder { gpu, mut encoder, profile, query_sets, labels, scratch, params, readbacks, mut host } = self;
        let mut resolved = Vec::new();
        for set in &query_sets {
            let bytes = QUERIES_PER_SET as u64 * 8;
            let resolve = gpu.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("timestamps"),
                size: bytes,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            });
            encoder.resolve_query_set(set, 0..QUERIES_PER_SET, &resolve, 0);
            let readback = gpu.zeros::<u64>(QUERIES_PER_SET as usize)?;
            encoder.copy_buffer_to_buffer(&resolve, 0, &readback.buffer, 0, bytes);
            resolved.push(readback);
        }
        let submitted_at = Instant::now();
        for (buffer, staged) in &params {
            gpu.queue.write_buffer(buffer, 0, staged);
        }
        let index = gpu.queue.submit([encoder.finish()]);
        host.submit_ns = submitted_at.elapsed().as_secs_f64() * 1e9;
        for r in readbacks {
            // Each was created by this recorder, so none is set yet.
            let _ = r.set(index.clone());
        }
        gpu.return_scratch(scratch);
        gpu.return_params_chunks(params.into_iter().map(|(buffer, _)| buffer).collect());
        Ok(Submitted { gpu, index, host, timestamps: profile.then_some((resolved, labels)), submitted_at })
    }
}

impl Submitted<'_> {
    /// What recording and submitting cost the host.
    pub fn host(&self) -> HostTiming {
        self.host
    }

    /// [`Submitted::wait_async`], waited for.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn wait(self) -> Result<Finished> {
        pollster::block_on(self.wait_async())
    }

    /// Waits for this submission (and those before it) to run.
    pub async fn wait_async(self) -> Result<Finished> {
        let Submitted { gpu, index, host, timestamps, submitted_at } = self;
        gpu.wait_for(Some(index)).await?;
        let Some((resolved, labels)) = timestamps else {
            return Ok(Finished { passes: Vec::new(), host });
        };
        if resolved.is_empty() {
            let wall = submitted_at.elapsed().as_secs_f64() * 1e9;
            return Ok(Finished { passes: vec![PassTiming { label: "all passes (wall clock)", start_ns: 0.0, nanos: wall }], host });
        }
        let period = gpu.queue.get_timestamp_period() as f64;
        let mut ticks = Vec::new();
        for readback in &resolved {
            ticks.extend(gpu.read_async(readback).await?);
        }
        let passes = labels
            .iter()
            .enumerate()
            .map(|(i, &label)| PassTiming { label, start_ns: ticks[2 * i].saturating_sub(ticks[0]) as f64 * period, nanos: ticks[2 * i + 1].saturating_sub(ticks[2 * i]) as f64 * period })
            .collect();
        Ok(Finished { passes, host })
    }
}
