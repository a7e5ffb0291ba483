//! A sequential model built from a [`ModelConfig`], running on any [`Backend`]: forward,
//! backward, the fused softmax cross-entropy loss and the optimizers (Adam, SGD).

use super::backend::{Backend, BnTensors, LossTensors};
use super::config::{LayerSpec, ModelConfig, PaddingSpec};
use crate::augment::Tta;
use crate::data::PIXELS;
use crate::error::{check_len, shape_err, Error, Result};
use crate::kernels::adam::AdamConfig;
use crate::kernels::batchnorm::{BnConfig, BnShape};
use crate::kernels::conv2d::{Activation, Conv2dShape, Padding, Precision};
use crate::kernels::dense::DenseShape;
use crate::kernels::dropout::Mask;
use crate::kernels::maxpool2d::PoolShape;
use crate::kernels::sgd::SgdConfig;
use crate::kernels::softmax_xent::XentShape;
use crate::kernels::warp::{self, Augment};
use crate::rng::Rng;

/// What kind of tensor a named model tensor is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TensorKind {
    /// Learned by the optimizer.
    Trainable,
    /// Statistics kept by the model (batch-norm running mean and variance).
    Buffer,
}

/// A named model tensor with its optimizer state. Names follow a PyTorch `nn.Sequential` built
/// from the same layer list (`"0.weight"`, `"14.bias"`, `"1.running_mean"`), so a state dict
/// exported from here loads into one directly.
pub struct Param<T> {
    pub name: String,
    /// PyTorch's shape: conv OIHW, dense [out, in] (we store dense weights as [in, out] and
    /// transpose on export).
    pub shape: Vec<usize>,
    pub kind: TensorKind,
    /// Set for dense weights, stored transposed relative to `shape`.
    pub transposed: bool,
    pub value: T,
    pub grad: T,
    /// Adam's first moment, or SGD's momentum buffer.
    pub m: T,
    /// Adam's second moment (SGD leaves it alone).
    pub v: T,
}

/// The update rule of a training step, with its learning rate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Optimizer {
    Adam(AdamConfig),
    /// Keeps its momentum in each parameter's `m`, so a checkpoint stores it under Adam's
    /// first-moment name (`.adam_m`) and resumes without a second layout.
    Sgd(SgdConfig),
}

impl From<AdamConfig> for Optimizer {
    fn from(cfg: AdamConfig) -> Self {
        Optimizer::Adam(cfg)
    }
}

impl From<SgdConfig> for Optimizer {
    fn from(cfg: SgdConfig) -> Self {
        Optimizer::Sgd(cfg)
    }
}

enum Op {
    Conv {
        shape: Conv2dShape,
        w: usize,
        b: usize,
        act: Activation,
    },
    Dense {
        inputs: usize,
        outputs: usize,
        w: usize,
        b: usize,
    },
    Relu,
    Pool {
        size: usize,
        channels: usize,
        h: usize,
        w: usize,
    },
    Dropout {
        rate: f32,
    },
    BatchNorm {
        channels: usize,
        plane: usize,
        gamma: usize,
        beta: usize,
        mean: usize,
        var: usize,
    },
    /// A batch norm, or the ReLU after one, whose work the layer before now does (see
    /// [`Model::fold_batch_norms`]): it passes its input on.
    Folded,
}

struct Layer {
    op: Op,
    /// Position in the config's layer list: dropout seeds and messages use it.
    index: usize,
    /// Elements per image of the layer's output.
    out_len: usize,
}

/// Per-batch-size buffers: activations, their gradients and the loss outputs.
struct Workspace<B: Backend> {
    batch: usize,
    acts: Vec<B::Tensor>,
    grads: Vec<B::Tensor>,
    argmax: Vec<Option<B::Ints>>,
    /// For a convolution with a fused ReLU: the gradient with respect to its output before
    /// the ReLU.
    pre_relu_grads: Vec<Option<B::Tensor>>,
    bn_saved: Vec<Option<(B::Tensor, B::Tensor)>>,
    labels: B::Ints,
    /// A teacher's probabilities for the batch, when a training step has them.
    soft: B::Tensor,
    probs: B::Tensor,
    row_loss: B::Tensor,
    loss: B::Tensor,
    correct: B::Ints,
}

