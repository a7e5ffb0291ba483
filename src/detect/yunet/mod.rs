//! YuNet-n, the small CNN face detector behind OpenCV's `cv::FaceDetectorYN`, on the crate's
//! kernels: boxes, five landmarks and a score for each face.
//!
//! The network is data: `data/yunet/yunet_n.json` declares its nodes and `yunet_n.safetensors`
//! holds their weights (batch norm already folded into the convolutions; `data/yunet/README.md`
//! tells where both came from). [`YuNetModel`] reads and checks the two before anything is
//! allocated; [`YuNet`] runs it on a backend node by node, decodes the 12 head outputs there
//! into each image's list of candidates exactly as FaceDetectorYN does (the `yunet_decode`
//! kernel; its steps are in the README and in `tools/yunet_reference.py`), reads the lists back
//! and suppresses overlapping faces on the host.

mod decode;
mod model;
mod plan;

pub use model::{HeadKind, InputSpec, NodeSpec, OpSpec, OutputSpec, YuNetConfig, YuNetModel, SHIPPED_DIR};
pub use plan::MAX_ACTIVATION_BYTES;

use crate::error::{quote_prefix, Error, Result};
use crate::kernels::conv2d::Precision;
use crate::kernels::yunet_decode::RECORD;
use crate::nn::{Backend, Cpu};
use decode::suppress;
use image::RgbImage;
use plan::Plan;
use serde::Serialize;
use std::sync::Arc;

/// How many characters of a name from the architecture file an error quotes.
const QUOTE_CHARS: usize = 60;

/// FaceDetectorYN's settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct YuNetParams {
    /// Cells scoring below it are not candidates; NMS keeps only those strictly above it.
    pub score_threshold: f32,
    /// A candidate overlapping a kept face by more than this (intersection over union of the
    /// integer-truncated boxes) is dropped.
    pub nms_threshold: f32,
    /// At most this many candidates, the best, go into NMS (0: all).
    pub top_k: usize,
}

impl Default for YuNetParams {
    /// OpenCV's sample's values.
    fn default() -> Self {
        YuNetParams { score_threshold: 0.9, nms_threshold: 0.3, top_k: 5000 }
    }
}

impl YuNetParams {
    /// `mien detect`'s defaults: the score threshold of 0.5 was chosen by measuring recall and
    /// precision (README, tools/detector_thresholds.py).
    pub const DETECT: YuNetParams = YuNetParams { score_threshold: 0.5, nms_threshold: 0.3, top_k: 5000 };

    pub fn validate(&self) -> Result<()> {
        if !self.score_threshold.is_finite() || !self.nms_threshold.is_finite() {
            return Err(Error::Invalid(format!("YuNet thresholds must be finite numbers, got score {} and NMS {}", self.score_threshold, self.nms_threshold)));
        }
        Ok(())
    }
}

/// A face as FaceDetectorYN reports it, in the image's pixels (neither clipped to the image
/// nor to its padding).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct FaceBox {
    /// Top-left corner.
    pub x: f32,
    pub y: f32,
    pub w: f32,
    pub h: f32,
    /// Right eye, left eye, nose tip, right and left mouth corners (the person's right: the
    /// image's left on a frontal face), as `[x, y]`.
    pub landmarks: [[f32; 2]; 5],
    pub score: f32,
}

impl FaceBox {
    /// The box and landmarks of the same face in an image `scale` times as large.
    pub fn scaled(&self, scale: f32) -> FaceBox {
        FaceBox { x: self.x * scale, y: self.y * scale, w: self.w * scale, h: self.h * scale, landmarks: self.landmarks.map(|[x, y]| [x * scale, y * scale]), score: self.score }
    }
}

/// Writes `images` into `blob`, one after another, each as [`fill_blob`] does.
fn fill_blobs(images: &[&RgbImage], (pw, ph): (usize, usize), blob: &mut [f32]) {
    for (image, blob) in images.iter().zip(blob.chunks_exact_mut(3 * pw * ph)) {
        fill_blob(image, (pw, ph), blob);
    }
}

