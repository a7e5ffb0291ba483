//! The wgpu context: adapter choice, a device opened with the adapter's real limits, a pipeline
//! cache, typed buffers, and recording of kernel dispatches with optional timestamp queries.

mod buffer;
mod oneshot;
mod record;
pub mod shaders;

pub use buffer::{pack_bytes, GpuBuffer, GpuSlice};
pub use record::{append_timeline, Finished, HostTiming, PassTiming, Readback, Recorder, Submitted};

use crate::error::{Error, Result};
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

/// Which wgpu backend to look for adapters on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum BackendChoice {
    #[default]
    Auto,
    Vulkan,
    Metal,
    Dx12,
    Gl,
}

impl BackendChoice {
    pub fn backends(self) -> wgpu::Backends {
        match self {
            BackendChoice::Auto => wgpu::Backends::PRIMARY,
            BackendChoice::Vulkan => wgpu::Backends::VULKAN,
            BackendChoice::Metal => wgpu::Backends::METAL,
            BackendChoice::Dx12 => wgpu::Backends::DX12,
            BackendChoice::Gl => wgpu::Backends::GL,
        }
    }
}

/// Where the numeric work runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum DeviceChoice {
    /// A real GPU when there is one; the CPU backend when the only adapter is a software one.
    #[default]
    Auto,
    /// The CPU backend.
    Cpu,
    /// wgpu on whatever adapter exists, software ones included (the tests use this).
    Gpu,
}

/// Opens the GPU that `choice` asks for, or returns None to mean the CPU backend.
#[cfg(not(target_arch = "wasm32"))]
pub fn select(choice: DeviceChoice, options: &GpuOptions) -> Result<Option<Gpu>> {
    match choice {
        DeviceChoice::Cpu => Ok(None),
        DeviceChoice::Gpu => Gpu::new(options).map(Some),
        DeviceChoice::Auto => {
            let named = options.adapter.is_some();
            let adapter = match choose(enumerate(options.backend), options.adapter.as_deref()) {
                Ok(adapter) => adapter,
                // An adapter the user named and that is not there is a mistake to report, not
                // a reason to run somewhere else.
                Err(e) if named => return Err(e),
                Err(_) => {
                    log::info!("no GPU adapter: using the CPU backend");
                    return Ok(None);
                }
            };
            if !named && adapter.get_info().device_type == wgpu::DeviceType::Cpu {
                // A software rasteriser is many times slower than the CPU backend on the same cores.
                log::info!("only a software adapter ({}): using the CPU backend", adapter.get_info().name);
                return Ok(None);
            }
            Gpu::open(adapter, options).map(Some)
        }
    }
}

/// How to pick and open the adapter.
#[derive(Clone, Debug, Default)]
pub struct GpuOptions {
    pub backend: BackendChoice,
    /// An index into the adapter list (as `mien devices` prints it) or part of an adapter's name.
    pub adapter: Option<String>,
    /// Pretend the device's storage-binding limit is this small, so tests can exercise the code
    /// that splits work across several bindings without allocating hundreds of megabytes.
    pub binding_limit_override: Option<u64>,
    /// Use the kernel tiles meant for real GPUs even on a CPU adapter, where wider ones run
    /// faster: so that tests on lavapipe also run the kernels a GPU would.
    pub gpu_tiles: bool,
}

/// What `mien devices` prints for one adapter.
#[derive(Clone, Debug, Serialize)]
pub struct AdapterReport {
    pub index: usize,
    pub name: String,
    pub backend: String,
    pub driver: String,
    pub driver_info: String,
    pub device_type: String,
    pub software: bool,
    pub shader_f16: bool,
    pub subgroups: bool,
    pub subgroup_size: [u32; 2],
    pub timestamps: bool,
    pub max_storage_buffer_binding_size: u64,
    pub max_buffer_size: u64,
    pub max_compute_workgroups_per_dimension: u32,
    pub max_compute_invocations_per_workgroup: u32,
    pub max_compute_workgroup_storage_size: u32,
    pub max_storage_buffers_per_shader_stage: u32,
}

