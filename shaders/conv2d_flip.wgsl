// Rearranges OIHW weights w[co, ci, ky, kx] into wf[ci, co, kh-1-ky, kw-1-kx]: the weights of the
// convolution that maps dy back to dx (the data gradient of a stride-1 convolution).

struct Params { cout: u32, cin: u32, kh: u32, kw: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> w: array<f32>;
@group(0) @binding(2) var<storage, read_write> wf: array<f32>;

@compute @workgroup_size(256)
fn flip(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid, 256u);
    let taps = p.kh * p.kw;
    if (i >= p.cout * p.cin * taps) {
        return;
    }
    let co = i / (p.cin * taps);
    let ci = (i / taps) % p.cin;
    let ky = (i % taps) / p.kw;
    let kx = i % p.kw;
    wf[((ci * p.cout + co) * p.kh + (p.kh - 1u - ky)) * p.kw + (p.kw - 1u - kx)] = w[i];
}