/// Writes `image` into `blob` as B, G, R planes of the padded size, leaving the rest (the
/// padding) as it is.
fn fill_blob(image: &RgbImage, (pw, ph): (usize, usize), blob: &mut [f32]) {
    let (b, rest) = blob.split_at_mut(pw * ph);
    let (g, r) = rest.split_at_mut(pw * ph);
    for (y, row) in image.as_raw().chunks_exact(3 * image.width() as usize).enumerate() {
        let at = y * pw;
        for (x, px) in row.chunks_exact(3).enumerate() {
            (r[at + x], g[at + x], b[at + x]) = (px[0] as f32, px[1] as f32, px[2] as f32);
        }
    }
}

/// YuNet on one backend, with the buffers of the last input size it ran at.
///
/// On a device whose buffers cannot hold an image's activations (`Error::TooLarge`), that
/// image runs on the CPU backend instead, with a warning in [`YuNet::take_warnings`]: the
/// results are the same to float rounding, and later images of that size go straight there.
pub struct YuNet<B: Backend> {
    backend: B,
    model: Arc<YuNetModel>,
    /// Each convolution's weight and bias on the backend.
    weights: Vec<(B::Tensor, B::Tensor)>,
    plan: Option<Plan<B>>,
    /// The padded size the device refused, and why.
    refused: Option<((usize, usize), String)>,
    /// A padded size and batch too large to run at once, which runs one image at a time.
    apart: Option<((usize, usize), usize)>,
    cpu: Option<Box<YuNet<Cpu>>>,
    warnings: Vec<String>,
    /// What the CPU backend's pointwise products multiply.
    precision: Precision,
}

impl<B: Backend> YuNet<B> {
    /// YuNet on `backend`, with `model`'s weights uploaded to it (the model is shared with
    /// the CPU fallback, and can be with other detectors).
    pub fn new(backend: B, model: Arc<YuNetModel>) -> Result<Self> {
        let upload = |data: &[f32]| -> Result<B::Tensor> {
            let t = backend.tensor(data.len())?;
            backend.write(&t, data)?;
            Ok(t)
        };
        let weights = model.convs.iter().map(|c| Ok((upload(&c.weight)?, upload(&c.bias)?))).collect::<Result<_>>()?;
        Ok(YuNet { backend, model, weights, plan: None, refused: None, apart: None, cpu: None, warnings: Vec::new(), precision: Precision::F32 })
    }

    /// The shipped YuNet-n (see [`YuNetModel::shipped`]).
    pub fn shipped(backend: B) -> Result<Self> {
        Self::new(backend, Arc::new(YuNetModel::shipped()?))
    }

    pub fn model(&self) -> &Arc<YuNetModel> {
        &self.model
    }

    /// Sets what the CPU backend's pointwise products multiply in (see [`Precision`]); scores
    /// and boxes move by a little.
    pub fn set_precision(&mut self, precision: Precision) {
        self.precision = precision;
        if let Some(cpu) = &mut self.cpu {
            cpu.precision = precision;
        }
    }

    /// The backend the network runs on (for its pass timings when it profiles).
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The warnings of the calls since the last time they were taken.
    pub fn take_warnings(&mut self) -> Vec<String> {
        std::mem::take(&mut self.warnings)
    }

    /// The faces in `image`, best first, as `cv::FaceDetectorYN::detect` finds them with
    /// `params`. An empty image has none; one the device cannot hold runs on the CPU (see
    /// [`YuNet`]).
    pub async fn detect_async(&mut self, image: &RgbImage, params: &YuNetParams) -> Result<Vec<FaceBox>> {
        let mut found = self.detect_batch_async(&[image], params).await?;
        Ok(found.pop().expect("one list for one image"))
    }

    /// The faces in each of `images`, all of one size (a video's frames), as
    /// [`YuNet::detect_async`] finds them in each alone. The images go through the network
    /// together: on a GPU, one submission and one wait for them all, and dispatches large enough
    /// to keep the device busy. Images too many to hold at once (on the device, or within
    /// [`MAX_ACTIVATION_BYTES`]) run one at a time instead.
    pub async fn detect_batch_async(&mut self, images: &[&RgbImage], params: &YuNetParams) -> Result<Vec<Vec<FaceBox>>> {
        params.validate()?;
        let Some(size) = images.first().map(|i| i.dimensions()) else { return Ok(Vec::new()) };
        if let Some(other) = images.iter().find(|i| i.dimensions() != size) {
            return Err(Error::Invalid(format!("YuNet runs only images of one size together, not {}x{} with {}x{}", size.0, size.1, other.width(), other.height())));
        }
        if size.0 == 0 || size.1 == 0 {
            return Ok(vec![Vec::new(); images.len()]);
        }
        let padded = self.model.padded_size(size.0 as usize, size.1 as usize);
        if images.len() > 1 && self.apart != Some((padded, images.len())) {
            match self.faces(padded, images.len(), |blob| fill_blobs(images, padded, blob), params).await {
                Ok(found) => return Ok(found),
                // Refused by the device or the activation bound: each image alone may fit (and
                // says why if it does not either).
                Err(Error::TooLarge { .. } | Error::OverBound(_)) => {
                    self.plan = None;
                    self.apart = Some((padded, images.len()));
                }
                Err(e) => return Err(e),
            }
        }
        let mut found = Vec::with_capacity(images.len());
        for image in images {
            found.push(self.faces_alone(image, padded, params).await?);
        }
        Ok(found)
    }

