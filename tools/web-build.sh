#!/usr/bin/env bash
# Builds the browser page into web/dist/: mien's library for wasm32-unknown-unknown (WebGPU),
# its JavaScript bindings (wasm-bindgen-cli, installed at the version of the wasm-bindgen crate
# in Cargo.lock when missing), the page (TypeScript, compiled by npm's typescript) and the model
# files it fetches. Needs Node.js and npm.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown; then
  echo "adding Rust's wasm32-unknown-unknown target"
  rustup target add wasm32-unknown-unknown
fi

# The bindings tool must match the crate exactly, or the generated JavaScript and the module
# disagree on their interface.
version=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/[^0-9.]/, ""); print; exit }' Cargo.lock)
if [ "$(wasm-bindgen --version 2>/dev/null | awk '{print $2}')" != "$version" ]; then
  echo "installing wasm-bindgen-cli $version (a few minutes, once)"
  cargo install wasm-bindgen-cli --version "$version"
fi

cargo build --release -p mien-web --target wasm32-unknown-unknown
target="${CARGO_TARGET_DIR:-target}"
rm -rf web/dist
mkdir -p web/dist/assets
wasm-bindgen --target web --out-dir web/dist/pkg "$target/wasm32-unknown-unknown/release/mien_web.wasm"
[ -x web/node_modules/.bin/tsc ] || npm ci --prefix web --no-audit --no-fund
# The page's types meet the bindings' (web/tsconfig.json puts page/ and dist/ side by side).
web/node_modules/.bin/tsc -p web
cp web/page/*.html web/page/*.css web/dist/
cp data/yunet/yunet_n.json data/yunet/yunet_n.safetensors web/dist/assets/
# The first of the default expression models, as `mien detect` labels videos.
weights=$(sed -n 's/^pub const SHIPPED_WEIGHTS: &\[&str\] = &\["\([^"]*\)".*$/\1/p' src/pipeline/mod.rs)
[ -f "$weights" ] || { echo "tools/web-build.sh: no default expression weights found in src/pipeline/mod.rs" >&2; exit 1; }
cp "$weights" web/dist/assets/expression.safetensors
cp data/cascades/haarcascade_frontalface_default.xml web/dist/assets/
echo "built web/dist ($(du -sh web/dist | cut -f1)); serve it with: bash tools/web-serve.sh"
