#!/usr/bin/env python3
"""Generates the image-decoding fixtures for mien's src/imageio.rs.

    python3 -m venv tools/.venv
    tools/.venv/bin/pip install opencv-python-headless==4.14.0.94 numpy pillow==13.0.0
    tools/.venv/bin/python tools/image_fixtures.py

mien reads images so that the detector sees the pixels OpenCV sees: its grey image must equal
cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2GRAY) bit for bit. This script writes small files
in every layout worth telling apart under data/fixtures/imageio/, and records what OpenCV makes
of each in manifest.json:

    {"opencv_version": "4.14.0", "jpeg_library": "build-libjpeg-turbo (ver 3.1.2-70)",
     "images": [{"file": "jpeg_420.jpg", "source": "...how it was written...",
                 "damaged": false,                 # true: libjpeg-turbo warns, imread decodes anyway
                 "width": W, "height": H,          # of cv2.imread's output, after EXIF rotation
                 "bgr_sha256": "...",              # of cv2.imread(path) (IMREAD_COLOR), row-major BGR
                 "grey_sha256": "..."}, ...]}      # of cv2.cvtColor(that, COLOR_BGR2GRAY)

The pictures are data/photos/astronaut.png shrunk to 61x47 (odd sizes, so partial JPEG blocks
and chroma samples at the edges get exercised), written by OpenCV where it can write the layout,
by Pillow where it cannot (CMYK JPEG, EXIF orientation, palette and 32-bit BMP, TIFF orientation)
and by hand for Netpbm maxvals OpenCV does not write and for truncated JPEGs. One more entry,
data/photos/grace_hopper.jpg, is a real photo's JPEG, referenced in place rather than copied.
Nothing here is random, so running it again rewrites identical files.
"""
import hashlib
import io
import json
import os

import cv2
import numpy as np
from PIL import Image

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
OUT = os.path.join(ROOT, "data", "fixtures", "imageio")
WIDTH, HEIGHT = 61, 47
EXIF_ORIENTATION = 0x0112


def sha256(array):
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def cv_write(name, image, params=()):
    ok, encoded = cv2.imencode(os.path.splitext(name)[1], image, list(params))
    assert ok, name
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(encoded.tobytes())


def pil_write(name, image, **options):
    # Through a buffer so the format comes from the name and the file is written in one piece.
    buffer = io.BytesIO()
    image.save(buffer, format=Image.registered_extensions()[os.path.splitext(name)[1]], **options)
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(buffer.getvalue())


def raw_write(name, contents):
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(contents)


def truncate(whole, name, fraction):
    with open(os.path.join(OUT, whole), "rb") as f:
        contents = f.read()
    raw_write(name, contents[:int(len(contents) * fraction)])


def ascii_rows(array):
    return b"".join(b" ".join(b"%d" % v for v in row) + b"\n" for row in array)


def exif_with_orientation(value):
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = value
    return exif