/// Every adapter wgpu can see on the chosen backend(s), in a stable order. `Auto` looks at GL
/// only when Vulkan, Metal and DX12 have nothing: probing EGL prints warnings on headless
/// machines, and a GL adapter is a last resort anyway. In a browser the one adapter is the one
/// the page's `navigator.gpu` offers.
pub async fn enumerate_async(backend: BackendChoice) -> Vec<wgpu::Adapter> {
    let list = |backends: wgpu::Backends| {
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
        desc.backends = backends;
        wgpu::Instance::new(desc).enumerate_adapters(backends)
    };
    match backend {
        BackendChoice::Auto => {
            let primary = list(wgpu::Backends::PRIMARY).await;
            if primary.is_empty() {
                list(wgpu::Backends::GL).await
            } else {
                primary
            }
        }
        other => list(other.backends()).await,
    }
}

/// [`enumerate_async`], waited for.
#[cfg(not(target_arch = "wasm32"))]
pub fn enumerate(backend: BackendChoice) -> Vec<wgpu::Adapter> {
    pollster::block_on(enumerate_async(backend))
}

/// Every adapter on every backend: the primary ones first (so their indices match what
/// `--adapter N` picks with `--backend auto`), then GL.
#[cfg(not(target_arch = "wasm32"))]
pub fn enumerate_all() -> Vec<wgpu::Adapter> {
    let mut all = enumerate(BackendChoice::Vulkan);
    for b in [BackendChoice::Metal, BackendChoice::Dx12, BackendChoice::Gl] {
        all.extend(enumerate(b));
    }
    all
}

pub fn report(index: usize, adapter: &wgpu::Adapter) -> AdapterReport {
    let info = adapter.get_info();
    let limits = adapter.limits();
    let features = adapter.features();
    AdapterReport {
        index,
        name: info.name.clone(),
        backend: format!("{:?}", info.backend),
        driver: info.driver.clone(),
        driver_info: info.driver_info.clone(),
        device_type: format!("{:?}", info.device_type),
        software: info.device_type == wgpu::DeviceType::Cpu,
        shader_f16: features.contains(wgpu::Features::SHADER_F16),
        subgroups: features.contains(wgpu::Features::SUBGROUP),
        subgroup_size: [info.subgroup_min_size, info.subgroup_max_size],
        timestamps: features.contains(wgpu::Features::TIMESTAMP_QUERY),
        max_storage_buffer_binding_size: limits.max_storage_buffer_binding_size,
        max_buffer_size: limits.max_buffer_size,
        max_compute_workgroups_per_dimension: limits.max_compute_workgroups_per_dimension,
        max_compute_invocations_per_workgroup: limits.max_compute_invocations_per_workgroup,
        max_compute_workgroup_storage_size: limits.max_compute_workgroup_storage_size,
        max_storage_buffers_per_shader_stage: limits.max_storage_buffers_per_shader_stage,
    }
}

/// Picks an adapter: the one the user named, else the best real GPU, else whatever exists
/// (a software adapter such as lavapipe).
fn choose(adapters: Vec<wgpu::Adapter>, wanted: Option<&str>) -> Result<wgpu::Adapter> {
    if adapters.is_empty() {
        return Err(Error::NoAdapter(" (on Linux without a GPU install Mesa's lavapipe: apt-get install mesa-vulkan-drivers)".into()));
    }
    if let Some(wanted) = wanted {
        if let Ok(i) = wanted.parse::<usize>() {
            let n = adapters.len();
            return adapters.into_iter().nth(i).ok_or_else(|| Error::NoAdapter(format!(": index {i} asked for, {n} adapters present")));
        }
        let needle = wanted.to_lowercase();
        return adapters.into_iter().find(|a| a.get_info().name.to_lowercase().contains(&needle)).ok_or_else(|| Error::NoAdapter(format!(" whose name contains {wanted:?}")));
    }
    let rank = |a: &wgpu::Adapter| {
        let info = a.get_info();
        let kind = match info.device_type {
            wgpu::DeviceType::DiscreteGpu => 0,
            wgpu::DeviceType::IntegratedGpu => 1,
            wgpu::DeviceType::VirtualGpu => 2,
            wgpu::DeviceType::Other => 3,
            wgpu::DeviceType::Cpu => 4,
        };
        // GL is a last resort: its compute support is the narrowest.
        (kind, info.backend == wgpu::Backend::Gl)
    };
    Ok(adapters.into_iter().min_by_key(rank).expect("non-empty"))
}

