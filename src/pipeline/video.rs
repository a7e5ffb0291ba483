//! Faces and their expressions through a video: the labeller on every `stride`-th frame, a
//! tracker giving each face a number that stays with it from frame to frame, probabilities
//! averaged over the last `smooth` seconds of each track, and what the outputs are made of:
//! a CSV (or JSON Lines) row per face per frame, a summary per track and for the whole video,
//! and each track's expressions over time for the timeline plot. Everything held grows with the
//! number of tracks, not with the video's length, so an hour costs the memory of a minute.

use super::{annotate_captioned, Detector, Face, Labeller};
use crate::augment::Tta;
use crate::data::{most_probable, CLASSES};
use crate::error::{file_err, Error, Result};
use crate::imageio::grey_of;
use crate::nn::Backend;
use crate::track::{Smoother, TrackBox, Tracker, TrackerSettings};
use crate::video::{Decoder, Encoder, Frame, Preset, VideoInfo};
use image::{GrayImage, RgbImage};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::SyncSender;
use std::time::Instant;

/// Where one video's outputs go.
#[derive(Clone, Debug)]
pub struct VideoOutputs {
    /// Every frame with the faces drawn, H.264 in fragmented MP4.
    pub annotated: PathBuf,
    /// A row per face per frame.
    pub csv: PathBuf,
    /// The same rows as JSON Lines, when asked for.
    pub jsonl: Option<PathBuf>,
    pub summary: PathBuf,
    pub timeline: PathBuf,
}

impl VideoOutputs {
    /// `<stem>.annotated.mp4`, `<stem>.faces.csv` (and `.faces.jsonl`), `<stem>.summary.json`
    /// and `<stem>.timeline.png` in `folder`.
    pub fn in_folder(folder: &Path, stem: &str, jsonl: bool) -> Self {
        let at = |suffix: &str| folder.join(format!("{stem}.{suffix}"));
        VideoOutputs { annotated: at("annotated.mp4"), csv: at("faces.csv"), jsonl: jsonl.then(|| at("faces.jsonl")), summary: at("summary.json"), timeline: at("timeline.png") }
    }

    pub fn all(&self) -> Vec<&Path> {
        [&self.annotated, &self.csv, &self.summary, &self.timeline].into_iter().chain(&self.jsonl).map(PathBuf::as_path).collect()
    }
}

/// Where a video's time went, in seconds. The detection thread waits for decoded frames
/// (`decode`) and finds faces (`detect`); the labelling thread waits for it (`wait`), labels the
/// faces (`classify`), tracks and draws them (`annotate`) and hands frames to the encoder,
/// which waits when ffmpeg is behind (`encode`, with the end of the file). The two threads and
/// ffmpeg overlap, so the stages add up to more than the wall time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct StageSeconds {
    pub wall: f64,
    pub decode: f64,
    pub detect: f64,
    pub wait: f64,
    pub classify: f64,
    pub annotate: f64,
    pub encode: f64,
}

/// How far a video has got, for a progress display.
#[derive(Clone, Copy, Debug)]
pub struct VideoProgress {
    pub frames: u64,
    /// The frame's time in the video.
    pub time_s: f64,
    /// Frames a live source had to drop so far.
    pub dropped: u64,
}

