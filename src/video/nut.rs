//! A writer for the little of the NUT container that raw RGB video needs: one stream of rgb24
//! frames, each with its own timestamp in microseconds. NUT is FFmpeg's own simple container
//! (the one `ffmpeg -f nut` pipes between processes); raw frames over a pipe carry no time, and
//! this is what lets the encoder keep every frame's original timestamp.
//!
//! The layout follows the NUT specification (FFmpeg's doc/nut.texi and libavformat/nutdec.c):
//! a file id string, a main header, a stream header, then for every frame a syncpoint followed by
//! the frame. Numbers are NUT's variable-length integers; every header ends with a CRC-32.

use std::io::{self, Write};

const FILE_ID: &[u8] = b"nut/multimedia container\0";
const MAIN_STARTCODE: u64 = 0x4E4D_7A56_1F5F_04AD;
const STREAM_STARTCODE: u64 = 0x4E53_1140_5BF2_F9DB;
const SYNCPOINT_STARTCODE: u64 = 0x4E4B_E4AD_EECA_4569;

/// Frame flags (NUT's "flags" field): a keyframe whose header carries its stream, full
/// timestamp, size and a checksum, so no frame depends on the one before.
const FLAG_KEY: u64 = 1;
const FLAG_CODED_PTS: u64 = 8;
const FLAG_STREAM_ID: u64 = 16;
const FLAG_SIZE_MSB: u64 = 32;
const FLAG_CHECKSUM: u64 = 64;
const FLAG_INVALID: u64 = 8192;
const FRAME_FLAGS: u64 = FLAG_KEY | FLAG_CODED_PTS | FLAG_STREAM_ID | FLAG_SIZE_MSB | FLAG_CHECKSUM;

/// The one frame code used: the first byte of every frame. All the other 254 codes (255 less
/// 'N', which starts a startcode) are declared invalid.
const FRAME_CODE: u8 = 0;

/// Microseconds: the resolution of the timestamps the decoder reads from ffmpeg.
pub(super) const TIME_BASE_DEN: u64 = 1_000_000;

/// Bytes allowed between syncpoints before a reader calls the file damaged. A syncpoint goes
/// before every frame, so only the few bytes of a frame header ever follow one.
const MAX_DISTANCE: u64 = 32_768;

/// Writes NUT's variable-length unsigned integer: 7 bits a byte, most significant first, the top
/// bit set on every byte but the last.
fn put_v(out: &mut Vec<u8>, value: u64) {
    let significant_bits = 64 - (value | 1).leading_zeros();
    let mut shift = (significant_bits - 1) / 7 * 7;
    loop {
        let more = if shift > 0 { 0x80 } else { 0 };
        out.push(((value >> shift) & 0x7F) as u8 | more);
        if shift == 0 {
            return;
        }
        shift -= 7;
    }
}

/// NUT's CRC-32: generator 0x04C11DB7, most significant bit first, starting from 0, no final
/// inversion. Only headers are checksummed, a few dozen bytes each, so bit by bit is fast enough.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0u32;
    for &byte in bytes {
        crc ^= u32::from(byte) << 24;
        for _ in 0..8 {
            crc = if crc & 0x8000_0000 != 0 { (crc << 1) ^ 0x04C1_1DB7 } else { crc << 1 };
        }
    }
    crc
}

/// A packet: startcode, forward pointer (the size of what follows, checksum included), body,
/// checksum of the body. Bodies here stay far below the 4096 bytes above which NUT also wants a
/// checksum of the packet header.
fn put_packet(out: &mut Vec<u8>, startcode: u64, body: &[u8]) {
    out.extend_from_slice(&startcode.to_be_bytes());
    put_v(out, body.len() as u64 + 4);
    out.extend_from_slice(body);
    out.extend_from_slice(&crc32(body).to_be_bytes());
}

