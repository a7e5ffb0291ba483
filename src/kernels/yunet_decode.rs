//! FaceDetectorYN's decoding of YuNet's head outputs: every cell of a stride whose score
//! reaches the threshold becomes a record of its box, five landmarks and score, appended to its
//! image's list.
//!
//! Only the lists travel back to the host, not the 16 head channels of every cell (1.2 MB
//! for a 1280x720 frame). On the GPU each cell is a thread that takes its list's next slot by an
//! atomic count, so the records come in any order: each carries its cell's place in
//! FaceDetectorYN's order (strides in turn, cells row-major), by which the host sorts them
//! before NMS, whose ties go to the earlier cell. A list holds at most `capacity` records; its
//! count goes on past that, so the host sees a list that overflowed and decodes that image
//! from its heads instead.

use crate::error::{check_len, Error, Result};
use crate::gpu::{shaders, GpuBuffer, Recorder};

/// f32 values in a record: x, y, w, h of the box, the five landmarks as x, y pairs, the score,
/// and the cell's decoding order (an integer, exact in f32 below 2^24).
pub const RECORD: usize = 16;

/// One stride's heads over a batch of images, each head as channel planes of `cols` x `rows`
/// cells, image after image.
#[derive(Clone, Copy, Debug)]
pub struct DecodeShape {
    pub images: usize,
    pub cols: usize,
    pub rows: usize,
    pub stride: usize,
    /// The decoding order of this stride's first cell: the cells of the strides before it.
    pub first: usize,
    /// Records an image's list holds.
    pub capacity: usize,
    pub threshold: f32,
}

impl DecodeShape {
    /// Refuses decoding orders past 2^24, which f32 records could not hold exactly (an image
    /// of about 800 megapixels).
    pub fn new(images: usize, (cols, rows): (usize, usize), stride: usize, first: usize, capacity: usize, threshold: f32) -> Result<Self> {
        let last = cols.checked_mul(rows).and_then(|cells| cells.checked_add(first));
        if last.is_none_or(|last| last > 1 << 24) || stride == 0 {
            return Err(Error::Invalid(format!("YuNet decoding of {cols}x{rows} cells at stride {stride} after {first} cells: orders past 2^24 (or stride 0)")));
        }
        Ok(DecodeShape { images, cols, rows, stride, first, capacity, threshold })
    }

    pub fn cells(&self) -> usize {
        self.cols * self.rows
    }

    /// Checks the lengths of the class, objectness, box and landmark heads, the counts and
    /// the lists.
    fn check(&self, heads: [usize; 4], counts: usize, records: usize) -> Result<()> {
        let cells = self.images * self.cells();
        for (name, len, channels) in [("class head", heads[0], 1), ("objectness head", heads[1], 1), ("box head", heads[2], 4), ("landmark head", heads[3], 10)] {
            check_len("yunet_decode", name, len, channels * cells)?;
        }
        check_len("yunet_decode", "counts", counts, self.images)?;
        check_len("yunet_decode", "records", records, self.images * self.capacity * RECORD)
    }
}

/// The first `count` records of a list, in decoding order (the GPU's threads fill it in any).
pub fn in_decoding_order(list: &[f32], count: usize) -> Vec<&[f32]> {
    let mut kept: Vec<&[f32]> = list.chunks_exact(RECORD).take(count).collect();
    kept.sort_by(|a, b| a[15].total_cmp(&b[15]));
    kept
}

/// Appends each image's candidates to its list in decoding order, as FaceDetectorYN computes
/// them (`sqrt(cls * obj)` of the clamped scores; `exp` rounded correctly, as glibc's `expf`
/// that OpenCV calls). `counts` must be zero before the first stride.
pub fn forward_cpu(s: DecodeShape, [cls, obj, bbox, kps]: [&[f32]; 4], counts: &mut [u32], records: &mut [f32]) -> Result<()> {
    s.check([cls.len(), obj.len(), bbox.len(), kps.len()], counts.len(), records.len())?;
    let cells = s.cells();
    let stride = s.stride as f32;
    for image in 0..s.images {
        let (bbox, kps) = (&bbox[image * 4 * cells..][..4 * cells], &kps[image * 10 * cells..][..10 * cells]);
        for i in 0..cells {
            let t = image * cells + i;
            let score = (cls[t].clamp(0.0, 1.0) * obj[t].clamp(0.0, 1.0)).sqrt();
            if score < s.threshold {
                continue;
            }
            let slot = counts[image] as usize;
            counts[image] += 1;
            if slot >= s.capacity {
                continue;
            }
            let (c, r) = ((i % s.cols) as f32, (i / s.cols) as f32);
            let (cx, cy) = ((c + bbox[i]) * stride, (r + bbox[cells + i]) * stride);
            let w = (bbox[2 * cells + i] as f64).exp() as f32 * stride;
            let h = (bbox[3 * cells + i] as f64).exp() as f32 * stride;
            let record = &mut records[(image * s.capacity + slot) * RECORD..][..RECORD];
            record[..4].copy_from_slice(&[cx - w / 2.0, cy - h / 2.0, w, h]);
            for n in 0..5 {
                record[4 + 2 * n] = (kps[2 * n * cells + i] + c) * stride;
                record[5 + 2 * n] = (kps[(2 * n + 1) * cells + i] + r) * stride;
            }
            record[14] = score;
            record[15] = (s.first + i) as f32;
        }
    }
    Ok(())
}

/// [`forward_cpu`] on the GPU, in order of nothing but the atomic counts (see the module).
pub fn forward_gpu(rec: &mut Recorder, s: DecodeShape, [cls, obj, bbox, kps]: [&GpuBuffer<f32>; 4], counts: &GpuBuffer<u32>, records: &GpuBuffer<f32>) -> Result<()> {
    s.check([cls.len(), obj.len(), bbox.len(), kps.len()], counts.len(), records.len())?;
    let cells = s.cells();
    let list = s.capacity * RECORD;
    let item_bytes = [cells, cells, 4 * cells, 10 * cells, 1, list].map(|values| 4 * values as u64);
    for r in rec.gpu().plan_chunks("yunet_decode", s.images, &item_bytes, usize::MAX)? {
        let params = [r.len() as u32, cells as u32, s.cols as u32, s.stride as u32, s.first as u32, s.capacity as u32, s.threshold.to_bits(), 0];
        let bindings = [
            cls.slice(r.start * cells..r.end * cells),
            obj.slice(r.start * cells..r.end * cells),
            bbox.slice(4 * r.start * cells..4 * r.end * cells),
            kps.slice(10 * r.start * cells..10 * r.end * cells),
            counts.slice(r.clone()).rw(),
            records.slice(r.start * list..r.end * list).rw(),
        ];
        rec.dispatch_linear("yunet_decode", &shaders::YUNET_DECODE, "decode", &params, &bindings, r.len() * cells, 256)?;
    }
    Ok(())
}