pub struct Model<B: Backend> {
    pub config: ModelConfig,
    pub params: Vec<Param<B::Tensor>>,
    layers: Vec<Layer>,
    input_len: usize,
    /// The side of the square crop of the 48x48 images the model takes.
    side: usize,
    class_weight: B::Tensor,
    workspaces: Vec<Workspace<B>>,
    pub bn: BnConfig,
    /// Label smoothing of the training loss (evaluation always scores the plain loss).
    pub label_smoothing: f32,
    /// What the CPU backend's convolutions multiply in inference (training multiplies f32).
    pub precision: Precision,
    /// Whether batch norms are folded into the layers before them: inference only.
    folded: bool,
}

/// What one batch did: mean loss, correct predictions, and in evaluation the logits and
/// probabilities ([batch, classes]).
#[derive(Clone, Debug)]
pub struct BatchResult {
    pub loss: f32,
    pub correct: u32,
    pub logits: Option<Vec<f32>>,
    pub probs: Option<Vec<f32>>,
}

impl<B: Backend> Model<B> {
    /// Builds the model with Keras' default initialisation (Glorot-uniform weights, zero biases)
    /// drawn from `seed`.
    pub fn new(backend: &B, config: ModelConfig, seed: u64) -> Result<Self> {
        let side = warp::output_side(config.input)?;
        let [mut c, mut h, mut w] = config.input;
        let input_len = c * h * w;
        let mut layers = Vec::new();
        let mut params: Vec<Param<B::Tensor>> = Vec::new();
        let mut rng = Rng::new(seed);
        let mut add = |name: String, shape: Vec<usize>, kind, transposed, init: Vec<f32>| -> Result<usize> {
            let n = init.len();
            let value = backend.tensor(n)?;
            backend.write(&value, &init)?;
            params.push(Param { name, shape, kind, transposed, value, grad: backend.tensor(n)?, m: backend.tensor(n)?, v: backend.tensor(n)? });
            Ok(params.len() - 1)
        };
        let glorot = |rng: &mut Rng, n: usize, fan_in: usize, fan_out: usize| {
            let limit = (6.0 / (fan_in + fan_out) as f32).sqrt();
            (0..n).map(|_| rng.uniform(-limit, limit)).collect::<Vec<f32>>()
        };
        for (index, spec) in config.layers.iter().enumerate() {
            let op = match *spec {
                LayerSpec::Conv2d { filters, kernel, padding } => {
                    let pad = if padding == PaddingSpec::Same { Padding::Same } else { Padding::Valid };
                    let shape = Conv2dShape::new(1, c, (h, w), filters, (kernel, kernel), pad).map_err(|e| shape_err("model", format!("layer {index}: {e}")))?;
                    let wi = add(
                        format!("{index}.weight"),
                        vec![filters, c, kernel, kernel],
                        TensorKind::Trainable,
                        false,
                        glorot(&mut rng, shape.weight_len(), c * kernel * kernel, filters * kernel * kernel),
                    )?;
                    let bi = add(format!("{index}.bias"), vec![filters], TensorKind::Trainable, false, vec![0.0; filters])?;
                    (c, h, w) = (filters, shape.oh, shape.ow);
                    Op::Conv { shape, w: wi, b: bi, act: Activation::Identity }
                }
                LayerSpec::Dense { units } => {
                    let inputs = c * h * w;
                    let wi = add(format!("{index}.weight"), vec![units, inputs], TensorKind::Trainable, true, glorot(&mut rng, inputs * units, inputs, units))?;
                    let bi = add(format!("{index}.bias"), vec![units], TensorKind::Trainable, false, vec![0.0; units])?;
                    (c, h, w) = (units, 1, 1);
                    Op::Dense { inputs, outputs: units, w: wi, b: bi }
                }
                LayerSpec::Relu => {
                    // A ReLU right after a convolution runs inside it (see conv2d::Activation).
                    if let Some(Layer { op: Op::Conv { act: act @ Activation::Identity, .. }, .. }) = layers.last_mut() {
                        *act = Activation::Relu;
                        continue;
                    }
                    Op::Relu
                }
                LayerSpec::MaxPool { size } => {
                    PoolShape::new(1, c, (h, w), size).map_err(|e| shape_err("model", format!("layer {index}: {e}")))?;
                    let op = Op::Pool { size, channels: c, h, w };
                    (h, w) = (h / size, w / size);
                    op
                }
                LayerSpec::Dropout { rate } => {
                    Mask::new(rate, 0).map_err(|e| shape_err("model", format!("layer {index}: {e}")))?;
                    Op::Dropout { rate }
                }
                LayerSpec::BatchNorm => {
                    let gamma = add(format!("{index}.weight"), vec![c], TensorKind::Trainable, false, vec![1.0; c])?;
                    let beta = add(format!("{index}.bias"), vec![c], TensorKind::Trainable, false, vec![0.0; c])?;
                    let mean = add(format!("{index}.running_mean"), vec![c], TensorKind::Buffer, false, vec![0.0; c])?;
                    let var = add(format!("{index}.running_var"), vec![c], TensorKind::Buffer, false, vec![1.0; c])?;
                    Op::BatchNorm { channels: c, plane: h * w, gamma, beta, mean, var }
                }
                // Flattening an NCHW tensor changes no data, only how the next layer reads it.
                LayerSpec::Flatten => continue,
            };
            layers.push(Layer { op, index, out_len: c * h * w });
        }
        if c * h * w != config.classes {
            return Err(shape_err("model", format!("the model ends with {} outputs per image, not {} classes", c * h * w, config.classes)));
        }
        let class_weight = backend.tensor(config.classes)?;
        backend.write(&class_weight, &vec![1.0; config.classes])?;
        Ok(Model { config, params, layers, input_len, side, class_weight, workspaces: Vec::new(), bn: BnConfig::default(), label_smoothing: 0.0, precision: Precision::F32, folded: false })
    }