/// Labels the faces of the video `info` describes (see [`crate::video::probe`]) into
/// `outputs`. The work runs as a pipeline: ffmpeg decodes and encodes in processes of their
/// own (the encoder fed by a thread), a detection thread takes decoded frames and finds their
/// faces while this thread labels, tracks and draws the frame before, and the tables are
/// flushed frame by frame. `stop` ends the run early (Ctrl-C; a live stream has no end of its
/// own). Whatever ends the run, its outputs are finished and valid for the frames done; an
/// input that breaks off is then reported as the error.
pub fn label_video<B: Backend>(
    labeller: &mut Labeller<'_, B>,
    info: &VideoInfo,
    outputs: &VideoOutputs,
    options: VideoOptions,
    stop: &AtomicBool,
    mut progress: impl FnMut(VideoProgress),
) -> Result<VideoSummary> {
    let mut video = VideoLabeller::new(options)?;
    let decoder = Decoder::open(info)?;
    // Started with the first frame, which gives a live source's size.
    let mut encoder: Option<Encoder> = None;
    let mut tables = FaceTables::create(&outputs.csv, outputs.jsonl.as_deref())?;
    let mut warned = BTreeSet::new();
    let mut failure = None;
    let mut frames = 0;
    let mut seconds = StageSeconds::default();
    let started = Instant::now();
    let Labeller { detector, classifier, .. } = labeller;
    // One batch of frames on its way while the detection thread works on the next.
    let (found_frames, found) = std::sync::mpsc::sync_channel::<Result<FoundFrame>>(FRAMES_AT_ONCE);
    let (decoder, detection) = std::thread::scope(|scope| {
        let finder = scope.spawn(move || find_faces(decoder, detector, options.stride, stop, found_frames));
        loop {
            let mut clock = Instant::now();
            let mut lap = || std::mem::replace(&mut clock, Instant::now()).elapsed().as_secs_f64();
            // The frames found together are labelled together: every face of them in one
            // batch through the model.
            let Ok(first) = found.recv() else { break };
            let mut batch = vec![first];
            while batch.len() < FRAMES_AT_ONCE && batch.last().is_some_and(Result::is_ok) {
                match found.recv() {
                    Ok(item) => batch.push(item),
                    Err(_) => break,
                }
            }
            seconds.wait += lap();
            let (mut ready, mut broke) = (Vec::with_capacity(batch.len()), None);
            for item in batch {
                match item {
                    Ok(found_frame) => ready.push(found_frame),
                    Err(e) => {
                        broke = Some(e);
                        break;
                    }
                }
            }
            let mut classify_warnings: Vec<String> = ready.iter_mut().flat_map(|f| std::mem::take(&mut f.warnings)).collect();
            let mut analysed: Vec<(&GrayImage, &mut [Face])> = ready.iter_mut().filter_map(|f| f.faces.as_mut().map(|(grey, faces)| (&*grey, faces.as_mut_slice()))).collect();
            let labelled = pollster::block_on(classifier.label_together(&mut analysed, &mut classify_warnings));
            for warning in classify_warnings {
                if warned.insert(warning.clone()) {
                    log::warn!("{}: {warning}", info.input);
                }
            }
            seconds.classify += lap();
            let step = labelled.and_then(|()| {
                for FoundFrame { mut frame, faces, dropped, .. } in ready {
                    let faces = video.frame(frame.time_s, faces.map(|(_, faces)| faces))?;
                    tables.frame(frame.index, frame.time_s, &faces)?;
                    annotate_captioned(&mut frame.rgb, faces.iter().map(|t| (&t.face, t.caption())))?;
                    seconds.annotate += lap();
                    let at = VideoProgress { frames: frames + 1, time_s: frame.time_s, dropped };
                    let encoder = match &mut encoder {
                        Some(encoder) => encoder,
                        None => {
                            let (width, height) = frame.rgb.dimensions();
                            encoder.insert(Encoder::create(&outputs.annotated, &VideoInfo { width, height, ..info.clone() }, options.preset)?)
                        }
                    };
                    encoder.write_frame(frame)?;
                    seconds.encode += lap();
                    frames = at.frames;
                    progress(at);
                }
                Ok(())
            });
            if let Some(e) = step.err().or(broke) {
                failure = Some(e);
                break;
            }
        }
        // Hanging up tells the detection thread to stop.
        drop(found);
        finder.join().expect("the detection thread does not panic")
    });
    if frames == 0 {
        if let Some(e) = failure {
            // Not one frame came (a refused connection, an undecodable stream): the tables
            // hold only their headers, and there is nothing to summarise.
            drop(tables);
            for table in [Some(&outputs.csv), outputs.jsonl.as_ref()].into_iter().flatten() {
                let _ = std::fs::remove_file(table);
            }
            return Err(e);
        }
    }
    let finish_started = Instant::now();
    let finished = encoder.map_or(Ok(()), Encoder::finish);
    seconds.encode += finish_started.elapsed().as_secs_f64();
    seconds.wall = started.elapsed().as_secs_f64();
    (seconds.decode, seconds.detect) = (detection.decode, detection.detect);
    let mut summary = video.summary(&info.input, 1.0 / info.frame_rate.filter(|r| *r > 0.0).unwrap_or(30.0), decoder.dropped());
    summary.seconds = seconds;
    let json = serde_json::to_string_pretty(&summary).map_err(|e| file_err(&outputs.summary, e.to_string()))?;
    std::fs::write(&outputs.summary, json + "\n").map_err(|e| write_err(&outputs.summary, e))?;
    crate::plot::expression_timeline(&outputs.timeline, &CLASSES, &video.timelines(), summary.duration_s)?;
    match failure {
        Some(e) => Err(e),
        None => finished.map(|()| summary),
    }
}

