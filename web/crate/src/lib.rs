//! mien in the browser: what the page calls, as JavaScript sees it through wasm-bindgen. The
//! page fetches the models' files and decodes images itself (the browser has both a network
//! and image decoders); everything numeric runs in the library's WGSL kernels on the page's
//! WebGPU device, as natively.
//!
//! Every call that reads the GPU returns a Promise: a page cannot block, so the library's
//! async API is used throughout (`Labeller::faces_async` and the like).

use image::RgbImage;
use mien::augment::Tta;
use mien::detect::cascade::Cascade;
use mien::detect::yunet::{YuNetModel, YuNetParams};
use mien::detect::DetectParams;
use mien::gpu::PassTiming;
use mien::gpu::{Gpu, GpuOptions};
use mien::nn::{Backend, Cpu, Ensemble, GpuBackend, Model};
use mien::pipeline::{DetectSize, DetectorChoice, Face, ImageReport, Labeller};
use std::cell::RefCell;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use wasm_bindgen::prelude::*;

#[wasm_bindgen(start)]
fn start() {
    // A panic in Rust would otherwise reach the console as "unreachable executed" alone.
    std::panic::set_hook(Box::new(|info| web_sys::console::error_1(&info.to_string().into())));
}

/// The files a session loads, fetched by the page from `assets/`.
#[wasm_bindgen]
pub struct ModelFiles {
    yunet_json: Vec<u8>,
    yunet_weights: Vec<u8>,
    expression_weights: Vec<u8>,
    haar_cascade: String,
}

#[wasm_bindgen]
impl ModelFiles {
    #[wasm_bindgen(constructor)]
    pub fn new(yunet_json: Vec<u8>, yunet_weights: Vec<u8>, expression_weights: Vec<u8>, haar_cascade: String) -> ModelFiles {
        ModelFiles { yunet_json, yunet_weights, expression_weights, haar_cascade }
    }
}

/// A labeller per detector on one backend, as `mien detect` sets them up by default. A
/// labeller is taken out while it works on an image (None meanwhile), so that a second call
/// before the first has finished is refused rather than interleaved with it.
struct Labellers<B: Backend> {
    yunet: Option<Labeller<'static, B>>,
    haar: Option<Labeller<'static, B>>,
}

impl<B: Backend> Labellers<B> {
    /// `backend` makes each labeller's backend; `gpu` runs the Haar cascade when given.
    fn new(backend: impl Fn() -> B, gpu: Option<&'static Gpu>, files: &ModelFiles, yunet: &Arc<YuNetModel>, cascade: &Cascade) -> mien::Result<Self> {
        let labeller = |detector: DetectorChoice| {
            let backend = backend();
            let model = Model::from_weights(&backend, &files.expression_weights, Path::new("expression weights"))?;
            Labeller::from_parts(backend, gpu, detector, Some(yunet.clone()), Some(Ensemble::new(vec![model])?), Default::default(), true)
        };
        Ok(Labellers {
            yunet: Some(labeller(DetectorChoice::YuNet { params: YuNetParams::DETECT, min_size: 0, size: DetectSize::Full })?),
            haar: Some(labeller(DetectorChoice::Haar { cascade: cascade.clone(), params: DetectParams::default() })?),
        })
    }

    fn slot(&mut self, detector: &str) -> Result<&mut Option<Labeller<'static, B>>, JsValue> {
        match detector {
            "yunet" => Ok(&mut self.yunet),
            "haar" => Ok(&mut self.haar),
            other => Err(js_error(format!("detector {other:?}: expected \"yunet\" or \"haar\""))),
        }
    }
}

/// The page's device and the labellers on it and on the CPU.
struct Session {
    gpu: &'static Gpu,
    /// Profiling: the page shows each pass's GPU time (timestamp queries, where offered).
    on_gpu: Labellers<GpuBackend<'static>>,
    /// The CPU backend compiled to wasm (one thread, SIMD): faster than a software adapter
    /// such as SwiftShader, as natively `--device auto` prefers the CPU to lavapipe.
    on_cpu: Labellers<Cpu>,
    /// The GPU passes of the last image, as JSON.
    last_passes: String,
}

