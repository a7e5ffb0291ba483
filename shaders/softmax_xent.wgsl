// Softmax + categorical cross-entropy over rows of logits, with integer labels, optional
// per-class weights (Keras' class_weight), label smoothing e (Keras' label_smoothing) and a
// teacher's probabilities q at weight a (distillation): the target of a row is
// t = (1 - a) ((1 - e) * onehot(label) + e / classes) + a q, and
//     loss = (1 / batch) * sum over rows of weight[label] * sum over c of -t[c] log softmax(logits)[c]
// forward writes the probabilities, each row's share of that mean, and counts correct argmaxes;
// backward writes the fused gradient weight[label] * (probs - t) / batch.
// Labels are checked on the host; here a label past the last class is clamped so that a bad
// value can never read out of bounds.

struct Params { batch: u32, classes: u32, smoothing: f32, distill: f32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> labels: array<u32>;
@group(0) @binding(2) var<storage, read> class_weight: array<f32>;
// The teacher's probabilities, [batch][classes]; read only where p.distill > 0.
@group(0) @binding(3) var<storage, read> soft: array<f32>;
// forward: src = logits, dst = probabilities; backward: src = probabilities, dst = dlogits.
@group(0) @binding(4) var<storage, read> src: array<f32>;
@group(0) @binding(5) var<storage, read_write> dst: array<f32>;
@group(0) @binding(6) var<storage, read_write> row_loss: array<f32>;
@group(0) @binding(7) var<storage, read_write> correct: atomic<u32>;

// The target of class c in the row starting at `base` whose label is `label`.
fn wanted(base: u32, c: u32, label: u32) -> f32 {
    let smoothed = select(0.0, 1.0 - p.smoothing, c == label) + p.smoothing / f32(p.classes);
    if (p.distill > 0.0) {
        return (1.0 - p.distill) * smoothed + p.distill * soft[base + c];
    }
    return smoothed;
}

@compute @workgroup_size(64)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = linear_index(wid, nwg, lid, 64u);
    if (row >= p.batch) {
        return;
    }
    let base = row * p.classes;
    var top = src[base];
    var top_at = 0u;
    for (var c = 1u; c < p.classes; c++) {
        if (src[base + c] > top) {
            top = src[base + c];
            top_at = c;
        }
    }
    // Subtracting the row maximum keeps exp() from overflowing.
    var total = 0.0;
    for (var c = 0u; c < p.classes; c++) {
        total += exp(src[base + c] - top);
    }
    let label = min(labels[row], p.classes - 1u);
    // -log softmax = log(total) - (logit - max), exact even where the probability underflows.
    let log_total = log(total);
    var nll = 0.0;
    for (var c = 0u; c < p.classes; c++) {
        dst[base + c] = exp(src[base + c] - top) / total;
        nll += wanted(base, c, label) * (log_total - (src[base + c] - top));
    }
    row_loss[row] = class_weight[label] * nll / f32(p.batch);
    if (top_at == label) {
        atomicAdd(&correct, 1u);
    }
}

@compute @workgroup_size(256)
fn backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid, 256u);
    if (i >= p.batch * p.classes) {
        return;
    }
    let row = i / p.classes;
    let label = min(labels[row], p.classes - 1u);
    dst[i] = class_weight[label] * (src[i] - wanted(row * p.classes, i % p.classes, label)) / f32(p.batch);
}
