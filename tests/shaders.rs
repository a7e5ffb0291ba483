//! Every shader is validated by naga and translated to SPIR-V, MSL, HLSL and GLSL, so a shader
//! that only lavapipe happens to accept cannot slip through to Metal, DX12 or GL users.

use mien::gpu::shaders::{Shader, ALL};
use naga::back::{glsl, hlsl, msl, spv};
use naga::valid::{Capabilities, ValidationFlags, Validator};

/// Whether the shader's code (not its comments) uses subgroup operations: the variants for CPU
/// adapters may, and mien runs them only where the device has subgroups. Every other shader
/// must validate without them.
fn uses_subgroups(src: &str) -> bool {
    src.lines().any(|line| line.split("//").next().is_some_and(|code| code.contains("subgroup")))
}

/// The shader parsed, validated (with the subgroup capability if `subgroups`), and with its
/// `override` constants set as its pipelines set them.
fn validate(shader: &Shader, subgroups: bool) -> (naga::Module, naga::valid::ModuleInfo) {
    let src = shader.source();
    let module = naga::front::wgsl::parse_str(&src).unwrap_or_else(|e| panic!("{}: {}", shader.name, e.emit_to_string(&src)));
    let capabilities = if subgroups { Capabilities::SUBGROUP } else { Capabilities::empty() };
    // parse_str alone accepts some type errors; only the validator rejects them.
    let info = Validator::new(ValidationFlags::all(), capabilities).validate(&module).unwrap_or_else(|e| panic!("{}: {}", shader.name, e.emit_to_string(&src)));
    let constants = shader.constants.iter().map(|&(name, value)| (name.to_string(), value)).collect();
    let (module, info) = naga::back::pipeline_constants::process_overrides(&module, &info, None, &constants).unwrap_or_else(|e| panic!("{}: overrides {:?}: {e}", shader.name, shader.constants));
    (module.into_owned(), info.into_owned())
}

#[test]
fn every_shader_validates_and_translates_to_every_backend_language() {
    for shader in ALL {
        let subgroups = uses_subgroups(&shader.source());
        let (module, info) = validate(shader, subgroups);
        assert!(!module.entry_points.is_empty(), "{} has no entry point", shader.name);
        spv::write_vec(&module, &info, &spv::Options::default(), None).unwrap_or_else(|e| panic!("{} -> SPIR-V: {e}", shader.name));
        let msl_pipeline = msl::PipelineOptions::default();
        msl::write_string(&module, &info, &msl::Options::default(), &msl_pipeline).unwrap_or_else(|e| panic!("{} -> MSL: {e}", shader.name));
        let mut hlsl_out = String::new();
        // Subgroup operations are HLSL's wave intrinsics, from shader model 6.0.
        let shader_model = if subgroups { hlsl::ShaderModel::V6_0 } else { hlsl::Options::default().shader_model };
        let hlsl_options = hlsl::Options { shader_model, ..Default::default() };
        let hlsl_pipeline = hlsl::PipelineOptions::default();
        hlsl::Writer::new(&mut hlsl_out, &hlsl_options, &hlsl_pipeline).write(&module, &info, None).unwrap_or_else(|e| panic!("{} -> HLSL: {e}", shader.name));
        // GLSL is written one entry point at a time; compute needs GLSL ES 3.10 or desktop 4.30.
        for ep in &module.entry_points {
            for version in [glsl::Version::Embedded { version: 310, is_webgl: false }, glsl::Version::Desktop(430)] {
                let options = glsl::Options { version, ..Default::default() };
                let pipeline = glsl::PipelineOptions { shader_stage: ep.stage, entry_point: ep.name.clone(), multiview: None };
                let mut out = String::new();
                glsl::Writer::new(&mut out, &module, &info, &options, &pipeline, Default::default())
                    .and_then(|mut w| w.write().map(|_| ()))
                    .unwrap_or_else(|e| panic!("{}:{} -> GLSL {version:?}: {e}", shader.name, ep.name));
            }
        }
    }
}

#[test]
fn every_file_in_shaders_belongs_to_a_shader() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".wgsl") {
            assert!(ALL.iter().any(|s| s.files.iter().any(|(f, _)| *f == name)), "shaders/{name} is in no shader of gpu::shaders::ALL");
        }
    }
}
