//! Colour to grey as OpenCV 4's cvtColor(BGR2GRAY) does it for 8-bit images: BT.601 weights
//! in 16-bit fixed point (0.299, 0.587, 0.114 -> 19595, 38470, 7471, summing to 2^16), rounded.
//! (14-bit weights, as in older OpenCV, differ by one grey level on some colours.)

use image::{DynamicImage, GrayImage};

const SHIFT: u32 = 16;
const R: u32 = 19595;
const G: u32 = 38470;
const B: u32 = 7471;

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
