//! Reading images so that the detector sees the pixels OpenCV sees: the grey image equals
//! `cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2GRAY)` bit for bit, and the colour image equals
//! `cv2.imread(path)` (IMREAD_COLOR) with its channels in RGB order.
//!
//! The detector's boxes are identical to OpenCV's only on identical pixels, and JPEG decoders
//! differ in the last bit (the `image` crate's zune-jpeg against libjpeg-turbo changes a box on
//! a real group photo). So JPEGs go through libjpeg-turbo itself, the decoder OpenCV bundles,
//! with the settings OpenCV's grfmt_jpeg.cpp leaves it: the accurate integer DCT, fancy
//! upsampling and block smoothing (libjpeg's defaults), output as RGB (OpenCV asks for BGR: the
//! same colour converter writing the bytes in the other order), or as CMYK for four-component
//! files, which OpenCV then turns into BGR itself. Netpbm files go through a reader that follows
//! OpenCV's grfmt_pxm.cpp, the rest through the `image` crate, narrowed to 8 bits the way each of
//! OpenCV's readers does. EXIF orientation is applied as `cv2.imread` applies it.
//! data/fixtures/imageio (tools/image_fixtures.py) holds OpenCV's output for each layout.

#[cfg(feature = "turbojpeg")]
use std::ffi::{c_int, c_ulong, CStr};
use std::io::Cursor;
use std::path::Path;

use image::metadata::Orientation;
use image::{DynamicImage, GrayImage, ImageDecoder, ImageFormat, ImageReader, Limits, RgbImage};

use crate::detect::grey::grey_pixel;
use crate::error::{file_err, Result};

/// The largest image read, in pixels (16384 x 16384), checked from the header before any pixel
/// is decoded. OpenCV allows 2^30, but here the colour and the grey image of 2^28 pixels
/// already take 1 GiB before the detector's own buffers, and no camera comes near it.
pub const MAX_PIXELS: u64 = 1 << 28;

/// What to do with a JPEG that libjpeg-turbo decodes only with a warning, such as a truncated
/// file ("Premature end of JPEG file": in a baseline file the missing rows come out grey).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnDamage {
    /// Refuse the file with an error naming it and the problem.
    Fail,
    /// Keep the pixels, as `cv2.imread` does, and report the problem in [`Decoded::warnings`].
    Warn,
}

/// One decoded image, in colour and in grey.
pub struct Decoded {
    pub rgb: RgbImage,
    pub grey: GrayImage,
    /// With [`OnDamage::Warn`], what the decoder got past, each naming the file; otherwise empty.
    pub warnings: Vec<String>,
}

/// Reads and decodes the image at `path`.
pub fn read(path: &Path, on_damage: OnDamage) -> Result<Decoded> {
    decode(&read_bytes(path)?, path, on_damage)
}

/// Decodes an image file's contents; `name` is what messages call it.
pub fn decode(bytes: &[u8], name: &Path, on_damage: OnDamage) -> Result<Decoded> {
    let (rgb, warnings) = decode_rgb(bytes, name, on_damage)?;
    let grey = grey_of(&rgb);
    Ok(Decoded { rgb, grey, warnings })
}

/// The colour image `cv2.imread(path)` gives, in RGB order; a damaged JPEG is an error.
pub fn read_rgb(path: &Path) -> Result<RgbImage> {
    Ok(decode_rgb(&read_bytes(path)?, path, OnDamage::Fail)?.0)
}

/// The grey image `cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2GRAY)` gives; a damaged JPEG is
/// an error.
pub fn read_grey(path: &Path) -> Result<GrayImage> {
    Ok(read(path, OnDamage::Fail)?.grey)
}

/// Whether `bytes` (a file's first few are enough) start like an image mien reads, judged by
/// content as [`decode`] judges it: for telling the images in a folder from its other files.
pub fn looks_like_image(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0xFF, 0xD8, 0xFF]) || is_pnm(bytes) || image::guess_format(bytes).is_ok()
}

fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| file_err(path, format!("cannot read: {e}")))
}

