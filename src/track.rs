//! Faces followed from frame to frame of a video, and their expressions averaged over time.
//!
//! [`Tracker`] is SORT (Bewley et al., "Simple Online and Realtime Tracking", 2016). Each track
//! predicts its box with a constant-velocity Kalman filter on the box's centre, area and aspect
//! ratio (the ratio held constant). A frame's detections are paired with the predictions by the
//! assignment that maximises their summed overlap (intersection over union, IoU), found exactly
//! by the Hungarian method; pairs overlapping less than a threshold are refused. A paired track
//! corrects its filter with its detection, each detection left over starts a track, and a track
//! unseen for longer than a maximum age is deleted. After a scene cut the faces overlap no
//! track, so they start new ones while the old tracks age out.
//!
//! SORT's matrices are block diagonal: centre x, centre y and area each pair only with their own
//! velocity, and the aspect ratio is alone. So the 7-state filter runs here as four 2-state
//! filters (`Axis`), which give the same numbers with no matrix algebra.
//!
//! Three changes from SORT, for videos analysed every Nth frame at any frame rate:
//! - Time: [`Tracker::update`] takes each frame's time, and the filters predict over the time
//!   elapsed, counted in frames of a nominal 30 fps video (SORT's noise values were tuned per
//!   frame of such videos). A skipped frame makes a longer prediction, not a miss, and the
//!   maximum age is in seconds.
//! - A motion gate: a filter knows no velocity until its track's second detection, so a face
//!   that moves most of its width between analysed frames can overlap its prediction too little.
//!   A pair under the IoU threshold is still allowed when the centres are close for the box's
//!   size and the areas alike; such pairs rank below every pair joined by overlap.
//! - Ids count the faces reported (1, 2, 3, ..., never reused): a track gets its id when it is
//!   confirmed, after `min_hits` matched frames in a row, and a track not yet confirmed is
//!   deleted when it misses a frame (DeepSORT's rule), since a detection that does not recur is
//!   likely a false one. Tracks born in the first `min_hits` frames are confirmed at once, so a
//!   video's opening frames are not left without ids.
//!
//! [`Smoother`] averages each track's class probabilities over the last few seconds, so that a
//! label does not flicker from frame to frame.

use crate::detect::Rect;
use crate::error::{Error, Result};
use std::collections::{BTreeMap, VecDeque};

/// The frame period in which the filters count time. SORT's noise values are per frame of the
/// MOT benchmark's videos, many of them 30 fps; a frame of a 60 fps video counts as half of one.
const NOMINAL_FRAME_S: f64 = 1.0 / 30.0;

/// Areas differing by more than this factor are never joined by the motion gate: nearness
/// alone would let a face take over the track of a much nearer or farther one.
const GATE_MAX_AREA_RATIO: f64 = 2.0;

/// A face's box in image pixels, in floating point so that a CNN detector's boxes and the
/// filters' estimates need no rounding.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TrackBox {
    /// Top-left corner.
    pub x: f64,
    pub y: f64,
    pub w: f64,
    pub h: f64,
}

impl From<Rect> for TrackBox {
    fn from(r: Rect) -> Self {
        TrackBox { x: r.x as f64, y: r.y as f64, w: r.w as f64, h: r.h as f64 }
    }
}

impl TrackBox {
    fn centre(&self) -> (f64, f64) {
        (self.x + self.w / 2.0, self.y + self.h / 2.0)
    }

    fn area(&self) -> f64 {
        self.w * self.h
    }

    fn is_valid(&self) -> bool {
        [self.x, self.y, self.w, self.h].iter().all(|v| v.is_finite()) && self.w > 0.0 && self.h > 0.0
    }
}

/// Intersection over union of two boxes of positive area.
fn iou(a: &TrackBox, b: &TrackBox) -> f64 {
    let overlap_w = ((a.x + a.w).min(b.x + b.w) - a.x.max(b.x)).max(0.0);
    let overlap_h = ((a.y + a.h).min(b.y + b.h) - a.y.max(b.y)).max(0.0);
    let overlap = overlap_w * overlap_h;
    overlap / (a.area() + b.area() - overlap)
}

/// How the tracker joins detections to tracks and when it gives tracks ids and deletes them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TrackerSettings {
    /// A detection overlapping a track's predicted box less than this (IoU) does not continue
    /// it, unless the motion gate lets it.
    pub iou_threshold: f64,
    /// A track unseen for longer than this many seconds is deleted.
    pub max_age_s: f64,
    /// A track gets its id after this many matched frames in a row.
    pub min_hits: u32,
    /// The motion gate's reach: a detection whose centre is closer to a track's prediction than
    /// this many times the prediction's mean side, with an area within a factor of 2, may
    /// continue the track despite too little overlap. 0 turns the gate off.
    pub centre_gate: f64,
}

