//! YuNet's architecture file and weights, read and checked against each other before anything
//! is allocated.

use super::{fill_blob, QUOTE_CHARS};
use crate::error::{file_err, quote_prefix, Error, Result};
use crate::kernels::yunet_decode::DecodeShape;
use image::RgbImage;
use safetensors::tensor::{Dtype, SafeTensors};
use serde::Deserialize;
use std::collections::HashMap;
use std::path::Path;

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
pub(super) struct Node {
    pub(super) name: String,
    pub(super) op: Op,
    pub(super) inputs: Vec<usize>,
    pub(super) channels: usize,
    /// The padded input's side over this node's (exact: it divides the size divisor).
    pub(super) factor: usize,
    /// Laid out as `[cells, channels]` (after a `to_rows`) rather than as channel planes. Only
    /// a label: the values stay in planes and the host transposes them when asked.
    pub(super) rows: bool,
}

#[derive(Clone, Copy, Debug)]
pub(super) enum Op {
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
pub(super) struct ConvWeights {
    pub(super) weight: Vec<f32>,
    pub(super) bias: Vec<f32>,
}

/// The output nodes of one stride's heads, in [`HEAD_KINDS`] order.
#[derive(Clone, Copy, Debug)]
pub(super) struct Level {
    pub(super) stride: usize,
    pub(super) heads: [usize; 4],
}

impl Level {
    /// Columns and rows of this stride's cells in an image of the `padded` size.
    pub(super) fn grid(&self, (pw, ph): (usize, usize)) -> (usize, usize) {
        (pw / self.stride, ph / self.stride)
    }
}

/// The cells of every stride in an image of the `padded` size: the candidates it can have.
pub(super) fn all_cells(levels: &[Level], padded: (usize, usize)) -> usize {
    levels.iter().map(|l| l.grid(padded)).map(|(cols, rows)| cols * rows).sum()
}

/// Each stride's decoding into lists of `capacity` records an image, its cells numbered after
/// those of the strides before it (FaceDetectorYN's decoding order).
pub(super) fn decode_shapes(levels: &[Level], batch: usize, padded: (usize, usize), capacity: usize, threshold: f32) -> Result<Vec<DecodeShape>> {
    let mut first = 0;
    levels
        .iter()
        .map(|level| {
            let shape = DecodeShape::new(batch, level.grid(padded), level.stride, first, capacity, threshold)?;
            first += shape.cells();
            Ok(shape)
        })
        .collect()
}

/// A YuNet architecture with its weights, checked against each other: every node's inputs
/// come before it with the channels it expects, every weight is present, finite and shaped as
/// its node needs, and the heads FaceDetectorYN decodes are all there.
pub struct YuNetModel {
    name: String,
    pub(super) nodes: Vec<Node>,
    pub(super) convs: Vec<ConvWeights>,
    pub(super) levels: Vec<Level>,
    pub(super) divisor: usize,
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

    pub(super) fn node(&self, name: &str) -> Result<usize> {
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
