#!/usr/bin/env bash
# The browser tests: builds the page (tools/web-build.sh), records what native `mien detect
# --json` says about the shipped photos, and runs web/tests/ in Debian's Chromium (WebGPU on
# SwiftShader where there is no GPU) through npm's playwright-core. Installs Chromium and the
# npm packages when they are missing (as root on Debian; otherwise it says what to install).
set -euo pipefail
cd "$(dirname "$0")/.."

source tools/apt-install.sh
need=()
command -v node >/dev/null 2>&1 || need+=(nodejs npm)
[ -x /usr/lib/chromium/chromium ] || need+=(chromium)
command -v ffmpeg >/dev/null 2>&1 || need+=(ffmpeg)
apt_install "the browser tests" "${need[@]}"
[ -d web/node_modules/playwright-core ] && [ -x web/node_modules/.bin/tsc ] || npm ci --prefix web --no-audit --no-fund

bash tools/web-build.sh
# The web build's lints: the library as the browser builds it, and the page's exports.
cargo clippy -p mien-web --target wasm32-unknown-unknown -- -D warnings

# The native answers the page must give, from the CPU backend in f32 as the page computes
# (native inference defaults to bf16 on CPUs with bf16 products), with the one expression model
# the page has (native images take every default model).
cargo build --bin mien
mien="${CARGO_TARGET_DIR:-target}/debug/mien"
weights=web/dist/assets/expression.safetensors
fixtures=$(mktemp -d)
trap 'rm -rf "$fixtures"' EXIT
for run in yunet-mirror haar-mirror yunet-none; do
  "$mien" --device cpu --precision f32 detect data/photos/grace_hopper.jpg data/photos/astronaut.png --detector "${run%-*}" --tta "${run#*-}" --weights "$weights" --json "$fixtures/$run.json" --out "$fixtures/out" >/dev/null
done
# The fake webcam's picture: the shipped photo as the single frame of a Y4M file, which
# Chromium plays in a loop, and the native answer for that frame as the page sees it (decoded
# back from the file's 4:2:0 YUV, one view a face as the page labels webcam frames).
ffmpeg -loglevel error -i data/photos/grace_hopper.jpg -pix_fmt yuv420p -f yuv4mpegpipe "$fixtures/camera.y4m"
ffmpeg -loglevel error -i "$fixtures/camera.y4m" "$fixtures/camera.png"
"$mien" --device cpu --precision f32 detect "$fixtures/camera.png" --tta none --weights "$weights" --json "$fixtures/camera.json" --out "$fixtures/out" >/dev/null

MIEN_WEB_FIXTURES="$fixtures" node --test web/tests/
