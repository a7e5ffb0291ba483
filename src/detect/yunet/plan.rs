//! How YuNet runs at one padded size: its nodes as kernel calls, and the buffers they share.

use super::model::{all_cells, decode_shapes, Node, Op, YuNetModel};
use crate::error::{Error, Result};
use crate::kernels::conv2d::{Activation, Precision};
use crate::kernels::conv2d_grouped::{GroupedConvShape, Pads, PointDepthShape};
use crate::kernels::maxpool2d::PoolShape;
use crate::kernels::upsample::UpsampleShape;
use crate::kernels::yunet_decode::RECORD;
use crate::nn::Backend;

/// The most bytes of activations one image may take (every buffer of its plan, on either
/// backend). YuNet-n takes about 71 bytes a padded pixel (70 on the CPU, whose plan pairs
/// pointwise and depthwise convolutions), so this admits about 60 megapixels (an 8K frame,
/// 7680x4320, takes 2.2 GiB); a larger image is refused before anything is allocated.
pub const MAX_ACTIVATION_BYTES: u64 = 4 << 30;

/// One kernel call of a plan; tensors by index into [`Plan::tensors`].
#[derive(Clone, Copy, Debug)]
pub(super) enum Step {
    Conv {
        shape: GroupedConvShape,
        conv: usize,
        act: Activation,
        x: usize,
        y: usize,
    },
    /// A pointwise convolution (weights `convs.0`) and the depthwise one after it (`convs.1`).
    PointDepth {
        shape: PointDepthShape,
        convs: (usize, usize),
        x: usize,
        y: usize,
    },
    Relu {
        x: usize,
        y: usize,
    },
    Sigmoid {
        x: usize,
        y: usize,
    },
    MaxPool {
        shape: PoolShape,
        x: usize,
        y: usize,
        argmax: usize,
    },
    Upsample {
        shape: UpsampleShape,
        x: usize,
        y: usize,
    },
    Add {
        a: usize,
        b: usize,
        y: usize,
    },
}

/// How one padded size runs, before anything is allocated: the steps, the tensors they use
/// and where each node's value can be read.
pub(super) struct Layout {
    pub(super) padded: (usize, usize),
    /// Images run together, each tensor holding one after another.
    pub(super) batch: usize,
    /// Of all tensors, at most [`MAX_ACTIVATION_BYTES`].
    bytes: u64,
    pub(super) steps: Vec<Step>,
    /// Elements of each tensor (tensor 0 is the input).
    tensors: Vec<usize>,
    argmax: Vec<usize>,
    /// Each node's tensor and how many steps have run when it holds the node's value; `None`
    /// for a convolution fused with the node after it, whose own value is never stored.
    pub(super) values: Vec<Option<(usize, usize)>>,
}