/// Finds and labels the faces of one image with the labeller `labellers` picks for `detector`:
/// each face classified from the views `tta` takes of it: the faces and the GPU passes they took.
async fn label<B: Backend>(
    session: &RefCell<Session>,
    labellers: fn(&mut Session) -> &mut Labellers<B>,
    detector: &str,
    tta: Tta,
    rgb: &RgbImage,
    name: &str,
) -> Result<(Vec<Face>, Vec<PassTiming>), JsValue> {
    let busy = || js_error("mien is busy with another image: await each detect() before the next");
    let mut labeller = labellers(&mut session.borrow_mut()).slot(detector)?.take().ok_or_else(busy)?;
    labeller.set_tta(tta);
    let faces = labeller.faces_async(rgb, &mien::imageio::grey_of(rgb)).await;
    let passes = labeller.take_timings_async().await;
    for warning in labeller.take_warnings() {
        web_sys::console::warn_1(&format!("{name}: {warning}").into());
    }
    *labellers(&mut session.borrow_mut()).slot(detector)? = Some(labeller);
    Ok((faces.map_err(|e| js_error(format!("{name}: {e}")))?, passes.map_err(js_error)?))
}

/// One open session; JavaScript holds it and calls it one image at a time.
#[wasm_bindgen]
pub struct Mien {
    session: Rc<RefCell<Session>>,
}

fn js_error(e: impl std::fmt::Display) -> JsValue {
    JsError::new(&e.to_string()).into()
}

/// Opens the page's WebGPU device and loads the models onto it.
#[wasm_bindgen]
pub async fn open(files: ModelFiles) -> Result<Mien, JsValue> {
    // The page keeps one device for its whole life: leaking it gives the labellers, which
    // borrow it, the 'static lifetime that JavaScript-owned objects need.
    let gpu: &'static Gpu = Box::leak(Box::new(Gpu::new_async(&GpuOptions::default()).await.map_err(js_error)?));
    let yunet_model = Arc::new(YuNetModel::from_bytes(&files.yunet_json, &files.yunet_weights).map_err(js_error)?);
    let cascade = Cascade::parse(&files.haar_cascade, "haarcascade_frontalface_default.xml").map_err(js_error)?;
    let on_gpu = Labellers::new(|| GpuBackend::profiling(gpu), Some(gpu), &files, &yunet_model, &cascade).map_err(js_error)?;
    let on_cpu = Labellers::new(|| Cpu, None, &files, &yunet_model, &cascade).map_err(js_error)?;
    Ok(Mien { session: Rc::new(RefCell::new(Session { gpu, on_gpu, on_cpu, last_passes: "[]".into() })) })
}

#[wasm_bindgen]
impl Mien {
    /// The adapter as JSON: its name, backend and the limits the kernels plan with.
    pub fn adapter(&self) -> String {
        let session = self.session.borrow();
        let (info, limits) = (&session.gpu.info, &session.gpu.limits);
        serde_json::json!({
            "name": info.name,
            // A software adapter (SwiftShader, say): the page then labels on the CPU by default.
            "software": info.device_type == wgpu::DeviceType::Cpu,
            "backend": format!("{:?}", info.backend),
            "device_type": format!("{:?}", info.device_type),
            "timestamps": session.gpu.timestamps,
            "max_storage_buffer_binding_size": limits.max_storage_buffer_binding_size,
            "max_buffer_size": limits.max_buffer_size,
            "max_compute_workgroup_storage_size": limits.max_compute_workgroup_storage_size,
            "max_storage_buffers_per_shader_stage": limits.max_storage_buffers_per_shader_stage,
        })
        .to_string()
    }