    /// An error for `what` (training, saving) on a model whose batch norms are folded.
    pub(crate) fn refuse_folded(&self, what: &str) -> Result<()> {
        match self.folded {
            true => Err(Error::Invalid(format!("cannot {what} a model loaded for inference (its batch norms are folded into its other layers)"))),
            false => Ok(()),
        }
    }

    /// The side of the square input the model takes: a crop of the 48x48 images.
    pub fn input_side(&self) -> usize {
        self.side
    }

    pub fn parameter_count(&self) -> usize {
        self.params.iter().filter(|p| p.kind == TensorKind::Trainable).map(|p| p.shape.iter().product::<usize>()).sum()
    }

    /// Weights each class's loss (Keras' class_weight); all ones by default.
    pub fn set_class_weights(&self, backend: &B, weights: &[f32]) -> Result<()> {
        if weights.len() != self.config.classes {
            return Err(shape_err("model", format!("{} class weights for {} classes", weights.len(), self.config.classes)));
        }
        backend.write(&self.class_weight, weights)
    }

    /// Folds each batch norm right after a convolution or dense layer into that layer, for
    /// inference: `values` are the parameters' values in `params` order (dense weights [in,
    /// out]), before they reach the backend. In inference a batch norm is a fixed affine map
    /// per channel, `gamma (y - mean) / sqrt(var + eps) + beta`, so the layer's weights scaled
    /// by `s = gamma / sqrt(var + eps)` and its bias `(b - mean) s + beta` give the same output
    /// without the batch norm's pass over the activations, and a ReLU after it runs in the
    /// convolution's own pass. The model then refuses to train or be saved.
    pub(crate) fn fold_batch_norms(&mut self, values: &mut [Vec<f32>]) {
        for i in 1..self.layers.len() {
            let Op::BatchNorm { channels, gamma, beta, mean, var, .. } = self.layers[i].op else { continue };
            let (w, b, per_output) = match self.layers[i - 1].op {
                Op::Conv { w, b, shape, .. } => (w, b, shape.cin * shape.kh * shape.kw),
                Op::Dense { w, b, .. } => (w, b, 0),
                _ => continue,
            };
            let scale: Vec<f64> = (0..channels).map(|c| values[gamma][c] as f64 / (values[var][c] as f64 + self.bn.epsilon as f64).sqrt()).collect();
            if per_output > 0 {
                // OIHW: each output channel's weights are one run.
                for (row, s) in values[w].chunks_exact_mut(per_output).zip(&scale) {
                    row.iter_mut().for_each(|v| *v = (*v as f64 * s) as f32);
                }
            } else {
                // [in, out]: each row holds one weight for every output.
                for row in values[w].chunks_exact_mut(channels) {
                    row.iter_mut().zip(&scale).for_each(|(v, s)| *v = (*v as f64 * s) as f32);
                }
            }
            for c in 0..channels {
                values[b][c] = ((values[b][c] as f64 - values[mean][c] as f64) * scale[c] + values[beta][c] as f64) as f32;
            }
            self.layers[i].op = Op::Folded;
            let relu_after = matches!(self.layers.get(i + 1), Some(Layer { op: Op::Relu, .. }));
            if let (Op::Conv { act, .. }, true) = (&mut self.layers[i - 1].op, relu_after) {
                *act = Activation::Relu;
                self.layers[i + 1].op = Op::Folded;
            }
        }
        self.folded = true;
    }