impl Default for TrackerSettings {
    /// SORT's IoU threshold. A second of maximum age survives a few missed detections (a turned
    /// head, a hand over the face) even when only every 10th frame is analysed, and is short
    /// enough that a face leaving the frame does not hold on to its id for long. One hit
    /// confirms, so that every face detected gets an id from its first frame, as every face of
    /// an image is reported: holding ids back would leave false detections in the output
    /// without ids rather than remove them. A gate reaching one side doubles the speed at which
    /// a track with no velocity yet is followed (IoU 0.3 allows a shift of about half a side).
    fn default() -> Self {
        TrackerSettings { iou_threshold: 0.3, max_age_s: 1.0, min_hits: 1, centre_gate: 1.0 }
    }
}

impl TrackerSettings {
    fn validate(&self) -> Result<()> {
        if !(self.iou_threshold > 0.0 && self.iou_threshold <= 1.0) {
            return Err(Error::Invalid(format!("--track-iou {}: it must be above 0 and at most 1, the least overlap (intersection over union) that joins a face to a track", self.iou_threshold)));
        }
        if !(self.max_age_s >= 0.0 && self.max_age_s.is_finite()) {
            return Err(Error::Invalid(format!("--track-max-age {}: it must be a finite number of seconds, 0 or more", self.max_age_s)));
        }
        if self.min_hits == 0 {
            return Err(Error::Invalid("--track-min-hits 0: it must be at least 1, the matched frames in a row that give a track its id".to_string()));
        }
        if !(self.centre_gate >= 0.0 && self.centre_gate.is_finite()) {
            return Err(Error::Invalid(format!("--track-gate {}: it must be a finite number of box sides, 0 or more (0 turns the gate off)", self.centre_gate)));
        }
        Ok(())
    }

    /// How strongly a detection continues a track whose predicted box is `predicted`: its IoU
    /// when at least the threshold, at most the threshold when only the motion gate allows the
    /// pair (the nearer, the more), and 0 when the pair is refused.
    fn affinity(&self, predicted: &TrackBox, detected: &TrackBox) -> f64 {
        let overlap = iou(predicted, detected);
        if overlap >= self.iou_threshold {
            return overlap;
        }
        let ((px, py), (dx, dy)) = (predicted.centre(), detected.centre());
        let distance = (px - dx).hypot(py - dy);
        let reach = self.centre_gate * (predicted.w + predicted.h) / 2.0;
        let area_ratio = predicted.area().max(detected.area()) / predicted.area().min(detected.area());
        if distance < reach && area_ratio <= GATE_MAX_AREA_RATIO {
            self.iou_threshold * (1.0 - distance / reach)
        } else {
            0.0
        }
    }
}

/// One coordinate's Kalman noise, in its units and nominal frames.
#[derive(Clone, Copy, Debug)]
struct AxisNoise {
    /// The variances of a new track's value (its first detection) and rate (unknown).
    start_value_var: f64,
    start_rate_var: f64,
    /// The variances added to the value and the rate per frame of prediction.
    value_noise: f64,
    rate_noise: f64,
    /// The variance of a detection.
    measurement_var: f64,
}

/// SORT's values for the centre, the area, and the aspect ratio, whose rate stays 0.
const CENTRE_NOISE: AxisNoise = AxisNoise { start_value_var: 10.0, start_rate_var: 1e4, value_noise: 1.0, rate_noise: 1e-2, measurement_var: 1.0 };
const AREA_NOISE: AxisNoise = AxisNoise { start_value_var: 10.0, start_rate_var: 1e4, value_noise: 1.0, rate_noise: 1e-4, measurement_var: 10.0 };
const ASPECT_NOISE: AxisNoise = AxisNoise { start_value_var: 10.0, start_rate_var: 0.0, value_noise: 1.0, rate_noise: 0.0, measurement_var: 10.0 };

/// A constant-velocity Kalman filter on one coordinate of a box: its value, its rate of change
/// per nominal frame, and their covariance matrix (symmetric, so three numbers).
#[derive(Clone, Debug)]
struct Axis {
    value: f64,
    rate: f64,
    value_var: f64,
    covariance: f64,
    rate_var: f64,
    noise: AxisNoise,
}

impl Axis {
    fn new(value: f64, noise: AxisNoise) -> Self {
        Axis { value, rate: 0.0, value_var: noise.start_value_var, covariance: 0.0, rate_var: noise.start_rate_var, noise }
    }

    /// Moves the state `frames` nominal frames on. The process noise grows in proportion to
    /// the time, as a random walk's does, so a stride of 3 frames adds what 3 frames would.
    fn predict(&mut self, frames: f64) {
        self.value += self.rate * frames;
        self.value_var += frames * (2.0 * self.covariance + frames * self.rate_var) + frames * self.noise.value_noise;
        self.covariance += frames * self.rate_var;
        self.rate_var += frames * self.noise.rate_noise;
    }

    /// Corrects the state with a detection's `measured` value.
    fn correct(&mut self, measured: f64) {
        let innovation_var = self.value_var + self.noise.measurement_var;
        let (value_gain, rate_gain) = (self.value_var / innovation_var, self.covariance / innovation_var);
        let innovation = measured - self.value;
        self.value += value_gain * innovation;
        self.rate += rate_gain * innovation;
        self.rate_var -= rate_gain * self.covariance;
        self.value_var *= 1.0 - value_gain;
        self.covariance *= 1.0 - value_gain;
    }
}

