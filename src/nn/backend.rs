//! The ops a model needs, behind one trait with two implementations: the CPU backend (the
//! kernels' CPU side) and the GPU backend (the WGSL kernels, recorded into one command buffer
//! until something is read back). The model and training loop are written once, against this.

use crate::data::PIXELS;
use crate::error::{shape_err, Result};
use crate::gpu::{append_timeline, Gpu, GpuBuffer, HostTiming, PassTiming, Readback, Recorder, Submitted};
use crate::kernels::adam::{self, AdamConfig};
use crate::kernels::add;
use crate::kernels::batchnorm::{self, BnConfig, BnParams, BnSaved, BnShape};
use crate::kernels::conv2d::{self, Activation, Conv2dShape, Precision};
use crate::kernels::conv2d_grouped::{self, GroupedConvShape, PointDepthShape};
use crate::kernels::dense::{self, DenseShape};
use crate::kernels::dropout::{self, Mask};
use crate::kernels::face_crop::{self, CropMap};
use crate::kernels::maxpool2d::{self, PoolShape};
use crate::kernels::relu;
use crate::kernels::sgd::{self, SgdConfig};
use crate::kernels::sigmoid;
use crate::kernels::softmax_xent::{self, XentOutputs, XentShape};
use crate::kernels::upsample::{self, UpsampleShape};
use crate::kernels::warp::{self, Augment};
use crate::kernels::yunet_decode::{self, DecodeShape};
use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;

/// Batch-norm state handed to the backend: learned scale/shift, running and saved statistics.
pub struct BnTensors<'a, T> {
    pub gamma: &'a T,
    pub beta: &'a T,
    pub running_mean: &'a T,
    pub running_var: &'a T,
    pub mean: &'a T,
    pub invstd: &'a T,
}

/// Outputs of the loss: probabilities `[batch, classes]`, scratch `[batch]`, mean loss `[1]`,
/// correct count `[1]`.
pub struct LossTensors<'a, T, I> {
    pub probs: &'a T,
    pub row_loss: &'a T,
    pub loss: &'a T,
    pub correct: &'a I,
}

/// `Send`, with its storage, so that a model or detector can work on a thread of its own (the
/// video pipeline detects on one thread while it labels on another).
pub trait Backend: Send {
    /// f32 storage.
    type Tensor: Send;
    /// u32 storage (labels, pooling argmax, counts).
    type Ints: Send;

    fn describe(&self) -> String;
    /// A second backend on the same device with its own queue of work and caches: for a second
    /// network (a face detector beside the expression model) that records its passes apart.
    fn another(&self) -> Self
    where
        Self: Sized;
    fn tensor(&self, len: usize) -> Result<Self::Tensor>;
    fn ints(&self, len: usize) -> Result<Self::Ints>;
    fn write(&self, t: &Self::Tensor, data: &[f32]) -> Result<()>;
    fn write_ints(&self, t: &Self::Ints, data: &[u32]) -> Result<()>;
    /// Values asked for by [`Backend::read_later`], on their way until [`Backend::collect`].
    type Pending<T: bytemuck::Pod>;
    /// Asks for `t`'s values as the work queued so far leaves them, without waiting for that
    /// work: the caller can queue more (the next training step, say) before collecting them.
    fn read_later(&self, t: &Self::Tensor) -> Result<Self::Pending<f32>>;
    fn read_ints_later(&self, t: &Self::Ints) -> Result<Self::Pending<u32>>;
    /// The values, once the work queued before they were asked for has run (and only that).
    fn collect_async<T: bytemuck::Pod>(&self, pending: Self::Pending<T>) -> impl Future<Output = Result<Vec<T>>>;
    /// [`Backend::collect_async`], waited for.
    #[cfg(not(target_arch = "wasm32"))]
    fn collect<T: bytemuck::Pod>(&self, pending: Self::Pending<T>) -> Result<Vec<T>> {
        pollster::block_on(self.collect_async(pending))
    }
    /// Reads back, finishing any queued work first.
    fn read_async(&self, t: &Self::Tensor) -> impl Future<Output = Result<Vec<f32>>> {
        async move { self.collect_async(self.read_later(t)?).await }
    }
    fn read_ints_async(&self, t: &Self::Ints) -> impl Future<Output = Result<Vec<u32>>> {
        async move { self.collect_async(self.read_ints_later(t)?).await }
    }
    #[cfg(not(target_arch = "wasm32"))]
    fn read(&self, t: &Self::Tensor) -> Result<Vec<f32>> {
        pollster::block_on(self.read_async(t))
    }
    #[cfg(not(target_arch = "wasm32"))]
    fn read_ints(&self, t: &Self::Ints) -> Result<Vec<u32>> {
        pollster::block_on(self.read_ints_async(t))
    }
    /// Starts the queued work without waiting for it (a no-op on the CPU, where ops run as
    /// they are called).
    fn flush(&self) -> Result<()>;
    /// Whether this backend times its passes (a GPU backend made by `GpuBackend::profiling`).
    fn profiling(&self) -> bool {
        false
    }
    /// The passes timed so far, submissions laid end to end on one time line, and forgets
    /// them; waits for the work submitted so far. None where the backend does not profile.
    fn take_timings_async(&self) -> impl Future<Output = Result<Vec<PassTiming>>> {
        async { Ok(Vec::new()) }
    }
    /// [`Backend::take_timings_async`], waited for.
    #[cfg(not(target_arch = "wasm32"))]
    fn take_timings(&self) -> Result<Vec<PassTiming>> {
        pollster::block_on(self.take_timings_async())
    }

