//! Softmax with categorical cross-entropy, fused: the forward pass gives probabilities, the
//! batch's mean loss and the count of correct argmaxes; the backward pass gives the gradient
//! with respect to the logits directly, `weight[label] * (probs - onehot) / batch`, which is both
//! cheaper and better conditioned than chaining the two ops' gradients.
//! Labels are class indices (the same as one-hot targets); `class_weight` scales each sample's
//! loss by its class's weight (Keras' class_weight; all ones for the plain loss). With label
//! smoothing e the target is (1 - e) * onehot + e / classes (Keras' label_smoothing). With a
//! teacher's probabilities q (`soft`, a row per sample) at weight a, for distillation (Hinton,
//! Vinyals and Dean, 2015, at temperature 1), the target is (1 - a) times that plus a q.

use super::{check_buf, reduce};
use crate::error::{check_len, shape_err, Result};
use crate::gpu::{shaders, GpuBuffer, Recorder};

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct XentShape {
    pub batch: usize,
    pub classes: usize,
    /// Label smoothing in [0, 1); 0 for the plain loss.
    pub smoothing: f32,
    /// The weight in [0, 1] of the teacher's probabilities in the target; 0 reads none.
    pub distill: f32,
}

impl XentShape {
    /// The plain loss (no smoothing, no teacher) of `batch` rows of `classes`.
    pub fn plain(batch: usize, classes: usize) -> XentShape {
        XentShape { batch, classes, smoothing: 0.0, distill: 0.0 }
    }

    fn check(&self, logits: usize, labels: usize, soft: usize, class_weight: usize) -> Result<()> {
        if self.classes == 0 {
            return Err(shape_err("softmax_xent", "zero classes"));
        }
        if !(0.0..1.0).contains(&self.smoothing) {
            return Err(shape_err("softmax_xent", format!("label smoothing {} is not in [0, 1)", self.smoothing)));
        }
        if !(0.0..=1.0).contains(&self.distill) {
            return Err(shape_err("softmax_xent", format!("the teacher's weight {} is not in [0, 1]", self.distill)));
        }
        check_len("softmax_xent", "logits", logits, self.batch * self.classes)?;
        check_len("softmax_xent", "labels", labels, self.batch)?;
        check_len("softmax_xent", "teacher probabilities", soft, self.batch * self.classes)?;
        check_len("softmax_xent", "class weights", class_weight, self.classes)
    }

    /// A row's target for class `c`, given the row's label and its teacher's probabilities.
    fn target(&self, c: usize, label: usize, soft: &[f32]) -> f32 {
        let smoothed = if c == label { 1.0 - self.smoothing } else { 0.0 } + self.smoothing / self.classes as f32;
        if self.distill > 0.0 {
            (1.0 - self.distill) * smoothed + self.distill * soft[c]
        } else {
            smoothed
        }
    }

    /// Rejects labels that are not class indices, before they reach a kernel.
    pub fn check_labels(&self, labels: &[u32]) -> Result<()> {
        match labels.iter().position(|&l| l as usize >= self.classes) {
            Some(i) => Err(shape_err("softmax_xent", format!("label {} at row {i} is not below {} classes", labels[i], self.classes))),
            None => Ok(()),
        }
    }
}

/// Returns (mean loss, correct count) and writes the probabilities. `soft` holds the teacher's
/// probabilities, a row per sample (read only where `s.distill` > 0).
pub fn forward_cpu(s: XentShape, logits: &[f32], labels: &[u32], soft: &[f32], class_weight: &[f32], probs: &mut [f32]) -> Result<(f32, u32)> {
    s.check(logits.len(), labels.len(), soft.len(), class_weight.len())?;
    check_len("softmax_xent", "probabilities", probs.len(), logits.len())?;
    s.check_labels(labels)?;
    let mut loss = 0.0f32;
    let mut correct = 0;
    for (((row, p), &label), soft) in logits.chunks(s.classes).zip(probs.chunks_mut(s.classes)).zip(labels).zip(soft.chunks(s.classes)) {
        let (top_at, top) = row.iter().copied().enumerate().fold((0, row[0]), |best, (i, v)| if v > best.1 { (i, v) } else { best });
        let total: f32 = row.iter().map(|&v| (v - top).exp()).sum();
        let (label, log_total) = (label as usize, total.ln());
        let mut nll = 0.0;
        // -log softmax = log(total) - (logit - max), exact even where the probability underflows.
        for (c, (p, &v)) in p.iter_mut().zip(row).enumerate() {
            *p = (v - top).exp() / total;
            nll += s.target(c, label, soft) * (log_total - (v - top));
        }
        loss += class_weight[label] * nll / s.batch as f32;
        correct += (top_at == label) as u32;
    }
    Ok((loss, correct))
}