/// A face followed across frames.
#[derive(Clone, Debug)]
pub struct Track {
    /// None until the track is confirmed.
    id: Option<u64>,
    centre_x: Axis,
    centre_y: Axis,
    area: Axis,
    /// Width over height.
    aspect: Axis,
    /// Matched frames in a row, counted only until the track is confirmed.
    hits: u32,
    last_seen_s: f64,
}

impl Track {
    fn new(detected: &TrackBox, time_s: f64) -> Self {
        let (cx, cy) = detected.centre();
        Track {
            id: None,
            centre_x: Axis::new(cx, CENTRE_NOISE),
            centre_y: Axis::new(cy, CENTRE_NOISE),
            area: Axis::new(detected.area(), AREA_NOISE),
            aspect: Axis::new(detected.w / detected.h, ASPECT_NOISE),
            hits: 1,
            last_seen_s: time_s,
        }
    }

    /// The track's id, or None while it is not yet confirmed.
    pub fn id(&self) -> Option<u64> {
        self.id
    }

    /// The filter's box at the last update: smoothed when the track was matched then, its
    /// prediction when it was not.
    pub fn estimate(&self) -> TrackBox {
        // Both stay positive: a detection's area and aspect are, the aspect is never
        // extrapolated, and `predict` stops the area's shrinking before it reaches 0.
        let w = (self.area.value * self.aspect.value).sqrt();
        let h = (self.area.value / self.aspect.value).sqrt();
        TrackBox { x: self.centre_x.value - w / 2.0, y: self.centre_y.value - h / 2.0, w, h }
    }

    /// When the track was last matched to a detection.
    pub fn last_seen_s(&self) -> f64 {
        self.last_seen_s
    }

    fn predict(&mut self, frames: f64) {
        // SORT's guard: an area extrapolated to 0 or less would leave no box.
        if self.area.value + self.area.rate * frames <= 0.0 {
            self.area.rate = 0.0;
        }
        for axis in [&mut self.centre_x, &mut self.centre_y, &mut self.area, &mut self.aspect] {
            axis.predict(frames);
        }
    }

    fn correct(&mut self, detected: &TrackBox, time_s: f64) {
        let (cx, cy) = detected.centre();
        self.centre_x.correct(cx);
        self.centre_y.correct(cy);
        self.area.correct(detected.area());
        self.aspect.correct(detected.w / detected.h);
        self.last_seen_s = time_s;
    }
}

/// SORT with time-aware prediction: faces of successive frames joined into tracks with ids.
#[derive(Clone, Debug)]
pub struct Tracker {
    settings: TrackerSettings,
    tracks: Vec<Track>,
    next_id: u64,
    last_time_s: Option<f64>,
    frames_seen: u64,
}

impl Tracker {
    /// A tracker with no tracks; refuses settings out of range, naming their flag.
    pub fn new(settings: TrackerSettings) -> Result<Self> {
        settings.validate()?;
        Ok(Tracker { settings, tracks: Vec::new(), next_id: 1, last_time_s: None, frames_seen: 0 })
    }

    /// Takes the faces detected in the frame at `time_s` seconds and returns, for each, the id
    /// of the track it continues or starts, or None while that track is not yet confirmed
    /// (never with the default `min_hits` of 1). Times must not decrease; frames may be skipped
    /// and unevenly spaced.
    pub fn update(&mut self, time_s: f64, boxes: &[TrackBox]) -> Result<Vec<Option<u64>>> {
        self.check_frame(time_s, boxes)?;
        let frames = self.last_time_s.map_or(0.0, |last| (time_s - last) / NOMINAL_FRAME_S);
        self.last_time_s = Some(time_s);
        self.frames_seen += 1;
        for track in &mut self.tracks {
            track.predict(frames);
        }

        let affinity: Vec<Vec<f64>> = self
            .tracks
            .iter()
            .map(|track| {
                let predicted = track.estimate();
                boxes.iter().map(|detected| self.settings.affinity(&predicted, detected)).collect()
            })
            .collect();
        let mut ids = vec![None; boxes.len()];
        let mut box_matched = vec![false; boxes.len()];
        let mut track_matched = vec![false; self.tracks.len()];
        for (t, assigned) in assignment_by_component(&affinity, boxes.len()).into_iter().enumerate() {
            // The assignment pairs every track it can; a pair of affinity 0 is no match.
            let Some(b) = assigned.filter(|&b| affinity[t][b] > 0.0) else { continue };
            let track = &mut self.tracks[t];
            track.correct(&boxes[b], time_s);
            if track.id.is_none() {
                track.hits += 1;
                if track.hits >= self.settings.min_hits {
                    track.id = Some(take_id(&mut self.next_id));
                }
            }
            ids[b] = track.id;
            box_matched[b] = true;
            track_matched[t] = true;
        }

        let max_age_s = self.settings.max_age_s;
        self.tracks = std::mem::take(&mut self.tracks)
            .into_iter()
            .zip(track_matched)
            .filter(|(track, matched)| *matched || (track.id.is_some() && time_s - track.last_seen_s <= max_age_s))
            .map(|(track, _)| track)
            .collect();

        for (b, detected) in boxes.iter().enumerate().filter(|&(b, _)| !box_matched[b]) {
            let mut track = Track::new(detected, time_s);
            if track.hits >= self.settings.min_hits || self.frames_seen <= u64::from(self.settings.min_hits) {
                track.id = Some(take_id(&mut self.next_id));
            }
            ids[b] = track.id;
            self.tracks.push(track);
        }
        Ok(ids)
    }