fn decode_rgb(bytes: &[u8], name: &Path, on_damage: OnDamage) -> Result<(RgbImage, Vec<String>)> {
    // By content, as OpenCV picks its reader, never by the file's extension.
    // Without libjpeg-turbo (the browser build, which has the browser's own decoder) JPEG goes
    // to `image`'s decoder with the other formats: its pixels may differ from OpenCV's by a grey
    // level here and there.
    #[cfg(feature = "turbojpeg")]
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        return decode_jpeg(bytes, name, on_damage);
    }
    #[cfg(not(feature = "turbojpeg"))]
    let _ = on_damage;
    if is_pnm(bytes) {
        Ok((decode_pnm(bytes, name)?, Vec::new()))
    } else {
        Ok((decode_other(bytes, name)?, Vec::new()))
    }
}

fn check_size(name: &Path, width: u32, height: u32) -> Result<()> {
    let pixels = u64::from(width) * u64::from(height);
    if pixels > MAX_PIXELS {
        return Err(file_err(name, format!("{width}x{height} is {pixels} pixels, over the limit of {MAX_PIXELS} pixels (mien::imageio::MAX_PIXELS)")));
    }
    Ok(())
}

/// `rgb` in grey, as OpenCV's `cvtColor` converts it.
pub fn grey_of(rgb: &RgbImage) -> GrayImage {
    let mut grey = vec![0; rgb.as_raw().len() / 3];
    grey_pixels(rgb.as_raw(), &mut grey);
    GrayImage::from_raw(rgb.width(), rgb.height(), grey).expect("one grey byte per RGB pixel")
}

crate::kernels::widest_vectors! {
/// The grey of each RGB triple of `rgb` into `grey`: a video's every frame goes through here on
/// the detection thread, which wide vectors take at several pixels an instruction.
fn grey_pixels(rgb: &[u8], grey: &mut [u8]) {
    for (g, p) in grey.iter_mut().zip(rgb.chunks_exact(3)) {
        *g = grey_pixel(p[0], p[1], p[2]);
    }
}}

fn orient(rgb: RgbImage, orientation: Orientation) -> RgbImage {
    let mut image = DynamicImage::ImageRgb8(rgb);
    image.apply_orientation(orientation);
    image.into_rgb8()
}

// ---- JPEG -------------------------------------------------------------------------------------

/// What the markers before the image data say.
#[cfg(feature = "turbojpeg")]
struct JpegHeader {
    width: u32,
    height: u32,
    components: u8,
    orientation: Orientation,
}

/// Walks the markers up to the first scan. The dimensions come from here rather than from
/// tjDecompressHeader3, which in libjpeg-turbo 2.x refuses sampling factors outside its list
/// (which libjpeg itself and so OpenCV decode).
#[cfg(feature = "turbojpeg")]
fn jpeg_header(bytes: &[u8]) -> std::result::Result<JpegHeader, String> {
    let mut frame = None;
    let mut orientation = None;
    let mut pos = 2;
    loop {
        // libjpeg skips junk before a marker (and warns, which the decode reports), then any
        // number of 0xFF fill bytes.
        while bytes.get(pos).is_some_and(|&b| b != 0xFF) {
            pos += 1;
        }
        while bytes.get(pos) == Some(&0xFF) {
            pos += 1;
        }
        let Some(&code) = bytes.get(pos) else { break };
        pos += 1;
        match code {
            // Markers without a length: TEM, restart markers, a stray SOI.
            0x01 | 0xD0..=0xD8 => continue,
            // The image data (or its end) starts: the header is complete.
            0xDA | 0xD9 => break,
            _ => {}
        }
        let Some(length) = bytes.get(pos..pos + 2).map(|b| usize::from(u16::from_be_bytes([b[0], b[1]]))) else { break };
        let Some(segment) = bytes.get(pos + 2..pos + length.max(2)) else { break };
        pos += length.max(2);
        match code {
            // Start-of-frame markers, all but DHT (C4), JPG (C8) and DAC (CC); libjpeg reads the
            // first and refuses a second.
            0xC0..=0xCF if !matches!(code, 0xC4 | 0xC8 | 0xCC) && frame.is_none() && segment.len() >= 6 => {
                let height = u32::from(u16::from_be_bytes([segment[1], segment[2]]));
                let width = u32::from(u16::from_be_bytes([segment[3], segment[4]]));
                frame = Some((width, height, segment[5]));
            }
            0xE1 if orientation.is_none() && segment.starts_with(b"Exif\0\0") => {
                orientation = Orientation::from_exif_chunk(&segment[6..]);
            }
            _ => {}
        }
    }
    let (width, height, components) = frame.ok_or("not a complete JPEG: no frame header (SOF) before the image data")?;
    if width == 0 || height == 0 {
        return Err(format!("JPEG frame header gives {width}x{height} pixels"));
    }
    Ok(JpegHeader { width, height, components, orientation: orientation.unwrap_or(Orientation::NoTransforms) })
}