    /// 48x48 byte images (faces, training images) where the backend keeps them: on the GPU a
    /// face cut from a frame stays on the device until the model has read it.
    type Faces;
    /// Images already on the host, `PIXELS` bytes each.
    fn faces_from_bytes(&self, images: &[u8]) -> Result<Self::Faces>;
    /// Cuts a 48x48 byte crop per map from a `width` x `height` grey image (see
    /// [`face_crop`]): the faces the expression model reads. Queued, not waited for.
    fn cut_faces(&self, image: &[u8], size: (usize, usize), maps: &[CropMap]) -> Result<Self::Faces>;
    /// The faces of `parts` one after another, as one set (the faces of several frames for
    /// one batch through the model). Queued, not waited for.
    fn join_faces(&self, parts: &[Self::Faces]) -> Result<Self::Faces>;
    /// Faces `range` of a set, as a set of their own. Queued, not waited for.
    fn faces_range(&self, faces: &Self::Faces, range: std::ops::Range<usize>) -> Result<Self::Faces>;
    /// The faces' bytes, once the work queued before has run.
    fn read_faces_async(&self, faces: &Self::Faces) -> impl Future<Output = Result<Vec<u8>>>;
    /// Warps the faces by their augmentations into `out` as `side` x `side` floats in [0, 1].
    fn warp_faces(&self, faces: &Self::Faces, augments: &[Augment], side: usize, out: &Self::Tensor) -> Result<()>;
    /// [`Backend::warp_faces`] of images on the host.
    fn warp(&self, images: &[u8], augments: &[Augment], side: usize, out: &Self::Tensor) -> Result<()> {
        self.warp_faces(&self.faces_from_bytes(images)?, augments, side, out)
    }
    /// The faces [`Backend::cut_faces`] cuts, as bytes on the host.
    fn face_crops_async(&self, image: &[u8], size: (usize, usize), maps: &[CropMap]) -> impl Future<Output = Result<Vec<u8>>> {
        async move { self.read_faces_async(&self.cut_faces(image, size, maps)?).await }
    }
    /// [`Backend::face_crops_async`], waited for.
    #[cfg(not(target_arch = "wasm32"))]
    fn face_crops(&self, image: &[u8], size: (usize, usize), maps: &[CropMap]) -> Result<Vec<u8>> {
        pollster::block_on(self.face_crops_async(image, size, maps))
    }
    /// `precision` is the CPU's (see [`Precision`]); the GPU multiplies f32 whatever it says.
    fn conv2d_forward(&self, s: Conv2dShape, x: &Self::Tensor, w: &Self::Tensor, b: &Self::Tensor, act: Activation, precision: Precision, y: &Self::Tensor) -> Result<()>;
    fn conv2d_backward_data(&self, s: Conv2dShape, dy: &Self::Tensor, w: &Self::Tensor, dx: &Self::Tensor) -> Result<()>;
    fn conv2d_backward_filter(&self, s: Conv2dShape, x: &Self::Tensor, dy: &Self::Tensor, dw: &Self::Tensor, db: &Self::Tensor) -> Result<()>;
    fn dense_forward(&self, s: DenseShape, x: &Self::Tensor, w: &Self::Tensor, b: &Self::Tensor, y: &Self::Tensor) -> Result<()>;
    fn dense_backward_data(&self, s: DenseShape, dy: &Self::Tensor, w: &Self::Tensor, dx: &Self::Tensor) -> Result<()>;
    fn dense_backward_weights(&self, s: DenseShape, x: &Self::Tensor, dy: &Self::Tensor, dw: &Self::Tensor, db: &Self::Tensor) -> Result<()>;
    fn maxpool_forward(&self, s: PoolShape, x: &Self::Tensor, y: &Self::Tensor, argmax: &Self::Ints) -> Result<()>;
    /// Inference's `pooled = maxpool(relu(conv(x, w) + b))` in one pass, where the backend can
    /// (without writing the convolution's output or the pooling's argmax): whether it did. If
    /// not, the caller convolves, then pools.
    fn conv2d_relu_pool_forward(&self, _: Conv2dShape, _: &Self::Tensor, _: (&Self::Tensor, &Self::Tensor), _: Precision, _: PoolShape, _: &Self::Tensor) -> Result<bool> {
        Ok(false)
    }
    /// With `relu_of` (the pooled output), also through the ReLU before the pooling.
    fn maxpool_backward(&self, s: PoolShape, dy: &Self::Tensor, argmax: &Self::Ints, relu_of: Option<&Self::Tensor>, dx: &Self::Tensor) -> Result<()>;
    fn relu_forward(&self, x: &Self::Tensor, y: &Self::Tensor) -> Result<()>;
    fn relu_backward(&self, x: &Self::Tensor, dy: &Self::Tensor, dx: &Self::Tensor) -> Result<()>;
    /// Inference only (no backward pass): stride, padding on each side, groups.
    fn conv2d_grouped_forward(&self, s: GroupedConvShape, x: &Self::Tensor, w: &Self::Tensor, b: &Self::Tensor, act: Activation, y: &Self::Tensor) -> Result<()>;
    /// `y = act(depthwise(pointwise(x)))`; `precision` is the CPU's (see [`Precision`]).
    fn pointwise_depthwise_forward(
        &self,
        s: PointDepthShape,
        x: &Self::Tensor,
        pointwise: (&Self::Tensor, &Self::Tensor),
        depthwise: (&Self::Tensor, &Self::Tensor),
        precision: Precision,
        y: &Self::Tensor,
    ) -> Result<()>;
    /// Whether networks should run a pointwise convolution and the depthwise one after it as
    /// [`Backend::pointwise_depthwise_forward`]: yes where that keeps the values between the two
    /// in cache (the CPU), no where it runs the same two kernels through a buffer of its own
    /// (the GPU, whose plans then keep the two apart and their buffers shared).
    fn pairs_pointwise_depthwise(&self) -> bool;
    fn upsample_forward(&self, s: UpsampleShape, x: &Self::Tensor, y: &Self::Tensor) -> Result<()>;
    /// `out = act(a + b)`.
    fn add_forward(&self, a: &Self::Tensor, b: &Self::Tensor, act: Activation, out: &Self::Tensor) -> Result<()>;
    fn sigmoid_forward(&self, x: &Self::Tensor, y: &Self::Tensor) -> Result<()>;
    /// FaceDetectorYN's decoding of one stride's class, objectness, box and landmark heads into
    /// each image's list of candidates (see [`yunet_decode`]).
    fn yunet_decode(&self, s: DecodeShape, heads: [&Self::Tensor; 4], counts: &Self::Ints, records: &Self::Tensor) -> Result<()>;
    fn dropout(&self, mask: Mask, src: &Self::Tensor, dst: &Self::Tensor) -> Result<()>;
    /// In inference, `act` may fuse the ReLU that follows the batch norm.
    #[allow(clippy::too_many_arguments)]
    fn batchnorm_forward(&self, s: BnShape, cfg: BnConfig, training: bool, act: Activation, x: &Self::Tensor, bn: BnTensors<'_, Self::Tensor>, y: &Self::Tensor) -> Result<()>;
    fn batchnorm_backward(&self, s: BnShape, x: &Self::Tensor, dy: &Self::Tensor, bn: BnTensors<'_, Self::Tensor>, dx: &Self::Tensor, dgamma: &Self::Tensor, dbeta: &Self::Tensor) -> Result<()>;
    fn xent_forward(&self, s: XentShape, logits: &Self::Tensor, labels: &Self::Ints, soft: &Self::Tensor, class_weight: &Self::Tensor, out: LossTensors<'_, Self::Tensor, Self::Ints>) -> Result<()>;
    fn xent_backward(&self, s: XentShape, probs: &Self::Tensor, labels: &Self::Ints, soft: &Self::Tensor, class_weight: &Self::Tensor, dlogits: &Self::Tensor) -> Result<()>;
    fn adam(&self, cfg: AdamConfig, t: u64, param: &Self::Tensor, grad: &Self::Tensor, m: &Self::Tensor, v: &Self::Tensor) -> Result<()>;
    fn sgd(&self, cfg: SgdConfig, t: u64, param: &Self::Tensor, grad: &Self::Tensor, momentum: &Self::Tensor) -> Result<()>;
}

/// The CPU backend: tensors are vectors behind RefCells, so an op can borrow its inputs and
/// outputs separately (and a mistaken aliasing of the two panics instead of corrupting data).
pub struct Cpu;

/// A CPU tensor. When it holds a convolution's weights, the forms its routes multiply (see
/// [`conv2d::KeptWeights`]) are kept until the weights are next written.
pub struct CpuTensor {
    values: RefCell<Vec<f32>>,
    kept: RefCell<conv2d::KeptWeights>,
}

impl CpuTensor {
    fn new(values: Vec<f32>) -> Self {
        CpuTensor { values: RefCell::new(values), kept: RefCell::default() }
    }
    pub fn borrow(&self) -> std::cell::Ref<'_, Vec<f32>> {
        self.values.borrow()
    }
    /// The values to write: the transform kept of the old ones goes.
    pub fn borrow_mut(&self) -> std::cell::RefMut<'_, Vec<f32>> {
        self.kept.take();
        self.values.borrow_mut()
    }
}

impl Backend for Cpu {
    type Tensor = CpuTensor;
    type Ints = RefCell<Vec<u32>>;

