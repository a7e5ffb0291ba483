//! src/imageio.rs against OpenCV, without OpenCV: every image in data/fixtures/imageio (written
//! by tools/image_fixtures.py, which recorded what opencv-python's cv2.imread and
//! cvtColor(COLOR_BGR2GRAY) make of it) must decode to exactly those bytes; and damaged,
//! oversized and foreign files must fail with a message naming the file and the problem.

use std::fs;
use std::path::{Path, PathBuf};

use mien::imageio::{self, OnDamage, MAX_PIXELS};
use serde::Deserialize;
use sha2::{Digest, Sha256};

#[derive(Deserialize)]
struct Manifest {
    opencv_version: String,
    jpeg_library: String,
    images: Vec<Entry>,
}

#[derive(Deserialize)]
struct Entry {
    file: String,
    /// libjpeg-turbo warns (a truncated file) and OpenCV keeps the pixels it decoded anyway.
    damaged: bool,
    width: u32,
    height: u32,
    bgr_sha256: String,
    grey_sha256: String,
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/fixtures/imageio")
}

fn manifest() -> Manifest {
    let text = fs::read_to_string(fixtures().join("manifest.json")).expect("manifest.json");
    serde_json::from_str(&text).expect("manifest.json parses")
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn error_of<T>(result: mien::Result<T>) -> String {
    match result {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn every_fixture_decodes_to_opencvs_pixels() {
    let manifest = manifest();
    let mut differences = Vec::new();
    for entry in &manifest.images {
        let path = fixtures().join(&entry.file);
        let (rgb, grey) = if entry.damaged {
            assert!(imageio::read_rgb(&path).is_err(), "{}: damaged, yet read without a warning", entry.file);
            let decoded = imageio::read(&path, OnDamage::Warn).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(decoded.warnings.len(), 1, "{}: {:?}", entry.file, decoded.warnings);
            (decoded.rgb, decoded.grey)
        } else {
            let rgb = imageio::read_rgb(&path).unwrap_or_else(|e| panic!("{e}"));
            (rgb, imageio::read_grey(&path).unwrap_or_else(|e| panic!("{e}")))
        };
        if rgb.dimensions() != (entry.width, entry.height) {
            differences.push(format!("{}: {:?}, OpenCV {}x{}", entry.file, rgb.dimensions(), entry.width, entry.height));
            continue;
        }
        let bgr: Vec<u8> = rgb.pixels().flat_map(|p| [p[2], p[1], p[0]]).collect();
        if sha256(&bgr) != entry.bgr_sha256 {
            differences.push(format!("{}: colour differs", entry.file));
        }
        if sha256(grey.as_raw()) != entry.grey_sha256 {
            differences.push(format!("{}: grey differs", entry.file));
        }
    }
    assert!(differences.is_empty(), "differs from OpenCV {} ({}):\n{}", manifest.opencv_version, manifest.jpeg_library, differences.join("\n"));
}

#[test]
fn the_manifest_lists_every_fixture() {
    let listed: Vec<String> = manifest().images.into_iter().map(|e| e.file).collect();
    for file in fs::read_dir(fixtures()).unwrap() {
        let name = file.unwrap().file_name().into_string().unwrap();
        assert!(name == "manifest.json" || listed.contains(&name), "{name} has no entry in manifest.json");
    }
}

#[test]
fn bytes_decode_as_the_file_does() {
    let path = fixtures().join("jpeg_exif6.jpg");
    let from_file = imageio::read(&path, OnDamage::Fail).unwrap();
    let from_bytes = imageio::decode(&fs::read(&path).unwrap(), Path::new("upload.jpg"), OnDamage::Fail).unwrap();
    assert_eq!(from_bytes.rgb, from_file.rgb);
    assert_eq!(from_bytes.grey, from_file.grey);
    assert!(from_file.warnings.is_empty());
}

#[test]
fn a_truncated_jpeg_is_an_error_or_with_warn_a_warning() {
    for fixture in ["jpeg_420.jpg", "jpeg_progressive.jpg"] {
        let bytes = fs::read(fixtures().join(fixture)).unwrap();
        let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("cut_{fixture}"));
        fs::write(&path, &bytes[..bytes.len() * 2 / 3]).unwrap();

        let message = error_of(imageio::read(&path, OnDamage::Fail));
        assert!(message.contains(&format!("cut_{fixture}")) && message.contains("Premature end of JPEG file"), "{message}");

        let decoded = imageio::read(&path, OnDamage::Warn).unwrap();
        assert_eq!(decoded.rgb.dimensions(), (61, 47));
        assert_eq!(decoded.warnings.len(), 1, "{:?}", decoded.warnings);
        assert!(decoded.warnings[0].contains(&format!("cut_{fixture}")), "{:?}", decoded.warnings);
    }
}

/// PNG chunks carry a CRC-32 that the decoder checks before it reads the header's fields.
fn png_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut crc = !0u32;
    for &byte in kind.iter().chain(data) {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    let mut chunk = (data.len() as u32).to_be_bytes().to_vec();
    chunk.extend_from_slice(kind);
    chunk.extend_from_slice(data);
    chunk.extend_from_slice(&(!crc).to_be_bytes());
    chunk
}

#[test]
fn an_oversized_image_gives_its_size_and_the_limit_before_decoding() {
    let limit = MAX_PIXELS.to_string();

    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&100_000u32.to_be_bytes());
    ihdr.extend_from_slice(&100_000u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB, deflate, no filter method, no interlace
    png.extend(png_chunk(b"IHDR", &ihdr));
    png.extend(png_chunk(b"IDAT", &[]));
    png.extend(png_chunk(b"IEND", &[]));
    let message = error_of(imageio::decode(&png, Path::new("huge.png"), OnDamage::Fail));
    assert!(message.contains("huge.png") && message.contains("100000x100000") && message.contains(&limit), "{message}");

    // JPEG stores 16-bit dimensions, and libjpeg takes at most 65500.
    let mut jpeg = vec![0xFF, 0xD8];
    jpeg.extend_from_slice(&[0xFF, 0xC0, 0, 17, 8]); // SOF0, length 17, 8-bit samples
    jpeg.extend_from_slice(&65_500u16.to_be_bytes());
    jpeg.extend_from_slice(&65_500u16.to_be_bytes());
    jpeg.extend_from_slice(&[3, 1, 0x22, 0, 2, 0x11, 1, 3, 0x11, 1]);
    jpeg.extend_from_slice(&[0xFF, 0xDA, 0, 12, 3, 1, 0, 2, 0x11, 3, 0x11, 0, 63, 0]); // SOS
    let message = error_of(imageio::decode(&jpeg, Path::new("huge.jpg"), OnDamage::Fail));
    assert!(message.contains("huge.jpg") && message.contains("65500x65500") && message.contains(&limit), "{message}");
}

#[test]
fn a_file_that_is_no_image_says_so() {
    for (name, bytes) in [("notes.txt", &b"mien detect --help\n"[..]), ("empty.png", &b""[..])] {
        let message = error_of(imageio::decode(bytes, Path::new(name), OnDamage::Fail));
        assert!(message.contains(name) && message.contains("not an image"), "{message}");
    }
    let message = error_of(imageio::decode(&[0xFF, 0xD8, 0xFF, 0xE0, 0, 2], Path::new("stub.jpg"), OnDamage::Fail));
    assert!(message.contains("stub.jpg") && message.contains("no frame header"), "{message}");
}