def jpeg_library():
    for line in cv2.getBuildInformation().splitlines():
        if line.strip().startswith("JPEG:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def main():
    os.makedirs(OUT, exist_ok=True)
    astro = cv2.imread(os.path.join(ROOT, "data", "photos", "astronaut.png"), cv2.IMREAD_COLOR)
    bgr = cv2.resize(astro, (WIDTH, HEIGHT), interpolation=cv2.INTER_AREA)
    grey = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    rgb_pil = Image.fromarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    q = (cv2.IMWRITE_JPEG_QUALITY, 90)

    # (file name, how it is written); each writer runs once, below, in this order.
    written = []

    def fixture(name, source, write):
        write(name)
        written.append((name, source))

    for label, factor in [("420", cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420),
                          ("422", cv2.IMWRITE_JPEG_SAMPLING_FACTOR_422),
                          ("440", cv2.IMWRITE_JPEG_SAMPLING_FACTOR_440),
                          ("444", cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444),
                          ("411", cv2.IMWRITE_JPEG_SAMPLING_FACTOR_411)]:
        fixture(f"jpeg_{label}.jpg", f"cv2.imwrite baseline, quality 90, sampling {label}",
                lambda n, f=factor: cv_write(n, bgr, q + (cv2.IMWRITE_JPEG_SAMPLING_FACTOR, f)))
    fixture("jpeg_progressive.jpg", "cv2.imwrite progressive, quality 90, sampling 420",
            lambda n: cv_write(n, bgr, q + (cv2.IMWRITE_JPEG_PROGRESSIVE, 1)))
    fixture("jpeg_restart.jpg", "cv2.imwrite baseline with a restart marker every MCU row",
            lambda n: cv_write(n, bgr, q + (cv2.IMWRITE_JPEG_RST_INTERVAL, 4)))
    # Damaged files: OpenCV keeps what libjpeg-turbo decodes past the warning; the rows after
    # the cut come out grey, or for a progressive file as blurred as its first scans.
    for whole in ("jpeg_420.jpg", "jpeg_progressive.jpg"):
        cut = whole.replace(".jpg", "_truncated.jpg")
        fixture(cut, f"the first 60% of {whole}", lambda n, w=whole: truncate(w, n, 0.6))
    fixture("jpeg_grey.jpg", "cv2.imwrite of the grey image (one component)",
            lambda n: cv_write(n, grey, q))
    fixture("jpeg_cmyk.jpg", "Pillow, CMYK with black ink (Adobe marker, inverted as Photoshop writes it)",
            lambda n: pil_write(n, cmyk_image(bgr), quality=90))
    for value in (3, 6, 7):
        fixture(f"jpeg_exif{value}.jpg", f"Pillow, quality 90, EXIF orientation {value}",
                lambda n, v=value: pil_write(n, rgb_pil, quality=90, exif=exif_with_orientation(v)))

    fixture("png_rgb.png", "cv2.imwrite", lambda n: cv_write(n, bgr))
    fixture("png_grey.png", "cv2.imwrite of the grey image", lambda n: cv_write(n, grey))
    fixture("png_rgba.png", "cv2.imwrite BGRA with a gradient alpha (OpenCV drops alpha)",
            lambda n: cv_write(n, np.dstack([bgr, np.tile(np.arange(WIDTH, dtype=np.uint8) * 4,
                                                          (HEIGHT, 1))])))
    fixture("png_16bit.png", "cv2.imwrite 16-bit BGR, v * 257 + (x * 37 + y * 11) % 256",
            lambda n: cv_write(n, bgr.astype(np.uint16) * 257 + low_bits()))
    fixture("png_grey16.png", "cv2.imwrite 16-bit grey, v * 257 + (x * 37 + y * 11) % 256",
            lambda n: cv_write(n, grey.astype(np.uint16) * 257 + low_bits()[:, :, 0]))
    fixture("png_palette.png", "Pillow, 64-colour palette", lambda n: pil_write(n, palette_image()))
    fixture("png_exif6.png", "Pillow, eXIf chunk with orientation 6",
            lambda n: pil_write(n, rgb_pil, exif=exif_with_orientation(6)))

    fixture("ppm_rgb.ppm", "cv2.imwrite binary P6", lambda n: cv_write(n, bgr))
    fixture("ppm_ascii.ppm", "cv2.imwrite ASCII P3 of the top-left 21x15 (ASCII is bulky)",
            lambda n: cv_write(n, bgr[:15, :21], (cv2.IMWRITE_PXM_BINARY, 0)))
    fixture("pgm_grey.pgm", "cv2.imwrite binary P5", lambda n: cv_write(n, grey))
    fixture("pgm_16bit.pgm", "cv2.imwrite binary P5, maxval 65535",
            lambda n: cv_write(n, grey.astype(np.uint16) * 257 + low_bits()[:, :, 0]))

    # OpenCV's Netpbm reader keeps binary 8-bit samples as stored whatever the maxval, scales
    # ASCII ones by 255 / maxval (clamped to maxval first) and keeps the high byte of 16-bit ones.
    scaled = (grey.astype(np.uint32) * 100 // 255).astype(np.uint8)
    fixture("pgm_maxval100.pgm", "hand-written binary P5, maxval 100",
            lambda n: raw_write(n, b"P5\n61 47\n100\n" + scaled.tobytes()))
    fixture("pgm_ascii_maxval100.pgm",
            "hand-written ASCII P2 with a comment, maxval 100, the first row 255 (over maxval)",
            lambda n: raw_write(n, b"P2\n# mien fixture\n61 47\n100\n" + ascii_rows(
                np.vstack([np.full((1, WIDTH), 255, np.uint8), scaled[1:]]))))
    fixture("pgm_maxval4095.pgm", "hand-written binary P5, maxval 4095 (12-bit samples)",
            lambda n: raw_write(n, b"P5\n61 47\n4095\n" + (grey.astype(">u2") * 16 + 7).tobytes()))
    fixture("pbm_binary.pbm", "cv2.imwrite binary P4 of grey > 127",
            lambda n: cv_write(n, (grey > 127).astype(np.uint8) * 255))
    fixture("pbm_ascii.pbm", "cv2.imwrite ASCII P1 of grey > 127",
            lambda n: cv_write(n, (grey > 127).astype(np.uint8) * 255, (cv2.IMWRITE_PXM_BINARY, 0)))

    fixture("bmp_rgb.bmp", "cv2.imwrite 24-bit", lambda n: cv_write(n, bgr))
    fixture("bmp_grey.bmp", "cv2.imwrite 8-bit grey palette", lambda n: cv_write(n, grey))
    fixture("bmp_palette.bmp", "Pillow, 8-bit 64-colour palette",
            lambda n: pil_write(n, palette_image()))
    fixture("bmp_rgba.bmp", "Pillow, 32-bit with alpha",
            lambda n: pil_write(n, rgb_pil.convert("RGBA")))

    fixture("tiff_rgb.tif", "cv2.imwrite (LZW)", lambda n: cv_write(n, bgr))
    fixture("tiff_grey.tif", "cv2.imwrite of the grey image", lambda n: cv_write(n, grey))
    fixture("tiff_16bit.tif", "cv2.imwrite 16-bit BGR, v * 257 + (x * 37 + y * 11) % 256",
            lambda n: cv_write(n, bgr.astype(np.uint16) * 257 + low_bits()))

    # OpenCV 4.14 fails on TIFF orientations 5 to 8 (its reader rotates, imread then finds the
    # wrong shape), so only a flip is recorded.
    fixture("tiff_orientation3.tif", "Pillow, orientation tag 3 (rotated 180 degrees)",
            lambda n: pil_write(n, rgb_pil, tiffinfo={274: 3}))

    fixture("webp_lossless.webp", "cv2.imwrite quality 101 (lossless)",
            lambda n: cv_write(n, bgr, (cv2.IMWRITE_WEBP_QUALITY, 101)))
    fixture("webp_lossy.webp", "cv2.imwrite quality 80",
            lambda n: cv_write(n, bgr, (cv2.IMWRITE_WEBP_QUALITY, 80)))
    fixture("webp_exif6.webp", "Pillow, lossless, EXIF orientation 6",
            lambda n: pil_write(n, rgb_pil, lossless=True, exif=exif_with_orientation(6)))

    images = []
    for name, source in written:
        images.append(record(os.path.join(OUT, name), name, source))
    images.append(record(os.path.join(ROOT, "data", "photos", "grace_hopper.jpg"),
                         "../../photos/grace_hopper.jpg", "a real photo, referenced in place"))

    manifest = {"opencv_version": cv2.__version__, "jpeg_library": jpeg_library(), "images": images}
    with open(os.path.join(OUT, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
    print(f"wrote {len(written)} images and manifest.json to {os.path.relpath(OUT, ROOT)}")


def low_bits():
    """Low bytes for the 16-bit images, different per pixel, so that rounding (v + 128) / 257
    and truncating v >> 8 give different 8-bit values and a test can tell which one ran."""
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    return np.repeat(((x * 37 + y * 11) % 256).astype(np.uint16)[:, :, None], 3, axis=2)


def cmyk_image(bgr):
    """Ink amounts with black taken out (K = 255 - max(R, G, B)), where Pillow's own RGB to CMYK
    conversion leaves K at 0 and so would not test how OpenCV mixes K into each channel."""
    rgb = bgr[:, :, ::-1].astype(np.int32)
    k = 255 - rgb.max(axis=2)
    white = np.maximum(255 - k, 1)[:, :, None]
    cmy = (255 - rgb - k[:, :, None]) * 255 // white
    cmyk = np.dstack([cmy, k]).astype(np.uint8)
    return Image.frombytes("CMYK", (WIDTH, HEIGHT), cmyk.tobytes())


def palette_image():
    astro = Image.open(os.path.join(ROOT, "data", "photos", "astronaut.png")).convert("RGB")
    return astro.resize((WIDTH, HEIGHT), Image.Resampling.BOX).quantize(64, dither=Image.Dither.NONE)


def record(path, name, source):
    bgr = cv2.imread(path, cv2.IMREAD_COLOR)
    assert bgr is not None, f"OpenCV cannot read {path}"
    grey = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    return {"file": name, "source": source, "damaged": "_truncated" in name,
            "width": bgr.shape[1], "height": bgr.shape[0],
            "bgr_sha256": sha256(bgr), "grey_sha256": sha256(grey)}


if __name__ == "__main__":
    main()
