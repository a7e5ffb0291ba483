#!/usr/bin/env python3
"""PyTorch as the peer of `mien bench train`: the same models, the same figures.

    tools/.venv/bin/python tools/torch_bench.py [--models original,vgg] [--batch 64] [--reps 5]
                                                [--threads N] [--device cpu|cuda] [--json]

For each model (data/models/NAME.json, built by tools/mien_torch.py exactly as mien builds it)
on synthetic images ([batch, 1, 48, 48] uniform in [0, 1), labels i % 7), like mien's
src/bench.rs:
- a full training step: forward in training mode (dropout, batch statistics), cross-entropy,
  backward, Adam step (lr 1e-3, epsilon 1e-7), as images per second;
- inference of a batch (eval mode, torch.inference_mode), as images per second;
- the latency of one image (batch 1), in milliseconds.
Each figure is the median of --reps timed runs after --warmup untimed ones (mien: 1 warm-up,
median of 5, the upper median when the count is even; so here), batch-1 latency the median of
BATCH1_REPS_PER_REP times as many: a call takes about a millisecond, and on a shared host a
median of ten of them moved by half from run to run. Threads are PyTorch's default
(torch.get_num_threads()) unless --threads is given.

--device cuda runs on the GPU with cuDNN (benchmark mode on, PyTorch's default TF32 settings,
reported): the peer of `mien bench train --device gpu` on the same GPU (issue 5's target). As
in mien, each training step reads the loss of the step before once it has queued its own, and
each batch-64 inference call the outputs of the call before (one batch in flight); a batch-1
call waits for its own outputs (latency).

With --json, prints one JSON object whose per-model entries use mien's field names (model,
device, batch, train_images_per_second, inference_images_per_second, inference_batch1_ms), so a
table can put them beside `mien bench train --json`; otherwise a short table.
"""
import argparse
import json
import os
import platform
import sys
import time

import torch

from mien_torch import build, load_config, model_path, optimizer, parameter_count


# As mien's bench::BATCH1_REPS_PER_REP.
BATCH1_REPS_PER_REP = 20


def median(samples):
    # As mien's summarize(): the element at len / 2 of the sorted samples.
    return sorted(samples)[len(samples) // 2]


def timed(fn, reps, warmup, device):
    def call():
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(warmup):
        call()
    samples = []
    for _ in range(max(1, reps)):
        t = time.perf_counter()
        call()
        samples.append(time.perf_counter() - t)
    return median(samples), samples


def timed_in_flight(fn, reps, warmup, read):
    """`timed` for a stream of calls, pipelined as mien's: a call queues its work (on the GPU it
    returns while the work runs), then reads the previous call's result with `read`."""
    previous = None

    def call():
        nonlocal previous
        result = fn()
        if previous is not None:
            read(previous)
        previous = result

    timing = timed(call, reps, warmup, torch.device("cpu"))
    read(previous)
    return timing


def device_name(device):
    if device.type == "cuda":
        return f"PyTorch CUDA ({torch.cuda.get_device_name(device)}, cuDNN {torch.backends.cudnn.version()})"
    return f"PyTorch CPU ({torch.get_num_threads()} threads)"


def bench_model(name, batch, reps, warmup, device, seed=1):
    config = load_config(model_path(name))
    torch.manual_seed(seed)
    model = build(config).to(device)
    opt = optimizer(model)
    loss_fn = torch.nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, *config["input"], generator=g).to(device)
    labels = (torch.arange(batch) % config["classes"]).to(device)
    one = images[:1].clone()

    def train_step():
        model.train()
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(images), labels)
        loss.backward()
        opt.step()
        return loss

    def infer(x):
        model.eval()
        with torch.inference_mode():
            return model(x)

    train_s, train_samples = timed_in_flight(train_step, reps, warmup, lambda loss: loss.item())
    infer_s, infer_samples = timed_in_flight(lambda: infer(images), reps, warmup, lambda out: out.cpu())
    single_s, single_samples = timed(lambda: infer(one), reps * BATCH1_REPS_PER_REP, warmup, device)
    return {
        "model": config["name"],
        "device": device_name(device),
        "batch": batch,
        "parameters": parameter_count(model),
        "train_images_per_second": batch / train_s,
        "inference_images_per_second": batch / infer_s,
        "inference_batch1_ms": single_s * 1e3,
        "samples_s": {"train": train_samples, "inference": infer_samples, "batch1": single_samples},
    }


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def backend_info():
    return {
        "mkl_available": torch.backends.mkl.is_available(),
        "mkldnn_available": torch.backends.mkldnn.is_available(),
        "mkldnn_enabled": bool(torch.backends.mkldnn.enabled),
        "openmp_available": torch.backends.openmp.is_available(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="original,vgg", help="comma-separated names in data/models/ or JSON paths")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, help="torch.set_num_threads (default: PyTorch's own choice)")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    default_threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    info = backend_info()
    if not args.json and device.type == "cuda":
        print(f"PyTorch {torch.__version__}: {device_name(device)}; cuDNN benchmark mode, TF32 for convolutions "
              f"{'on' if torch.backends.cudnn.allow_tf32 else 'off'}, for matrix products "
              f"{'on' if torch.backends.cuda.matmul.allow_tf32 else 'off'}; batch {args.batch}, median of {args.reps} "
              f"after {args.warmup} warm-up")
    elif not args.json:
        print(f"PyTorch {torch.__version__} on the CPU ({cpu_model()}): {torch.get_num_threads()} threads "
              f"(default {default_threads}); MKL {'yes' if info['mkl_available'] else 'no'}, "
              f"oneDNN (mkldnn) {'yes' if info['mkldnn_available'] else 'no'}"
              f"{'' if info['mkldnn_enabled'] else ' (disabled)'}, CPU capability {info['cpu_capability']}; "
              f"batch {args.batch}, median of {args.reps} after {args.warmup} warm-up")
    if not args.json:
        print(f"{'model':<10} {'params':>10} {'train img/s':>12} {'infer img/s':>12} {'batch-1 ms':>11}", flush=True)

    results = []
    for name in args.models.split(","):
        r = bench_model(name.strip(), args.batch, args.reps, args.warmup, device)
        results.append(r)
        if not args.json:
            print(f"{r['model']:<10} {r['parameters']:>10,} {r['train_images_per_second']:>12.1f} "
                  f"{r['inference_images_per_second']:>12.1f} {r['inference_batch1_ms']:>11.2f}", flush=True)

    if args.json:
        report = {
            "peer": "pytorch",
            "torch_version": torch.__version__,
            "threads": torch.get_num_threads(),
            "default_threads": default_threads,
            "interop_threads": torch.get_num_interop_threads(),
            **info,
            "cpu": cpu_model(),
            "cpu_count": os.cpu_count(),
            "batch": args.batch,
            "reps": args.reps,
            "warmup": args.warmup,
            "input": "synthetic, uniform [0, 1), labels i % 7",
            "device": device_name(device),
            "cudnn_tf32": torch.backends.cudnn.allow_tf32 if device.type == "cuda" else None,
            "matmul_tf32": torch.backends.cuda.matmul.allow_tf32 if device.type == "cuda" else None,
            "results": results,
        }
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