/// Frames decoded before their faces are found together, and labelled together: on a GPU they
/// share one submission and one wait, in dispatches four times as large; on the CPU the
/// expression model reads its weights once for them all. Few enough that a live camera's
/// labels lag by about a tenth of a second at 30 frames a second.
const FRAMES_AT_ONCE: usize = 4;

/// A decoded frame and, when it is one to analyse, its grey image and the faces found in it
/// (not yet labelled), with what the detector had to do differently.
struct FoundFrame {
    frame: Frame,
    faces: Option<(GrayImage, Vec<Face>)>,
    warnings: Vec<String>,
    /// Frames the live source had dropped by then.
    dropped: u64,
}

/// Seconds the detection thread spent waiting for the decoder and finding faces.
#[derive(Default)]
struct DetectionSeconds {
    decode: f64,
    detect: f64,
}

/// The detection thread: decodes [`FRAMES_AT_ONCE`] frames at a time and finds the faces of
/// those of them to analyse (every `stride`-th frame, the first included) together, until the
/// input ends, `stop` is set or the labelling thread hangs up. Returns the stopped decoder (for
/// its count of dropped frames) and its time.
fn find_faces<B: Backend>(mut decoder: Decoder, detector: &mut Detector<'_, B>, stride: u64, stop: &AtomicBool, found: SyncSender<Result<FoundFrame>>) -> (Decoder, DetectionSeconds) {
    let mut seconds = DetectionSeconds::default();
    let mut index = 0u64;
    let mut ended = false;
    while !ended && !stop.load(Ordering::Relaxed) {
        let mut clock = Instant::now();
        let mut lap = || std::mem::replace(&mut clock, Instant::now()).elapsed().as_secs_f64();
        let mut frames = Vec::with_capacity(FRAMES_AT_ONCE);
        let mut failure = None;
        while frames.len() < FRAMES_AT_ONCE {
            match decoder.next() {
                Some(Ok(frame)) => {
                    frames.push((frame, index.is_multiple_of(stride)));
                    index += 1;
                }
                Some(Err(e)) => failure = Some(e),
                None => ended = true,
            }
            if failure.is_some() || ended {
                break;
            }
        }
        seconds.decode += lap();
        let greys: Vec<Option<GrayImage>> = frames.iter().map(|(frame, analyse)| analyse.then(|| grey_of(&frame.rgb))).collect();
        let analysed: Vec<(&RgbImage, &GrayImage)> = frames.iter().zip(&greys).filter_map(|((frame, _), grey)| Some((&frame.rgb, grey.as_ref()?))).collect();
        let mut warnings = Vec::new();
        let faces = pollster::block_on(detector.find_together(&analysed, &mut warnings));
        seconds.detect += lap();
        let items: Vec<Result<FoundFrame>> = match faces {
            Ok(faces) => {
                let mut faces = faces.into_iter();
                frames
                    .into_iter()
                    .zip(greys)
                    .map(|((frame, _), grey)| {
                        let faces = grey.map(|grey| (grey, faces.next().expect("a list for each analysed frame")));
                        Ok(FoundFrame { frame, faces, warnings: std::mem::take(&mut warnings), dropped: decoder.dropped() })
                    })
                    .collect()
            }
            Err(e) => vec![Err(e)],
        };
        for item in items.into_iter().chain(failure.map(Err)) {
            let failed = item.is_err();
            if found.send(item).is_err() || failed {
                ended = true;
                break;
            }
        }
    }
    decoder.stop();
    (decoder, seconds)
}

