//! PNG plots: class distribution, training curves, confusion matrix. Text is drawn with the
//! DejaVu Sans font shipped in data/fonts, so plots look the same on every machine.

use crate::calibration::{Reliability, BINS};
use crate::error::{file_err, Error, Result};
use crate::train::EpochMetrics;
use plotters::prelude::*;
use std::path::Path;
use std::sync::Once;

pub(crate) const FONT: &str = "sans-serif";

pub(crate) fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The font is compiled in; registering it can only fail on bad bytes.
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, include_bytes!("../data/fonts/DejaVuSans.ttf"));
    });
}

fn err(path: &Path, e: impl std::fmt::Display) -> Error {
    file_err(path, format!("cannot draw the plot: {e}"))
}

/// Grouped bars: images per class in each split.
pub fn class_distribution(path: &Path, classes: &[&str], splits: &[(&str, Vec<usize>)]) -> Result<()> {
    register_font();
    let root = BitMapBackend::new(path, (900, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(path, e))?;
    let top = splits.iter().flat_map(|(_, c)| c.iter().copied()).max().unwrap_or(1) as f64 * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption("Images per class", (FONT, 24))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..classes.len() as f64, 0.0..top)
        .map_err(|e| err(path, e))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(classes.len() * 2 + 1)
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            if (x - i as f64 - 0.5).abs() < 1e-6 {
                classes.get(i).map_or(String::new(), |c| c.to_string())
            } else {
                String::new()
            }
        })
        .y_desc("images")
        .label_style((FONT, 14))
        .draw()
        .map_err(|e| err(path, e))?;
    let width = 0.8 / splits.len() as f64;
    for (s, (name, counts)) in splits.iter().enumerate() {
        let color = Palette99::pick(s).to_rgba();
        chart
            .draw_series(counts.iter().enumerate().map(|(i, &n)| {
                let x0 = i as f64 + 0.1 + s as f64 * width;
                Rectangle::new([(x0, 0.0), (x0 + width, n as f64)], color.filled())
            }))
            .map_err(|e| err(path, e))?
            .label(format!("{name} ({})", counts.iter().sum::<usize>()))
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 15, y + 5)], color.filled()));
    }
    chart.configure_series_labels().border_style(BLACK).background_style(WHITE).label_font((FONT, 14)).draw().map_err(|e| err(path, e))?;
    root.present().map_err(|e| err(path, e))
}

/// Train and validation curves per epoch: accuracy on the left, loss on the right.
pub fn training_curves(path: &Path, epochs: &[EpochMetrics]) -> Result<()> {
    register_font();
    let root = BitMapBackend::new(path, (1200, 450)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(path, e))?;
    let (left, right) = root.split_horizontally(600);
    let last = epochs.last().map_or(1, |e| e.epoch).max(2) as f64;
    // Each panel's name and its (training, validation) values.
    type Pick = fn(&EpochMetrics) -> (f64, f64);
    let panels: [(_, &str, Pick); 2] = [(left, "accuracy", |e| (100.0 * e.train_accuracy, 100.0 * e.val_accuracy)), (right, "loss", |e| (e.train_loss, e.val_loss))];
    for (area, name, pick) in panels {
        let values: Vec<(f64, f64)> = epochs.iter().map(pick).collect();
        let hi = values.iter().flat_map(|v| [v.0, v.1]).fold(f64::MIN, f64::max).max(1e-3) * 1.05;
        let lo = values.iter().flat_map(|v| [v.0, v.1]).fold(f64::MAX, f64::min).min(hi) * 0.95;
        let mut chart = ChartBuilder::on(&area)
            .caption(format!("Train vs validation {name}"), (FONT, 20))
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(55)
            .build_cartesian_2d(1.0..last, lo..hi)
            .map_err(|e| err(path, e))?;
        chart.configure_mesh().x_desc("epoch").y_desc(if name == "accuracy" { "accuracy (%)" } else { "loss" }).label_style((FONT, 13)).draw().map_err(|e| err(path, e))?;
        for (label, color, which) in [("train", BLUE, 0), ("validation", RED, 1)] {
            let points = epochs.iter().zip(&values).map(|(e, v)| (e.epoch as f64, if which == 0 { v.0 } else { v.1 }));
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))
                .map_err(|e| err(path, e))?
                .label(label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        }
        chart.configure_series_labels().border_style(BLACK).background_style(WHITE).label_font((FONT, 13)).draw().map_err(|e| err(path, e))?;
    }
    root.present().map_err(|e| err(path, e))
}