    /// The live tracks, those not yet confirmed (without an id) included.
    pub fn tracks(&self) -> &[Track] {
        &self.tracks
    }

    fn check_frame(&self, time_s: f64, boxes: &[TrackBox]) -> Result<()> {
        if !time_s.is_finite() {
            return Err(Error::Invalid(format!("frame time {time_s}: tracking needs a finite time in seconds")));
        }
        if let Some(last) = self.last_time_s.filter(|&last| time_s < last) {
            return Err(Error::Invalid(format!("frame time {time_s} s comes before the previous frame's {last} s: tracking needs frames in time order")));
        }
        if let Some((i, bad)) = boxes.iter().enumerate().find(|(_, b)| !b.is_valid()) {
            return Err(Error::Invalid(format!("face {i} of the frame at {time_s} s has box {bad:?}: tracking needs finite coordinates and a positive width and height")));
        }
        Ok(())
    }
}

/// The id after the last one given, as ids are never reused.
fn take_id(next_id: &mut u64) -> u64 {
    *next_id += 1;
    *next_id - 1
}

/// The same pairing as [`best_assignment`], solved separately for each group of rows and
/// columns linked by a positive affinity. Pairs of affinity 0 are no match, so the groups do
/// not interact, and splitting keeps the cubic Hungarian step to the size of the largest cluster
/// of nearby faces: a frame of thousands of scattered faces (a crowd, or a hostile input) costs
/// about as much as its affinity matrix.
fn assignment_by_component(affinity: &[Vec<f64>], columns: usize) -> Vec<Option<usize>> {
    let rows = affinity.len();
    // Union-find over rows (0..rows) and columns (rows..rows + columns).
    let mut parent: Vec<usize> = (0..rows + columns).collect();
    fn root(parent: &mut [usize], mut node: usize) -> usize {
        while parent[node] != node {
            parent[node] = parent[parent[node]];
            node = parent[node];
        }
        node
    }
    for (r, row) in affinity.iter().enumerate() {
        for (c, _) in row.iter().enumerate().filter(|&(_, &a)| a > 0.0) {
            let (a, b) = (root(&mut parent, r), root(&mut parent, rows + c));
            parent[a] = b;
        }
    }
    let mut members: BTreeMap<usize, (Vec<usize>, Vec<usize>)> = BTreeMap::new();
    for r in 0..rows {
        members.entry(root(&mut parent, r)).or_default().0.push(r);
    }
    for c in 0..columns {
        members.entry(root(&mut parent, rows + c)).or_default().1.push(c);
    }
    let mut column_of_row = vec![None; rows];
    for (component_rows, component_columns) in members.values().filter(|(r, c)| !r.is_empty() && !c.is_empty()) {
        let sub: Vec<Vec<f64>> = component_rows.iter().map(|&r| component_columns.iter().map(|&c| affinity[r][c]).collect()).collect();
        for (&r, assigned) in component_rows.iter().zip(best_assignment(&sub, component_columns.len())) {
            column_of_row[r] = assigned.map(|c| component_columns[c]);
        }
    }
    column_of_row
}

/// The pairing of rows with columns, each used at most once, with the largest summed
/// `affinity` (`columns` wide): each row's column, None for the rows left over when there are
/// more rows than columns.
fn best_assignment(affinity: &[Vec<f64>], columns: usize) -> Vec<Option<usize>> {
    let rows = affinity.len();
    if rows <= columns {
        let cost: Vec<Vec<f64>> = affinity.iter().map(|row| row.iter().map(|a| -a).collect()).collect();
        min_cost_assignment(&cost, columns).into_iter().map(Some).collect()
    } else {
        let cost: Vec<Vec<f64>> = (0..columns).map(|c| affinity.iter().map(|row| -row[c]).collect()).collect();
        let mut column_of_row = vec![None; rows];
        for (c, r) in min_cost_assignment(&cost, rows).into_iter().enumerate() {
            column_of_row[r] = Some(c);
        }
        column_of_row
    }
}