    fn workspace(&mut self, backend: &B, batch: usize) -> Result<usize> {
        if let Some(i) = self.workspaces.iter().position(|w| w.batch == batch) {
            return Ok(i);
        }
        let mut sizes = vec![self.input_len];
        sizes.extend(self.layers.iter().map(|l| l.out_len));
        let ws = Workspace {
            batch,
            acts: sizes.iter().map(|n| backend.tensor(n * batch)).collect::<Result<_>>()?,
            grads: sizes.iter().map(|n| backend.tensor(n * batch)).collect::<Result<_>>()?,
            argmax: self
                .layers
                .iter()
                .map(|l| match l.op {
                    Op::Pool { .. } => backend.ints(l.out_len * batch).map(Some),
                    _ => Ok(None),
                })
                .collect::<Result<_>>()?,
            pre_relu_grads: self
                .layers
                .iter()
                .map(|l| match l.op {
                    Op::Conv { act: Activation::Relu, .. } => backend.tensor(l.out_len * batch).map(Some),
                    _ => Ok(None),
                })
                .collect::<Result<_>>()?,
            bn_saved: self
                .layers
                .iter()
                .map(|l| match l.op {
                    Op::BatchNorm { channels, .. } => Ok(Some((backend.tensor(channels)?, backend.tensor(channels)?))),
                    _ => Ok(None),
                })
                .collect::<Result<_>>()?,
            labels: backend.ints(batch)?,
            soft: backend.tensor(batch * self.config.classes)?,
            probs: backend.tensor(batch * self.config.classes)?,
            row_loss: backend.tensor(batch)?,
            loss: backend.tensor(1)?,
            correct: backend.ints(1)?,
        };
        self.workspaces.push(ws);
        Ok(self.workspaces.len() - 1)
    }

    fn bn_tensors<'a>(&'a self, ws: &'a Workspace<B>, i: usize) -> BnTensors<'a, B::Tensor> {
        let Op::BatchNorm { gamma, beta, mean, var, .. } = self.layers[i].op else { unreachable!("not a batch-norm layer") };
        let (saved_mean, saved_invstd) = ws.bn_saved[i].as_ref().expect("batch-norm workspace");
        BnTensors {
            gamma: &self.params[gamma].value,
            beta: &self.params[beta].value,
            running_mean: &self.params[mean].value,
            running_var: &self.params[var].value,
            mean: saved_mean,
            invstd: saved_invstd,
        }
    }