    fn another(&self) -> Self {
        Cpu
    }

    fn describe(&self) -> String {
        format!("CPU backend ({} threads)", rayon::current_num_threads())
    }
    fn tensor(&self, len: usize) -> Result<Self::Tensor> {
        Ok(CpuTensor::new(vec![0.0; len]))
    }
    fn ints(&self, len: usize) -> Result<Self::Ints> {
        Ok(RefCell::new(vec![0; len]))
    }
    fn write(&self, t: &Self::Tensor, data: &[f32]) -> Result<()> {
        t.borrow_mut()[..data.len()].copy_from_slice(data);
        Ok(())
    }
    fn write_ints(&self, t: &Self::Ints, data: &[u32]) -> Result<()> {
        t.borrow_mut()[..data.len()].copy_from_slice(data);
        Ok(())
    }
    type Pending<T: bytemuck::Pod> = Vec<T>;
    fn read_later(&self, t: &Self::Tensor) -> Result<Vec<f32>> {
        Ok(t.borrow().clone())
    }
    fn read_ints_later(&self, t: &Self::Ints) -> Result<Vec<u32>> {
        Ok(t.borrow().clone())
    }
    async fn collect_async<T: bytemuck::Pod>(&self, pending: Vec<T>) -> Result<Vec<T>> {
        Ok(pending)
    }
    fn flush(&self) -> Result<()> {
        Ok(())
    }