/// The Hungarian method (Kuhn-Munkres) for no more rows than `columns`: the column of each row
/// in the assignment of least summed `cost`. Rows join one at a time, each along the cheapest
/// path of reassignments that frees a column for it: Dijkstra's search over costs reduced by a
/// potential per row and per column, which keep every reduced cost at 0 or more and those of
/// the assigned pairs at 0. O(rows² columns), nothing for the few faces of a frame.
fn min_cost_assignment(cost: &[Vec<f64>], columns: usize) -> Vec<usize> {
    let rows = cost.len();
    // Rows and columns count from 1 in these arrays; column 0 is where each search starts, and
    // row 0 stands for "no row".
    let mut row_potential = vec![0.0; rows + 1];
    let mut column_potential = vec![0.0; columns + 1];
    let mut owner = vec![0; columns + 1];
    let mut came_from = vec![0; columns + 1];
    for row in 1..=rows {
        owner[0] = row;
        let mut path_cost = vec![f64::INFINITY; columns + 1];
        let mut reached = vec![false; columns + 1];
        let mut column = 0;
        // Each step reaches the unreached column cheapest to get to; the search ends at a free one.
        while owner[column] != 0 {
            reached[column] = true;
            let from_row = owner[column];
            let mut next = 0;
            for c in (1..=columns).filter(|&c| !reached[c]) {
                let reduced = cost[from_row - 1][c - 1] - row_potential[from_row] - column_potential[c];
                if reduced < path_cost[c] {
                    path_cost[c] = reduced;
                    came_from[c] = column;
                }
                // Taking the first column when none is cheaper keeps the search moving, so that
                // a NaN cost gives a wrong answer rather than a hang.
                if next == 0 || path_cost[c] < path_cost[next] {
                    next = c;
                }
            }
            let step = path_cost[next];
            for c in 0..=columns {
                if reached[c] {
                    row_potential[owner[c]] += step;
                    column_potential[c] -= step;
                } else {
                    path_cost[c] -= step;
                }
            }
            column = next;
        }
        // Shift each row on the path into the column it reached.
        while column != 0 {
            let previous = came_from[column];
            owner[column] = owner[previous];
            column = previous;
        }
    }
    let mut column_of_row = vec![0; rows];
    for (c, &row) in owner.iter().enumerate().skip(1).filter(|&(_, &row)| row != 0) {
        column_of_row[row - 1] = c - 1;
    }
    column_of_row
}

/// Each track's class probabilities averaged over the last `window` seconds (`--smooth`).
#[derive(Clone, Debug)]
pub struct Smoother {
    window_s: f64,
    /// Each track's samples inside the window, as (time, probabilities), oldest first.
    recent: BTreeMap<u64, VecDeque<(f64, Vec<f32>)>>,
}

impl Smoother {
    /// A smoother over `window_s` seconds; 0 turns smoothing off.
    pub fn new(window_s: f64) -> Result<Self> {
        if !(window_s >= 0.0 && window_s.is_finite()) {
            return Err(Error::Invalid(format!("--smooth {window_s}: it must be a finite number of seconds, 0 or more (0 turns smoothing off)")));
        }
        Ok(Smoother { window_s, recent: BTreeMap::new() })
    }