/// The open device plus what the kernels need to know about it.
pub struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    pub timestamps: bool,
    /// Kernels take tiles sized for a CPU adapter's wide lanes and large caches (lavapipe)
    /// rather than for a GPU's registers (see [`GpuOptions::gpu_tiles`]).
    pub cpu_tiles: bool,
    /// With `cpu_tiles`: the cores a CPU adapter runs workgroups on (lavapipe starts a thread per
    /// core). Kernels that split work to fill a GPU split it for these instead, since each split
    /// costs partial sums written and read again.
    pub cpu_cores: usize,
    /// With `cpu_tiles` and subgroups of at least 8 lanes: the subgroup size (the largest the
    /// adapter may use) that the wide kernels, which share loads across a subgroup's lanes,
    /// align their work to. `None` where they do not run: on a GPU, or a CPU adapter without
    /// such subgroups.
    pub wide_lanes: Option<u32>,
    binding_limit: u64,
    /// The first error wgpu reported outside an error scope (a validation error in recorded
    /// work, a lost device), handed to the caller at the next wait instead of wgpu's default
    /// handler, which panics.
    uncaptured: Arc<Mutex<Option<String>>>,
    pipelines: Mutex<HashMap<(&'static str, &'static str), Arc<Pipeline>>>,
    /// Scratch buffers no recorder holds, oldest first (see [`Recorder::scratch`]).
    scratch_pool: Mutex<VecDeque<wgpu::Buffer>>,
    /// Uniform buffers for the passes' params, [`record::PARAMS_CHUNK`] bytes each, that no
    /// recorder holds.
    params_pool: Mutex<Vec<wgpu::Buffer>>,
    /// In the browser, the error scopes of [`Gpu::scoped`] still to settle: each op's name and
    /// its scopes' verdict, awaited at the next wait (a page cannot block on them).
    #[cfg(target_arch = "wasm32")]
    deferred_scopes: Mutex<Vec<(String, DeferredScope)>>,
}

#[cfg(target_arch = "wasm32")]
type DeferredScope = std::pin::Pin<Box<dyn std::future::Future<Output = Option<wgpu::Error>> + Send>>;

/// A compiled entry point and the bind-group layout it was built with.
pub struct Pipeline {
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
}

impl Gpu {
    /// Opens the adapter `options` name, or the best one (see [`choose`]).
    pub async fn new_async(options: &GpuOptions) -> Result<Gpu> {
        let adapter = choose(enumerate_async(options.backend).await, options.adapter.as_deref())?;
        Self::open_async(adapter, options).await
    }