    /// [`YuNet::detect_async`], waited for.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn detect(&mut self, image: &RgbImage, params: &YuNetParams) -> Result<Vec<FaceBox>> {
        pollster::block_on(self.detect_async(image, params))
    }

    /// The faces in `image`, found here or, when the device refuses the size, on the CPU.
    async fn faces_alone(&mut self, image: &RgbImage, padded: (usize, usize), params: &YuNetParams) -> Result<Vec<FaceBox>> {
        let fill = |blob: &mut [f32]| fill_blob(image, padded, blob);
        let reason = match &self.refused {
            Some((size, reason)) if *size == padded => reason.clone(),
            _ => match self.faces(padded, 1, fill, params).await.map(|mut found| found.pop().expect("one list for one image")) {
                // YuNet's first convolution binds its largest tensors, so the device refuses a
                // size before anything of the frame is recorded.
                Err(e @ Error::TooLarge { .. }) => {
                    // The failed frame's buffers are no use to the next frame either.
                    self.plan = None;
                    self.refused = Some((padded, e.to_string()));
                    e.to_string()
                }
                found => return found,
            },
        };
        self.warnings.push(format!("{reason}; running YuNet on the CPU"));
        let cpu = match &mut self.cpu {
            Some(cpu) => cpu,
            empty => empty.insert(Box::new(YuNet { precision: self.precision, ..YuNet::new(Cpu, self.model.clone())? })),
        };
        Ok(cpu.faces(padded, 1, fill, params).await?.pop().expect("one list for one image"))
    }

    /// Runs the network on the `batch` images `fill` writes into the staging blob, decodes its
    /// heads on the backend and suppresses overlaps: each image's faces. An image with more
    /// candidates than its list holds is decoded on the host from its heads.
    async fn faces(&mut self, padded: (usize, usize), batch: usize, fill: impl FnOnce(&mut [f32]), params: &YuNetParams) -> Result<Vec<Vec<FaceBox>>> {
        self.run(padded, batch, fill, |_, _, _| Ok(()))?;
        let plan = self.plan.as_ref().expect("planned by run");
        let backend = &self.backend;
        plan.decode(backend, &self.model, params.score_threshold)?;
        let (counts, records) = (backend.read_ints_later(&plan.counts)?, backend.read_later(&plan.records)?);
        let (counts, records) = (backend.collect_async(counts).await?, backend.collect_async(records).await?);
        let list = records.len() / batch;
        let mut heads = None;
        let mut found = Vec::with_capacity(batch);
        for (image, &count) in counts.iter().enumerate() {
            let candidates = if count as usize <= list / RECORD {
                decode::candidates(&records[image * list..][..list], count as usize)
            } else {
                let heads = match &mut heads {
                    Some(heads) => heads,
                    none => none.insert(plan.read_heads(backend, &self.model).await?),
                };
                let own: Vec<&[f32]> = heads.iter().map(|h| &h[image * (h.len() / batch)..][..h.len() / batch]).collect();
                decode::decode(&self.model.levels, &own, padded, params.score_threshold)?
            };
            found.push(suppress(&candidates, params));
        }
        Ok(found)
    }

    /// The values of the nodes named `names` for the network input `blob` (B, G, R planes of
    /// `padded` = (width, height), each a multiple of the size divisor), each laid out as the
    /// ONNX graph's tensor of that name (`[cells, channels]` after a `to_rows`), for comparing
    /// any node with another implementation. A convolution fused with the node after it (a
    /// ReLU, or a depthwise convolution after a pointwise one) has no value of its own.
    pub async fn node_outputs_async(&mut self, blob: &[f32], padded: (usize, usize), names: &[&str]) -> Result<Vec<Vec<f32>>> {
        let (pw, ph) = padded;
        let divisor = self.model.divisor;
        if pw == 0 || ph == 0 || !pw.is_multiple_of(divisor) || !ph.is_multiple_of(divisor) || blob.len() != 3 * pw * ph {
            return Err(Error::Invalid(format!("a YuNet input of {pw}x{ph} (positive multiples of {divisor}) holds 3 planes of that size, not {} values", blob.len())));
        }
        let nodes = names.iter().map(|name| self.model.node(name)).collect::<Result<Vec<_>>>()?;
        let values = self.forward(padded, 1, |staging| staging.copy_from_slice(blob), &nodes).await?;
        Ok(nodes
            .iter()
            .zip(values)
            .map(|(&n, planes)| {
                let node = &self.model.nodes[n];
                if !node.rows {
                    return planes;
                }
                let cells = planes.len() / node.channels;
                (0..cells * node.channels).map(|i| planes[(i % node.channels) * cells + i / node.channels]).collect()
            })
            .collect())
    }

    /// [`YuNet::node_outputs_async`], waited for.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn node_outputs(&mut self, blob: &[f32], padded: (usize, usize), names: &[&str]) -> Result<Vec<Vec<f32>>> {
        pollster::block_on(self.node_outputs_async(blob, padded, names))
    }

    /// Runs the network on the `batch` images `fill` writes into the staging blob and reads the
    /// values of `nodes`, as channel planes, image after image.
    async fn forward(&mut self, padded: (usize, usize), batch: usize, fill: impl FnOnce(&mut [f32]), nodes: &[usize]) -> Result<Vec<Vec<f32>>> {
        let plan = Self::planned(&mut self.plan, &self.backend, &self.model, padded, batch)?;
        let mut wanted = Vec::with_capacity(nodes.len());
        for &n in nodes {
            let name = quote_prefix(&self.model.nodes[n].name, QUOTE_CHARS);
            let value =
                plan.layout.values[n].ok_or_else(|| Error::Invalid(format!("YuNet node {name} runs inside the node after it (a ReLU or a depthwise convolution); its own output is not kept")))?;
            wanted.push(value);
        }
        // A value is read as soon as its step has run: a later step may overwrite its tensor.
        let mut pending: Vec<Option<B::Pending<f32>>> = nodes.iter().map(|_| None).collect();
        self.run(padded, batch, fill, |plan, backend, done| {
            for (slot, &(tensor, after)) in pending.iter_mut().zip(&wanted) {
                if after == done {
                    *slot = Some(backend.read_later(&plan.tensors[tensor])?);
                }
            }
            Ok(())
        })?;
        let mut values = Vec::with_capacity(pending.len());
        for p in pending {
            values.push(self.backend.collect_async(p.expect("every value is ready after some step")).await?);
        }
        Ok(values)
    }

    /// The plan in `slot` for `batch` images of the `padded` size, made anew when it was for
    /// another.
    fn planned<'a>(slot: &'a mut Option<Plan<B>>, backend: &B, model: &YuNetModel, padded: (usize, usize), batch: usize) -> Result<&'a mut Plan<B>> {
        if slot.as_ref().is_none_or(|p| (p.layout.padded, p.layout.batch) != (padded, batch)) {
            // The old buffers go first: a new size must not hold both.
            *slot = None;
            *slot = Some(Plan::new(backend, model, padded, batch)?);
        }
        Ok(slot.as_mut().expect("planned above"))
    }

    /// Queues every step of the network on the `batch` images `fill` writes into the staging
    /// blob, calling `after(plan, backend, steps run)` once the input is written and after each
    /// step; the plan's heads then hold their values.
    fn run(&mut self, padded: (usize, usize), batch: usize, fill: impl FnOnce(&mut [f32]), mut after: impl FnMut(&Plan<B>, &B, usize) -> Result<()>) -> Result<()> {
        let plan = Self::planned(&mut self.plan, &self.backend, &self.model, padded, batch)?;
        fill(&mut plan.staging);
        self.backend.write(&plan.tensors[0], &plan.staging)?;
        after(plan, &self.backend, 0)?;
        for (k, step) in plan.layout.steps.iter().enumerate() {
            plan.run(&self.backend, &self.weights, step, self.precision)?;
            after(plan, &self.backend, k + 1)?;
        }
        Ok(())
    }
}