    /// Records the `probabilities` of track `track_id` at `time_s` and returns the mean of the
    /// track's records from the last `window` seconds, this one included. Times must not
    /// decrease from call to call, and a track's records must all have the same length.
    pub fn smooth(&mut self, time_s: f64, track_id: u64, probabilities: &[f32]) -> Vec<f32> {
        if self.window_s == 0.0 {
            return probabilities.to_vec();
        }
        // Every track's records that left the window go, and tracks left with none: a track
        // the tracker deleted gets no more records, so memory holds only the last window of
        // the tracks still seen, with no need to be told which were deleted.
        let expired = time_s - self.window_s;
        self.recent.retain(|_, samples| {
            while samples.front().is_some_and(|(t, _)| *t <= expired) {
                samples.pop_front();
            }
            !samples.is_empty()
        });
        let samples = self.recent.entry(track_id).or_default();
        samples.push_back((time_s, probabilities.to_vec()));
        let mut mean = vec![0.0; probabilities.len()];
        for (_, sample) in samples.iter() {
            for (m, p) in mean.iter_mut().zip(sample) {
                *m += p;
            }
        }
        let count = samples.len() as f32;
        mean.iter_mut().for_each(|m| *m /= count);
        mean
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    const FRAME_S: f64 = 1.0 / 30.0;

    fn square(x: f64, y: f64, side: f64) -> TrackBox {
        TrackBox { x, y, w: side, h: side }
    }

    fn tracker() -> Tracker {
        Tracker::new(TrackerSettings::default()).unwrap()
    }

    fn live_ids(tracker: &Tracker) -> Vec<Option<u64>> {
        tracker.tracks().iter().map(Track::id).collect()
    }

    #[test]
    fn steady_pan_keeps_id_one() {
        let mut tracker = tracker();
        for frame in 0..100 {
            let ids = tracker.update(frame as f64 * FRAME_S, &[square(10.0 + 5.0 * frame as f64, 200.0, 80.0)]).unwrap();
            assert_eq!(ids, [Some(1)], "frame {frame}");
        }
        assert_eq!(tracker.tracks().len(), 1);
    }

    #[test]
    fn faces_side_by_side_keep_their_ids_through_jitter_and_a_miss() {
        // Overlapping by 5 pixels, within each other's motion gate: only the assignment keeps
        // them apart, also in the frame where one of them is missed.
        let mut tracker = tracker();
        let mut rng = Rng::new(7);
        for frame in 0..60 {
            let mut jitter = || rng.uniform(-2.0, 2.0) as f64;
            let left = square(100.0 + jitter(), 100.0 + jitter(), 60.0);
            let right = square(155.0 + jitter(), 100.0 + jitter(), 60.0);
            let time_s = frame as f64 * FRAME_S;
            if frame == 30 {
                assert_eq!(tracker.update(time_s, &[right]).unwrap(), [Some(2)]);
            } else {
                assert_eq!(tracker.update(time_s, &[left, right]).unwrap(), [Some(1), Some(2)], "frame {frame}");
            }
        }
    }

    #[test]
    fn crossing_faces_keep_their_ids() {
        // They pass each other, overlapping by up to 80 %; the filters' velocities tell them apart.
        let mut tracker = tracker();
        for frame in 0..50 {
            let shift = 4.0 * frame as f64;
            let ids = tracker.update(frame as f64 * FRAME_S, &[square(shift, 100.0, 50.0), square(200.0 - shift, 110.0, 50.0)]).unwrap();
            assert_eq!(ids, [Some(1), Some(2)], "frame {frame}");
        }
    }

    #[test]
    fn short_miss_keeps_id() {
        let mut tracker = tracker();
        for frame in 0..60 {
            // Missed for 6 frames (0.2 s) while moving on: the prediction coasts along with it.
            let boxes = if (30..36).contains(&frame) { vec![] } else { vec![square(50.0 + 3.0 * frame as f64, 80.0, 40.0)] };
            let ids = tracker.update(frame as f64 * FRAME_S, &boxes).unwrap();
            assert!(ids.iter().all(|&id| id == Some(1)), "frame {frame}: {ids:?}");
        }
    }

    #[test]
    fn miss_longer_than_max_age_gives_new_id() {
        let mut tracker = tracker();
        let face = square(100.0, 100.0, 50.0);
        for frame in 0..10 {
            assert_eq!(tracker.update(frame as f64 * FRAME_S, &[face]).unwrap(), [Some(1)]);
        }
        // 40 frames, 1.33 s, without it: past the 1 s maximum age.
        for frame in 10..50 {
            assert_eq!(tracker.update(frame as f64 * FRAME_S, &[]).unwrap(), []);
        }
        assert!(tracker.tracks().is_empty());
        assert_eq!(tracker.update(50.0 * FRAME_S, &[face]).unwrap(), [Some(2)]);
    }

    #[test]
    fn scene_cut_starts_new_tracks_and_old_ones_age_out() {
        let mut tracker = tracker();
        let before = [square(100.0, 100.0, 60.0), square(300.0, 100.0, 60.0)];
        let after = [square(500.0, 400.0, 70.0), square(40.0, 400.0, 50.0)];
        for frame in 0..20 {
            assert_eq!(tracker.update(frame as f64 * FRAME_S, &before).unwrap(), [Some(1), Some(2)]);
        }
        for frame in 20..70 {
            assert_eq!(tracker.update(frame as f64 * FRAME_S, &after).unwrap(), [Some(3), Some(4)], "frame {frame}");
            // The old tracks were last seen at frame 19; frame 49 is 1 s, their maximum age, on.
            if frame < 49 {
                assert_eq!(live_ids(&tracker), [Some(1), Some(2), Some(3), Some(4)], "frame {frame}");
            } else if frame > 49 {
                assert_eq!(live_ids(&tracker), [Some(3), Some(4)], "frame {frame}");
            }
        }
    }

    #[test]
    fn stride_and_uneven_frame_times_still_track() {
        // 5 pixels a frame, analysed 1, 3, 2 or 5 frames apart; the filter learns the velocity
        // per frame and so predicts each step's length.
        let mut tracker = tracker();
        let mut frame = 0;
        for step in [1, 3, 2, 5].into_iter().cycle().take(40) {
            frame += step;
            let ids = tracker.update(frame as f64 * FRAME_S, &[square(5.0 * frame as f64, 300.0, 60.0)]).unwrap();
            assert_eq!(ids, [Some(1)], "frame {frame}");
        }
        let estimate = tracker.tracks()[0].estimate();
        assert!((estimate.x - 5.0 * frame as f64).abs() < 1.0, "{estimate:?} at frame {frame}");

        // Every 3rd frame, as `--stride 3` analyses them.
        let mut tracker = self::tracker();
        for frame in (0..300).step_by(3) {
            assert_eq!(tracker.update(frame as f64 * FRAME_S, &[square(5.0 * frame as f64, 300.0, 60.0)]).unwrap(), [Some(1)], "frame {frame}");
        }
    }

    #[test]
    fn centre_gate_follows_motion_faster_than_iou_allows() {
        // 25 pixels a step on a 40-pixel face: IoU 0.23 with where a new track expects it.
        let run = |settings| {
            let mut tracker = Tracker::new(settings).unwrap();
            (0..20).map(|step| tracker.update(step as f64 * 3.0 * FRAME_S, &[square(25.0 * step as f64, 50.0, 40.0)]).unwrap()[0]).collect::<Vec<_>>()
        };
        assert!(run(TrackerSettings::default()).iter().all(|&id| id == Some(1)));
        assert_eq!(run(TrackerSettings { centre_gate: 0.0, ..TrackerSettings::default() })[..2], [Some(1), Some(2)]);
    }

    #[test]
    fn min_hits_holds_ids_back_except_in_the_first_frames() {
        let mut tracker = Tracker::new(TrackerSettings { min_hits: 2, ..TrackerSettings::default() }).unwrap();
        let (a, b, c, d) = (square(0.0, 0.0, 50.0), square(200.0, 0.0, 50.0), square(400.0, 0.0, 50.0), square(600.0, 0.0, 50.0));
        let frames: [(&[TrackBox], &[Option<u64>]); 7] = [
            // Tracks born in the first 2 frames have their ids at once.
            (&[a], &[Some(1)]),
            (&[a], &[Some(1)]),
            (&[a, b], &[Some(1), None]),
            (&[a, b], &[Some(1), Some(2)]),
            // A detection in one frame only never gets an id, and uses none up.
            (&[a, c], &[Some(1), None]),
            (&[a, d], &[Some(1), None]),
            (&[a, d], &[Some(1), Some(3)]),
        ];
        for (frame, (boxes, expected)) in frames.into_iter().enumerate() {
            assert_eq!(tracker.update(frame as f64 * FRAME_S, boxes).unwrap(), expected, "frame {frame}");
        }
        assert_eq!(live_ids(&tracker), [Some(1), Some(2), Some(3)]);
    }

    #[test]
    fn empty_frames_are_fine() {
        let mut tracker = tracker();
        assert_eq!(tracker.update(0.0, &[]).unwrap(), []);
        assert!(tracker.tracks().is_empty());
        let face = square(10.0, 10.0, 30.0);
        assert_eq!(tracker.update(0.1, &[face]).unwrap(), [Some(1)]);
        for frame in 1..15 {
            assert_eq!(tracker.update(0.1 + frame as f64 * FRAME_S, &[]).unwrap(), []);
        }
        assert_eq!(live_ids(&tracker), [Some(1)]);
        assert_eq!(tracker.update(0.6, &[face]).unwrap(), [Some(1)]);
        // Two updates at the same time predict nothing and change nothing.
        assert_eq!(tracker.update(0.6, &[face]).unwrap(), [Some(1)]);
    }

    #[test]
    fn bad_settings_and_frames_are_refused_by_name() {
        let refused = |settings: TrackerSettings, flag: &str| {
            let err = Tracker::new(settings).unwrap_err();
            assert!(matches!(err, Error::Invalid(_)) && err.to_string().starts_with(flag), "{err}");
        };
        let default = TrackerSettings::default();
        for iou_threshold in [0.0, -0.1, 1.5, f64::NAN] {
            refused(TrackerSettings { iou_threshold, ..default }, "--track-iou ");
        }
        for max_age_s in [-1.0, f64::INFINITY, f64::NAN] {
            refused(TrackerSettings { max_age_s, ..default }, "--track-max-age ");
        }
        refused(TrackerSettings { min_hits: 0, ..default }, "--track-min-hits ");
        refused(TrackerSettings { centre_gate: -0.5, ..default }, "--track-gate ");
        for window_s in [-0.5, f64::NAN, f64::INFINITY] {
            assert!(Smoother::new(window_s).unwrap_err().to_string().starts_with("--smooth "));
        }

        let mut tracker = tracker();
        assert!(tracker.update(f64::NAN, &[]).is_err());
        tracker.update(1.0, &[square(0.0, 0.0, 10.0)]).unwrap();
        assert!(tracker.update(0.5, &[]).unwrap_err().to_string().contains("before the previous frame"));
        for bad in [square(0.0, 0.0, 0.0), square(f64::NAN, 0.0, 10.0), TrackBox { x: 0.0, y: 0.0, w: 10.0, h: -1.0 }] {
            assert!(tracker.update(2.0, &[square(0.0, 0.0, 10.0), bad]).unwrap_err().to_string().starts_with("face 1 "));
        }
        // A refused frame changes nothing.
        assert_eq!(tracker.update(2.0, &[square(0.0, 0.0, 10.0)]).unwrap(), [Some(1)]);
    }

    fn total(affinity: &[Vec<f64>], assignment: &[Option<usize>]) -> f64 {
        assignment.iter().enumerate().filter_map(|(r, c)| c.map(|c| affinity[r][c])).sum()
    }

    /// The best total over every assignment of the rows from `row` on to unused columns.
    fn brute_force_best(affinity: &[Vec<f64>], row: usize, used: &mut Vec<bool>) -> f64 {
        if row == affinity.len() {
            return 0.0;
        }
        let mut best = if affinity.len() - row > used.iter().filter(|u| !**u).count() { brute_force_best(affinity, row + 1, used) } else { f64::NEG_INFINITY };
        for c in 0..used.len() {
            if !used[c] {
                used[c] = true;
                best = best.max(affinity[row][c] + brute_force_best(affinity, row + 1, used));
                used[c] = false;
            }
        }
        best
    }

    #[test]
    fn hungarian_beats_greedy() {
        // Greedy takes the 0.9 and is left with 0.1; the best pairs the two 0.8s.
        let affinity = vec![vec![0.9, 0.8], vec![0.8, 0.1]];
        assert_eq!(best_assignment(&affinity, 2), [Some(1), Some(0)]);
        // More tracks than detections: the row left out is the one that costs least to lose.
        let affinity = vec![vec![0.9, 0.8], vec![0.8, 0.1], vec![0.85, 0.0]];
        let assignment = best_assignment(&affinity, 2);
        assert!((total(&affinity, &assignment) - 1.65).abs() < 1e-12, "{assignment:?}");
        assert_eq!(best_assignment(&[], 3), []);
        assert_eq!(best_assignment(&[vec![], vec![]], 0), [None, None]);
    }

    #[test]
    fn hungarian_matches_brute_force_on_random_matrices() {
        let mut rng = Rng::new(11);
        for (rows, columns) in [(1, 1), (2, 3), (3, 2), (4, 4), (5, 3), (3, 6), (6, 6)] {
            for _ in 0..50 {
                // Many zeros, as in a frame where most pairs do not overlap.
                let affinity: Vec<Vec<f64>> = (0..rows).map(|_| (0..columns).map(|_| if rng.below(2) == 0 { 0.0 } else { rng.uniform(0.0, 1.0) as f64 }).collect()).collect();
                let assignment = best_assignment(&affinity, columns);
                let mut columns_used: Vec<usize> = assignment.iter().flatten().copied().collect();
                assert_eq!(columns_used.len(), rows.min(columns));
                columns_used.sort_unstable();
                columns_used.dedup();
                assert_eq!(columns_used.len(), rows.min(columns), "a column used twice: {assignment:?}");
                let best = brute_force_best(&affinity, 0, &mut vec![false; columns]);
                assert!((total(&affinity, &assignment) - best).abs() < 1e-9, "{affinity:?}: {assignment:?} short of {best}");
                let by_component = assignment_by_component(&affinity, columns);
                assert!((total(&affinity, &by_component) - best).abs() < 1e-9, "{affinity:?}: by component {by_component:?} short of {best}");
            }
        }
    }

    #[test]
    fn a_crowd_of_thousands_tracks_in_components() {
        // 2,500 faces on a grid, all moving a little: one Hungarian step over them all would take
        // 2,500³ steps; in components of one face each it is the affinity matrix alone.
        let grid = |dx: f64| -> Vec<TrackBox> { (0..2500).map(|i| square((i % 50) as f64 * 40.0 + dx, (i / 50) as f64 * 40.0, 20.0)).collect() };
        let mut tracker = tracker();
        let first = tracker.update(0.0, &grid(0.0)).unwrap();
        assert_eq!(tracker.update(FRAME_S, &grid(2.0)).unwrap(), first);
    }

    #[test]
    fn smoother_means_over_the_window() {
        let mut smoother = Smoother::new(0.25).unwrap();
        let means: Vec<Vec<f32>> = [[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [1.0, 0.0]].iter().enumerate().map(|(i, p)| smoother.smooth(i as f64 * 0.1, 1, p)).collect();
        // At 0.3 s the window holds 0.1, 0.2 and 0.3 s.
        assert_eq!(means, [vec![1.0, 0.0], vec![0.5, 0.5], vec![0.5, 0.5], vec![0.5, 0.5]]);
        // Tracks are averaged apart.
        assert_eq!(smoother.smooth(0.35, 2, &[0.2, 0.8]), [0.2, 0.8]);
    }

    #[test]
    fn smoother_with_zero_window_returns_input() {
        let mut smoother = Smoother::new(0.0).unwrap();
        for i in 0..10 {
            let p = [i as f32 / 10.0, 1.0 - i as f32 / 10.0];
            assert_eq!(smoother.smooth(i as f64, 1, &p), p);
        }
        assert!(smoother.recent.is_empty());
    }

    #[test]
    fn smoother_memory_stays_bounded() {
        let mut smoother = Smoother::new(0.5).unwrap();
        // Track 1 lasts the whole minute; a new short-lived track starts every second.
        for frame in 0..1800 {
            let time_s = frame as f64 * FRAME_S;
            smoother.smooth(time_s, 1, &[0.5; 7]);
            smoother.smooth(time_s, 100 + frame / 30, &[0.5; 7]);
            let samples: usize = smoother.recent.values().map(VecDeque::len).sum();
            // Track 1, the current short one, and for half a second the one before it.
            assert!(smoother.recent.len() <= 3 && samples <= 2 * 16, "frame {frame}: {} tracks, {samples} samples", smoother.recent.len());
        }
    }
}
