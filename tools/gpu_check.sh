#!/usr/bin/env bash
# Issue 5's measurements on a machine with a real GPU, in one run, for a session lent one of the
# device tool's NVIDIA machines (its README: /work/.library/device/README.md). That machine has
# no Rust toolchain but has python3 with PyTorch (CUDA, cuDNN), so the binary is built here:
#
#   cargo build --release && mkdir -p .bin && strip -o .bin/mien target/release/mien
#   echo /.bin/ >> .git/info/exclude       # and /.gl/ with the Vulkan loader, as the README says
#   device run, carry [".bin", ".gl"]:  bash tools/gpu_check.sh .bin/mien $OUT
#
# (strip: the release binary keeps debug info, 96 MB against the 64 MiB a call may carry.)
# Prints, and keeps in OUT/report.txt: the adapters; every kernel GPU vs CPU at batch 64, 1 and
# 256; training and inference images/s on the GPU beside PyTorch with cuDNN on the same GPU
# (also as train_mien.json and train_torch.json); detection frames/s at 640x480, 1280x720 and
# 1920x1080; video end to end at the same sizes when the machine has ffmpeg; per-pass profiles
# of GPU detection at 1280x720 and of training steps (traces beside them).
# Five files in all, within the eight a device call brings back.
set -euo pipefail
bin=${1:?usage: tools/gpu_check.sh MIEN_BINARY OUT_DIR}
out=${2:?usage: tools/gpu_check.sh MIEN_BINARY OUT_DIR}
mkdir -p "$out"

# The Vulkan loader, when the device README's recipe left it in .gl; the NVIDIA driver's ICD.
if [ -d .gl ]; then
    for f in .gl/*.deb; do dpkg -x "$f" /; done
    ldconfig
fi
icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
if [ -f "$icd" ]; then
    export VK_DRIVER_FILES=$icd
fi

report=$out/report.txt
: > "$report"
step() { { echo; echo "== $*"; } | tee -a "$report"; }

step adapters
"$bin" devices 2>&1 | tee -a "$report"
step "kernels, batches 1, 64 and 256"
"$bin" bench kernels --device gpu 2>&1 | tee -a "$report"
step "training and inference: mien on the GPU"
"$bin" bench train --device gpu --json | tee "$out/train_mien.json"
step "training and inference: PyTorch on the same GPU"
if python3 -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    python3 tools/torch_bench.py --device cuda --json | tee "$out/train_torch.json"
else
    echo "no CUDA device for PyTorch here: the cuDNN peer was not run" | tee -a "$report"
fi
step detection
"$bin" bench detect --device gpu 2>&1 | tee -a "$report"
step "video end to end"
# The device machine may have no ffmpeg; the video rows then say so and the rest goes on.
if command -v ffmpeg >/dev/null 2>&1; then
    "$bin" bench video --device gpu --frames 150 --clips "$out/clips" 2>&1 | tee -a "$report"
    rm -rf "$out/clips"
else
    echo "no ffmpeg on this machine: no video rows" | tee -a "$report"
fi
step "profile: GPU detection, 1280x720"
"$bin" profile detect --frames 20 --trace "$out/detect_trace.json" 2>&1 | tee -a "$report"
"$bin" profile detect --detector haar --frames 20 --trace "$out/detect_haar_trace.json" 2>&1 | tee -a "$report"
step "profile: training steps"
"$bin" profile train --steps 20 --trace "$out/train_trace.json" 2>&1 | tee -a "$report"
step "profile: batch-1 inference"
"$bin" profile infer --calls 50 --trace "$out/infer_trace.json" 2>&1 | tee -a "$report"