    /// Runs the layers on the batch in `ws.acts[0]`, and returns the tensor holding the logits.
    fn forward<'w>(&self, backend: &B, ws: &'w Workspace<B>, training: bool, seed: u32) -> Result<&'w B::Tensor> {
        let batch = ws.batch;
        let mut x = &ws.acts[0];
        // The ReLU or pooling layer whose work the layer before did in the same pass
        // (inference only).
        let mut fused = None;
        for (i, layer) in self.layers.iter().enumerate() {
            if fused == Some(i) {
                x = &ws.acts[i + 1];
                continue;
            }
            let y = &ws.acts[i + 1];
            match layer.op {
                Op::Conv { shape, w, b, act } => {
                    let s = Conv2dShape { batch, ..shape };
                    let (w, b) = (&self.params[w].value, &self.params[b].value);
                    let precision = if training { Precision::F32 } else { self.precision };
                    let pooled = match self.pool_after(i) {
                        Some((j, size, channels, (h, w_))) if !training && act == Activation::Relu => {
                            let pool = PoolShape::new(batch, channels, (h, w_), size)?;
                            backend.conv2d_relu_pool_forward(s, x, (w, b), precision, pool, &ws.acts[j + 1])?.then_some(j)
                        }
                        _ => None,
                    };
                    match pooled {
                        Some(j) => fused = Some(j),
                        None => backend.conv2d_forward(s, x, w, b, act, precision, y)?,
                    }
                }
                Op::Dense { inputs, outputs, w, b } => backend.dense_forward(DenseShape { batch, inputs, outputs }, x, &self.params[w].value, &self.params[b].value, y)?,
                Op::Relu => backend.relu_forward(x, y)?,
                Op::Pool { size, channels, h, w } => backend.maxpool_forward(PoolShape::new(batch, channels, (h, w), size)?, x, y, ws.argmax[i].as_ref().expect("pool workspace"))?,
                // In inference dropout keeps everything, so the next layer reads its input as it
                // is (a copy pass less per dropout layer).
                Op::Dropout { .. } if !training => continue,
                Op::Folded => continue,
                Op::Dropout { rate } => backend.dropout(Mask::new(rate, dropout_seed(seed, layer.index))?, x, y)?,
                Op::BatchNorm { channels, plane, .. } => {
                    // In inference a ReLU right after is applied in the batch norm's own pass
                    // over the activations, into the ReLU's output.
                    let fuse = !training && matches!(self.layers.get(i + 1).map(|l| &l.op), Some(Op::Relu));
                    let (act, out) = if fuse { (Activation::Relu, &ws.acts[i + 2]) } else { (Activation::Identity, y) };
                    if fuse {
                        fused = Some(i + 1);
                    }
                    backend.batchnorm_forward(BnShape { batch, channels, plane }, self.bn, training, act, x, self.bn_tensors(ws, i), out)?
                }
            }
            x = y;
        }
        Ok(x)
    }

    /// The pooling layer that takes layer `i`'s output, past folded layers: its index, window
    /// and input shape.
    fn pool_after(&self, i: usize) -> Option<(usize, usize, usize, (usize, usize))> {
        let (j, next) = self.layers.iter().enumerate().skip(i + 1).find(|(_, l)| !matches!(l.op, Op::Folded))?;
        match next.op {
            Op::Pool { size, channels, h, w } => Some((j, size, channels, (h, w))),
            _ => None,
        }
    }

    fn backward(&self, backend: &B, ws: &Workspace<B>, seed: u32) -> Result<()> {
        let batch = ws.batch;
        for (i, layer) in self.layers.iter().enumerate().rev() {
            let (x, dy, dx) = (&ws.acts[i], &ws.grads[i + 1], &ws.grads[i]);
            // Nothing needs the gradient with respect to the input images.
            let need_dx = i > 0;
            match layer.op {
                Op::Conv { shape, w, b, .. } => {
                    let s = Conv2dShape { batch, ..shape };
                    // Through the fused ReLU first, masked by the stored outputs, unless a pooling
                    // layer after it has done that.
                    let dy = match &ws.pre_relu_grads[i] {
                        Some(pre) => {
                            if !self.pools_after_relu(i + 1) {
                                backend.relu_backward(&ws.acts[i + 1], dy, pre)?;
                            }
                            pre
                        }
                        None => dy,
                    };
                    backend.conv2d_backward_filter(s, x, dy, &self.params[w].grad, &self.params[b].grad)?;
                    if need_dx {
                        backend.conv2d_backward_data(s, dy, &self.params[w].value, dx)?;
                    }
                }
                Op::Dense { inputs, outputs, w, b } => {
                    let s = DenseShape { batch, inputs, outputs };
                    backend.dense_backward_weights(s, x, dy, &self.params[w].grad, &self.params[b].grad)?;
                    if need_dx {
                        backend.dense_backward_data(s, dy, &self.params[w].value, dx)?;
                    }
                }
                Op::Folded => unreachable!("a model with folded batch norms does not train"),
                Op::Relu => backend.relu_backward(x, dy, dx)?,
                Op::Pool { size, channels, h, w } => {
                    let s = PoolShape::new(batch, channels, (h, w), size)?;
                    let argmax = ws.argmax[i].as_ref().expect("pool workspace");
                    if self.pools_after_relu(i) {
                        // Straight to the gradient before the convolution's ReLU.
                        let pre = ws.pre_relu_grads[i - 1].as_ref().expect("fused ReLU workspace");
                        backend.maxpool_backward(s, dy, argmax, Some(&ws.acts[i + 1]), pre)?
                    } else {
                        backend.maxpool_backward(s, dy, argmax, None, dx)?
                    }
                }
                Op::Dropout { rate } => backend.dropout(Mask::new(rate, dropout_seed(seed, layer.index))?, dy, dx)?,
                Op::BatchNorm { channels, plane, gamma, beta, .. } => {
                    let s = BnShape { batch, channels, plane };
                    backend.batchnorm_backward(s, x, dy, self.bn_tensors(ws, i), dx, &self.params[gamma].grad, &self.params[beta].grad)?
                }
            }
        }
        Ok(())
    }

    /// Whether layer `i` pools the output of a convolution with a fused ReLU: then its backward
    /// pass also applies that ReLU's gradient (see maxpool2d::backward_cpu).
    fn pools_after_relu(&self, i: usize) -> bool {
        matches!(self.layers.get(i), Some(Layer { op: Op::Pool { .. }, .. })) && i > 0 && matches!(self.layers[i - 1].op, Op::Conv { act: Activation::Relu, .. })
    }

    /// Puts a batch in the input: 48x48 byte images warped (and cropped to the input's side)
    /// by their augmentations ([`warp::centre`] for none), and their labels.
    fn load_batch(&mut self, backend: &B, images: &[u8], augments: &[Augment], labels: &[u32]) -> Result<usize> {
        let batch = labels.len();
        if images.len() != batch * PIXELS {
            return Err(shape_err("model", format!("{} input bytes for {batch} images of {PIXELS} bytes", images.len())));
        }
        let side = self.side;
        self.load_faces(backend, |out| backend.warp(images, augments, side, out), augments.len(), labels)
    }

    /// Sets a workspace up for `labels.len()` images: their labels, and `warp` writes the
    /// input tensor from the images' `augments` (as many).
    fn load_faces(&mut self, backend: &B, warp: impl FnOnce(&B::Tensor) -> Result<()>, augments: usize, labels: &[u32]) -> Result<usize> {
        let batch = labels.len();
        if augments != batch || batch == 0 {
            return Err(shape_err("model", format!("{augments} augmentations for {batch} images")));
        }
        XentShape::plain(batch, self.config.classes).check_labels(labels)?;
        let wi = self.workspace(backend, batch)?;
        let ws = &self.workspaces[wi];
        backend.write_ints(&ws.labels, labels)?;
        warp(&ws.acts[0])?;
        Ok(wi)
    }

    fn loss(&self, backend: &B, ws: &Workspace<B>, logits: &B::Tensor, s: XentShape) -> Result<()> {
        let out = LossTensors { probs: &ws.probs, row_loss: &ws.row_loss, loss: &ws.loss, correct: &ws.correct };
        backend.xent_forward(s, logits, &ws.labels, &ws.soft, &self.class_weight, out)
    }

    /// One training step on a batch: forward with dropout drawn from `seed`, loss, backward,
    /// and an update by `optimizer` at step `t` (counted from 1).
    pub async fn train_step_async(&mut self, backend: &B, images: &[u8], augments: &[Augment], labels: &[u32], seed: u32, optimizer: impl Into<Optimizer>, t: u64) -> Result<BatchResult> {
        self.submit_train_step(backend, images, augments, labels, seed, optimizer, t)?.wait_async(backend).await
    }

    /// [`Model::train_step_async`], waited for.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn train_step(&mut self, backend: &B, images: &[u8], augments: &[Augment], labels: &[u32], seed: u32, optimizer: impl Into<Optimizer>, t: u64) -> Result<BatchResult> {
        pollster::block_on(self.train_step_async(backend, images, augments, labels, seed, optimizer, t))
    }

    /// [`Model::train_step`] without waiting for it: the step is queued, and its loss and
    /// accuracy arrive with [`BatchInFlight::wait`]. Submitting step N + 1 before waiting for
    /// step N keeps a GPU busy while the host records (an in-order queue runs N first).
    pub fn submit_train_step(&mut self, backend: &B, images: &[u8], augments: &[Augment], labels: &[u32], seed: u32, optimizer: impl Into<Optimizer>, t: u64) -> Result<BatchInFlight<B>> {
        self.submit_taught_step(backend, images, augments, labels, None, seed, optimizer, t)
    }

    /// [`Model::submit_train_step`] towards a teacher's probabilities too, where `teacher`
    /// gives them (distillation): the loss's target mixes them into the labels'.
    #[allow(clippy::too_many_arguments)]
    pub fn submit_taught_step(
        &mut self,
        backend: &B,
        images: &[u8],
        augments: &[Augment],
        labels: &[u32],
        teacher: Option<Teacher>,
        seed: u32,
        optimizer: impl Into<Optimizer>,
        t: u64,
    ) -> Result<BatchInFlight<B>> {
        self.refuse_folded("train")?;
        let classes = self.config.classes;
        let mut s = XentShape { batch: labels.len(), classes, smoothing: self.label_smoothing, distill: 0.0 };
        if let Some(teacher) = &teacher {
            check_len("model", "teacher probabilities", teacher.probs.len(), labels.len() * classes)?;
            s.distill = teacher.weight;
        }
        let wi = self.load_batch(backend, images, augments, labels)?;
        let ws = &self.workspaces[wi];
        if let Some(teacher) = teacher {
            backend.write(&ws.soft, teacher.probs)?;
        }
        let logits = self.forward(backend, ws, true, seed)?;
        self.loss(backend, ws, logits, s)?;
        backend.xent_backward(s, &ws.probs, &ws.labels, &ws.soft, &self.class_weight, ws.grads.last().expect("logit gradient"))?;
        self.backward(backend, ws, seed)?;
        let optimizer = optimizer.into();
        for p in self.params.iter().filter(|p| p.kind == TensorKind::Trainable) {
            match optimizer {
                Optimizer::Adam(cfg) => backend.adam(cfg, t, &p.value, &p.grad, &p.m, &p.v)?,
                Optimizer::Sgd(cfg) => backend.sgd(cfg, t, &p.value, &p.grad, &p.m)?,
            }
        }
        let step = BatchInFlight { loss: backend.read_later(&ws.loss)?, correct: backend.read_ints_later(&ws.correct)?, outputs: None };
        backend.flush()?;
        Ok(step)
    }

    /// Inference on a batch (the centre crops of the images): loss, correct count and the
    /// probabilities.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn evaluate_batch(&mut self, backend: &B, images: &[u8], labels: &[u32]) -> Result<BatchResult> {
        self.submit_evaluation(backend, images, warp::centre(self.side), labels)?.wait(backend)
    }

    /// Inference on a batch of images warped by `augment` (`warp::centre(side)` for none), queued
    /// without waiting: its loss, correct count, logits and probabilities arrive with
    /// [`BatchInFlight::wait`], so the next batch can be queued first, as in training.
    pub fn submit_evaluation(&mut self, backend: &B, images: &[u8], augment: Augment, labels: &[u32]) -> Result<BatchInFlight<B>> {
        let wi = self.load_batch(backend, images, &vec![augment; labels.len()], labels)?;
        self.submit_loaded_evaluation(backend, wi)
    }

    /// [`Model::submit_evaluation`] of faces where the backend keeps them.
    fn submit_faces_evaluation(&mut self, backend: &B, faces: &B::Faces, augment: Augment, labels: &[u32]) -> Result<BatchInFlight<B>> {
        let augments = vec![augment; labels.len()];
        let side = self.side;
        let wi = self.load_faces(backend, |out| backend.warp_faces(faces, &augments, side, out), augments.len(), labels)?;
        self.submit_loaded_evaluation(backend, wi)
    }

    fn submit_loaded_evaluation(&mut self, backend: &B, wi: usize) -> Result<BatchInFlight<B>> {
        let ws = &self.workspaces[wi];
        let logits = self.forward(backend, ws, false, 0)?;
        self.loss(backend, ws, logits, XentShape::plain(ws.batch, self.config.classes))?;
        let batch = BatchInFlight { loss: backend.read_later(&ws.loss)?, correct: backend.read_ints_later(&ws.correct)?, outputs: Some((backend.read_later(logits)?, backend.read_later(&ws.probs)?)) };
        backend.flush()?;
        Ok(batch)
    }
}