    type Faces = Vec<u8>;
    fn faces_from_bytes(&self, images: &[u8]) -> Result<Vec<u8>> {
        Ok(images.to_vec())
    }
    fn cut_faces(&self, image: &[u8], size: (usize, usize), maps: &[CropMap]) -> Result<Vec<u8>> {
        let mut crops = vec![0; maps.len() * PIXELS];
        face_crop::face_crops_cpu(image, size, maps, &mut crops)?;
        Ok(crops)
    }
    fn join_faces(&self, parts: &[Vec<u8>]) -> Result<Vec<u8>> {
        Ok(parts.concat())
    }
    fn faces_range(&self, faces: &Vec<u8>, range: std::ops::Range<usize>) -> Result<Vec<u8>> {
        let bytes = faces.get(range.start * PIXELS..range.end * PIXELS).ok_or_else(|| shape_err("faces", format!("faces {range:?} of {}", faces.len() / PIXELS)))?;
        Ok(bytes.to_vec())
    }
    async fn read_faces_async(&self, faces: &Vec<u8>) -> Result<Vec<u8>> {
        Ok(faces.clone())
    }
    fn warp_faces(&self, faces: &Vec<u8>, augments: &[Augment], side: usize, out: &Self::Tensor) -> Result<()> {
        warp::warp_cpu(faces, augments, side, &mut out.borrow_mut())
    }
    fn warp(&self, images: &[u8], augments: &[Augment], side: usize, out: &Self::Tensor) -> Result<()> {
        // The images as they are, without the copy into `Faces`.
        warp::warp_cpu(images, augments, side, &mut out.borrow_mut())
    }
    fn conv2d_forward(&self, s: Conv2dShape, x: &Self::Tensor, w: &Self::Tensor, b: &Self::Tensor, act: Activation, precision: Precision, y: &Self::Tensor) -> Result<()> {
        conv2d::forward_cpu_keeping(s, &x.borrow(), (&w.borrow(), &mut w.kept.borrow_mut()), Some(&b.borrow()), act, precision, &mut y.borrow_mut())
    }
    fn conv2d_backward_data(&self, s: Conv2dShape, dy: &Self::Tensor, w: &Self::Tensor, dx: &Self::Tensor) -> Result<()> {
        conv2d::backward_data_cpu(s, &dy.borrow(), &w.borrow(), &mut dx.borrow_mut())
    }
    fn conv2d_backward_filter(&self, s: Conv2dShape, x: &Self::Tensor, dy: &Self::Tensor, dw: &Self::Tensor, db: &Self::Tensor) -> Result<()> {
        conv2d::backward_filter_cpu(s, &x.borrow(), &dy.borrow(), &mut dw.borrow_mut(), &mut db.borrow_mut())
    }
    fn dense_forward(&self, s: DenseShape, x: &Self::Tensor, w: &Self::Tensor, b: &Self::Tensor, y: &Self::Tensor) -> Result<()> {
        dense::forward_cpu(s, &x.borrow(), &w.borrow(), &b.borrow(), &mut y.borrow_mut())
    }
    fn dense_backward_data(&self, s: DenseShape, dy: &Self::Tensor, w: &Self::Tensor, dx: &Self::Tensor) -> Result<()> {
        dense::backward_data_cpu(s, &dy.borrow(), &w.borrow(), &mut dx.borrow_mut())
    }
    fn dense_backward_weights(&self, s: DenseShape, x: &Self::Tensor, dy: &Self::Tensor, dw: &Self::Tensor, db: &Self::Tensor) -> Result<()> {
        dense::backward_weights_cpu(s, &x.borrow(), &dy.borrow(), &mut dw.borrow_mut(), &mut db.borrow_mut())
    }
    fn maxpool_forward(&self, s: PoolShape, x: &Self::Tensor, y: &Self::Tensor, argmax: &Self::Ints) -> Result<()> {
        maxpool2d::forward_cpu(s, &x.borrow(), &mut y.borrow_mut(), &mut argmax.borrow_mut())
    }
    fn conv2d_relu_pool_forward(&self, s: Conv2dShape, x: &Self::Tensor, (w, b): (&Self::Tensor, &Self::Tensor), precision: Precision, pool: PoolShape, pooled: &Self::Tensor) -> Result<bool> {
        if pool.size != 2 || !conv2d::pools_in_bf16(&s, precision) {
            return Ok(false);
        }
        conv2d::forward_pooled_cpu(s, &x.borrow(), (&w.borrow(), &mut w.kept.borrow_mut()), &b.borrow(), &mut pooled.borrow_mut())?;
        Ok(true)
    }
    fn maxpool_backward(&self, s: PoolShape, dy: &Self::Tensor, argmax: &Self::Ints, relu_of: Option<&Self::Tensor>, dx: &Self::Tensor) -> Result<()> {
        let y = relu_of.map(|y| y.borrow());
        maxpool2d::backward_cpu(s, &dy.borrow(), &argmax.borrow(), y.as_deref().map(|y| y.as_slice()), &mut dx.borrow_mut())
    }
    fn relu_forward(&self, x: &Self::Tensor, y: &Self::Tensor) -> Result<()> {
        relu::forward_cpu(&x.borrow(), &mut y.borrow_mut())
    }
    fn relu_backward(&self, x: &Self::Tensor, dy: &Self::Tensor, dx: &Self::Tensor) -> Result<()> {
        relu::backward_cpu(&x.borrow(), &dy.borrow(), &mut dx.borrow_mut())
    }
    fn conv2d_grouped_forward(&self, s: GroupedConvShape, x: &Self::Tensor, w: &Self::Tensor, b: &Self::Tensor, act: Activation, y: &Self::Tensor) -> Result<()> {
        conv2d_grouped::forward_cpu(s, &x.borrow(), &w.borrow(), &b.borrow(), act, &mut y.borrow_mut())
    }
    fn pointwise_depthwise_forward(
        &self,
        s: PointDepthShape,
        x: &Self::Tensor,
        (w1, b1): (&Self::Tensor, &Self::Tensor),
        (w2, b2): (&Self::Tensor, &Self::Tensor),
        precision: Precision,
        y: &Self::Tensor,
    ) -> Result<()> {
        conv2d_grouped::pointwise_depthwise_cpu(s, &x.borrow(), (&w1.borrow(), &b1.borrow()), (&w2.borrow(), &b2.borrow()), precision, &mut y.borrow_mut())
    }
    fn pairs_pointwise_depthwise(&self) -> bool {
        true
    }
    fn upsample_forward(&self, s: UpsampleShape, x: &Self::Tensor, y: &Self::Tensor) -> Result<()> {
        upsample::forward_cpu(s, &x.borrow(), &mut y.borrow_mut())
    }
    fn add_forward(&self, a: &Self::Tensor, b: &Self::Tensor, act: Activation, out: &Self::Tensor) -> Result<()> {
        add::forward_cpu(&a.borrow(), &b.borrow(), act, &mut out.borrow_mut())
    }
    fn sigmoid_forward(&self, x: &Self::Tensor, y: &Self::Tensor) -> Result<()> {
        sigmoid::forward_cpu(&x.borrow(), &mut y.borrow_mut())
    }
    fn yunet_decode(&self, s: DecodeShape, [cls, obj, bbox, kps]: [&Self::Tensor; 4], counts: &Self::Ints, records: &Self::Tensor) -> Result<()> {
        yunet_decode::forward_cpu(s, [&cls.borrow(), &obj.borrow(), &bbox.borrow(), &kps.borrow()], &mut counts.borrow_mut(), &mut records.borrow_mut())
    }
    fn dropout(&self, mask: Mask, src: &Self::Tensor, dst: &Self::Tensor) -> Result<()> {
        dropout::apply_cpu(mask, &src.borrow(), &mut dst.borrow_mut())
    }
    fn batchnorm_forward(&self, s: BnShape, cfg: BnConfig, training: bool, act: Activation, x: &Self::Tensor, bn: BnTensors<'_, Self::Tensor>, y: &Self::Tensor) -> Result<()> {
        batchnorm::check_fused(training, act)?;
        if training {
            batchnorm::forward_train_cpu(
                s,
                cfg,
                &x.borrow(),
                &bn.gamma.borrow(),
                &bn.beta.borrow(),
                &mut bn.running_mean.borrow_mut(),
                &mut bn.running_var.borrow_mut(),
                &mut bn.mean.borrow_mut(),
                &mut bn.invstd.borrow_mut(),
                &mut y.borrow_mut(),
            )
        } else {
            let p = BnParams { gamma: &bn.gamma.borrow()[..], beta: &bn.beta.borrow()[..], running_mean: &bn.running_mean.borrow()[..], running_var: &bn.running_var.borrow()[..] };
            batchnorm::forward_infer_cpu(s, cfg, act, &x.borrow(), p, &mut y.borrow_mut())
        }
    }
    fn batchnorm_backward(&self, s: BnShape, x: &Self::Tensor, dy: &Self::Tensor, bn: BnTensors<'_, Self::Tensor>, dx: &Self::Tensor, dgamma: &Self::Tensor, dbeta: &Self::Tensor) -> Result<()> {
        let saved = BnSaved { mean: &bn.mean.borrow()[..], invstd: &bn.invstd.borrow()[..] };
        batchnorm::backward_cpu(s, &x.borrow(), &dy.borrow(), &bn.gamma.borrow(), saved, &mut dx.borrow_mut(), &mut dgamma.borrow_mut(), &mut dbeta.borrow_mut())
    }
    fn xent_forward(&self, s: XentShape, logits: &Self::Tensor, labels: &Self::Ints, soft: &Self::Tensor, class_weight: &Self::Tensor, out: LossTensors<'_, Self::Tensor, Self::Ints>) -> Result<()> {
        let (loss, correct) = softmax_xent::forward_cpu(s, &logits.borrow(), &labels.borrow(), &soft.borrow(), &class_weight.borrow(), &mut out.probs.borrow_mut())?;
        out.loss.borrow_mut()[0] = loss;
        out.correct.borrow_mut()[0] = correct;
        Ok(())
    }
    fn xent_backward(&self, s: XentShape, probs: &Self::Tensor, labels: &Self::Ints, soft: &Self::Tensor, class_weight: &Self::Tensor, dlogits: &Self::Tensor) -> Result<()> {
        softmax_xent::backward_cpu(s, &probs.borrow(), &labels.borrow(), &soft.borrow(), &class_weight.borrow(), &mut dlogits.borrow_mut())
    }
    fn adam(&self, cfg: AdamConfig, t: u64, param: &Self::Tensor, grad: &Self::Tensor, m: &Self::Tensor, v: &Self::Tensor) -> Result<()> {
        adam::step_cpu(cfg, t, &mut param.borrow_mut(), &grad.borrow(), &mut m.borrow_mut(), &mut v.borrow_mut())
    }
    fn sgd(&self, cfg: SgdConfig, t: u64, param: &Self::Tensor, grad: &Self::Tensor, momentum: &Self::Tensor) -> Result<()> {
        sgd::step_cpu(cfg, t, &mut param.borrow_mut(), &grad.borrow(), &mut momentum.borrow_mut())
    }
}

/// The GPU backend: ops are recorded into one command buffer, submitted when something is
/// read back or `flush` is called, so a training step costs one submit.
pub struct GpuBackend<'g> {
    gpu: &'g Gpu,
    recorder: RefCell<Option<Recorder<'g>>>,
    /// Convolution weights packed for conv2d.wgsl, by weight buffer and packed length, kept
    /// while no weight can have changed: inference then skips a packing pass per convolution
    /// (4 of the original model's 23 passes at batch 1). Every `write` and optimizer step marks
    /// them stale, and a stale one is packed again in place before its next use.
    packed: RefCell<HashMap<(wgpu::Buffer, usize), PackedWeights>>,
    /// With profiling on: the passes timed so far.
    profile: Option<RefCell<Profile<'g>>>,
    /// The host's cost of every submission so far, summed.
    host: RefCell<HostTiming>,
}

