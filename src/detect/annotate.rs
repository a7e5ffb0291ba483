//! Drawing detections on the image: a box per face, its landmarks when the detector gives
//! them, and its label on a filled background, placed so that labels stay inside the picture
//! and never cover one another.

use super::group::Rect;
use crate::error::{Error, Result};
use image::RgbImage;
use plotters::prelude::*;

/// One face to draw.
pub struct Annotation {
    pub rect: Rect,
    pub label: String,
    /// Eyes, nose tip and mouth corners, in image pixels.
    pub landmarks: Option<[[f32; 2]; 5]>,
}

const BOX_COLOUR: RGBColor = RGBColor(0, 230, 60);
/// Right eye, left eye, nose tip, right and left mouth corner.
const LANDMARK_COLOURS: [RGBColor; 5] = [RGBColor(255, 60, 60), RGBColor(60, 120, 255), RGBColor(255, 220, 0), RGBColor(255, 0, 255), RGBColor(0, 230, 230)];

/// A label's box in image pixels: top-left corner and size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LabelBox {
    pub x: i32,
    pub y: i32,
    pub w: i32,
    pub h: i32,
}

impl LabelBox {
    fn overlaps(&self, other: &LabelBox) -> bool {
        self.x < other.x + other.w && other.x < self.x + self.w && self.y < other.y + other.h && other.y < self.y + self.h
    }
}

/// Where each face's label goes, given the labels' sizes: above its box if that is free, else
/// below it, else inside its top edge, else the nearest free row further down; every place is
/// moved inside the image first. A label bigger than the image, or one with no free place,
/// takes its first choice.
pub fn place_labels(faces: &[Rect], sizes: &[(i32, i32)], (width, height): (i32, i32)) -> Vec<LabelBox> {
    let mut placed: Vec<LabelBox> = Vec::with_capacity(faces.len());
    for (r, &(w, h)) in faces.iter().zip(sizes) {
        let inside = |x: i32, y: i32| LabelBox { x: x.clamp(0, (width - w).max(0)), y: y.clamp(0, (height - h).max(0)), w, h };
        let gap = 2;
        let mut candidates = vec![inside(r.x, r.y - h - gap), inside(r.x, r.y + r.h + gap), inside(r.x, r.y + gap)];
        candidates.extend((1..).map(|k| r.y + r.h + gap + k * (h + gap)).take_while(|&y| y + h <= height).map(|y| inside(r.x, y)));
        let free = candidates.iter().find(|c| placed.iter().all(|p| !p.overlaps(c)));
        placed.push(*free.unwrap_or(&candidates[0]));
    }
    placed
}

/// Draws each face on `img` in place.
pub fn draw(img: &mut RgbImage, faces: &[Annotation]) -> Result<()> {
    crate::plot::register_font();
    let (w, h) = img.dimensions();
    let size = (h.min(w) as f64 / 28.0).clamp(12.0, 40.0);
    let draw_err = |e: DrawingAreaErrorKind<_>| Error::Draw(e.to_string());
    {
        let root = BitMapBackend::with_buffer(img.as_mut(), (w, h)).into_drawing_area();
        let style = TextStyle::from((crate::plot::FONT, size).into_font()).color(&BLACK);
        let pad = (size / 6.0).ceil() as i32;
        let sizes =
            faces.iter().map(|f| root.estimate_text_size(&f.label, &style).map(|(tw, th)| (tw as i32 + 2 * pad, th as i32 + 2 * pad))).collect::<std::result::Result<Vec<_>, _>>().map_err(draw_err)?;
        let rects: Vec<Rect> = faces.iter().map(|f| f.rect).collect();
        for f in faces {
            let r = f.rect;
            let thick = (r.w / 60).max(2) as u32;
            root.draw(&Rectangle::new([(r.x, r.y), (r.x + r.w, r.y + r.h)], BOX_COLOUR.stroke_width(thick))).map_err(draw_err)?;
            for (point, colour) in f.landmarks.iter().flatten().zip(LANDMARK_COLOURS) {
                let radius = (r.w / 40).max(2);
                root.draw(&Circle::new((point[0].round() as i32, point[1].round() as i32), radius, colour.filled())).map_err(draw_err)?;
            }
        }
        // Labels last, so that no box is drawn over one.
        for (f, b) in faces.iter().zip(place_labels(&rects, &sizes, (w as i32, h as i32))) {
            root.draw(&Rectangle::new([(b.x, b.y), (b.x + b.w, b.y + b.h)], BOX_COLOUR.filled())).map_err(draw_err)?;
            root.draw(&Text::new(f.label.clone(), (b.x + pad, b.y + pad), style.clone())).map_err(draw_err)?;
        }
        root.present().map_err(draw_err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rect(x: i32, y: i32, w: i32, h: i32) -> Rect {
        Rect { x, y, w, h }
    }

    #[test]
    fn labels_stay_inside_the_picture_and_apart() {
        // Faces side by side, one at the top edge, one at the bottom right corner, two almost
        // on top of each other.
        let faces = [rect(10, 0, 40, 40), rect(30, 5, 40, 40), rect(150, 160, 50, 40), rect(60, 80, 40, 40), rect(62, 82, 40, 40)];
        let sizes = [(90, 20); 5];
        let placed = place_labels(&faces, &sizes, (200, 200));
        for (i, a) in placed.iter().enumerate() {
            assert!(a.x >= 0 && a.y >= 0 && a.x + a.w <= 200 && a.y + a.h <= 200, "label {i} leaves the picture: {a:?}");
            for (j, b) in placed.iter().enumerate().skip(i + 1) {
                assert!(!a.overlaps(b), "labels {i} and {j} overlap: {a:?} {b:?}");
            }
        }
        assert_eq!((placed[0].x, placed[0].y), (10, 0), "moved down into the picture");
        let alone = place_labels(&faces[3..4], &sizes[..1], (200, 200));
        assert_eq!((alone[0].x, alone[0].y), (60, 58), "above its box when that is free");
    }

    #[test]
    fn a_label_wider_than_the_picture_starts_at_its_left_edge() {
        let placed = place_labels(&[rect(5, 5, 10, 10)], &[(300, 20)], (100, 100));
        assert_eq!((placed[0].x, placed[0].y), (0, 0));
    }
}