/// A teacher's probabilities for a training batch, a row of classes per image, and their weight
/// in [0, 1] in the loss's target.
#[derive(Clone, Copy, Debug)]
pub struct Teacher<'a> {
    pub probs: &'a [f32],
    pub weight: f32,
}

/// A batch queued by [`Model::submit_train_step`] or [`Model::submit_evaluation`], its results
/// still on their way back.
pub struct BatchInFlight<B: Backend> {
    loss: B::Pending<f32>,
    correct: B::Pending<u32>,
    /// Logits and probabilities, for an evaluation.
    outputs: Option<(B::Pending<f32>, B::Pending<f32>)>,
}

impl<B: Backend> BatchInFlight<B> {
    /// Waits for the batch (and the work queued before it) and returns its results.
    pub async fn wait_async(self, backend: &B) -> Result<BatchResult> {
        let loss = backend.collect_async(self.loss).await?[0];
        let correct = backend.collect_async(self.correct).await?[0];
        let (logits, probs) = match self.outputs {
            Some((logits, probs)) => (Some(backend.collect_async(logits).await?), Some(backend.collect_async(probs).await?)),
            None => (None, None),
        };
        Ok(BatchResult { loss, correct, logits, probs })
    }

    /// [`BatchInFlight::wait_async`], waited for.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn wait(self, backend: &B) -> Result<BatchResult> {
        pollster::block_on(self.wait_async(backend))
    }
}

