//! Every WGSL shader, embedded at build time. A shader is a list of files from `shaders/`
//! concatenated: `common.wgsl` first, then the kernel's own file, then any shared core it
//! plugs into (the matrix-product core reads its operands through functions the kernel file
//! defines). A shader may also set `override` constants and compile a variant's lines (see
//! [`Shader::variant`]). The naga test validates and cross-compiles every entry of `ALL`.

pub struct Shader {
    /// Unique per shader, per set of `constants` and of `variant` (the pipeline cache's key).
    pub name: &'static str,
    pub files: &'static [(&'static str, &'static str)],
    /// Values for the shader's `override` declarations, fixed when its pipelines are compiled.
    pub constants: &'static [(&'static str, f64)],
    /// A variant that differs by whole statements: the files' lines that start `//<variant>: `
    /// are compiled in, and stay comments in every other shader built from the files; lines
    /// that start `//!<variant>: ` are the other way round, compiled in every shader but that
    /// variant. (An `override`'s branch would serve, but lavapipe runs such statements slower.)
    pub variant: Option<&'static str>,
}

impl Shader {
    pub fn source(&self) -> String {
        let mut src = String::new();
        for (file, text) in self.files {
            src.push_str(&format!("// ---- shaders/{file} ----\n"));
            for line in text.lines() {
                let code = line.trim_start();
                match self.variant_code(code) {
                    Some(enabled) => src.push_str(&format!("{}{enabled}", &line[..line.len() - code.len()])),
                    None => src.push_str(line),
                }
                src.push('\n');
            }
        }
        src
    }

    /// The code of a variant line (`//name: code` or `//!name: code`) that this shader compiles
    /// in, or `None` for any other line.
    fn variant_code<'l>(&self, line: &'l str) -> Option<&'l str> {
        let marker = line.strip_prefix("//")?;
        let (for_variant, marker) = match marker.strip_prefix('!') {
            Some(rest) => (false, rest),
            None => (true, marker),
        };
        let (name, code) = marker.split_once(": ")?;
        let is_name = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        (is_name && (Some(name) == self.variant) == for_variant).then_some(code)
    }
}

macro_rules! wgsl {
    ($file:literal) => {
        ($file, include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/", $file)))
    };
}

macro_rules! shaders {
    ($($id:ident = $name:literal [$($file:literal),+] $({ $($constant:ident = $value:literal),+ })? $(variant $variant:literal)?;)+) => {
        $(pub const $id: Shader = Shader {
            name: $name,
            files: &[wgsl!("common.wgsl"), $(wgsl!($file)),+],
            constants: &[$($((stringify!($constant), $value)),+)?],
            variant: shaders!(@variant $($variant)?),
        };)+
        pub const ALL: &[&Shader] = &[$(&$id),+];
    };
    (@variant) => { None };
    (@variant $variant:literal) => { Some($variant) };
}

shaders! {
    DENSE = "dense" ["dense.wgsl"];
    // 16 columns a thread, for CPU adapters.
    DENSE_WIDE = "dense_wide" ["dense.wgsl"] { TILE_N = 16.0 } variant "wide";
    // Specialised for products of at most 4 rows (batch-1 inference).
    DENSE_SMALL_M = "dense_small_m" ["dense.wgsl"] { SMALL_M = 1.0 };
    DENSE_PACK = "dense_pack" ["dense_pack.wgsl"];
    DENSE_TRANSPOSE = "dense_transpose" ["dense_transpose.wgsl"];
    // 8 output channels a thread (GPUs), or 16 (CPU adapters); specialised for 3-wide kernels,
    // each kernel row as straight-line code.
    CONV2D = "conv2d" ["conv2d.wgsl"];
    CONV2D_WIDE = "conv2d_wide" ["conv2d.wgsl"] { CO_TILE4 = 4.0 } variant "wide";
    CONV2D_THREE_TAPS = "conv2d_three_taps" ["conv2d.wgsl"] { THREE_TAPS = 1.0 };
    CONV2D_THREE_TAPS_WIDE = "conv2d_three_taps_wide" ["conv2d.wgsl"] { THREE_TAPS = 1.0, CO_TILE4 = 4.0 } variant "wide";
    CONV2D_FILTER_GRAD = "conv2d_filter_grad" ["conv2d_filter_grad.wgsl"];
    CONV2D_FILTER_GRAD_WIDE = "conv2d_filter_grad_wide" ["conv2d_filter_grad.wgsl"] { CO_TILE = 16.0 } variant "wide";
    CONV2D_PACK = "conv2d_pack" ["conv2d_pack.wgsl"];
    CONV2D_PAD = "conv2d_pad" ["conv2d_pad.wgsl"];
    // Stride, padding on each side and groups, for inference: depthwise and grouped entry points.
    CONV2D_GROUPED = "conv2d_grouped" ["conv2d_grouped.wgsl"];
    REDUCE = "reduce" ["reduce.wgsl"];
    MAXPOOL2D = "maxpool2d" ["maxpool2d.wgsl"];
    // 2x2 windows on rows a multiple of 4 long, a pair of outputs a thread.
    MAXPOOL2D_PAIRS = "maxpool2d_pairs" ["maxpool2d_pairs.wgsl"];
    RELU = "relu" ["relu.wgsl"];
    UPSAMPLE = "upsample" ["upsample.wgsl"];
    ADD = "add" ["add.wgsl"];
    SIGMOID = "sigmoid" ["sigmoid.wgsl"];
    YUNET_DECODE = "yunet_decode" ["yunet_decode.wgsl"];
    DROPOUT = "dropout" ["dropout.wgsl"];
    SOFTMAX_XENT = "softmax_xent" ["softmax_xent.wgsl"];
    ADAM = "adam" ["adam.wgsl"];
    SGD = "sgd" ["sgd.wgsl"];
    BATCHNORM_FORWARD = "batchnorm_forward" ["batchnorm_forward.wgsl"];
    BATCHNORM_BACKWARD = "batchnorm_backward" ["batchnorm_backward.wgsl"];
    FMA_CALIBRATION = "fma_calibration" ["fma_calibration.wgsl"];
    SGEMM_CALIBRATION = "sgemm_calibration" ["sgemm_calibration.wgsl"];
    COPY_CALIBRATION = "copy_calibration" ["copy_calibration.wgsl"];
    WARP = "warp" ["warp.wgsl", "bilinear.wgsl"];
    FACE_CROP = "face_crop" ["face_crop.wgsl", "bilinear.wgsl"];
    RESIZE = "resize" ["resize.wgsl"];
    INTEGRAL = "integral" ["integral.wgsl"];
    HAAR_CASCADE = "haar_cascade" ["haar_cascade.wgsl"];
}
