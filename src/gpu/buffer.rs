//! Typed storage buffers and sub-range views of them.

use super::Gpu;
use crate::error::{Error, Result};
use bytemuck::Pod;
use std::marker::PhantomData;
use std::ops::Range;
use wgpu::util::DeviceExt;

/// A storage buffer holding `len` elements of `T`.
pub struct GpuBuffer<T: Pod> {
    pub(crate) buffer: wgpu::Buffer,
    len: usize,
    _t: PhantomData<T>,
}

/// A contiguous range of a buffer's elements, for binding part of it. `writable` says whether
/// the kernel declares it `read_write` (the bind-group layout is built from it).
#[derive(Clone, Copy)]
pub struct GpuSlice<'a> {
    pub(crate) buffer: &'a wgpu::Buffer,
    /// Offset and size in bytes.
    pub(crate) offset: u64,
    pub(crate) size: u64,
    pub(crate) writable: bool,
}

impl GpuSlice<'_> {
    /// The four-byte values the range holds.
    pub fn elements(&self) -> usize {
        (self.size / 4) as usize
    }

    /// The same range, bound as `read_write`.
    pub fn rw(self) -> Self {
        GpuSlice { writable: true, ..self }
    }
}

/// The most the scratch pool keeps (see [`Gpu::return_scratch`]).
const SCRATCH_POOL_BYTES: u64 = 1 << 30;

// INDIRECT so that a kernel can write the workgroup counts of a later dispatch.
const STORAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE.union(wgpu::BufferUsages::INDIRECT).union(wgpu::BufferUsages::COPY_SRC).union(wgpu::BufferUsages::COPY_DST);

/// Bytes packed four to a little-endian u32, the way kernels read 8-bit images.
pub fn pack_bytes(bytes: &[u8]) -> Vec<u32> {
    bytes.chunks(4).map(|c| c.iter().rev().fold(0u32, |acc, &b| acc << 8 | b as u32)).collect()
}

impl<T: Pod> GpuBuffer<T> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn slice(&self, range: Range<usize>) -> GpuSlice<'_> {
        assert!(range.start <= range.end && range.end <= self.len, "slice out of range");
        let elem = std::mem::size_of::<T>() as u64;
        GpuSlice { buffer: &self.buffer, offset: range.start as u64 * elem, size: (range.len() as u64 * elem).max(elem), writable: false }
    }

    pub fn all(&self) -> GpuSlice<'_> {
        GpuSlice { buffer: &self.buffer, offset: 0, size: self.buffer.size(), writable: false }
    }
}

impl Gpu {
    fn check_size(&self, op: &'static str, bytes: u64) -> Result<()> {
        if bytes > self.limits.max_buffer_size {
            return Err(Error::TooLarge { op, what: "a buffer".into(), bytes, limit: self.limits.max_buffer_size, limit_name: "max_buffer_size" });
        }
        Ok(())
    }