/// The file id string, the main header and the header of the one rgb24 stream.
pub(super) fn write_header(out: &mut impl Write, width: u32, height: u32) -> io::Result<()> {
    let mut main = Vec::new();
    for value in [3, 1, MAX_DISTANCE, 1, 1, TIME_BASE_DEN] {
        // version 3, one stream, max_distance, one time base: 1/1000000 s
        put_v(&mut main, value);
    }
    // The frame code table, as runs of codes sharing their fields. Each run: flags, the number
    // of fields that follow (6), pts delta (signed, 0 encodes as 0), size multiplier 1,
    // stream 0, size lsb 0, reserved count 0, and how many codes the run covers.
    for (flags, codes) in [(FRAME_FLAGS, 1), (FLAG_INVALID, 254)] {
        for value in [flags, 6, 0, 1, 0, 0, 0, codes] {
            put_v(&mut main, value);
        }
    }
    // No elision headers (one header, of length 0). The field is optional in the specification,
    // but FFmpeg's reader refuses every frame when it is missing.
    put_v(&mut main, 0);

    let mut stream = Vec::new();
    put_v(&mut stream, 0); // stream id
    put_v(&mut stream, 0); // class: video
    put_v(&mut stream, 4); // fourcc length, then FFmpeg's raw rgb24 tag
    stream.extend_from_slice(b"RGB\x18");
    // time base 0, msb_pts_shift 0 (every frame carries its full timestamp), max_pts_distance 0
    // (every frame carries a checksum), decode delay 0, stream flags 0, no codec data
    for value in [0, 0, 0, 0, 0, 0] {
        put_v(&mut stream, value);
    }
    // width, height, sample aspect ratio unknown (0:0), colourspace unknown
    for value in [u64::from(width), u64::from(height), 0, 0, 0] {
        put_v(&mut stream, value);
    }

    let mut header = FILE_ID.to_vec();
    put_packet(&mut header, MAIN_STARTCODE, &main);
    put_packet(&mut header, STREAM_STARTCODE, &stream);
    out.write_all(&header)
}

/// One frame of `rgb` bytes at `pts` microseconds, preceded by a syncpoint so that a reader can
/// start anywhere. Written straight from the caller's buffer.
pub(super) fn write_frame(out: &mut impl Write, pts: u64, rgb: &[u8]) -> io::Result<()> {
    let mut syncpoint = Vec::new();
    put_v(&mut syncpoint, pts); // global key pts (in time base 0 of 1)
                                // Back pointer 0: decoding can start at this syncpoint, as every frame is a keyframe.
    put_v(&mut syncpoint, 0);

    let mut header = Vec::with_capacity(48);
    put_packet(&mut header, SYNCPOINT_STARTCODE, &syncpoint);
    let frame_start = header.len();
    header.push(FRAME_CODE);
    put_v(&mut header, 0); // stream id
    put_v(&mut header, pts + 1); // coded pts: with msb_pts_shift 0, the full pts plus 1
    put_v(&mut header, rgb.len() as u64);
    let checksum = crc32(&header[frame_start..]);
    header.extend_from_slice(&checksum.to_be_bytes());
    out.write_all(&header)?;
    out.write_all(rgb)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(value: u64) -> Vec<u8> {
        let mut out = Vec::new();
        put_v(&mut out, value);
        out
    }

    #[test]
    fn varints_match_the_specification() {
        assert_eq!(v(0), [0x00]);
        assert_eq!(v(127), [0x7F]);
        assert_eq!(v(128), [0x81, 0x00]);
        assert_eq!(v(384), [0x83, 0x00]);
        assert_eq!(v(32_767), [0x81, 0xFF, 0x7F]);
        assert_eq!(v(u64::MAX).len(), 10);
    }

    #[test]
    fn crc_is_nut_crc32() {
        // CRC-32/POSIX's check value without its final inversion.
        assert_eq!(crc32(b"123456789"), 0x765E_7680 ^ 0xFFFF_FFFF);
        // What FFmpeg's reader verifies: the body followed by its checksum sums to zero.
        let body = b"any header body";
        let mut with_checksum = body.to_vec();
        with_checksum.extend_from_slice(&crc32(body).to_be_bytes());
        assert_eq!(crc32(&with_checksum), 0);
    }
}