    /// [`Gpu::new_async`], waited for.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn new(options: &GpuOptions) -> Result<Gpu> {
        pollster::block_on(Self::new_async(options))
    }

    /// [`Gpu::open_async`], waited for.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open(adapter: wgpu::Adapter, options: &GpuOptions) -> Result<Gpu> {
        pollster::block_on(Self::open_async(adapter, options))
    }

    pub async fn open_async(adapter: wgpu::Adapter, options: &GpuOptions) -> Result<Gpu> {
        let info = adapter.get_info();
        let wanted = wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::SHADER_F16 | wgpu::Features::SUBGROUP;
        let features = adapter.features() & wanted;
        // The adapter's real limits, not wgpu's conservative defaults: buffers of a batch-64
        // model exceed the default 128 MiB on some drivers, and the splitting code uses these.
        let limits = adapter.limits();
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor { label: Some("mien"), required_features: features, required_limits: limits.clone(), ..Default::default() })
            .await
            .map_err(|e| Error::Device { adapter: info.name.clone(), reason: e.to_string() })?;
        let uncaptured = Arc::new(Mutex::new(None));
        let first_error = uncaptured.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            first_error.lock().expect("GPU error slot poisoned").get_or_insert_with(|| e.to_string());
        }));
        let lost = uncaptured.clone();
        device.set_device_lost_callback(move |reason, message| {
            lost.lock().expect("GPU error slot poisoned").get_or_insert_with(|| format!("the device was lost ({reason:?}): {message}"));
        });
        let cpu_tiles = info.device_type == wgpu::DeviceType::Cpu && !options.gpu_tiles;
        let binding_limit = options.binding_limit_override.unwrap_or(limits.max_storage_buffer_binding_size).min(limits.max_storage_buffer_binding_size);
        log::info!("GPU: {} ({:?}, {} {})", info.name, info.backend, info.driver, info.driver_info);
        Ok(Gpu {
            device,
            queue,
            timestamps: features.contains(wgpu::Features::TIMESTAMP_QUERY),
            cpu_tiles,
            cpu_cores: std::thread::available_parallelism().map_or(2, |n| n.get()),
            wide_lanes: (cpu_tiles && features.contains(wgpu::Features::SUBGROUP) && info.subgroup_min_size >= 8).then_some(info.subgroup_max_size),
            info,
            limits,
            binding_limit,
            uncaptured,
            pipelines: Mutex::new(HashMap::new()),
            scratch_pool: Mutex::new(VecDeque::new()),
            params_pool: Mutex::new(Vec::new()),
            #[cfg(target_arch = "wasm32")]
            deferred_scopes: Mutex::new(Vec::new()),
        })
    }

    /// A one-line description: adapter, backend, driver.
    pub fn describe(&self) -> String {
        format!("{} ({:?}, {} {})", self.info.name, self.info.backend, self.info.driver, self.info.driver_info)
    }

    /// How passes are timed here: by the GPU's timestamp queries, or by the host's clock.
    pub fn timing(&self) -> &'static str {
        if self.timestamps {
            "timestamp queries"
        } else {
            "wall clock"
        }
    }

    /// Which tiles the kernels take here, for benchmark reports: those sized for a GPU's
    /// registers, or the wide ones for CPU adapters, whose convolutions also share loads across
    /// a subgroup's lanes (and without subgroups keep the narrow tiles).
    pub fn tiles(&self) -> String {
        match (self.cpu_tiles, self.wide_lanes) {
            (false, _) => "GPU tiles".into(),
            (true, Some(lanes)) => format!("CPU-adapter tiles, convolution loads shared across subgroups of {lanes}"),
            (true, None) => "CPU-adapter tiles, narrow convolutions (no subgroups of 8 or more)".into(),
        }
    }

    /// The largest storage binding a kernel may use, in bytes.
    pub fn binding_limit(&self) -> u64 {
        self.binding_limit
    }

    /// The compiled pipeline for one entry point of a shader, compiled on first use. Its
    /// layout is explicit (binding 0 the uniform params, then one storage buffer per entry of
    /// `writable`), so an entry point may leave some of its module's bindings unused.
    pub fn pipeline(&self, shader: &shaders::Shader, entry: &'static str, writable: &[bool]) -> Result<Arc<Pipeline>> {
        let mut cache = self.pipelines.lock().expect("pipeline cache poisoned");
        if let Some(pipeline) = cache.get(&(shader.name, entry)) {
            return Ok(pipeline.clone());
        }
        let pipeline = self.scoped(entry, || {
            let module = self.device.create_shader_module(wgpu::ShaderModuleDescriptor { label: Some(shader.name), source: wgpu::ShaderSource::Wgsl(shader.source().into()) });
            let buffer = |ty| wgpu::BindingType::Buffer { ty, has_dynamic_offset: false, min_binding_size: None };
            let mut entries = vec![wgpu::BindGroupLayoutEntry { binding: 0, visibility: wgpu::ShaderStages::COMPUTE, ty: buffer(wgpu::BufferBindingType::Uniform), count: None }];
            entries.extend(writable.iter().enumerate().map(|(i, &w)| wgpu::BindGroupLayoutEntry {
                binding: i as u32 + 1,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: buffer(wgpu::BufferBindingType::Storage { read_only: !w }),
                count: None,
            }));
            let layout = self.device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor { label: Some(entry), entries: &entries });
            let pipeline_layout = self.device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor { label: Some(entry), bind_group_layouts: &[Some(&layout)], immediate_size: 0 });
            let pipeline = self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(entry),
                layout: Some(&pipeline_layout),
                module: &module,
                entry_point: Some(entry),
                compilation_options: wgpu::PipelineCompilationOptions { constants: shader.constants, ..Default::default() },
                cache: None,
            });
            Arc::new(Pipeline { pipeline, layout })
        })?;
        cache.insert((shader.name, entry), pipeline.clone());
        Ok(pipeline)
    }

    /// Runs `create` (which creates pipelines or buffers) inside error scopes, so that a
    /// validation or out-of-memory error becomes an error naming `op` rather than a panic.
    /// In the browser the scopes' verdict arrives later, so the error comes from the next wait.
    pub fn scoped<T>(&self, op: &str, create: impl FnOnce() -> T) -> Result<T> {
        let memory = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let out = create();
        let (validation, memory) = (validation.pop(), memory.pop());
        #[cfg(not(target_arch = "wasm32"))]
        if let Some(e) = pollster::block_on(validation).or_else(|| pollster::block_on(memory)) {
            return Err(Error::Gpu { op: op.into(), detail: e.to_string() });
        }
        #[cfg(target_arch = "wasm32")]
        self.deferred_scopes.lock().expect("deferred scopes poisoned").push((
            op.to_string(),
            Box::pin(async move {
                let validation = validation.await;
                validation.or(memory.await)
            }),
        ));
        Ok(out)
    }

    /// The first error of the scopes [`Gpu::scoped`] left to settle in the browser.
    #[cfg(target_arch = "wasm32")]
    async fn settle_scopes(&self) -> Result<()> {
        let pending = std::mem::take(&mut *self.deferred_scopes.lock().expect("deferred scopes poisoned"));
        let mut first = None;
        for (op, verdict) in pending {
            if let Some(e) = verdict.await {
                first.get_or_insert(Error::Gpu { op, detail: e.to_string() });
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// The error wgpu reported outside any scope since the last call, if any.
    fn take_uncaptured(&self, op: &str) -> Result<()> {
        match self.uncaptured.lock().expect("GPU error slot poisoned").take() {
            Some(detail) => Err(Error::Gpu { op: op.into(), detail }),
            None => Ok(()),
        }
    }

    /// A uniform buffer for a recorder's params, from the pool or new.
    fn take_params_chunk(&self) -> wgpu::Buffer {
        self.params_pool.lock().expect("params pool poisoned").pop().unwrap_or_else(|| {
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("params"),
                size: record::PARAMS_CHUNK,
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        })
    }

    /// Params buffers whose work has finished; a few are kept for the next recorders.
    fn return_params_chunks(&self, chunks: Vec<wgpu::Buffer>) {
        let mut pool = self.params_pool.lock().expect("params pool poisoned");
        pool.extend(chunks);
        pool.truncate(8);
    }

    /// Starts recording kernels into one command buffer; `profile` adds a timestamp per pass.
    pub fn recorder(&self, profile: bool) -> Recorder<'_> {
        Recorder::new(self, profile)
    }

    /// Records with `f` and runs it to completion: the simple path for one-off calls and tests.
    pub async fn run_async<T>(&self, f: impl FnOnce(&mut Recorder<'_>) -> Result<T>) -> Result<T> {
        let mut rec = self.recorder(false);
        let out = f(&mut rec)?;
        rec.finish_async().await?;
        Ok(out)
    }

    /// [`Gpu::run_async`], waited for.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn run<T>(&self, f: impl FnOnce(&mut Recorder<'_>) -> Result<T>) -> Result<T> {
        pollster::block_on(self.run_async(f))
    }

    /// Waits until `submission` (by default the latest) and every one before it have run;
    /// an error wgpu reported for that work meanwhile is returned here. Natively this blocks
    /// in `Device::poll`, which also runs the callbacks of buffers mapped meanwhile; in the
    /// browser, where `poll` does nothing, it awaits the queue's word that its work is done.
    pub(crate) async fn wait_for(&self, submission: Option<wgpu::SubmissionIndex>) -> Result<()> {
        #[cfg(not(target_arch = "wasm32"))]
        self.device.poll(wgpu::PollType::Wait { submission_index: submission, timeout: None }).map_err(|e| Error::Gpu { op: "waiting for submitted work".into(), detail: e.to_string() })?;
        #[cfg(target_arch = "wasm32")]
        {
            // The queue runs in order, so its latest work done covers `submission`.
            let _ = submission;
            let (done, work_done) = oneshot::channel();
            self.queue.on_submitted_work_done(move || done.send(()));
            work_done.await;
            self.settle_scopes().await?;
        }
        self.take_uncaptured("submitted work")
    }
}