impl Layout {
    /// A ReLU after a convolution read by nothing else runs inside that convolution, and
    /// `to_rows` is a relabelling: both share the tensor of the node before them. With
    /// `pair_units` (a backend whose fused op keeps the values between the two in cache), a
    /// pointwise convolution read only by the 3x3 depthwise one right after it runs inside that
    /// one's step: it keeps no tensor of its own, and its input lives until the depthwise step.
    /// A tensor whose value nothing reads any more takes the next value of its length, so that
    /// a frame touches a few buffers that stay in cache instead of one per node; the outputs
    /// keep theirs.
    fn new(model: &YuNetModel, (pw, ph): (usize, usize), batch: usize, pair_units: bool) -> Result<Layout> {
        let nodes = &model.nodes;
        let outputs: Vec<usize> = model.levels.iter().flat_map(|l| l.heads).collect();
        let mut readers = vec![0; nodes.len()];
        // The last node reading each node's value (itself when none does).
        let mut last_read: Vec<usize> = (0..nodes.len()).collect();
        for (i, node) in nodes.iter().enumerate() {
            for &x in &node.inputs {
                readers[x] += 1;
                last_read[x] = i;
            }
        }
        for &o in &outputs {
            last_read[o] = usize::MAX;
        }
        let into_depthwise: Vec<bool> = (0..nodes.len()).map(|i| pair_units && last_read[i] == i + 1 && readers[i] == 1 && pointwise_then_depthwise(nodes, i, i + 1)).collect();
        // The node whose step stores each node's value (a pointwise convolution inside the
        // depthwise step: its input's, which that step reads).
        let mut store: Vec<usize> = (0..nodes.len()).collect();
        let mut relu_inside = vec![false; nodes.len()];
        for (i, node) in nodes.iter().enumerate() {
            let x = node.inputs.first().copied().unwrap_or(i);
            let fuses = matches!(node.op, Op::Relu) && matches!(nodes[x].op, Op::Conv { .. }) && readers[x] == 1 && last_read[x] != usize::MAX;
            if fuses || into_depthwise[i] || matches!(node.op, Op::ToRows) {
                store[i] = store[x];
                relu_inside[x] |= fuses;
            }
        }
        let mut lives_until = vec![0; nodes.len()];
        for i in 0..nodes.len() {
            lives_until[store[i]] = lives_until[store[i]].max(last_read[i]);
        }
        let len = |n: &Node| (batch as u64).saturating_mul(n.channels as u64).saturating_mul((ph / n.factor) as u64).saturating_mul((pw / n.factor) as u64);
        let mut layout = Layout { padded: (pw, ph), batch, bytes: 0, steps: Vec::new(), tensors: Vec::new(), argmax: Vec::new(), values: vec![None; nodes.len()] };
        let mut tensor_of = vec![0; nodes.len()];
        let mut free: Vec<usize> = Vec::new();
        for (i, node) in nodes.iter().enumerate() {
            if store[i] == i {
                let want = len(node);
                tensor_of[i] = match free.iter().position(|&t| layout.tensors[t] as u64 == want) {
                    Some(at) => free.swap_remove(at),
                    None => {
                        let want = layout.reserve(want)?;
                        layout.tensors.push(want);
                        layout.tensors.len() - 1
                    }
                };
                let inside = Inside { relu: relu_inside[i], pointwise: i > 0 && into_depthwise[i - 1] };
                if let Some(step) = layout.step(model, i, inside, &tensor_of, (pw, ph))? {
                    layout.steps.push(step);
                }
            } else {
                tensor_of[i] = tensor_of[store[i]];
            }
            if !relu_inside[i] && !into_depthwise[i] {
                layout.values[i] = Some((tensor_of[i], layout.steps.len()));
            }
            let mut ended: Vec<usize> = node.inputs.iter().chain([&i]).map(|&x| store[x]).filter(|&s| lives_until[s] == i).collect();
            ended.sort_unstable();
            ended.dedup();
            free.extend(ended.into_iter().map(|s| tensor_of[s]));
        }
        Ok(layout)
    }

    /// The step computing node `i` into `tensor_of[i]`, with what runs `inside` it: none for
    /// the graph input, which the host writes, or for a `to_rows`, which shares its input's
    /// tensor.
    fn step(&mut self, model: &YuNetModel, i: usize, inside: Inside, tensor_of: &[usize], (pw, ph): (usize, usize)) -> Result<Option<Step>> {
        let node = &model.nodes[i];
        let (y, x) = (tensor_of[i], node.inputs.first().map(|&x| tensor_of[x]).unwrap_or(0));
        let input = node.inputs.first().map(|&x| &model.nodes[x]);
        let (c, h, w) = input.map_or((0, 0, 0), |n| (n.channels, ph / n.factor, pw / n.factor));
        Ok(Some(match node.op {
            Op::Input | Op::ToRows => return Ok(None),
            Op::Conv { conv, cin, kernel, stride, groups } => {
                let shape = GroupedConvShape::new(self.batch, cin, (h, w), node.channels, (kernel, kernel), groups, (stride, stride), Pads::all(kernel / 2))?;
                let act = if inside.relu { Activation::Relu } else { Activation::Identity };
                if !inside.pointwise {
                    return Ok(Some(Step::Conv { shape, conv, act, x, y }));
                }
                // `x` is then the pointwise convolution's input, whose tensor it shares.
                let pointwise = input.expect("a depthwise convolution has an input");
                let Op::Conv { conv: first, .. } = pointwise.op else { unreachable!("paired with a convolution") };
                let source = &model.nodes[pointwise.inputs[0]];
                let (sh, sw) = (ph / source.factor, pw / source.factor);
                let before = GroupedConvShape::new(self.batch, source.channels, (sh, sw), pointwise.channels, (1, 1), 1, (1, 1), Pads::all(0))?;
                Step::PointDepth { shape: PointDepthShape::new(before, shape, act)?, convs: (first, conv), x, y }
            }
            Op::Relu => Step::Relu { x, y },
            Op::Sigmoid => Step::Sigmoid { x, y },
            Op::MaxPool => {
                let shape = PoolShape::new(self.batch, c, (h, w), 2)?;
                let len = self.reserve(shape.output_len() as u64)?;
                self.argmax.push(len);
                Step::MaxPool { shape, x, y, argmax: self.argmax.len() - 1 }
            }
            Op::Upsample => Step::Upsample { shape: UpsampleShape::double(self.batch, c, (h, w))?, x, y },
            Op::Add => Step::Add { a: x, b: tensor_of[node.inputs[1]], y },
        }))
    }