    /// The faces in an image of `width` x `height` RGBA pixels (as a canvas gives them) found
    /// by `detector` ("yunet" or "haar") and labelled on `device` ("gpu" or "cpu") from
    /// `views` of each face ("mirror": the face and its mirror image, as `mien detect` labels
    /// stills; "none": the face alone, half the work, as `mien detect` labels videos): a
    /// Promise of the JSON object `mien detect --json` writes for the image, named `name`.
    #[allow(clippy::too_many_arguments)]
    pub fn detect(&self, rgba: Vec<u8>, width: u32, height: u32, name: String, detector: String, device: String, views: String) -> js_sys::Promise {
        let session = self.session.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            let pixels = width as usize * height as usize;
            if rgba.len() != pixels * 4 {
                return Err(js_error(format!("{name}: {} bytes for {width}x{height} RGBA pixels, which need {}", rgba.len(), pixels * 4)));
            }
            let rgb: Vec<u8> = rgba.chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]).collect();
            let rgb = RgbImage::from_raw(width, height, rgb).expect("sized above");
            let tta = match views.as_str() {
                "mirror" => Tta::Mirror,
                "none" => Tta::None,
                other => return Err(js_error(format!("views {other:?}: expected \"mirror\" or \"none\""))),
            };
            let (faces, passes) = match device.as_str() {
                "gpu" => label(&session, |s| &mut s.on_gpu, &detector, tta, &rgb, &name).await?,
                "cpu" => label(&session, |s| &mut s.on_cpu, &detector, tta, &rgb, &name).await?,
                other => return Err(js_error(format!("device {other:?}: expected \"gpu\" or \"cpu\""))),
            };
            let passes: Vec<_> = passes.iter().map(|p| serde_json::json!({ "pass": p.label, "start_ns": p.start_ns, "ns": p.nanos })).collect();
            session.borrow_mut().last_passes = serde_json::Value::from(passes).to_string();
            let report = ImageReport::new(name, (width, height), &faces);
            Ok(serde_json::to_string(&report).map_err(js_error)?.into())
        })
    }

    /// The GPU passes of the last image as JSON: each pass's label, start and duration in
    /// nanoseconds, from timestamp queries (one wall-clock entry where the adapter has none).
    pub fn last_passes(&self) -> String {
        self.session.borrow().last_passes.clone()
    }

    /// The training smoke test (`mien::train::smoke_losses`): `steps` steps at batch `batch` of
    /// the original network, on this page's device and on the CPU reference compiled to wasm.
    /// A Promise of JSON `{"gpu": [losses], "cpu": [losses]}`.
    pub fn train_smoke(&self, steps: usize, batch: usize) -> js_sys::Promise {
        let gpu = self.session.borrow().gpu;
        wasm_bindgen_futures::future_to_promise(async move {
            let on_gpu = mien::train::smoke_losses(&GpuBackend::new(gpu), steps, batch).await.map_err(js_error)?;
            let on_cpu = mien::train::smoke_losses(&mien::nn::Cpu, steps, batch).await.map_err(js_error)?;
            Ok(serde_json::json!({ "gpu": on_gpu, "cpu": on_cpu }).to_string().into())
        })
    }

    /// The kernel suite (`mien::suite`) on this page's device against the CPU reference
    /// compiled to wasm: a Promise of a JSON array with each case's outcome, `on_case` called
    /// with each case's name as it starts.
    pub fn kernel_suite(&self, on_case: js_sys::Function) -> js_sys::Promise {
        let gpu = self.session.borrow().gpu;
        wasm_bindgen_futures::future_to_promise(async move {
            let mut outcomes = Vec::new();
            for case in mien::suite::cases() {
                let _ = on_case.call1(&JsValue::NULL, &case.name.clone().into());
                outcomes.push(mien::suite::run(gpu, &case).await);
            }
            Ok(serde_json::to_string(&outcomes).map_err(js_error)?.into())
        })
    }
}
