//! YuNet-n, the small CNN face detector behind OpenCV's `cv::FaceDetectorYN`, on the crate's
//! kernels: boxes, five landmarks and a score for each face.
//!
//! The network is data: `data/yunet/yunet_n.json` declares its nodes and `yunet_n.safetensors`
//! holds their weights (batch norm already folded into the convolutions; `data/yunet/README.md`
//! tells where both came from). [`YuNetModel`] reads and checks the two before anything is
//! allocated; [`YuNet`] runs it on a backend node by node, reads back the 12 head outputs and
//! decodes them on the host exactly as FaceDetectorYN does (its steps are in the README and in
//! `tools/yunet_reference.py`).

use crate::error::{file_err, quote_prefix, Error, Result};
use crate::kernels::conv2d::{Activation, Precision};
use crate::kernels::conv2d_grouped::{GroupedConvShape, Pads, PointDepthShape};
use crate::kernels::maxpool2d::PoolShape;
use crate::kernels::upsample::UpsampleShape;
use crate::nn::{Backend, Cpu};
use image::RgbImage;
use safetensors::tensor::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// Where the shipped architecture and weights live, relative to the repository root.
pub const SHIPPED_DIR: &str = "data/yunet";
const SHIPPED_ARCHITECTURE: &str = "yunet_n.json";
const SHIPPED_WEIGHTS: &str = "yunet_n.safetensors";

/// Bounds on an architecture file, far above YuNet's (103 nodes, 64 channels, 3x3 kernels):
/// what a hostile file may make the process allocate or loop over.
const MAX_NODES: usize = 4096;
const MAX_CHANNELS: usize = 4096;
const MAX_KERNEL: usize = 15;
const MAX_DIVISOR: usize = 1024;
const QUOTE_CHARS: usize = 60;

/// The most bytes of activations one image may take (every buffer of its plan, on either
/// backend). YuNet-n takes about 71 bytes a padded pixel (70 on the CPU, whose plan pairs
/// pointwise and depthwise convolutions), so this admits about 60 megapixels (an 8K frame,
/// 7680x4320, takes 2.2 GiB); a larger image is refused before anything is allocated.
pub const MAX_ACTIVATION_BYTES: u64 = 4 << 30;

/// The architecture file, `yunet_n.json`: the fields the detector reads (the file also
/// describes its source, the landmarks' names and each node's ONNX counterpart).
#[derive(Clone, Debug, Deserialize)]
pub struct YuNetConfig {
    pub name: String,
    pub input: InputSpec,
    /// The strides of the heads, in the order FaceDetectorYN decodes them.
    pub strides: Vec<usize>,
    /// In execution order: a node's inputs are the graph input or nodes before it.
    pub nodes: Vec<NodeSpec>,
    pub outputs: Vec<OutputSpec>,
}

/// The network input: FaceDetectorYN feeds BGR bytes as floats, unscaled, padded with zeros
/// at the bottom and right to a multiple of `size_divisor`.
#[derive(Clone, Debug, Deserialize)]
pub struct InputSpec {
    pub name: String,
    pub channels: usize,
    pub channel_order: String,
    pub scale: f32,
    pub mean: Vec<f32>,
    pub size_divisor: usize,
}

#[derive(Clone, Debug, Deserialize)]
pub struct NodeSpec {
    pub name: String,
    pub inputs: Vec<String>,
    /// Output channels.
    pub channels: usize,
    #[serde(flatten)]
    pub op: OpSpec,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OpSpec {
    /// Square kernel, the same stride and zero padding on both axes.
    Conv2d {
        in_channels: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        dilation: usize,
        groups: usize,
        weight: String,
        bias: String,
    },
    Relu,
    MaxPool {
        size: usize,
        stride: usize,
        padding: usize,
        ceil_mode: bool,
    },
    UpsampleNearest {
        scale: usize,
    },
    Add,
    /// ONNX's Transpose + Reshape from `[1, C, H, W]` to `[1, H * W, C]`.
    ToRows,
    Sigmoid,
}

/// What a head output holds, per cell.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HeadKind {
    /// Class score (after a sigmoid).
    Cls,
    /// Objectness (after a sigmoid).
    Obj,
    /// Box centre offset and log size, in strides.
    Bbox,
    /// Five landmarks' offsets, in strides.
    Kps,
}