/// The views of each face videos are labelled by unless asked otherwise: the crop alone. A
/// face in a video is seen in frame after frame, which averages out what a mirror view would
/// (and `--smooth` averages them outright), so a second view would halve the labelling rate
/// for little gain.
pub const VIDEO_TTA: Tta = Tta::None;

/// How many of the default expression models label videos unless `--weights` names others: the
/// first alone, for the same reason as [`VIDEO_TTA`]: each model costs its own inference.
pub const VIDEO_MODELS: usize = 1;

/// How a video is analysed.
#[derive(Clone, Copy, Debug)]
pub struct VideoOptions {
    /// Analyse every `stride`-th frame; the frames between carry the last analysed faces.
    pub stride: u64,
    /// Seconds of each track's probabilities averaged into its label (0: none).
    pub smooth_s: f64,
    pub tracker: TrackerSettings,
    /// How hard x264 works on the annotated video.
    pub preset: Preset,
}

impl Default for VideoOptions {
    fn default() -> Self {
        VideoOptions { stride: 1, smooth_s: 0.0, tracker: TrackerSettings::default(), preset: Preset::default() }
    }
}

/// A face in one frame of a video, with its track number. On a frame between analysed ones
/// (`analysed` false) it is the face as last analysed.
#[derive(Clone, Debug, PartialEq)]
pub struct TrackedFace {
    pub track: u64,
    pub face: Face,
    pub analysed: bool,
}

impl TrackedFace {
    /// The text drawn beside the face: its track and its label.
    pub fn caption(&self) -> String {
        format!("#{} {}", self.track, self.face.caption())
    }
}

/// Follows the faces of a video frame by frame: tracks, smoothing, and what the summary and the
/// timeline are made of.
pub struct VideoLabeller {
    tracker: Tracker,
    smoother: Smoother,
    /// The faces of the last analysed frame, carried to the frames between.
    last: Vec<TrackedFace>,
    last_time_s: f64,
    summary: SummaryBuilder,
}

impl VideoLabeller {
    pub fn new(options: VideoOptions) -> Result<Self> {
        if options.stride == 0 {
            return Err(Error::Invalid("--stride 0: it must be 1 (every frame) or more".into()));
        }
        Ok(VideoLabeller { tracker: Tracker::new(options.tracker)?, smoother: Smoother::new(options.smooth_s)?, last: Vec::new(), last_time_s: f64::NEG_INFINITY, summary: SummaryBuilder::default() })
    }

    /// The faces of the next frame, shown at `time_s` seconds, with their tracks: `analysed`
    /// holds the faces found (and labelled) in it, or None for a frame between analysed ones,
    /// which carries the last analysed faces.
    pub fn frame(&mut self, time_s: f64, analysed: Option<Vec<Face>>) -> Result<Vec<TrackedFace>> {
        // A broken file's timestamps can go backwards; time never does.
        let time_s = if time_s.is_finite() { time_s.max(self.last_time_s) } else { self.last_time_s.max(0.0) };
        self.last_time_s = time_s;
        match analysed {
            Some(faces) => {
                let boxes: Vec<TrackBox> = faces.iter().map(|f| TrackBox::from(f.rect)).collect();
                let ids = self.tracker.update(time_s, &boxes)?;
                // A face without a track is one the tracker does not trust yet (only with
                // `min_hits` above 1): it is left out, as a false detection would be.
                self.last = faces.into_iter().zip(ids).filter_map(|(face, id)| id.map(|track| TrackedFace { track, face, analysed: true })).collect();
                for tracked in &mut self.last {
                    if let Some(label) = &mut tracked.face.label {
                        label.probabilities = self.smoother.smooth(time_s, tracked.track, &label.probabilities);
                        label.class = most_probable(&label.probabilities);
                    }
                }
                self.summary.timelines(time_s, &self.last);
            }
            None => self.last.iter_mut().for_each(|t| t.analysed = false),
        }
        self.summary.frame(time_s, &self.last);
        Ok(self.last.clone())
    }

