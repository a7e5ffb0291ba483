"""mien's models in PyTorch: shared by tools/torch_parity.py and tools/torch_bench.py.

A mien model is a JSON layer list (data/models/*.json, also stored in every weights file's
metadata under "model"). `build` turns it into a torch.nn.Sequential whose module indices are
the layer indices, so the names in mien's safetensors files ("0.weight", "14.bias",
"1.running_mean", ...) are the Sequential's state_dict names; flatten layers are kept as
nn.Flatten so the indices line up.

Conventions that must match mien (src/nn, src/kernels):
- input: [batch, 1, 48, 48] float, pixel / 255;
- batch norm: Keras' epsilon 1e-3 and momentum 0.99 (PyTorch momentum 0.01); after flatten it
  normalises [batch, features] (BatchNorm1d);
- Adam: Keras' epsilon 1e-7.
"""
import json
import os

import torch

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
CLASSES = ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]
BN_EPS = 1e-3
BN_MOMENTUM = 0.01  # Keras momentum 0.99
ADAM_EPS = 1e-7


def load_config(path):
    """A model config from a JSON file, or from a safetensors file's "model" metadata."""
    if path.endswith(".safetensors"):
        from safetensors import safe_open

        with safe_open(path, "pt") as f:
            meta = f.metadata() or {}
        if "model" not in meta:
            raise ValueError(f"{path}: no model config in its metadata")
        return json.loads(meta["model"])
    with open(path) as f:
        return json.load(f)


def model_path(name):
    """data/models/NAME.json for a bare name, else the path as given."""
    if os.path.exists(name) or name.endswith(".json") or name.endswith(".safetensors"):
        return name
    return os.path.join(ROOT, "data", "models", f"{name}.json")


def build(config):
    """torch.nn.Sequential from mien's JSON layer list; indices match the safetensors names."""
    c, h, w = config["input"]
    flat = False
    layers = []
    for i, spec in enumerate(config["layers"]):
        kind = spec["type"]
        if kind == "conv2d":
            k, pad = spec["kernel"], spec.get("padding", "valid")
            if pad not in ("valid", "same"):
                raise ValueError(f"layer {i}: unknown padding {pad!r}")
            layers.append(torch.nn.Conv2d(c, spec["filters"], k, padding=pad))
            c = spec["filters"]
            if pad == "valid":
                h, w = h - k + 1, w - k + 1
        elif kind == "relu":
            layers.append(torch.nn.ReLU())
        elif kind == "max_pool":
            size = spec.get("size", 2)
            layers.append(torch.nn.MaxPool2d(size))
            h, w = h // size, w // size
        elif kind == "dropout":
            layers.append(torch.nn.Dropout(spec["rate"]))
        elif kind == "batch_norm":
            bn = torch.nn.BatchNorm1d if flat else torch.nn.BatchNorm2d
            layers.append(bn(c, eps=BN_EPS, momentum=BN_MOMENTUM))
        elif kind == "flatten":
            layers.append(torch.nn.Flatten())
            c, h, w, flat = c * h * w, 1, 1, True
        elif kind == "dense":
            if not flat:
                raise ValueError(f"layer {i}: dense layer before flatten")
            layers.append(torch.nn.Linear(c, spec["units"]))
            c = spec["units"]
        else:
            raise ValueError(f"layer {i}: unknown layer type {kind!r}")
    if c * h * w != config["classes"]:
        raise ValueError(f"the model ends with {c * h * w} outputs, not {config['classes']} classes")
    return torch.nn.Sequential(*layers)


def parameter_count(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def load_weights(model, path):
    """Loads a mien safetensors file. Every tensor the model has must be there, except
    BatchNorm's num_batches_tracked, which mien does not keep."""
    from safetensors.torch import load_file

    result = model.load_state_dict(load_file(path), strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        raise ValueError(f"{path}: missing tensors {missing}, unexpected tensors {result.unexpected_keys}")
    return model


def optimizer(model, lr=1e-3):
    """Adam as mien runs it (Keras epsilon)."""
    return torch.optim.Adam(model.parameters(), lr=lr, eps=ADAM_EPS)