    /// Counts a buffer of `elements` four-byte values, refusing the size before it can take
    /// more than [`MAX_ACTIVATION_BYTES`] (or overflow a 32-bit `usize`).
    fn reserve(&mut self, elements: u64) -> Result<usize> {
        self.bytes = self.bytes.saturating_add(elements.saturating_mul(4));
        if self.bytes > MAX_ACTIVATION_BYTES {
            let ((pw, ph), batch) = (self.padded, self.batch);
            let images = if batch == 1 { String::new() } else { format!(" ({batch} images at once)") };
            return Err(Error::OverBound(format!("YuNet at {pw}x{ph}{images} needs more than {} MiB of activations (mien::detect::yunet::MAX_ACTIVATION_BYTES)", MAX_ACTIVATION_BYTES >> 20)));
        }
        Ok(elements as usize)
    }
}

/// What runs inside a node's step besides the node: the ReLU after it, or (for a depthwise
/// convolution) the pointwise convolution before it.
#[derive(Clone, Copy)]
struct Inside {
    relu: bool,
    pointwise: bool,
}

/// Whether node `j` is a 3x3 depthwise convolution of node `i`, a 1x1 one: the pair
/// [`PointDepthShape`] runs as one step.
fn pointwise_then_depthwise(nodes: &[Node], i: usize, j: usize) -> bool {
    let (first, second) = (&nodes[i], &nodes[j]);
    let pointwise = matches!(first.op, Op::Conv { kernel: 1, stride: 1, groups: 1, .. });
    let depthwise = matches!(second.op, Op::Conv { kernel: 3, stride: 1, groups, cin, .. } if groups == cin && cin == second.channels);
    pointwise && depthwise && second.inputs.first() == Some(&i)
}

/// Candidates an image's list holds at most (64 KiB), fewer in images with fewer cells, so that
/// the lists never come to more than the heads: at the default threshold a face has a few to a
/// few tens. An image with more (a threshold near 0) is decoded on the host from its heads.
const CANDIDATES: usize = 1024;

/// The buffers of one padded size and batch, allocated once for every frame of that size.
pub(super) struct Plan<B: Backend> {
    pub(super) layout: Layout,
    pub(super) tensors: Vec<B::Tensor>,
    argmax: Vec<B::Ints>,
    /// The input as the host builds it; the padding stays zero from frame to frame.
    pub(super) staging: Vec<f32>,
    /// Each image's count of candidates and its list of them (see
    /// [`yunet_decode`](crate::kernels::yunet_decode)), `capacity` records long.
    pub(super) counts: B::Ints,
    pub(super) records: B::Tensor,
    capacity: usize,
}

impl<B: Backend> Plan<B> {
    pub(super) fn new(backend: &B, model: &YuNetModel, padded: (usize, usize), batch: usize) -> Result<Self> {
        let layout = Layout::new(model, padded, batch, backend.pairs_pointwise_depthwise())?;
        let tensors = layout.tensors.iter().map(|&n| backend.tensor(n)).collect::<Result<_>>()?;
        let argmax = layout.argmax.iter().map(|&n| backend.ints(n)).collect::<Result<_>>()?;
        let capacity = CANDIDATES.min(all_cells(&model.levels, padded));
        let (counts, records) = (backend.ints(batch)?, backend.tensor(batch * capacity * RECORD)?);
        Ok(Plan { staging: vec![0.0; layout.tensors[0]], layout, tensors, argmax, counts, records, capacity })
    }