    /// What the frames so far add up to. `fallback_frame_s` is how long the last frame shows
    /// (its successor's time would say, but there is none): one period of the nominal rate.
    pub fn summary(&self, input: &str, fallback_frame_s: f64, dropped_frames: u64) -> VideoSummary {
        self.summary.finish(input, fallback_frame_s, dropped_frames)
    }

    /// Each track's probabilities over time (analysed frames only, evened out to at most
    /// [`TIMELINE_POINTS`] points), for the timeline plot.
    pub fn timelines(&self) -> Vec<(u64, Vec<TimelinePoint>)> {
        self.summary.tracks.iter().map(|(&id, t)| (id, t.timeline.points())).collect()
    }
}

/// Points a track's timeline keeps at most: when it has this many, neighbouring points are
/// merged in pairs and each later point takes twice as many frames, so a long video keeps its
/// whole span at a coarser step.
pub const TIMELINE_POINTS: usize = 2048;

/// A time and the class probabilities then (means over the frames the point stands for).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct TimelinePoint {
    pub time_s: f64,
    pub probabilities: [f32; CLASSES.len()],
}

/// A running sum of frames, for their mean.
#[derive(Clone, Copy, Default)]
struct FrameSum {
    frames: usize,
    time_s: f64,
    probabilities: [f32; CLASSES.len()],
}

impl FrameSum {
    fn add(&mut self, time_s: f64, probabilities: &[f32]) {
        self.frames += 1;
        self.time_s += time_s;
        self.probabilities.iter_mut().zip(probabilities).for_each(|(s, p)| *s += p);
    }

    fn mean(&self) -> TimelinePoint {
        let n = self.frames.max(1);
        TimelinePoint { time_s: self.time_s / n as f64, probabilities: self.probabilities.map(|s| s / n as f32) }
    }
}

struct Timeline {
    points: Vec<TimelinePoint>,
    frames_per_point: usize,
    /// The frames of the point being filled.
    filling: FrameSum,
}

impl Default for Timeline {
    fn default() -> Self {
        Timeline { points: Vec::new(), frames_per_point: 1, filling: FrameSum::default() }
    }
}

impl Timeline {
    fn add(&mut self, time_s: f64, probabilities: &[f32]) {
        self.filling.add(time_s, probabilities);
        if self.filling.frames < self.frames_per_point {
            return;
        }
        self.points.push(std::mem::take(&mut self.filling).mean());
        if self.points.len() == TIMELINE_POINTS {
            self.points = self
                .points
                .chunks(2)
                .map(|pair| {
                    let mut sum = FrameSum::default();
                    pair.iter().for_each(|p| sum.add(p.time_s, &p.probabilities));
                    sum.mean()
                })
                .collect();
            self.frames_per_point *= 2;
        }
    }

    /// The points, the one being filled included.
    fn points(&self) -> Vec<TimelinePoint> {
        let mut points = self.points.clone();
        if self.filling.frames > 0 {
            points.push(self.filling.mean());
        }
        points
    }
}

/// What is added up for one track.
#[derive(Default)]
struct TrackStats {
    first_s: f64,
    last_s: f64,
    frames: u64,
    labelled_frames: u64,
    probability_sum: [f64; CLASSES.len()],
    /// Seconds shown under each dominant class: each frame weighs as long as it is shown.
    dominant_s: [f64; CLASSES.len()],
    timeline: Timeline,
}

#[derive(Default)]
struct SummaryBuilder {
    tracks: BTreeMap<u64, TrackStats>,
    frames: u64,
    analysed_frames: u64,
    first_s: Option<f64>,
    /// The previous frame, weighed once the next frame's time says how long it was shown.
    pending: Option<PendingFrame>,
}

/// A frame's time and its faces' (track, dominant class).
type PendingFrame = (f64, Vec<(u64, Option<usize>)>);

impl SummaryBuilder {
    fn timelines(&mut self, time_s: f64, faces: &[TrackedFace]) {
        self.analysed_frames += 1;
        for t in faces {
            if let Some(label) = &t.face.label {
                self.tracks.entry(t.track).or_default().timeline.add(time_s, &label.probabilities);
            }
        }
    }

