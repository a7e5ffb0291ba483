//! How far a model's probabilities can be read as confidences: the reliability of its top
//! class, binned by confidence, and the expected calibration error (ECE) over those bins
//! (Guo et al. 2017: the mean gap between each bin's accuracy and its mean confidence,
//! weighted by the bin's share of the images).

use serde::Serialize;

/// Bins of equal width over [0, 1], as Guo et al. and most reports use.
pub const BINS: usize = 15;

/// The images whose top-class probability fell in one bin.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Bin {
    pub images: usize,
    /// Sum of their top-class probabilities.
    pub confidence_sum: f64,
    /// How many of them the top class got right.
    pub correct: usize,
}

impl Bin {
    pub fn mean_confidence(&self) -> f64 {
        self.confidence_sum / self.images.max(1) as f64
    }
    pub fn accuracy(&self) -> f64 {
        self.correct as f64 / self.images.max(1) as f64
    }
}

/// Confidence bins filled one image at a time.
#[derive(Clone, Debug, Serialize)]
pub struct Reliability {
    pub bins: [Bin; BINS],
}

impl Default for Reliability {
    fn default() -> Self {
        Reliability { bins: [Bin::default(); BINS] }
    }
}

impl Reliability {
    /// Adds one image: its class probabilities and its true class.
    pub fn add(&mut self, probabilities: &[f32], label: usize) {
        let top = crate::data::most_probable(probabilities);
        let confidence = probabilities[top].clamp(0.0, 1.0) as f64;
        // The last bin is closed, so a confidence of exactly 1 counts in it.
        let bin = &mut self.bins[((confidence * BINS as f64) as usize).min(BINS - 1)];
        bin.images += 1;
        bin.confidence_sum += confidence;
        bin.correct += usize::from(top == label);
    }

    /// The expected calibration error: the images' weighted mean of |accuracy - confidence|
    /// over the bins, in [0, 1].
    pub fn ece(&self) -> f64 {
        let total: usize = self.bins.iter().map(|b| b.images).sum();
        self.bins.iter().map(|b| b.images as f64 / total.max(1) as f64 * (b.accuracy() - b.mean_confidence()).abs()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_calibrated_model_has_no_error_and_an_overconfident_one_has_the_gap() {
        let mut calibrated = Reliability::default();
        // Confidence 0.75 and right three times in four.
        for i in 0..4 {
            calibrated.add(&[0.75, 0.25], if i < 3 { 0 } else { 1 });
        }
        assert!(calibrated.ece() < 1e-7, "{}", calibrated.ece());
        let mut overconfident = Reliability::default();
        for i in 0..10 {
            overconfident.add(&[0.05, 0.95], if i < 5 { 1 } else { 0 });
        }
        assert!((overconfident.ece() - 0.45).abs() < 1e-6, "{}", overconfident.ece());
        assert_eq!(overconfident.bins[BINS - 1].images, 10);
    }

    #[test]
    fn a_confidence_of_one_lands_in_the_last_bin() {
        let mut r = Reliability::default();
        r.add(&[1.0, 0.0], 0);
        r.add(&[0.5, 0.5], 1);
        assert_eq!(r.bins[BINS - 1].images, 1);
        assert_eq!(r.bins[7].images, 1, "0.5 * 15 = 7.5 falls in bin 7");
        assert_eq!(r.bins[7].correct, 0, "ties go to the first class");
    }
}