pub fn backward_cpu(s: XentShape, probs: &[f32], labels: &[u32], soft: &[f32], class_weight: &[f32], dlogits: &mut [f32]) -> Result<()> {
    s.check(probs.len(), labels.len(), soft.len(), class_weight.len())?;
    check_len("softmax_xent", "logit gradient", dlogits.len(), probs.len())?;
    s.check_labels(labels)?;
    for (((p, d), &label), soft) in probs.chunks(s.classes).zip(dlogits.chunks_mut(s.classes)).zip(labels).zip(soft.chunks(s.classes)) {
        let w = class_weight[label as usize] / s.batch as f32;
        for (c, (d, &p)) in d.iter_mut().zip(p).enumerate() {
            *d = w * (p - s.target(c, label as usize, soft));
        }
    }
    Ok(())
}

/// Buffers the GPU forward pass writes into.
pub struct XentOutputs<'a> {
    pub probs: &'a GpuBuffer<f32>,
    /// `[batch]` scratch: each row's share of the mean loss.
    pub row_loss: &'a GpuBuffer<f32>,
    /// `[1]` the mean loss.
    pub loss: &'a GpuBuffer<f32>,
    /// `[1]` how many rows' argmax equals the label.
    pub correct: &'a GpuBuffer<u32>,
}

pub fn forward_gpu(rec: &mut Recorder, s: XentShape, logits: &GpuBuffer<f32>, labels: &GpuBuffer<u32>, soft: &GpuBuffer<f32>, class_weight: &GpuBuffer<f32>, out: XentOutputs) -> Result<()> {
    s.check(logits.len(), labels.len(), soft.len(), class_weight.len())?;
    check_buf("softmax_xent", "probabilities", out.probs, logits.len())?;
    check_buf("softmax_xent", "row losses", out.row_loss, s.batch)?;
    check_buf("softmax_xent", "loss", out.loss, 1)?;
    check_buf("softmax_xent", "correct count", out.correct, 1)?;
    rec.clear(out.correct);
    let params = [s.batch as u32, s.classes as u32, s.smoothing.to_bits(), s.distill.to_bits()];
    let bindings = [labels.all(), class_weight.all(), soft.all(), logits.all(), out.probs.all().rw(), out.row_loss.all().rw(), out.correct.all().rw()];
    rec.dispatch_linear("softmax_xent_forward", &shaders::SOFTMAX_XENT, "forward", &params, &bindings, s.batch, 64)?;
    reduce::sum_channels_gpu(rec, out.row_loss.all(), (1, 1, s.batch), out.loss, false)
}

pub fn backward_gpu(rec: &mut Recorder, s: XentShape, probs: &GpuBuffer<f32>, labels: &GpuBuffer<u32>, soft: &GpuBuffer<f32>, class_weight: &GpuBuffer<f32>, dlogits: &GpuBuffer<f32>) -> Result<()> {
    s.check(probs.len(), labels.len(), soft.len(), class_weight.len())?;
    check_buf("softmax_xent", "logit gradient", dlogits, probs.len())?;
    let params = [s.batch as u32, s.classes as u32, s.smoothing.to_bits(), s.distill.to_bits()];
    let bindings = [labels.all(), class_weight.all(), soft.all(), probs.all(), dlogits.all().rw()];
    rec.dispatch_linear("softmax_xent_backward", &shaders::SOFTMAX_XENT, "backward", &params, &bindings, s.batch * s.classes, 256)
}