/// A TurboJPEG decompressor, destroyed when dropped.
#[cfg(feature = "turbojpeg")]
struct Decompressor(turbojpeg_sys::tjhandle);

#[cfg(feature = "turbojpeg")]
impl Decompressor {
    fn new() -> Option<Self> {
        // SAFETY: no arguments; a null handle (out of memory) is refused here.
        let handle = unsafe { turbojpeg_sys::tjInitDecompress() };
        (!handle.is_null()).then_some(Self(handle))
    }

    /// The message of the last failure or warning on this handle.
    fn message(&self) -> String {
        // SAFETY: a live handle; TurboJPEG returns a NUL-terminated string it owns, copied here
        // before the handle is used again.
        unsafe { CStr::from_ptr(turbojpeg_sys::tjGetErrorStr2(self.0)) }.to_string_lossy().into_owned()
    }

    /// Whether the last failure was only a warning: the image was decoded in full.
    fn only_warned(&self) -> bool {
        // SAFETY: a live handle.
        let code = unsafe { turbojpeg_sys::tjGetErrorCode(self.0) };
        code == turbojpeg_sys::TJERR_TJERR_WARNING as c_int
    }
}

#[cfg(feature = "turbojpeg")]
impl Drop for Decompressor {
    fn drop(&mut self) {
        // SAFETY: the handle came from tjInitDecompress and is destroyed once.
        unsafe { turbojpeg_sys::tjDestroy(self.0) };
    }
}

#[cfg(feature = "turbojpeg")]
fn decode_jpeg(bytes: &[u8], name: &Path, on_damage: OnDamage) -> Result<(RgbImage, Vec<String>)> {
    let header = jpeg_header(bytes).map_err(|reason| file_err(name, reason))?;
    let (width, height) = (header.width, header.height);
    check_size(name, width, height)?;
    // libjpeg gives a four-component file (CMYK, or YCCK which it converts) out only as CMYK;
    // OpenCV asks for that and converts it below. Anything else it asks for as BGR.
    let cmyk = header.components == 4;
    let (format, channels) = if cmyk { (turbojpeg_sys::TJPF_TJPF_CMYK, 4) } else { (turbojpeg_sys::TJPF_TJPF_RGB, 3) };
    let mut pixels = vec![0u8; width as usize * height as usize * channels];
    let size = c_ulong::try_from(bytes.len()).map_err(|_| file_err(name, "JPEG file too large for libjpeg-turbo"))?;
    let decompressor = Decompressor::new().ok_or_else(|| file_err(name, "libjpeg-turbo cannot start (out of memory)"))?;
    // Flags 0 keep libjpeg's defaults, which OpenCV does not change: the accurate integer DCT
    // (JDCT_ISLOW, not TJFLAG_FASTDCT) and fancy upsampling (not TJFLAG_FASTUPSAMPLE).
    // TJFLAG_LIMITSCANS refuses a progressive file of over 500 scans, which only exists to make
    // decoders spin, where OpenCV would spin.
    // SAFETY: `bytes` and `pixels` are live for the call; TurboJPEG writes at most `height` rows
    // of `pitch` bytes (it scales down, or fails, rather than write past the size it is given).
    let status = unsafe {
        turbojpeg_sys::tjDecompress2(
            decompressor.0,
            bytes.as_ptr(),
            size,
            pixels.as_mut_ptr(),
            width as c_int,
            (width as usize * channels) as c_int,
            height as c_int,
            format,
            turbojpeg_sys::TJFLAG_LIMITSCANS as c_int,
        )
    };
    let mut warnings = Vec::new();
    if status != 0 {
        let message = decompressor.message();
        // TurboJPEG calls a failure a warning when a warning came before it in the same file,
        // so in rare files Warn keeps a partial image where OpenCV returns none.
        if !decompressor.only_warned() {
            return Err(file_err(name, format!("cannot decode the JPEG: {message}")));
        }
        match on_damage {
            OnDamage::Fail => return Err(file_err(name, format!("damaged JPEG: {message}"))),
            OnDamage::Warn => warnings.push(format!("{}: damaged JPEG, decoded anyway: {message}", name.display())),
        }
    }
    let rgb = if cmyk {
        let rgb = pixels.chunks_exact(4).flat_map(|p| [cmyk_channel(p[0], p[3]), cmyk_channel(p[1], p[3]), cmyk_channel(p[2], p[3])]);
        RgbImage::from_raw(width, height, rgb.collect())
    } else {
        RgbImage::from_raw(width, height, pixels)
    }
    .expect("the buffer holds width x height pixels");
    Ok((orient(rgb, header.orientation), warnings))
}

