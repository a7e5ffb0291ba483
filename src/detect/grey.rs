//! Colour to grey as OpenCV 4's cvtColor(BGR2GRAY) does it for 8-bit images: BT.601 weights
//! in 15-bit fixed point (0.299, 0.587, 0.114 -> 9798, 19235, 3735, summing to 2^15), rounded.
//! Identical to OpenCV 4.14 on all 2^24 colours (docs/opencv-haar-semantics.md); 14- or 16-bit
//! weights differ by one grey level on thousands of them.

use image::{DynamicImage, GrayImage};

const SHIFT: u32 = 15;
const R: u32 = 9798;
const G: u32 = 19235;
const B: u32 = 3735;

#[inline]
pub fn grey_pixel(r: u8, g: u8, b: u8) -> u8 {
    ((r as u32 * R + g as u32 * G + b as u32 * B + (1 << (SHIFT - 1))) >> SHIFT) as u8
}

/// Grey images pass through; colour ones are converted with OpenCV's weights (alpha ignored).
pub fn to_grey(img: &DynamicImage) -> GrayImage {
    match img {
        DynamicImage::ImageLuma8(g) => g.clone(),
        _ => {
            let rgb = img.to_rgb8();
            GrayImage::from_fn(rgb.width(), rgb.height(), |x, y| {
                let p = rgb.get_pixel(x, y).0;
                image::Luma([grey_pixel(p[0], p[1], p[2])])
            })
        }
    }
}