    fn frame(&mut self, time_s: f64, faces: &[TrackedFace]) {
        self.frames += 1;
        self.first_s.get_or_insert(time_s);
        self.weigh_pending(time_s - self.pending.as_ref().map_or(time_s, |p| p.0));
        for t in faces {
            let stats = self.tracks.entry(t.track).or_default();
            if stats.frames == 0 {
                stats.first_s = time_s;
            }
            stats.last_s = time_s;
            stats.frames += 1;
            if let Some(label) = &t.face.label {
                stats.labelled_frames += 1;
                stats.probability_sum.iter_mut().zip(&label.probabilities).for_each(|(s, p)| *s += *p as f64);
            }
        }
        self.pending = Some((time_s, faces.iter().map(|t| (t.track, t.face.label.as_ref().map(|l| l.class))).collect()));
    }

    fn weigh_pending(&mut self, shown_s: f64) {
        let Some((_, faces)) = self.pending.take() else { return };
        for (track, class) in faces {
            if let (Some(class), Some(stats)) = (class, self.tracks.get_mut(&track)) {
                stats.dominant_s[class] += shown_s;
            }
        }
    }

    fn finish(&self, input: &str, fallback_frame_s: f64, dropped_frames: u64) -> VideoSummary {
        // The last frame shows for one nominal period; weigh a copy so the builder can go on.
        let mut dominant: BTreeMap<u64, [f64; CLASSES.len()]> = self.tracks.iter().map(|(&id, t)| (id, t.dominant_s)).collect();
        if let Some((_, faces)) = &self.pending {
            for (track, class) in faces {
                if let (Some(class), Some(d)) = (class, dominant.get_mut(track)) {
                    d[*class] += fallback_frame_s;
                }
            }
        }
        let end_s = self.pending.as_ref().map_or(0.0, |p| p.0) + fallback_frame_s;
        let mut overall = Totals::default();
        let tracks = self
            .tracks
            .iter()
            .map(|(&id, t)| {
                overall.add(t.frames, t.labelled_frames, &t.probability_sum, &dominant[&id]);
                TrackSummary {
                    track: id,
                    first_s: t.first_s,
                    last_s: t.last_s,
                    frames: t.frames,
                    mean_probabilities: by_class(&t.probability_sum.map(|s| s / t.labelled_frames.max(1) as f64)),
                    dominant_share: shares(&dominant[&id]),
                }
            })
            .collect();
        VideoSummary {
            input: input.to_string(),
            frames: self.frames,
            analysed_frames: self.analysed_frames,
            dropped_frames,
            duration_s: self.first_s.map_or(0.0, |first| end_s - first),
            tracks,
            seconds: StageSeconds::default(),
            video: OverallSummary {
                face_frames: overall.frames,
                mean_probabilities: by_class(&overall.probability_sum.map(|s| s / overall.labelled_frames.max(1) as f64)),
                dominant_share: shares(&overall.dominant_s),
            },
        }
    }
}

#[derive(Default)]
struct Totals {
    frames: u64,
    labelled_frames: u64,
    probability_sum: [f64; CLASSES.len()],
    dominant_s: [f64; CLASSES.len()],
}

impl Totals {
    fn add(&mut self, frames: u64, labelled_frames: u64, probability_sum: &[f64], dominant_s: &[f64]) {
        self.frames += frames;
        self.labelled_frames += labelled_frames;
        self.probability_sum.iter_mut().zip(probability_sum).for_each(|(t, s)| *t += s);
        self.dominant_s.iter_mut().zip(dominant_s).for_each(|(t, s)| *t += s);
    }
}

fn by_class(values: &[f64]) -> BTreeMap<String, f64> {
    CLASSES.iter().zip(values).map(|(c, v)| (c.to_string(), *v)).collect()
}

/// Each class's share of the summed seconds (all 0 when there are none).
fn shares(seconds: &[f64]) -> BTreeMap<String, f64> {
    let total: f64 = seconds.iter().sum();
    by_class(&seconds.iter().map(|s| if total > 0.0 { s / total } else { 0.0 }).collect::<Vec<_>>())
}