/// OpenCV's icvCvt_CMYK2BGR_8u_C4C3R for one of C, M, Y (giving R, G, B): it reads the
/// samples as Adobe's inverted CMYK, so 255 is no ink.
#[cfg(feature = "turbojpeg")]
fn cmyk_channel(ink: u8, k: u8) -> u8 {
    let (ink, k) = (u32::from(ink), u32::from(k));
    (k - (((255 - ink) * k) >> 8)) as u8
}

// ---- Netpbm (P1 to P6) ------------------------------------------------------------------------

/// OpenCV's signature: "P1" to "P6" and a white-space byte.
fn is_pnm(bytes: &[u8]) -> bool {
    matches!(bytes, [b'P', b'1'..=b'6', c, ..] if is_space(*c))
}

/// C's isspace, which OpenCV's reader uses: Rust's ASCII white space and the vertical tab.
fn is_space(byte: u8) -> bool {
    byte.is_ascii_whitespace() || byte == 0x0B
}

/// Reads Netpbm as OpenCV's grfmt_pxm.cpp does rather than through `image`, which rescales
/// every maxval to the full range: OpenCV keeps binary 8-bit samples as stored whatever the
/// maxval, scales ASCII ones by 255 / maxval rounding down (after clamping to maxval), and keeps
/// the high byte of 16-bit ones (maxval over 255). Bitmaps (P1, P4) are black where a bit is 1.
fn decode_pnm(bytes: &[u8], name: &Path) -> Result<RgbImage> {
    let err = |reason: &str| file_err(name, format!("bad Netpbm file: {reason}"));
    let kind = bytes[1];
    let mut text = PnmText { bytes, pos: 2 };
    let width = text.number(0).ok_or_else(|| err("bad width"))?;
    let height = text.number(0).ok_or_else(|| err("bad height"))?;
    let maxval = if matches!(kind, b'1' | b'4') { 1 } else { text.number(0).ok_or_else(|| err("bad maxval"))? };
    if width == 0 || height == 0 || maxval == 0 || maxval > 65535 {
        return Err(err(&format!("header gives {width}x{height} pixels, maxval {maxval}")));
    }
    check_size(name, width, height)?;
    let (w, h) = (width as usize, height as usize);
    let channels = if matches!(kind, b'3' | b'6') { 3 } else { 1 };
    let samples = w * h * channels;
    let wide = maxval > 255;
    let data = &bytes[text.pos..];
    let short = || err("the pixel data ends early");
    let bitmap_level = |bit: u32| if bit == 0 { 255 } else { 0 };
    let values: Vec<u8> = match kind {
        b'1' => (0..samples).map(|_| text.number(1).map(bitmap_level)).collect::<Option<_>>().ok_or_else(short)?,
        b'4' => {
            let pitch = w.div_ceil(8);
            let rows = data.get(..pitch * h).ok_or_else(short)?;
            let bit = |row: &[u8], x: usize| u32::from((row[x / 8] >> (7 - x % 8)) & 1);
            rows.chunks_exact(pitch).flat_map(|row| (0..w).map(move |x| bitmap_level(bit(row, x)))).collect()
        }
        b'2' | b'3' => (0..samples)
            .map(|_| {
                text.number(0).map(|v| {
                    let v = v.min(maxval);
                    (if wide { v >> 8 } else { v * 255 / maxval }) as u8
                })
            })
            .collect::<Option<_>>()
            .ok_or_else(short)?,
        _ if wide => data.get(..samples * 2).ok_or_else(short)?.chunks_exact(2).map(|be| be[0]).collect(),
        _ => data.get(..samples).ok_or_else(short)?.to_vec(),
    };
    let rgb = if channels == 3 { values } else { values.iter().flat_map(|&v| [v; 3]).collect() };
    Ok(RgbImage::from_raw(width, height, rgb).expect("the buffer holds width x height pixels"))
}