impl<'g> GpuBackend<'g> {
    pub fn new(gpu: &'g Gpu) -> Self {
        GpuBackend { gpu, recorder: RefCell::new(None), packed: RefCell::default(), profile: None, host: RefCell::default() }
    }

    /// A backend that times every pass with timestamp queries (see [`Backend::take_timings_async`]).
    pub fn profiling(gpu: &'g Gpu) -> Self {
        GpuBackend { profile: Some(RefCell::default()), ..Self::new(gpu) }
    }

    /// What recording and submitting cost the host so far, and forgets it.
    pub fn take_host_timing(&self) -> HostTiming {
        std::mem::take(&mut *self.host.borrow_mut())
    }

    fn record<T>(&self, f: impl FnOnce(&mut Recorder<'g>) -> Result<T>) -> Result<T> {
        let mut slot = self.recorder.borrow_mut();
        f(slot.get_or_insert_with(|| self.gpu.recorder(self.profile.is_some())))
    }

    /// Marks every packed copy of weights stale: a weight may be about to change.
    fn weights_may_change(&self) {
        self.packed.borrow_mut().values_mut().for_each(|p| p.current = false);
    }
}

/// A profiling backend's submissions and what their timestamps said.
#[derive(Default)]
struct Profile<'g> {
    /// Submitted, their timestamps not yet read back.
    unsettled: Vec<Submitted<'g>>,
    /// The passes of the submissions read back, laid end to end.
    timeline: Vec<PassTiming>,
}