    /// A buffer with `data` in it. Empty data still gets one element, since wgpu cannot bind
    /// a zero-sized buffer.
    pub fn upload<T: Pod>(&self, data: &[T]) -> Result<GpuBuffer<T>> {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        self.check_size("upload", bytes.len() as u64)?;
        let buffer = self.scoped("upload", || {
            if data.is_empty() {
                self.device.create_buffer(&wgpu::BufferDescriptor { label: None, size: std::mem::size_of::<T>().max(4) as u64, usage: STORAGE, mapped_at_creation: false })
            } else {
                self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor { label: None, contents: bytes, usage: STORAGE })
            }
        })?;
        Ok(GpuBuffer { buffer, len: data.len(), _t: PhantomData })
    }

    /// A zero-filled buffer of `len` elements.
    pub fn zeros<T: Pod>(&self, len: usize) -> Result<GpuBuffer<T>> {
        let bytes = (len.max(1) * std::mem::size_of::<T>()) as u64;
        self.check_size("zeros", bytes)?;
        let buffer = self.scoped("zeros", || self.device.create_buffer(&wgpu::BufferDescriptor { label: None, size: bytes.next_multiple_of(4), usage: STORAGE, mapped_at_creation: false }))?;
        Ok(GpuBuffer { buffer, len, _t: PhantomData })
    }

    /// A buffer of `len` elements from the scratch pool when one of the same size is free
    /// there (its contents left over from earlier work), else a new one.
    pub(super) fn take_scratch<T: Pod>(&self, len: usize) -> Result<GpuBuffer<T>> {
        let size = ((len.max(1) * std::mem::size_of::<T>()) as u64).next_multiple_of(4);
        let mut pool = self.scratch_pool.lock().expect("scratch pool poisoned");
        match pool.iter().position(|b| b.size() == size).and_then(|i| pool.remove(i)) {
            Some(buffer) => Ok(GpuBuffer { buffer, len, _t: PhantomData }),
            None => {
                drop(pool);
                let buf = self.zeros::<T>(len)?;
                // Debug builds (the tests) start scratch as all-ones bits, NaN as f32: a kernel
                // that reads an element it did not write then fails loudly instead of finding
                // zeros in a new buffer and stale values in a reused one.
                if cfg!(debug_assertions) {
                    self.queue.write_buffer(&buf.buffer, 0, &vec![0xff; size as usize]);
                }
                Ok(buf)
            }
        }
    }

    /// Puts scratch buffers whose work has finished back in the pool, and frees the oldest
    /// ones past [`SCRATCH_POOL_BYTES`] (several batch sizes' worth of the original model's).
    pub(super) fn return_scratch(&self, buffers: Vec<wgpu::Buffer>) {
        let mut pool = self.scratch_pool.lock().expect("scratch pool poisoned");
        pool.extend(buffers);
        let mut total: u64 = pool.iter().map(|b| b.size()).sum();
        while total > SCRATCH_POOL_BYTES {
            let Some(oldest) = pool.pop_front() else { break };
            total -= oldest.size();
        }
    }

    /// Overwrites the start of `buf` with `data`.
    pub fn write<T: Pod>(&self, buf: &GpuBuffer<T>, data: &[T]) -> Result<()> {
        if data.len() > buf.len {
            return Err(crate::error::shape_err("write", format!("{} elements into a buffer of {}", data.len(), buf.len)));
        }
        self.queue.write_buffer(&buf.buffer, 0, bytemuck::cast_slice(data));
        Ok(())
    }

    /// Copies the buffer back to the host, waiting for all work queued before.
    pub async fn read_async<T: Pod>(&self, buf: &GpuBuffer<T>) -> Result<Vec<T>> {
        let mut rec = self.recorder(false);
        let readback = rec.read_back(buf);
        rec.submit()?;
        readback.wait_async(self).await
    }

    /// [`Gpu::read_async`], waited for.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read<T: Pod>(&self, buf: &GpuBuffer<T>) -> Result<Vec<T>> {
        pollster::block_on(self.read_async(buf))
    }

    /// Splits `items` (images of a batch, elements of a vector...) into chunks whose bindings
    /// each fit the device's storage-binding limit and start at an offset the device can bind.
    /// `item_bytes` lists, for each binding that is split, the bytes one item occupies in it.
    pub fn plan_chunks(&self, op: &'static str, items: usize, item_bytes: &[u64], max_items: usize) -> Result<Vec<Range<usize>>> {
        let align = self.limits.min_storage_buffer_offset_alignment as u64;
        let widest = item_bytes.iter().copied().max().unwrap_or(4).max(1);
        // Every chunk starts at a multiple of `step` items, so each split binding starts aligned.
        let step = item_bytes.iter().fold(1u64, |acc, &b| lcm(acc, align / gcd(b.max(1), align)));
        let fit = self.binding_limit / widest;
        let per_chunk = (fit.min(max_items as u64) / step) * step;
        if per_chunk == 0 {
            return Err(Error::TooLarge {
                op,
                what: format!("one chunk of {step} item(s) at {widest} bytes each"),
                bytes: step * widest,
                limit: self.binding_limit,
                limit_name: "max_storage_buffer_binding_size",
            });
        }
        let per_chunk = per_chunk as usize;
        Ok((0..items.max(1)).step_by(per_chunk).map(|s| s..(s + per_chunk).min(items)).collect())
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

fn lcm(a: u64, b: u64) -> u64 {
    a / gcd(a, b) * b
}
