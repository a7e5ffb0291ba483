//! Drawing detections on the image: a box per face and its label, with the shipped font.

use super::group::Rect;
use crate::error::{Error, Result};
use image::RgbImage;
use plotters::prelude::*;

/// Draws each (rectangle, label) on `img` in place.
pub fn draw(img: &mut RgbImage, faces: &[(Rect, String)]) -> Result<()> {
    crate::plot::register_font();
    let (w, h) = img.dimensions();
    let size = (h.min(w) as f64 / 28.0).clamp(12.0, 40.0);
    {
        let root = BitMapBackend::with_buffer(img.as_mut(), (w, h)).into_drawing_area();
        for (r, label) in faces {
            let color = RGBColor(0, 230, 60);
            let thick = (r.w / 60).max(2) as u32;
            root.draw(&Rectangle::new([(r.x, r.y), (r.x + r.w, r.y + r.h)], color.stroke_width(thick))).map_err(|e| Error::Draw(e.to_string()))?;
            let style = TextStyle::from((crate::plot::FONT, size).into_font()).color(&color);
            // Above the box when there is room, else inside its top edge.
            let ty = if r.y as f64 > size + 4.0 { r.y - size as i32 - 4 } else { r.y + 4 };
            root.draw(&Text::new(label.clone(), (r.x, ty), style)).map_err(|e| Error::Draw(e.to_string()))?;
        }
        root.present().map_err(|e| Error::Draw(e.to_string()))?;
    }
    Ok(())
}
