//! The `mien` command line.

use crate::bench;
use crate::gpu::{self, BackendChoice, DeviceChoice, GpuOptions};
use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "mien", version, about = "Facial-expression recognition on hand-written WGSL kernels")]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct Global {
    /// wgpu backend to look for adapters on.
    #[arg(long, global = true, value_enum, default_value_t = BackendChoice::Auto)]
    backend: BackendChoice,
    /// Adapter to use: its index in `mien devices` or part of its name.
    #[arg(long, global = true)]
    adapter: Option<String>,
    /// Where to compute: auto picks a real GPU, or the CPU backend when the only adapter is a
    /// software one such as lavapipe; gpu forces wgpu on any adapter.
    #[arg(long, global = true, value_enum, default_value_t = DeviceChoice::Auto)]
    device: DeviceChoice,
    /// More log output (-v info, -vv debug).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
}

impl Global {
    fn gpu_options(&self) -> GpuOptions {
        GpuOptions { backend: self.backend, adapter: self.adapter.clone(), binding_limit_override: None }
    }
}

#[derive(Subcommand)]
enum Command {
    /// List every GPU adapter: name, backend, driver, type, features and key limits.
    Devices {
        #[arg(long)]
        json: bool,
    },
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        suite: BenchSuite,
    },
    /// Find faces in images and label their expressions.
    Detect {
        /// Images or folders of images.
        inputs: Vec<std::path::PathBuf>,
    },
}

#[derive(Subcommand)]
enum BenchSuite {
    /// Every kernel at the seed model's shapes, GPU vs the CPU backend.
    Kernels {
        #[arg(long, default_value_t = 64)]
        batch: usize,
        /// Timed repetitions per kernel, after one warm-up run.
        #[arg(long, default_value_t = 5)]
        reps: usize,
        /// Only kernels whose name contains this.
        #[arg(long)]
        filter: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

pub fn main() -> Result<()> {
    let cli = Cli::parse();
    let level = match cli.global.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(format!("mien={level},wgpu=error,naga=error"))).init();
    match cli.command {
        Command::Devices { json } => devices(&cli.global, json),
        Command::Bench { suite: BenchSuite::Kernels { batch, reps, filter, json } } => bench_kernels(&cli.global, batch, reps, filter.as_deref(), json),
        Command::Detect { inputs } => {
            if inputs.is_empty() {
                bail!("mien detect: name at least one image or folder");
            }
            if let Some(missing) = inputs.iter().find(|p| !p.exists()) {
                bail!("{}: no such file or folder", missing.display());
            }
            println!("placeholder: face detection and expression labels arrive with issue 4; this build has the kernel foundation.");
            println!("try `mien devices` and `mien bench kernels`.");
            Ok(())
        }
    }
}

fn devices(global: &Global, json: bool) -> Result<()> {
    let reports: Vec<_> = gpu::enumerate(global.backend).iter().enumerate().map(|(i, a)| gpu::report(i, a)).collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
        return Ok(());
    }
    if reports.is_empty() {
        println!("no adapters found on backend {:?} (without a GPU on Linux: apt-get install mesa-vulkan-drivers)", global.backend);
    }
    let picked = match gpu::select(global.device, &global.gpu_options()) {
        Ok(Some(g)) => format!("GPU {}", g.describe()),
        Ok(None) => "the CPU backend".into(),
        Err(e) => format!("nothing: {e}"),
    };
    println!("--device {:?} runs on {picked}", global.device);
    for r in &reports {
        println!("[{}] {} ({}, {}{})", r.index, r.name, r.backend, r.device_type, if r.software { ", software" } else { "" });
        println!("    driver: {} {}", r.driver, r.driver_info);
        println!(
            "    f16: {}  subgroups: {} (size {}-{})  timestamps: {}",
            yes(r.shader_f16),
            yes(r.subgroups),
            r.subgroup_size[0],
            r.subgroup_size[1],
            yes(r.timestamps)
        );
        println!(
            "    max storage binding: {} MiB  max buffer: {} MiB  workgroups/dim: {}  invocations/workgroup: {}  workgroup memory: {} KiB  storage buffers/stage: {}",
            r.max_storage_buffer_binding_size >> 20,
            r.max_buffer_size >> 20,
            r.max_compute_workgroups_per_dimension,
            r.max_compute_invocations_per_workgroup,
            r.max_compute_workgroup_storage_size >> 10,
            r.max_storage_buffers_per_shader_stage
        );
    }
    Ok(())
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

fn bench_kernels(global: &Global, batch: usize, reps: usize, filter: Option<&str>, json: bool) -> Result<()> {
    // The kernel benchmark compares the two backends, so it always opens the GPU.
    let gpu = gpu::Gpu::new(&global.gpu_options()).context("the kernel benchmark needs a GPU adapter")?;
    if !json {
        eprintln!("GPU: {} ({})", gpu.describe(), if gpu.timestamps { "timestamp queries" } else { "wall clock" });
        eprintln!("CPU backend: {} rayon threads", rayon::current_num_threads());
    }
    let report = bench::bench_kernels(&gpu, batch, reps.max(1), filter, |sgemm| {
        if !json {
            println!("calibration SGEMM 1024^3 (8x8 outputs per thread, vec4 loads): {sgemm:.2} GFLOP/s");
            println!("{}", bench::table_header());
        }
    }, |r| {
        if !json {
            println!("{}", bench::table_row(r));
        }
    })?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(())
}