/// Heat map of `confusion[true][predicted]`, shaded by each row's share, with the counts.
pub fn confusion_matrix(path: &Path, classes: &[&str], confusion: &[Vec<usize>]) -> Result<()> {
    register_font();
    let n = classes.len();
    let root = BitMapBackend::new(path, (760, 700)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(path, e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Confusion matrix (rows: true, columns: predicted)", (FONT, 20))
        .margin(15)
        .x_label_area_size(50)
        .y_label_area_size(80)
        .build_cartesian_2d(0.0..n as f64, n as f64..0.0)
        .map_err(|e| err(path, e))?;
    let name = |x: &f64| {
        let i = x.floor() as usize;
        if (x - i as f64 - 0.5).abs() < 1e-6 {
            classes.get(i).map_or(String::new(), |c| c.to_string())
        } else {
            String::new()
        }
    };
    chart.configure_mesh().disable_mesh().x_labels(2 * n + 1).y_labels(2 * n + 1).x_label_formatter(&name).y_label_formatter(&name).label_style((FONT, 14)).draw().map_err(|e| err(path, e))?;
    for (t, row) in confusion.iter().enumerate() {
        let total = row.iter().sum::<usize>().max(1) as f64;
        for (p, &count) in row.iter().enumerate() {
            let share = count as f64 / total;
            let shade = (255.0 * (1.0 - share)) as u8;
            let (x, y) = (p as f64, t as f64);
            chart.draw_series([Rectangle::new([(x, y), (x + 1.0, y + 1.0)], RGBColor(shade, shade, 255).filled())]).map_err(|e| err(path, e))?;
            let color = if share > 0.5 { WHITE } else { BLACK };
            let style = TextStyle::from((FONT, 16).into_font())
                .color(&color)
                .pos(plotters::style::text_anchor::Pos::new(plotters::style::text_anchor::HPos::Center, plotters::style::text_anchor::VPos::Center));
            chart.draw_series([Text::new(count.to_string(), (x + 0.5, y + 0.5), style)]).map_err(|e| err(path, e))?;
        }
    }
    root.present().map_err(|e| err(path, e))
}

/// The reliability diagram: each confidence bin's accuracy as a bar against the diagonal a
/// perfectly calibrated model would follow, with the bins' share of the images beneath.
pub fn reliability_diagram(path: &Path, reliability: &Reliability) -> Result<()> {
    register_font();
    let root = BitMapBackend::new(path, (700, 760)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(path, e))?;
    let (upper, lower) = root.split_vertically(560);
    let width = 1.0 / BINS as f64;
    let mut chart = ChartBuilder::on(&upper)
        .caption(format!("Reliability (ECE {:.2} %)", 100.0 * reliability.ece()), (FONT, 22))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d(0.0..1.0, 0.0..1.0)
        .map_err(|e| err(path, e))?;
    chart.configure_mesh().x_desc("confidence of the top class").y_desc("accuracy").label_style((FONT, 14)).draw().map_err(|e| err(path, e))?;
    for (i, bin) in reliability.bins.iter().enumerate().filter(|(_, b)| b.images > 0) {
        let left = i as f64 * width;
        chart.draw_series([Rectangle::new([(left, 0.0), (left + width, bin.accuracy())], RGBColor(70, 110, 200).filled())]).map_err(|e| err(path, e))?;
        chart.draw_series([Rectangle::new([(left, bin.accuracy()), (left + width, bin.mean_confidence())], RGBColor(230, 90, 70).mix(0.35).filled())]).map_err(|e| err(path, e))?;
    }
    chart.draw_series(LineSeries::new([(0.0, 0.0), (1.0, 1.0)], BLACK.stroke_width(2))).map_err(|e| err(path, e))?;
    let total = reliability.bins.iter().map(|b| b.images).sum::<usize>().max(1) as f64;
    let top = reliability.bins.iter().map(|b| b.images as f64 / total).fold(0.01, f64::max);
    let mut shares = ChartBuilder::on(&lower).margin(15).x_label_area_size(30).y_label_area_size(55).build_cartesian_2d(0.0..1.0, 0.0..top * 1.1).map_err(|e| err(path, e))?;
    shares.configure_mesh().y_desc("share of images").label_style((FONT, 14)).draw().map_err(|e| err(path, e))?;
    for (i, bin) in reliability.bins.iter().enumerate() {
        let left = i as f64 * width;
        shares.draw_series([Rectangle::new([(left, 0.0), (left + width, bin.images as f64 / total)], RGBColor(120, 120, 120).filled())]).map_err(|e| err(path, e))?;
    }
    root.present().map_err(|e| err(path, e))
}

/// Colours of the seven classes in the timeline, in CLASSES order.
const CLASS_COLOURS: [RGBColor; 7] =
    [RGBColor(214, 39, 40), RGBColor(140, 86, 75), RGBColor(148, 103, 189), RGBColor(255, 160, 0), RGBColor(127, 127, 127), RGBColor(31, 119, 180), RGBColor(44, 160, 44)];

/// Tracks the timeline draws at most, the longest ones; the caption says how many were left out.
pub const TIMELINE_TRACKS: usize = 8;

/// One panel per track (the [`TIMELINE_TRACKS`] seen longest), each class's probability over
/// the video's time.
pub fn expression_timeline(path: &Path, classes: &[&str], tracks: &[(u64, Vec<crate::pipeline::video::TimelinePoint>)], duration_s: f64) -> Result<()> {
    register_font();
    let mut shown: Vec<&(u64, Vec<_>)> = tracks.iter().filter(|(_, points)| !points.is_empty()).collect();
    shown.sort_by_key(|(id, points)| (std::cmp::Reverse(points.len()), *id));
    let left_out = shown.len().saturating_sub(TIMELINE_TRACKS);
    shown.truncate(TIMELINE_TRACKS);
    shown.sort_by_key(|(id, _)| *id);
    let panel = 190;
    let root = BitMapBackend::new(path, (1100, 60 + panel * shown.len().max(1) as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(path, e))?;
    let title = match (shown.len(), left_out) {
        (0, _) => "Expressions over time: no labelled faces".to_string(),
        (_, 0) => "Expressions over time, one panel per track".to_string(),
        (_, n) => format!("Expressions over time, the {} longest tracks ({n} shorter ones left out)", shown.len()),
    };
    let root = root.titled(&title, (FONT, 20)).map_err(|e| err(path, e))?;
    let end = duration_s.max(1e-3);
    for (i, (area, (id, points))) in root.split_evenly((shown.len().max(1), 1)).into_iter().zip(&shown).enumerate() {
        let mut chart = ChartBuilder::on(&area)
            .caption(format!("track {id}"), (FONT, 15))
            .margin(8)
            .x_label_area_size(30)
            .y_label_area_size(45)
            .build_cartesian_2d(0.0..end, 0.0..1.0)
            .map_err(|e| err(path, e))?;
        chart.configure_mesh().x_desc("time (s)").y_desc("probability").y_labels(3).label_style((FONT, 12)).draw().map_err(|e| err(path, e))?;
        for (class, (name, colour)) in classes.iter().zip(CLASS_COLOURS).enumerate() {
            let line = points.iter().map(|p| (p.time_s, p.probabilities[class] as f64));
            let series = chart.draw_series(LineSeries::new(line, colour.stroke_width(2))).map_err(|e| err(path, e))?;
            if i == 0 {
                series.label(*name).legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2)));
            }
        }
        if i == 0 {
            chart.configure_series_labels().position(SeriesLabelPosition::UpperRight).border_style(BLACK).background_style(WHITE.mix(0.85)).label_font((FONT, 12)).draw().map_err(|e| err(path, e))?;
        }
    }
    root.present().map_err(|e| err(path, e))
}
