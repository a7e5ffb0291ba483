//! The kernel suite (`mien::suite`) on the test adapter: the cases the browser runs on WebGPU,
//! here on lavapipe (and on GL in the test command's second pass).

mod common;

#[test]
fn every_kernel_matches_the_cpu_reference() {
    let gpu = common::gpu();
    let failed: Vec<String> = mien::suite::cases()
        .iter()
        .map(|case| pollster::block_on(mien::suite::run(gpu, case)))
        .filter(|outcome| !outcome.passed)
        .map(|outcome| format!("{}: {}", outcome.name, outcome.detail.unwrap_or_default()))
        .collect();
    assert!(failed.is_empty(), "{} cases failed:\n{}", failed.len(), failed.join("\n"));
}