/// A packed copy of a convolution's weights (see [`GpuBackend::packed`]).
struct PackedWeights {
    buffer: GpuBuffer<f32>,
    /// Packed from the weights as they are now.
    current: bool,
}

impl Backend for GpuBackend<'_> {
    type Tensor = GpuBuffer<f32>;
    type Ints = GpuBuffer<u32>;

    fn another(&self) -> Self {
        GpuBackend { profile: self.profile.as_ref().map(|_| RefCell::default()), ..GpuBackend::new(self.gpu) }
    }

    fn describe(&self) -> String {
        self.gpu.describe()
    }
    fn tensor(&self, len: usize) -> Result<Self::Tensor> {
        self.gpu.zeros(len)
    }
    fn ints(&self, len: usize) -> Result<Self::Ints> {
        self.gpu.zeros(len)
    }
    fn write(&self, t: &Self::Tensor, data: &[f32]) -> Result<()> {
        self.weights_may_change();
        // Queue writes land before the next submit, so recorded ops that read `t` would see the
        // new data: submit them first. (Submitted work, even still running, sees the old data.)
        self.flush()?;
        self.gpu.write(t, data)
    }
    fn write_ints(&self, t: &Self::Ints, data: &[u32]) -> Result<()> {
        self.flush()?;
        self.gpu.write(t, data)
    }
    type Pending<T: bytemuck::Pod> = Readback<T>;
    fn read_later(&self, t: &Self::Tensor) -> Result<Readback<f32>> {
        self.record(|r| Ok(r.read_back(t)))
    }
    fn read_ints_later(&self, t: &Self::Ints) -> Result<Readback<u32>> {
        self.record(|r| Ok(r.read_back(t)))
    }
    async fn collect_async<T: bytemuck::Pod>(&self, pending: Readback<T>) -> Result<Vec<T>> {
        if !pending.is_submitted() {
            self.flush()?;
        }
        pending.wait_async(self.gpu).await
    }
    fn profiling(&self) -> bool {
        self.profile.is_some()
    }
    async fn take_timings_async(&self) -> Result<Vec<PassTiming>> {
        let Some(profile) = &self.profile else { return Ok(Vec::new()) };
        self.flush()?;
        let unsettled = std::mem::take(&mut profile.borrow_mut().unsettled);
        for submitted in unsettled {
            let passes = submitted.wait_async().await?.passes;
            append_timeline(&mut profile.borrow_mut().timeline, passes);
        }
        Ok(std::mem::take(&mut profile.borrow_mut().timeline))
    }
    fn flush(&self) -> Result<()> {
        let Some(rec) = self.recorder.borrow_mut().take() else { return Ok(()) };
        let submitted = rec.submit()?;
        *self.host.borrow_mut() += submitted.host();
        if let Some(profile) = &self.profile {
            // Its pass timings come from timestamps read back once the work has run.
            profile.borrow_mut().unsettled.push(submitted);
        }
        Ok(())
    }

    /// Four bytes a word, as the warp and face_crop kernels read and write them.
    type Faces = GpuBuffer<u32>;
    fn faces_from_bytes(&self, images: &[u8]) -> Result<GpuBuffer<u32>> {
        // A fresh buffer initialised at creation: work recorded after it sees its data without
        // waiting for earlier queued work.
        self.gpu.upload(&crate::gpu::pack_bytes(images))
    }
    fn cut_faces(&self, image: &[u8], size: (usize, usize), maps: &[CropMap]) -> Result<GpuBuffer<u32>> {
        let crops = self.gpu.zeros(maps.len() * PIXELS / 4)?;
        if !maps.is_empty() {
            let pixels = self.gpu.upload(&crate::gpu::pack_bytes(image))?;
            let maps_buffer = self.gpu.upload(maps)?;
            self.record(|r| face_crop::face_crops_gpu(r, size, &pixels, &maps_buffer, &crops))?;
        }
        Ok(crops)
    }
    fn join_faces(&self, parts: &[GpuBuffer<u32>]) -> Result<GpuBuffer<u32>> {
        let joined = self.gpu.zeros(parts.iter().map(GpuBuffer::len).sum())?;
        self.record(|r| {
            let mut at = 0;
            for part in parts {
                r.copy_at(part, &joined, at);
                at += part.len();
            }
            Ok(())
        })?;
        Ok(joined)
    }
    fn faces_range(&self, faces: &GpuBuffer<u32>, range: std::ops::Range<usize>) -> Result<GpuBuffer<u32>> {
        let words = PIXELS / 4;
        if range.start > range.end || range.end * words > faces.len() {
            return Err(shape_err("faces", format!("faces {range:?} of {}", faces.len() / words)));
        }
        let part = self.gpu.zeros(range.len() * words)?;
        self.record(|r| {
            r.copy_from(faces, range.start * words, &part);
            Ok(())
        })?;
        Ok(part)
    }
    async fn read_faces_async(&self, faces: &GpuBuffer<u32>) -> Result<Vec<u8>> {
        Ok(bytemuck::cast_slice(&self.read_ints_async(faces).await?).to_vec())
    }
    fn warp_faces(&self, faces: &GpuBuffer<u32>, augments: &[Augment], side: usize, out: &Self::Tensor) -> Result<()> {
        let augments = self.gpu.upload(augments)?;
        self.record(|r| warp::warp_gpu(r, side, faces, &augments, out))
    }
    fn conv2d_forward(&self, s: Conv2dShape, x: &Self::Tensor, w: &Self::Tensor, b: &Self::Tensor, act: Activation, _: Precision, y: &Self::Tensor) -> Result<()> {
        let key = (w.buffer.clone(), conv2d::packed_len(self.gpu, &s));
        let mut packed = self.packed.borrow_mut();
        let entry = match packed.entry(key) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let buffer = self.gpu.zeros(e.key().1)?;
                e.insert(PackedWeights { buffer, current: false })
            }
        };
        let current = entry.current;
        self.record(|r| {
            if !current {
                conv2d::pack_forward_weights_gpu(r, s, w, &entry.buffer)?;
            }
            conv2d::forward_packed_gpu(r, s, x, &entry.buffer, b, act, y)
        })?;
        entry.current = true;
        Ok(())
    }
    fn conv2d_backward_data(&self, s: Conv2dShape, dy: &Self::Tensor, w: &Self::Tensor, dx: &Self::Tensor) -> Result<()> {
        self.record(|r| conv2d::backward_data_gpu(r, s, dy, w, dx))
    }
    fn conv2d_backward_filter(&self, s: Conv2dShape, x: &Self::Tensor, dy: &Self::Tensor, dw: &Self::Tensor, db: &Self::Tensor) -> Result<()> {
        self.record(|r| conv2d::backward_filter_gpu(r, s, x, dy, dw, db))
    }
    fn dense_forward(&self, s: DenseShape, x: &Self::Tensor, w: &Self::Tensor, b: &Self::Tensor, y: &Self::Tensor) -> Result<()> {
        self.record(|r| dense::forward_gpu(r, s, x, w, b, y))
    }
    fn dense_backward_data(&self, s: DenseShape, dy: &Self::Tensor, w: &Self::Tensor, dx: &Self::Tensor) -> Result<()> {
        self.record(|r| dense::backward_data_gpu(r, s, dy, w, dx))
    }
    fn dense_backward_weights(&self, s: DenseShape, x: &Self::Tensor, dy: &Self::Tensor, dw: &Self::Tensor, db: &Self::Tensor) -> Result<()> {
        self.record(|r| dense::backward_weights_gpu(r, s, x, dy, dw, db))
    }
    fn maxpool_forward(&self, s: PoolShape, x: &Self::Tensor, y: &Self::Tensor, argmax: &Self::Ints) -> Result<()> {
        self.record(|r| maxpool2d::forward_gpu(r, s, x, y, argmax))
    }
    fn maxpool_backward(&self, s: PoolShape, dy: &Self::Tensor, argmax: &Self::Ints, relu_of: Option<&Self::Tensor>, dx: &Self::Tensor) -> Result<()> {
        self.record(|r| maxpool2d::backward_gpu(r, s, dy, argmax, relu_of, dx))
    }
    fn relu_forward(&self, x: &Self::Tensor, y: &Self::Tensor) -> Result<()> {
        self.record(|r| relu::forward_gpu(r, x, y))
    }
    fn relu_backward(&self, x: &Self::Tensor, dy: &Self::Tensor, dx: &Self::Tensor) -> Result<()> {
        self.record(|r| relu::backward_gpu(r, x, dy, dx))
    }
    fn conv2d_grouped_forward(&self, s: GroupedConvShape, x: &Self::Tensor, w: &Self::Tensor, b: &Self::Tensor, act: Activation, y: &Self::Tensor) -> Result<()> {
        self.record(|r| conv2d_grouped::forward_gpu(r, s, x, w, b, act, y))
    }
    fn pointwise_depthwise_forward(
        &self,
        s: PointDepthShape,
        x: &Self::Tensor,
        pointwise: (&Self::Tensor, &Self::Tensor),
        depthwise: (&Self::Tensor, &Self::Tensor),
        _: Precision,
        y: &Self::Tensor,
    ) -> Result<()> {
        let mid = self.gpu.zeros(s.pointwise.output_len())?;
        self.record(|r| conv2d_grouped::pointwise_depthwise_gpu(r, s, x, pointwise, depthwise, &mid, y))
    }
    fn pairs_pointwise_depthwise(&self) -> bool {
        false
    }
    fn upsample_forward(&self, s: UpsampleShape, x: &Self::Tensor, y: &Self::Tensor) -> Result<()> {
        self.record(|r| upsample::forward_gpu(r, s, x, y))
    }
    fn add_forward(&self, a: &Self::Tensor, b: &Self::Tensor, act: Activation, out: &Self::Tensor) -> Result<()> {
        self.record(|r| add::forward_gpu(r, a, b, act, out))
    }
    fn sigmoid_forward(&self, x: &Self::Tensor, y: &Self::Tensor) -> Result<()> {
        self.record(|r| sigmoid::forward_gpu(r, x, y))
    }
    fn yunet_decode(&self, s: DecodeShape, heads: [&Self::Tensor; 4], counts: &Self::Ints, records: &Self::Tensor) -> Result<()> {
        self.record(|r| yunet_decode::forward_gpu(r, s, heads, counts, records))
    }
    fn dropout(&self, mask: Mask, src: &Self::Tensor, dst: &Self::Tensor) -> Result<()> {
        self.record(|r| dropout::apply_gpu(r, mask, src, dst))
    }
    fn batchnorm_forward(&self, s: BnShape, cfg: BnConfig, training: bool, act: Activation, x: &Self::Tensor, bn: BnTensors<'_, Self::Tensor>, y: &Self::Tensor) -> Result<()> {
        let p = BnParams { gamma: bn.gamma, beta: bn.beta, running_mean: bn.running_mean, running_var: bn.running_var };
        self.record(|r| batchnorm::forward_gpu(r, s, cfg, training, act, x, p, BnSaved { mean: bn.mean, invstd: bn.invstd }, y))
    }
    fn batchnorm_backward(&self, s: BnShape, x: &Self::Tensor, dy: &Self::Tensor, bn: BnTensors<'_, Self::Tensor>, dx: &Self::Tensor, dgamma: &Self::Tensor, dbeta: &Self::Tensor) -> Result<()> {
        self.record(|r| batchnorm::backward_gpu(r, s, x, dy, bn.gamma, BnSaved { mean: bn.mean, invstd: bn.invstd }, dx, dgamma, dbeta))
    }
    fn xent_forward(&self, s: XentShape, logits: &Self::Tensor, labels: &Self::Ints, soft: &Self::Tensor, class_weight: &Self::Tensor, out: LossTensors<'_, Self::Tensor, Self::Ints>) -> Result<()> {
        let out = XentOutputs { probs: out.probs, row_loss: out.row_loss, loss: out.loss, correct: out.correct };
        self.record(|r| softmax_xent::forward_gpu(r, s, logits, labels, soft, class_weight, out))
    }
    fn xent_backward(&self, s: XentShape, probs: &Self::Tensor, labels: &Self::Ints, soft: &Self::Tensor, class_weight: &Self::Tensor, dlogits: &Self::Tensor) -> Result<()> {
        self.record(|r| softmax_xent::backward_gpu(r, s, probs, labels, soft, class_weight, dlogits))
    }
    fn adam(&self, cfg: AdamConfig, t: u64, param: &Self::Tensor, grad: &Self::Tensor, m: &Self::Tensor, v: &Self::Tensor) -> Result<()> {
        self.weights_may_change();
        self.record(|r| adam::step_gpu(r, cfg, t, param, grad, m, v))
    }
    fn sgd(&self, cfg: SgdConfig, t: u64, param: &Self::Tensor, grad: &Self::Tensor, momentum: &Self::Tensor) -> Result<()> {
        self.weights_may_change();
        self.record(|r| sgd::step_gpu(r, cfg, t, param, grad, momentum))
    }
}