impl<B: Backend> Model<B> {
    /// Class probabilities ([n, classes]) for 48x48 byte images ([n, 48, 48]): the mean over
    /// the views `tta` takes of each (its centre crop alone with [`Tta::None`]).
    pub async fn predict_async(&mut self, backend: &B, images: &[u8], tta: Tta) -> Result<Vec<f32>> {
        if !images.len().is_multiple_of(PIXELS) {
            return Err(shape_err("model", format!("{} input bytes: not whole images of {PIXELS} bytes", images.len())));
        }
        self.queue_faces(backend, &backend.faces_from_bytes(images)?, images.len() / PIXELS, tta)?.mean_async(backend).await
    }

    /// Every view `tta` takes of `n` faces where the backend keeps them (cut from a frame on
    /// the device, say), queued. All are queued before the first is read back, so on a GPU the
    /// views (and the other models of an ensemble) cost one wait, not one each.
    ///
    /// The faces go through in batches of a power of two up to [`MAX_FACES_BATCH`] (67 as 32,
    /// 32, 2 and 1): a model keeps buffers for each batch size it has run, and a video's number of
    /// faces changes from frame to frame, so exact sizes would keep buffers for every count seen.
    pub(crate) fn queue_faces(&mut self, backend: &B, faces: &B::Faces, n: usize, tta: Tta) -> Result<QueuedViews<B>> {
        let views = tta.views(self.side);
        let mut batches = Vec::new();
        let mut first = 0;
        while first < n {
            let size = MAX_FACES_BATCH.min(1 << (n - first).ilog2());
            let part = if size == n { None } else { Some(backend.faces_range(faces, first..first + size)?) };
            // The loss needs labels; any valid ones do, since only the probabilities are used.
            let labels = vec![0; size];
            // Each view's readbacks copy its results as the queue reaches them, so the next
            // view may reuse the workspace.
            let queued = views.iter().map(|view| self.submit_faces_evaluation(backend, part.as_ref().unwrap_or(faces), *view, &labels)).collect::<Result<Vec<_>>>()?;
            batches.push(queued);
            first += size;
        }
        Ok(QueuedViews { batches, views: views.len(), len: n * self.config.classes })
    }