/// The header and ASCII samples of a Netpbm file, read as OpenCV's ReadNumber does.
struct PnmText<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl PnmText<'_> {
    fn next(&mut self) -> Option<u8> {
        let byte = *self.bytes.get(self.pos)?;
        self.pos += 1;
        Some(byte)
    }

    /// The next decimal number, after white space and `#` comments; `max_digits` 0 reads all
    /// digits and the one byte after them, 1 reads a single digit (P1's packed bits).
    fn number(&mut self, max_digits: usize) -> Option<u32> {
        let mut byte = self.next()?;
        while !byte.is_ascii_digit() {
            if byte == b'#' {
                while !matches!(self.next()?, b'\n' | b'\r') {}
                byte = self.next()?;
            } else if is_space(byte) {
                byte = self.next()?;
            } else {
                return None;
            }
        }
        let mut value: u32 = 0;
        let mut digits = 0;
        loop {
            value = value.checked_mul(10)?.checked_add(u32::from(byte - b'0')).filter(|&v| v <= i32::MAX as u32)?;
            digits += 1;
            if digits == max_digits {
                return Some(value);
            }
            // The byte after the number is consumed, as OpenCV does: binary data starts after
            // exactly one white-space byte. A file may end right after its last ASCII sample.
            match self.next() {
                Some(next) if next.is_ascii_digit() => byte = next,
                _ => return Some(value),
            }
        }
    }
}

// ---- PNG, BMP, TIFF, WebP ---------------------------------------------------------------------

/// The `image` crate's byte budget for one decode: MAX_PIXELS of its widest pixel type (RGBA in
/// 32-bit float), so that the pixel limit above is the one a reader meets.
const MAX_DECODE_BYTES: u64 = MAX_PIXELS * 16;

fn decode_other(bytes: &[u8], name: &Path) -> Result<RgbImage> {
    let mut reader = ImageReader::new(Cursor::new(bytes)).with_guessed_format().map_err(|e| file_err(name, format!("cannot read: {e}")))?;
    let Some(format) = reader.format() else {
        return Err(file_err(name, "not an image mien reads: the contents are not JPEG, PNG, Netpbm (P1-P6), BMP, TIFF or WebP"));
    };
    let mut limits = Limits::default();
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(|e| file_err(name, format!("cannot read the {format:?} header: {e}")))?;
    let (width, height) = decoder.dimensions();
    check_size(name, width, height)?;
    // OpenCV applies the orientation of PNG, TIFF and WebP files too, and ignores bad metadata.
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let image = DynamicImage::from_decoder(decoder).map_err(|e| file_err(name, format!("cannot decode the {format:?} image: {e}")))?;
    Ok(orient(to_rgb8(image, format), orientation))
}

/// 8-bit RGB as OpenCV's IMREAD_COLOR makes it: alpha dropped (not blended), grey repeated in
/// the three channels, and 16-bit samples narrowed as each reader does: libpng's strip_16 keeps
/// the high byte, OpenCV's TIFF reader rounds v / 257 (as `image` does).
fn to_rgb8(image: DynamicImage, format: ImageFormat) -> RgbImage {
    let sixteen_bit = matches!(image, DynamicImage::ImageLuma16(_) | DynamicImage::ImageLumaA16(_) | DynamicImage::ImageRgb16(_) | DynamicImage::ImageRgba16(_));
    if sixteen_bit && format == ImageFormat::Png {
        let wide = image.into_rgb16();
        let (width, height) = wide.dimensions();
        let high_bytes = wide.into_raw().into_iter().map(|v| (v >> 8) as u8).collect();
        return RgbImage::from_raw(width, height, high_bytes).expect("the buffer holds width x height pixels");
    }
    image.into_rgb8()
}
