#!/usr/bin/env bash
# The test command: sets up what the build and the GPU tests need, then runs the whole suite.
# - On Debian/Ubuntu it installs what is missing when run as root, otherwise says what to
#   install: libjpeg-turbo (the JPEG decoder OpenCV uses), FFmpeg (video in and out) and,
#   without a Vulkan driver, Mesa's CPU drivers (lavapipe for Vulkan, llvmpipe for GL through
#   EGL).
# - Checks formatting (rustfmt.toml) and clippy's lints, warnings as errors.
# - Runs `cargo test` on the default adapter, then the GPU kernel tests again on wgpu's GL
#   backend (one test thread: a GL context serialises work, and wgpu's GL context lock times
#   out under parallel tests).
# - Runs the browser tests (tools/web-test.sh): the page built for WebGPU, in Chromium.
# With CI=true a missing adapter fails the GPU tests; they never skip.
set -euo pipefail
cd "$(dirname "$0")/.."

export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp/mien-xdg-$(id -u)}"
mkdir -p -m 700 "$XDG_RUNTIME_DIR"

packages=(mesa-vulkan-drivers libvulkan1 libegl1 libegl-mesa0 libgl1-mesa-dri libturbojpeg0-dev pkg-config ffmpeg)
if command -v dpkg >/dev/null 2>&1; then
  source tools/apt-install.sh
  missing=()
  for p in "${packages[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  apt_install "libjpeg-turbo; FFmpeg; Mesa's CPU Vulkan and GL drivers for the GPU tests, which fail without a GPU driver" "${missing[@]}" || true
fi

# Formatting and lints first: they take seconds and fail on what a reviewer would.
cargo fmt --all --check
cargo clippy --all-targets -- -D warnings

# Build the tests first: that also builds target/debug/mien with the same dependency features,
# where a separate `cargo run` would build the whole wgpu stack a second time.
cargo test --no-run
mien="${CARGO_TARGET_DIR:-target}/debug/mien"
"$mien" devices

cargo test
# Read the whole listing before matching: `grep -q` would close the pipe early and make
# `mien devices` fail on a write to it, which pipefail reports as no adapter.
gl_adapters=$("$mien" devices --backend gl || true)
if grep -q '^\[0\]' <<<"$gl_adapters"; then
  echo "== GPU kernel tests again on wgpu's GL backend =="
  MIEN_TEST_BACKEND=gl cargo test --test yunet --test face_crop --test kernels --test suite --test limits --test training --test augment -- --test-threads=1
elif [ "${CI:-}" = true ]; then
  echo "no GL adapter: the GL backend's kernel tests cannot run" >&2
  exit 1
fi

echo "== the page in Chromium's WebGPU (tools/web-test.sh) =="
bash tools/web-test.sh