    /// [`Model::predict_async`], waited for.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn predict(&mut self, backend: &B, images: &[u8], tta: Tta) -> Result<Vec<f32>> {
        pollster::block_on(self.predict_async(backend, images, tta))
    }
}

/// The views of faces queued by [`Model::queue_faces`], batch by batch.
pub(crate) struct QueuedViews<B: Backend> {
    batches: Vec<Vec<BatchInFlight<B>>>,
    views: usize,
    /// Faces times classes.
    len: usize,
}

impl<B: Backend> QueuedViews<B> {
    /// The class probabilities of each face, the mean over its views.
    pub(crate) async fn mean_async(self, backend: &B) -> Result<Vec<f32>> {
        let mut probs = Vec::with_capacity(self.len);
        for batch in self.batches {
            let at = probs.len();
            for view in batch {
                let view = view.wait_async(backend).await?.probs.expect("evaluation returns probabilities");
                if probs.len() == at {
                    probs.extend_from_slice(&view);
                } else {
                    add_into(&mut probs[at..], &view);
                }
            }
        }
        scale(&mut probs, self.views);
        Ok(probs)
    }
}

/// Adds `other` to `sum` element by element (one view's class probabilities to the sum over
/// the views).
pub fn add_into(sum: &mut [f32], other: &[f32]) {
    sum.iter_mut().zip(other).for_each(|(s, o)| *s += o);
}

/// Divides a sum over `views` views by their number, giving their mean.
pub fn scale(sum: &mut [f32], views: usize) {
    let inverse = 1.0 / views as f32;
    sum.iter_mut().for_each(|s| *s *= inverse);
}

/// The largest batch of faces [`Model::queue_faces`] runs at once.
pub const MAX_FACES_BATCH: usize = 32;

/// A distinct dropout stream per (step, layer).
fn dropout_seed(step_seed: u32, layer: usize) -> u32 {
    step_seed.wrapping_mul(0x9E3779B1) ^ (layer as u32).wrapping_mul(0x85EBCA77)
}