const HEAD_KINDS: [HeadKind; 4] = [HeadKind::Cls, HeadKind::Obj, HeadKind::Bbox, HeadKind::Kps];

impl HeadKind {
    fn name(self) -> &'static str {
        match self {
            HeadKind::Cls => "cls",
            HeadKind::Obj => "obj",
            HeadKind::Bbox => "bbox",
            HeadKind::Kps => "kps",
        }
    }

    fn channels(self) -> usize {
        match self {
            HeadKind::Cls | HeadKind::Obj => 1,
            HeadKind::Bbox => 4,
            HeadKind::Kps => 10,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
pub struct OutputSpec {
    pub name: String,
    pub node: String,
    pub kind: HeadKind,
    pub stride: usize,
    pub channels: usize,
}

impl YuNetConfig {
    pub fn from_json(bytes: &[u8], origin: &Path) -> Result<Self> {
        serde_json::from_slice(bytes).map_err(|e| file_err(origin, format!("not a YuNet architecture: {e}")))
    }
}

/// A checked node: inputs by index (node 0 is the graph input), its size as a fraction of the
/// padded input's, and its layout.
#[derive(Clone, Debug)]
struct Node {
    name: String,
    op: Op,
    inputs: Vec<usize>,
    channels: usize,
    /// The padded input's side over this node's (exact: it divides the size divisor).
    factor: usize,
    /// Laid out as `[cells, channels]` (after a `to_rows`) rather than as channel planes. Only
    /// a label: the values stay in planes and the host transposes them when asked.
    rows: bool,
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Input,
    /// `conv` indexes [`YuNetModel::convs`].
    Conv {
        conv: usize,
        cin: usize,
        kernel: usize,
        stride: usize,
        groups: usize,
    },
    Relu,
    MaxPool,
    Upsample,
    Add,
    ToRows,
    Sigmoid,
}

/// A convolution's weights `[out, in / groups, k, k]` and bias `[out]`.
struct ConvWeights {
    weight: Vec<f32>,
    bias: Vec<f32>,
}

/// The output nodes of one stride's heads, in [`HEAD_KINDS`] order.
#[derive(Clone, Copy, Debug)]
struct Level {
    stride: usize,
    heads: [usize; 4],
}

/// A YuNet architecture with its weights, checked against each other: every node's inputs
/// come before it with the channels it expects, every weight is present, finite and shaped as
/// its node needs, and the heads FaceDetectorYN decodes are all there.
pub struct YuNetModel {
    name: String,
    nodes: Vec<Node>,
    convs: Vec<ConvWeights>,
    levels: Vec<Level>,
    divisor: usize,
}

impl YuNetModel {
    /// The architecture at `json` with the weights at `weights`.
    pub fn load(json: &Path, weights: &Path) -> Result<Self> {
        let read = |path: &Path| std::fs::read(path).map_err(|e| file_err(path, format!("cannot read: {e}")));
        Self::parse(&read(json)?, json, &read(weights)?, weights)
    }

    /// The shipped YuNet-n: `data/yunet/` under the working directory, else under the crate's
    /// source tree.
    pub fn shipped() -> Result<Self> {
        let here = Path::new(SHIPPED_DIR);
        let dir = if here.is_dir() { here.to_path_buf() } else { Path::new(env!("CARGO_MANIFEST_DIR")).join(SHIPPED_DIR) };
        Self::load(&dir.join(SHIPPED_ARCHITECTURE), &dir.join(SHIPPED_WEIGHTS))
    }

    /// From the two files' contents (for front ends without a file system); errors call them
    /// "architecture JSON" and "weights".
    pub fn from_bytes(json: &[u8], weights: &[u8]) -> Result<Self> {
        Self::parse(json, Path::new("architecture JSON"), weights, Path::new("weights"))
    }

    fn parse(json: &[u8], json_name: &Path, weights: &[u8], weights_name: &Path) -> Result<Self> {
        let config = YuNetConfig::from_json(json, json_name)?;
        let tensors = SafeTensors::deserialize(weights).map_err(|e| file_err(weights_name, format!("not a valid safetensors file ({e}); was it cut off?")))?;
        Self::new(&config, json_name, &tensors, weights_name)
    }

    /// Checks `config` and reads its weights from `tensors`; `json_name` and `weights_name`
    /// are what errors call the two.
    fn new(config: &YuNetConfig, json_name: &Path, tensors: &SafeTensors, weights_name: &Path) -> Result<Self> {
        let divisor = check_input(&config.input).map_err(|e| file_err(json_name, format!("input: {e}")))?;
        if config.nodes.len() > MAX_NODES {
            return Err(file_err(json_name, format!("{} nodes, more than {MAX_NODES}", config.nodes.len())));
        }
        let input = Node { name: config.input.name.clone(), op: Op::Input, inputs: vec![], channels: 3, factor: 1, rows: false };
        let mut nodes = vec![input];
        let mut index = HashMap::from([(config.input.name.as_str(), 0)]);
        let mut convs = Vec::new();
        for spec in &config.nodes {
            let at = |e: String| file_err(json_name, format!("node {}: {e}", quote_prefix(&spec.name, QUOTE_CHARS)));
            let inputs = spec
                .inputs
                .iter()
                .map(|name| index.get(name.as_str()).copied().ok_or_else(|| at(format!("input {} is not the graph input or a node before it", quote_prefix(name, QUOTE_CHARS)))))
                .collect::<Result<Vec<_>>>()?;
            let node = check_node(spec, &inputs, &nodes, divisor, convs.len()).map_err(at)?;
            if let (OpSpec::Conv2d { weight, bias, .. }, Op::Conv { cin, kernel, groups, .. }) = (&spec.op, node.op) {
                let weight = read_tensor(tensors, weight, &[node.channels, cin / groups, kernel, kernel], &spec.name).map_err(|e| file_err(weights_name, e))?;
                let bias = read_tensor(tensors, bias, &[node.channels], &spec.name).map_err(|e| file_err(weights_name, e))?;
                convs.push(ConvWeights { weight, bias });
            }
            if index.insert(&spec.name, nodes.len()).is_some() {
                return Err(at("a second node of that name".into()));
            }
            nodes.push(node);
        }
        let levels = check_outputs(config, &index, &nodes, divisor).map_err(|e| file_err(json_name, e))?;
        Ok(YuNetModel { name: config.name.clone(), nodes, convs, levels, divisor })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The size the network runs at for an image of `width` x `height` (both at least 1):
    /// each side rounded up to a multiple of the size divisor (32 for YuNet).
    pub fn padded_size(&self, width: usize, height: usize) -> (usize, usize) {
        (width.next_multiple_of(self.divisor), height.next_multiple_of(self.divisor))
    }

    /// The network input for `image`, as FaceDetectorYN's `blobFromImage` builds it: B, G and
    /// R planes of `padded_size` floats 0..255, the image at the top left, zeros elsewhere.
    pub fn blob(&self, image: &RgbImage) -> Vec<f32> {
        let padded = self.padded_size(image.width() as usize, image.height() as usize);
        let mut blob = vec![0.0; 3 * padded.0 * padded.1];
        fill_blob(image, padded, &mut blob);
        blob
    }

    fn node(&self, name: &str) -> Result<usize> {
        self.nodes.iter().position(|n| n.name == name).ok_or_else(|| Error::Invalid(format!("YuNet model {}: no node {}", self.name, quote_prefix(name, QUOTE_CHARS))))
    }
}

/// The size divisor, once the input is what FaceDetectorYN feeds.
fn check_input(input: &InputSpec) -> std::result::Result<usize, String> {
    if input.channels != 3 || input.channel_order != "bgr" || input.scale != 1.0 || input.mean.len() != 3 || input.mean.iter().any(|&m| m != 0.0) {
        return Err(format!(
            "{} channels in order {}, scale {} and mean {:?}; FaceDetectorYN feeds 3 channels in order bgr, scale 1 and mean [0, 0, 0]",
            input.channels,
            quote_prefix(&input.channel_order, QUOTE_CHARS),
            input.scale,
            input.mean
        ));
    }
    if !(1..=MAX_DIVISOR).contains(&input.size_divisor) {
        return Err(format!("size_divisor {} outside 1..={MAX_DIVISOR}", input.size_divisor));
    }
    Ok(input.size_divisor)
}

/// `spec` as a [`Node`], its inputs being `inputs` (indices into `nodes`); `conv` is the index
/// its weights will have if it is a convolution. Every node keeps an exact fraction of the
/// padded input's size, so that its shape is known for every input size.
fn check_node(spec: &NodeSpec, inputs: &[usize], nodes: &[Node], divisor: usize, conv: usize) -> std::result::Result<Node, String> {
    let arity = if matches!(spec.op, OpSpec::Add) { 2 } else { 1 };
    if inputs.len() != arity {
        return Err(format!("{} inputs, expected {arity}", inputs.len()));
    }
    let x = &nodes[inputs[0]];
    if !(1..=MAX_CHANNELS).contains(&spec.channels) {
        return Err(format!("{} channels, outside 1..={MAX_CHANNELS}", spec.channels));
    }
    let x_name = quote_prefix(&x.name, QUOTE_CHARS);
    let same_channels = || if spec.channels == x.channels { Ok(()) } else { Err(format!("{} channels from an input of {}", spec.channels, x.channels)) };
    let planes = || if x.rows { Err(format!("its input {x_name} is laid out as rows, not channel planes")) } else { Ok(()) };
    let (op, factor) = match spec.op {
        OpSpec::Conv2d { in_channels, kernel, stride, padding, dilation, groups, .. } => {
            planes()?;
            if in_channels != x.channels {
                return Err(format!("in_channels {in_channels}, but its input {x_name} has {}", x.channels));
            }
            // Odd kernels with half their width of padding and strides of 1 or 2 keep every
            // side an exact fraction of the input's: (side + 2 * padding - kernel) / stride + 1
            // is side / stride whenever the stride divides the side.
            if kernel % 2 == 0 || kernel > MAX_KERNEL || padding != kernel / 2 || dilation != 1 || !(1..=2).contains(&stride) {
                return Err(format!(
                    "kernel {kernel}, padding {padding}, dilation {dilation}, stride {stride}: only odd kernels up to {MAX_KERNEL} with padding kernel / 2, dilation 1 and stride 1 or 2 are supported"
                ));
            }
            if groups == 0 || !in_channels.is_multiple_of(groups) || !spec.channels.is_multiple_of(groups) {
                return Err(format!("{groups} groups do not divide {in_channels} input and {} output channels", spec.channels));
            }
            (Op::Conv { conv, cin: in_channels, kernel, stride, groups }, x.factor * stride)
        }
        OpSpec::MaxPool { size, stride, padding, ceil_mode } => {
            planes()?;
            same_channels()?;
            if (size, stride, padding, ceil_mode) != (2, 2, 0, false) {
                return Err(format!("pooling of size {size}, stride {stride}, padding {padding}, ceil_mode {ceil_mode}: only 2, 2, 0, false is supported"));
            }
            (Op::MaxPool, x.factor * 2)
        }
        OpSpec::UpsampleNearest { scale } => {
            planes()?;
            same_channels()?;
            if scale != 2 || !x.factor.is_multiple_of(2) {
                return Err(format!("upsampling by {scale} an input at 1/{} of the image's size: only 2, from 1/2 or smaller, is supported", x.factor));
            }
            (Op::Upsample, x.factor / 2)
        }
        OpSpec::Add => {
            same_channels()?;
            let y = &nodes[inputs[1]];
            if (y.channels, y.factor, y.rows) != (x.channels, x.factor, x.rows) {
                return Err(format!("adds {x_name} and {}, of different shapes", quote_prefix(&y.name, QUOTE_CHARS)));
            }
            (Op::Add, x.factor)
        }
        OpSpec::ToRows => {
            planes()?;
            same_channels()?;
            (Op::ToRows, x.factor)
        }
        OpSpec::Relu | OpSpec::Sigmoid => {
            same_channels()?;
            (if matches!(spec.op, OpSpec::Relu) { Op::Relu } else { Op::Sigmoid }, x.factor)
        }
    };
    if factor > divisor || !divisor.is_multiple_of(factor) {
        return Err(format!("at 1/{factor} of the input's size, which the size divisor {divisor} does not keep whole"));
    }
    Ok(Node { name: spec.name.clone(), op, inputs: inputs.to_vec(), channels: spec.channels, factor, rows: x.rows || matches!(op, Op::ToRows) })
}

/// The tensor `name` of `tensors`, which node `node` needs shaped `shape`, as finite floats.
fn read_tensor(tensors: &SafeTensors, name: &str, shape: &[usize], node: &str) -> std::result::Result<Vec<f32>, String> {
    let (tensor, node) = (quote_prefix(name, QUOTE_CHARS), quote_prefix(node, QUOTE_CHARS));
    let view = tensors.tensor(name).map_err(|_| format!("no tensor {tensor}, which node {node} needs (are these the weights of another architecture?)"))?;
    if view.dtype() != Dtype::F32 || view.shape() != shape {
        return Err(format!("tensor {tensor} is {:?} {:?}; node {node} needs F32 {shape:?}", view.dtype(), view.shape()));
    }
    let data: Vec<f32> = view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    match data.iter().position(|v| !v.is_finite()) {
        Some(i) => Err(format!("tensor {tensor} holds {} at element {i}; refusing weights that are not finite", data[i])),
        None => Ok(data),
    }
}

/// The heads of each stride, once every one FaceDetectorYN decodes is an output of the right
/// shape and layout.
fn check_outputs(config: &YuNetConfig, index: &HashMap<&str, usize>, nodes: &[Node], divisor: usize) -> std::result::Result<Vec<Level>, String> {
    if config.strides.is_empty() || config.strides.len() > 8 {
        return Err(format!("{} strides, expected 1 to 8", config.strides.len()));
    }
    let mut levels = Vec::new();
    for (i, &stride) in config.strides.iter().enumerate() {
        if stride == 0 || !divisor.is_multiple_of(stride) || config.strides[..i].contains(&stride) {
            return Err(format!("stride {stride} must be positive, divide the size divisor {divisor} and appear once"));
        }
        let mut heads = [0; 4];
        for (head, kind) in heads.iter_mut().zip(HEAD_KINDS) {
            let mut found = config.outputs.iter().filter(|o| o.kind == kind && o.stride == stride);
            let (Some(output), None) = (found.next(), found.next()) else {
                return Err(format!("not exactly one {} output at stride {stride} (the decoder needs cls, obj, bbox and kps at every stride)", kind.name()));
            };
            let name = quote_prefix(&output.name, QUOTE_CHARS);
            let &at = index.get(output.node.as_str()).ok_or_else(|| format!("output {name} names node {}, which the graph does not have", quote_prefix(&output.node, QUOTE_CHARS)))?;
            let node = &nodes[at];
            if output.channels != kind.channels() || node.channels != kind.channels() || node.factor != stride || !node.rows {
                return Err(format!(
                    "output {name}: node {} gives {} channels at 1/{} of the input{}; a {} head at stride {stride} needs {} channels as rows",
                    quote_prefix(&node.name, QUOTE_CHARS),
                    node.channels,
                    node.factor,
                    if node.rows { "" } else { " as channel planes" },
                    kind.name(),
                    kind.channels()
                ));
            }
            *head = at;
        }
        levels.push(Level { stride, heads });
    }
    if config.outputs.len() != 4 * levels.len() {
        return Err(format!("{} outputs; the decoder reads {}, four a stride", config.outputs.len(), 4 * levels.len()));
    }
    Ok(levels)
}

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

/// One kernel call of a plan; tensors by index into [`Plan::tensors`].
#[derive(Clone, Copy, Debug)]
enum Step {
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
struct Layout {
    padded: (usize, usize),
    /// Images run together, each tensor holding one after another.
    batch: usize,
    /// Of all tensors, at most [`MAX_ACTIVATION_BYTES`].
    bytes: u64,
    steps: Vec<Step>,
    /// Elements of each tensor (tensor 0 is the input).
    tensors: Vec<usize>,
    argmax: Vec<usize>,
    /// Each node's tensor and how many steps have run when it holds the node's value; `None`
    /// for a convolution fused with the node after it, whose own value is never stored.
    values: Vec<Option<(usize, usize)>>,
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
            return Err(Error::Invalid(format!("YuNet at {pw}x{ph}{images} needs more than {} MiB of activations (mien::detect::yunet::MAX_ACTIVATION_BYTES)", MAX_ACTIVATION_BYTES >> 20)));
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

/// The buffers of one padded size and batch, allocated once for every frame of that size.
struct Plan<B: Backend> {
    layout: Layout,
    tensors: Vec<B::Tensor>,
    argmax: Vec<B::Ints>,
    /// The input as the host builds it; the padding stays zero from frame to frame.
    staging: Vec<f32>,
}

impl<B: Backend> Plan<B> {
    fn new(backend: &B, model: &YuNetModel, padded: (usize, usize), batch: usize) -> Result<Self> {
        let layout = Layout::new(model, padded, batch, backend.pairs_pointwise_depthwise())?;
        let tensors = layout.tensors.iter().map(|&n| backend.tensor(n)).collect::<Result<_>>()?;
        let argmax = layout.argmax.iter().map(|&n| backend.ints(n)).collect::<Result<_>>()?;
        Ok(Plan { staging: vec![0.0; layout.tensors[0]], layout, tensors, argmax })
    }

    fn run(&self, backend: &B, weights: &[(B::Tensor, B::Tensor)], step: &Step, precision: Precision) -> Result<()> {
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
        let model = self.model.clone();
        // The faces of image `image` of the `count` whose heads each hold one after another.
        let faces_of = |heads: &[Vec<f32>], count: usize, image: usize| {
            let own: Vec<&[f32]> = heads.iter().map(|h| &h[image * (h.len() / count)..][..h.len() / count]).collect();
            suppress(&decode(&model.levels, &own, padded, params.score_threshold), params)
        };
        if images.len() > 1 && self.apart != Some((padded, images.len())) {
            let outputs: Vec<usize> = model.levels.iter().flat_map(|l| l.heads).collect();
            match self.forward(padded, images.len(), |blob| fill_blobs(images, padded, blob), &outputs).await {
                Ok(heads) => return Ok((0..images.len()).map(|i| faces_of(&heads, images.len(), i)).collect()),
                // Refused by the device or the activation limit: each image alone may fit (and
                // says why if it does not either).
                Err(Error::TooLarge { .. } | Error::Invalid(_)) => {
                    self.plan = None;
                    self.apart = Some((padded, images.len()));
                }
                Err(e) => return Err(e),
            }
        }
        let mut found = Vec::with_capacity(images.len());
        for image in images {
            let heads = self.heads(image, padded).await?;
            found.push(faces_of(&heads, 1, 0));
        }
        Ok(found)
    }

    /// [`YuNet::detect_async`], waited for.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn detect(&mut self, image: &RgbImage, params: &YuNetParams) -> Result<Vec<FaceBox>> {
        pollster::block_on(self.detect_async(image, params))
    }

    /// The 12 head outputs for `image`, here or, when the device refuses the size, on the CPU.
    async fn heads(&mut self, image: &RgbImage, padded: (usize, usize)) -> Result<Vec<Vec<f32>>> {
        let outputs: Vec<usize> = self.model.levels.iter().flat_map(|l| l.heads).collect();
        let fill = |blob: &mut [f32]| fill_blob(image, padded, blob);
        let reason = match &self.refused {
            Some((size, reason)) if *size == padded => reason.clone(),
            _ => match self.forward(padded, 1, fill, &outputs).await {
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
        cpu.forward(padded, 1, fill, &outputs).await
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
        if self.plan.as_ref().is_none_or(|p| (p.layout.padded, p.layout.batch) != (padded, batch)) {
            // The old buffers go first: a new size must not hold both.
            self.plan = None;
            self.plan = Some(Plan::new(&self.backend, &self.model, padded, batch)?);
        }
        let plan = self.plan.as_mut().expect("planned above");
        let mut wanted = Vec::with_capacity(nodes.len());
        for &n in nodes {
            let name = quote_prefix(&self.model.nodes[n].name, QUOTE_CHARS);
            let value =
                plan.layout.values[n].ok_or_else(|| Error::Invalid(format!("YuNet node {name} runs inside the node after it (a ReLU or a depthwise convolution); its own output is not kept")))?;
            wanted.push(value);
        }
        fill(&mut plan.staging);
        let plan = &*plan;
        let backend = &self.backend;
        backend.write(&plan.tensors[0], &plan.staging)?;
        let mut pending: Vec<Option<B::Pending<f32>>> = nodes.iter().map(|_| None).collect();
        let mut read_ready = |done: usize| -> Result<()> {
            for (slot, &(tensor, after)) in pending.iter_mut().zip(&wanted) {
                if after == done {
                    *slot = Some(backend.read_later(&plan.tensors[tensor])?);
                }
            }
            Ok(())
        };
        read_ready(0)?;
        for (k, step) in plan.layout.steps.iter().enumerate() {
            plan.run(backend, &self.weights, step, self.precision)?;
            read_ready(k + 1)?;
        }
        let mut values = Vec::with_capacity(pending.len());
        for p in pending {
            values.push(backend.collect_async(p.expect("every value is ready after some step")).await?);
        }
        Ok(values)
    }
}

/// FaceDetectorYN's candidates: every cell of every stride scoring at least `threshold`, in
/// stride order then row-major, with its arithmetic in f32 and in its order. `heads` holds
/// the outputs of `levels` in order, each as channel planes.
fn decode(levels: &[Level], heads: &[&[f32]], (pw, ph): (usize, usize), threshold: f32) -> Vec<FaceBox> {
    let mut faces = Vec::new();
    for (level, outputs) in levels.iter().zip(heads.chunks_exact(4)) {
        let [cls, obj, bbox, kps] = [outputs[0], outputs[1], outputs[2], outputs[3]];
        let (cols, rows) = (pw / level.stride, ph / level.stride);
        let cells = cols * rows;
        let s = level.stride as f32;
        for i in 0..cells {
            let score = (cls[i].clamp(0.0, 1.0) * obj[i].clamp(0.0, 1.0)).sqrt();
            if score < threshold {
                continue;
            }
            let (c, r) = ((i % cols) as f32, (i / cols) as f32);
            let (cx, cy) = ((c + bbox[i]) * s, (r + bbox[cells + i]) * s);
            // OpenCV calls glibc's expf, which rounds correctly; exp in f64 rounded to f32 gives
            // the same on any platform (tools/yunet_reference.py does this too).
            let w = (bbox[2 * cells + i] as f64).exp() as f32 * s;
            let h = (bbox[3 * cells + i] as f64).exp() as f32 * s;
            let landmarks = std::array::from_fn(|n| [(kps[2 * n * cells + i] + c) * s, (kps[(2 * n + 1) * cells + i] + r) * s]);
            faces.push(FaceBox { x: cx - w / 2.0, y: cy - h / 2.0, w, h, landmarks, score });
        }
    }
    faces
}

/// OpenCV's `NMSBoxes` as FaceDetectorYN calls it (eta 1), on the boxes truncated to integers:
/// the candidates strictly above the score threshold, best first (ties in decoding order),
/// the first `top_k`, then each kept unless it overlaps a kept one by more than the NMS
/// threshold. A single candidate is returned as it is, as FaceDetectorYN does.
///
/// On the host rather than the device: there are a few hundred candidates at most, the greedy
/// loop is sequential (each decision depends on every one before it), and the candidates have
/// been read back for decoding anyway; a GPU pass would cost a submission and a second readback
/// to save microseconds.
fn suppress(candidates: &[FaceBox], params: &YuNetParams) -> Vec<FaceBox> {
    if candidates.len() <= 1 {
        return candidates.to_vec();
    }
    let mut order: Vec<usize> = (0..candidates.len()).filter(|&i| candidates[i].score > params.score_threshold).collect();
    order.sort_by(|&a, &b| candidates[b].score.partial_cmp(&candidates[a].score).unwrap_or(Ordering::Equal));
    if params.top_k > 0 {
        order.truncate(params.top_k);
    }
    let rects: Vec<[i64; 4]> = candidates.iter().map(|f| [f.x, f.y, f.w, f.h].map(|v| i64::from(v as i32))).collect();
    let mut kept: Vec<usize> = Vec::new();
    for i in order {
        if kept.iter().all(|&k| overlap(&rects[i], &rects[k]) <= params.nms_threshold) {
            kept.push(i);
        }
    }
    kept.into_iter().map(|i| candidates[i]).collect()
}

/// OpenCV's `rectOverlap`: `1.f - (float)jaccardDistance(a, b)`, the distance in f64 on the
/// integer areas; 1 for two empty rectangles.
fn overlap(a: &[i64; 4], b: &[i64; 4]) -> f32 {
    let (area_a, area_b) = (a[2] * a[3], b[2] * b[3]);
    if area_a + area_b <= 0 {
        return 1.0;
    }
    let iw = (a[0] + a[2]).min(b[0] + b[2]) - a[0].max(b[0]);
    let ih = (a[1] + a[3]).min(b[1] + b[3]) - a[1].max(b[1]);
    let inter = if iw > 0 && ih > 0 { iw * ih } else { 0 };
    1.0 - (1.0 - inter as f64 / (area_a + area_b - inter) as f64) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn face(x: f32, y: f32, w: f32, h: f32, score: f32) -> FaceBox {
        FaceBox { x, y, w, h, landmarks: [[0.0; 2]; 5], score }
    }

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
            let err = Layout::new(&model, (8192, 8192), 1, pair_units).err().unwrap().to_string();
            assert!(err.contains("MAX_ACTIVATION_BYTES"), "{err}");
        }
    }

    #[test]
    fn overlap_is_opencvs_on_truncated_rectangles() {
        assert_eq!(overlap(&[0, 0, 10, 10], &[0, 0, 10, 10]), 1.0);
        assert_eq!(overlap(&[0, 0, 10, 10], &[10, 0, 10, 10]), 0.0);
        assert_eq!(overlap(&[0, 0, 10, 10], &[5, 0, 10, 10]), 1.0 - (1.0 - 50.0 / 150.0f64) as f32);
        assert_eq!(overlap(&[3, 3, 0, 0], &[3, 3, 0, 0]), 1.0);
    }

    #[test]
    fn suppression_truncates_toward_zero_and_cuts_candidates_before_nms() {
        let p = YuNetParams { score_threshold: 0.5, nms_threshold: 0.2, top_k: 0 };
        // -1.9 truncates to -1, not -2: [-1, 9) overlaps [5, 15) by 4 / 16 = 0.25 (rounding
        // down, 3 / 17 = 0.18 would keep both).
        let twins = [face(-1.9, 0.0, 10.0, 10.0, 0.9), face(5.0, 0.0, 10.0, 10.0, 0.8)];
        assert_eq!(suppress(&twins, &p), vec![twins[0]]);
        // Ties keep decoding order; a score at the threshold is dropped by NMS...
        let far = [face(0.0, 0.0, 5.0, 5.0, 0.7), face(50.0, 0.0, 5.0, 5.0, 0.7), face(90.0, 0.0, 5.0, 5.0, 0.5)];
        assert_eq!(suppress(&far, &p), vec![far[0], far[1]]);
        // ... but not when it is the only candidate.
        assert_eq!(suppress(&far[2..], &p), vec![far[2]]);
        // top_k limits the candidates, not the faces.
        assert_eq!(suppress(&[twins[0], twins[1], far[1]], &YuNetParams { top_k: 2, ..p }), vec![twins[0]]);
    }
}