/// `<stem>.summary.json`.
#[derive(Clone, Debug, Serialize)]
pub struct VideoSummary {
    pub input: String,
    /// Frames read (analysed or carried).
    pub frames: u64,
    pub analysed_frames: u64,
    /// Frames a live source delivered faster than they could be analysed, and so skipped.
    pub dropped_frames: u64,
    pub duration_s: f64,
    pub tracks: Vec<TrackSummary>,
    pub video: OverallSummary,
    /// Where the run's time went.
    pub seconds: StageSeconds,
}

#[derive(Clone, Debug, Serialize)]
pub struct TrackSummary {
    pub track: u64,
    pub first_s: f64,
    pub last_s: f64,
    /// Frames the track's face is in (analysed or carried).
    pub frames: u64,
    pub mean_probabilities: BTreeMap<String, f64>,
    /// The share of the track's time under each dominant expression.
    pub dominant_share: BTreeMap<String, f64>,
}

/// The same over every face of every frame.
#[derive(Clone, Debug, Serialize)]
pub struct OverallSummary {
    /// Faces summed over the frames (a face in 10 frames counts 10).
    pub face_frames: u64,
    pub mean_probabilities: BTreeMap<String, f64>,
    pub dominant_share: BTreeMap<String, f64>,
}

/// Writes `<stem>.faces.csv` (and `<stem>.faces.jsonl` when asked) a frame at a time, each
/// frame's rows flushed before the next frame is read, so that a killed run leaves tables
/// complete up to its last frame.
pub struct FaceTables {
    csv: (PathBuf, std::io::BufWriter<std::fs::File>),
    jsonl: Option<(PathBuf, std::io::BufWriter<std::fs::File>)>,
}

/// The CSV's columns: the frame, the face and its track, the label, each class's probability.
pub const CSV_COLUMNS: [&str; 10] = ["frame", "time_s", "track", "x", "y", "w", "h", "score", "label", "analysed"];

fn create(path: &Path) -> Result<(PathBuf, std::io::BufWriter<std::fs::File>)> {
    let file = std::fs::File::create(path).map_err(|e| file_err(path, format!("cannot create: {e}")))?;
    Ok((path.to_path_buf(), std::io::BufWriter::new(file)))
}

fn write_err(path: &Path, e: std::io::Error) -> Error {
    file_err(path, format!("cannot write: {e}"))
}

/// One face of one frame as a JSON Lines row.
#[derive(Serialize)]
struct JsonRow<'a> {
    frame: u64,
    time_s: f64,
    track: u64,
    x: i32,
    y: i32,
    w: i32,
    h: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    score: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    landmarks: Option<[[f32; 2]; 5]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    label: Option<&'a str>,
    analysed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    probabilities: Option<BTreeMap<&'a str, f32>>,
}

impl FaceTables {
    pub fn create(csv: &Path, jsonl: Option<&Path>) -> Result<Self> {
        let mut tables = FaceTables { csv: create(csv)?, jsonl: jsonl.map(create).transpose()? };
        let header = CSV_COLUMNS.iter().chain(CLASSES.iter()).copied().collect::<Vec<_>>().join(",");
        writeln!(tables.csv.1, "{header}").map_err(|e| write_err(csv, e))?;
        Ok(tables)
    }