    /// Queues the decoding of every stride's heads into each image's list of candidates, after
    /// the steps that compute them.
    pub(super) fn decode(&self, backend: &B, model: &YuNetModel, threshold: f32) -> Result<()> {
        backend.write_ints(&self.counts, &vec![0; self.layout.batch])?;
        let shapes = decode_shapes(&model.levels, self.layout.batch, self.layout.padded, self.capacity, threshold)?;
        for (level, shape) in model.levels.iter().zip(shapes) {
            backend.yunet_decode(shape, level.heads.map(|head| &self.tensors[self.head_tensor(head)]), &self.counts, &self.records)?;
        }
        Ok(())
    }

    /// Every stride's four heads, as channel planes, image after image (outputs keep their
    /// tensors to the end of the frame).
    pub(super) async fn read_heads(&self, backend: &B, model: &YuNetModel) -> Result<Vec<Vec<f32>>> {
        let pending = model.levels.iter().flat_map(|l| l.heads).map(|head| backend.read_later(&self.tensors[self.head_tensor(head)])).collect::<Result<Vec<_>>>()?;
        let mut heads = Vec::with_capacity(pending.len());
        for p in pending {
            heads.push(backend.collect_async(p).await?);
        }
        Ok(heads)
    }

    /// The tensor holding output node `head`.
    fn head_tensor(&self, head: usize) -> usize {
        self.layout.values[head].expect("an output's value is stored").0
    }

    pub(super) fn run(&self, backend: &B, weights: &[(B::Tensor, B::Tensor)], step: &Step, precision: Precision) -> Result<()> {
        let t = &self.tensors;
        match *step {
            Step::Conv { shape, conv, act, x, y } => backend.conv2d_grouped_forward(shape, &t[x], &weights[conv].0, &weights[conv].1, act, &t[y]),
            Step::PointDepth { shape, convs: (first, second), x, y } => {
                let (w1, w2) = (&weights[first], &weights[second]);
                backend.pointwise_depthwise_forward(shape, &t[x], (&w1.0, &w1.1), (&w2.0, &w2.1), precision, &t[y])
            }
            Step::Relu { x, y } => backend.relu_forward(&t[x], &t[y]),
            Step::Sigmoid { x, y } => backend.sigmoid_forward(&t[x], &t[y]),
            Step::MaxPool { shape, x, y, argmax } => backend.maxpool_forward(shape, &t[x], &t[y], &self.argmax[argmax]),
            Step::Upsample { shape, x, y } => backend.upsample_forward(shape, &t[x], &t[y]),
            Step::Add { a, b, y } => backend.add_forward(&t[a], &t[b], Activation::Identity, &t[y]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_reuses_a_few_tensors_and_huge_frames_are_refused() {
        let model = YuNetModel::shipped().unwrap();
        // 59 convolutions (18 with their ReLU inside), 4 poolings, 2 upsamplings, 2 additions
        // and 6 sigmoids; pairing the units (the CPU's plan) runs 58 of the convolutions as 29
        // pointwise-then-depthwise steps. Tensors are shared by values of the same length that
        // do not live at the same time.
        for (pair_units, steps, tensors, per_pixel_range) in [(false, 73, 29, 70.0..72.0), (true, 44, 25, 69.0..71.0)] {
            let layout = Layout::new(&model, (1920, 1088), 1, pair_units).unwrap();
            assert_eq!((layout.steps.len(), layout.tensors.len()), (steps, tensors), "pairing units: {pair_units}");
            let per_pixel = layout.bytes as f64 / (1920.0 * 1088.0);
            assert!(per_pixel_range.contains(&per_pixel), "{per_pixel} bytes a pixel; see MAX_ACTIVATION_BYTES");
            let err = Layout::new(&model, (8192, 8192), 1, pair_units).err().unwrap();
            assert!(matches!(err, Error::OverBound(_)) && err.to_string().contains("MAX_ACTIVATION_BYTES"), "{err}");
        }
    }
}