    /// Appends a frame's faces and flushes them.
    pub fn frame(&mut self, index: u64, time_s: f64, faces: &[TrackedFace]) -> Result<()> {
        let (path, csv) = &mut self.csv;
        for t in faces {
            let (r, label) = (t.face.rect, t.face.label.as_ref());
            let score = t.face.detection.map_or(String::new(), |d| format!("{:.4}", d.score));
            let name = label.map_or("", |l| CLASSES[l.class]);
            let probabilities = label.map_or(vec![String::new(); CLASSES.len()], |l| l.probabilities.iter().map(|p| format!("{p:.4}")).collect());
            writeln!(csv, "{index},{time_s:.4},{},{},{},{},{},{score},{name},{},{}", t.track, r.x, r.y, r.w, r.h, t.analysed as u8, probabilities.join(",")).map_err(|e| write_err(path, e))?;
        }
        csv.flush().map_err(|e| write_err(path, e))?;
        if let Some((path, jsonl)) = &mut self.jsonl {
            for t in faces {
                let (r, label) = (t.face.rect, t.face.label.as_ref());
                let row = JsonRow {
                    frame: index,
                    time_s,
                    track: t.track,
                    x: r.x,
                    y: r.y,
                    w: r.w,
                    h: r.h,
                    score: t.face.detection.map(|d| d.score),
                    landmarks: t.face.detection.map(|d| d.landmarks),
                    label: label.map(|l| CLASSES[l.class]),
                    analysed: t.analysed,
                    probabilities: label.map(|l| CLASSES.iter().copied().zip(l.probabilities.iter().copied()).collect()),
                };
                let line = serde_json::to_string(&row).map_err(|e| file_err(path, e.to_string()))?;
                writeln!(jsonl, "{line}").map_err(|e| write_err(path, e))?;
            }
            jsonl.flush().map_err(|e| write_err(path, e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::Rect;
    use crate::pipeline::Label;

    fn face(track: u64, class: usize) -> TrackedFace {
        let mut probabilities = vec![0.0; CLASSES.len()];
        probabilities[class] = 1.0;
        TrackedFace { track, face: Face { rect: Rect { x: 0, y: 0, w: 10, h: 10 }, detection: None, label: Some(Label { class, probabilities }) }, analysed: true }
    }

    #[test]
    fn a_timeline_keeps_its_whole_span_in_a_bounded_number_of_points() {
        let mut timeline = Timeline::default();
        let frames = 10 * TIMELINE_POINTS + 3;
        for i in 0..frames {
            timeline.add(i as f64, &[i as f32; CLASSES.len()]);
        }
        let points = timeline.points();
        assert!(points.len() <= TIMELINE_POINTS + 1 && points.len() > TIMELINE_POINTS / 2, "{} points", points.len());
        assert!(points[0].time_s < 16.0 && points.last().unwrap().time_s > frames as f64 - 16.0, "span {} .. {}", points[0].time_s, points.last().unwrap().time_s);
        // Each point is the mean of its frames: time and value move together.
        assert!(points.iter().all(|p| (p.time_s as f32 - p.probabilities[0]).abs() < 1e-2 * p.time_s.max(1.0) as f32));
    }

    #[test]
    fn the_summary_weighs_each_frame_by_how_long_it_shows() {
        let mut summary = SummaryBuilder::default();
        // Track 1 happy for 1 s (two frames of 0.5 s), then sad for 3 s (one frame); track 2
        // appears in the last frame only. Variable frame rate: the frames are 0.5, 0.5, 3 s.
        summary.frame(0.0, &[face(1, 3)]);
        summary.frame(0.5, &[face(1, 3)]);
        summary.frame(1.0, &[face(1, 5), face(2, 6)]);
        let s = summary.finish("clip.mp4", 3.0, 0);
        assert_eq!((s.frames, s.duration_s), (3, 4.0));
        let one = &s.tracks[0];
        assert_eq!((one.track, one.first_s, one.last_s, one.frames), (1, 0.0, 1.0, 3));
        assert!((one.dominant_share["happy"] - 0.25).abs() < 1e-9 && (one.dominant_share["sad"] - 0.75).abs() < 1e-9, "{:?}", one.dominant_share);
        assert!((one.mean_probabilities["happy"] - 2.0 / 3.0).abs() < 1e-9);
        assert_eq!(s.tracks[1].dominant_share["surprise"], 1.0);
        // The whole video: 4 face-frames; 1 s happy, 3 s sad, 3 s surprise.
        assert_eq!(s.video.face_frames, 4);
        assert!((s.video.dominant_share["sad"] - 3.0 / 7.0).abs() < 1e-9);
        assert!((s.video.mean_probabilities["happy"] - 0.5).abs() < 1e-9);
    }

    #[test]
    fn an_empty_video_has_an_empty_summary() {
        let s = SummaryBuilder::default().finish("empty.mp4", 1.0 / 30.0, 0);
        assert_eq!((s.frames, s.tracks.len(), s.video.face_frames, s.duration_s), (0, 0, 0, 0.0));
        assert!(s.video.dominant_share.values().all(|v| *v == 0.0));
    }
}
