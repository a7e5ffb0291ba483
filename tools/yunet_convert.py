#!/usr/bin/env python3
"""Converts OpenCV's YuNet-n face detector (ONNX) into mien's weights and architecture files.

    python3 -m venv tools/.venv
    tools/.venv/bin/pip install opencv-python-headless==4.14.0.94 numpy onnx safetensors
    tools/.venv/bin/python tools/yunet_convert.py [--onnx PATH] [--no-check]

Reads ../shared/data/yunet/yunet_n_320_320.onnx (Apache-2.0, from ShiqiYu/libfacedetection.train)
and writes, under data/yunet/:

- yunet_n.safetensors: every convolution's weight ([out, in / groups, kh, kw], as in ONNX) and
  bias ([out]) as f32, named "<node>.weight" and "<node>.bias" after the PyTorch module the
  convolution came from (e.g. "backbone.model1.conv2.conv2.weight"). The metadata holds the
  architecture JSON under "architecture" and the ONNX file's sha256 under "source_sha256".
- yunet_n.json: the architecture as data: a list of nodes, each with a unique name, a type
  (conv2d, relu, max_pool, upsample_nearest, add, to_rows, sigmoid), the names of its inputs, its
  output channel count, and for convolutions kernel/stride/padding/dilation/groups and the tensors
  they use; then the 12 outputs that cv::FaceDetectorYN decodes. "onnx_node" and "onnx_output" tie
  each node to the ONNX graph, so a layer's output can be compared with cv2.dnn's
  (net.forward(onnx_output)).

Batch norm: the ONNX export already folded every BatchNormalization into the convolution before
it (the graph has none; those convolutions have numeric initializer names such as "459" and are
marked "batch_norm_folded": true). If a graph still had BatchNormalization nodes after a
convolution, this script would fold them (W' = W * g / sqrt(v + eps), b' = (b - m) * g / sqrt(v +
eps) + beta, per output channel); `--self-test` checks that folding on a small synthetic graph
against cv2.dnn.

Unless --no-check, the script then runs the declared architecture in plain numpy from the written
files on a real photo and compares every node with cv2.dnn's output for the same ONNX value.
It prints a summary: the op types with every attribute present, the parameter count and the
outputs' names and shapes for a 320x320 input. Deterministic: a rerun writes identical files.
"""
import argparse
import collections
import hashlib
import json
import os
import sys

import numpy as np
import onnx
from onnx import numpy_helper

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
DEFAULT_ONNX = os.path.join(ROOT, "..", "shared", "data", "yunet", "yunet_n_320_320.onnx")
OUT = os.path.join(ROOT, "data", "yunet")
OUTPUT_NAMES = ["cls_8", "cls_16", "cls_32", "obj_8", "obj_16", "obj_32",
                "bbox_8", "bbox_16", "bbox_32", "kps_8", "kps_16", "kps_32"]
STRIDES = [8, 16, 32]


def attrs_of(node):
    out = {}
    for a in node.attribute:
        v = onnx.helper.get_attribute_value(a)
        if isinstance(v, bytes):
            v = v.decode()
        elif isinstance(v, list):
            v = [x.decode() if isinstance(x, bytes) else x for x in v]
        out[a.name] = v
    return out


def fold_batch_norms(graph, inits):
    """Folds each BatchNormalization that follows a Conv (whose output nothing else reads) into
    that Conv. Returns the new node list and how many were folded."""
    consumers = collections.Counter(i for n in graph.node for i in n.input)
    producer = {o: n for n in graph.node for o in n.output}
    nodes, folded, drop = [], 0, set()
    for n in graph.node:
        if n.op_type != "BatchNormalization":
            continue
        conv = producer.get(n.input[0])
        if conv is None or conv.op_type != "Conv" or consumers[n.input[0]] != 1:
            sys.exit(f"BatchNormalization {n.name} does not follow a convolution: cannot fold it")
        eps = attrs_of(n).get("epsilon", 1e-5)
        g, beta, mean, var = (inits[x].astype(np.float64) for x in n.input[1:5])
        w = inits[conv.input[1]].astype(np.float64)
        b = inits[conv.input[2]].astype(np.float64) if len(conv.input) > 2 else np.zeros(w.shape[0])
        k = g / np.sqrt(var + eps)
        wname, bname = conv.input[1] + ".bn_folded", conv.output[0] + ".bias.bn_folded"
        inits[wname] = (w * k[:, None, None, None]).astype(np.float32)
        inits[bname] = ((b - mean) * k + beta).astype(np.float32)
        x = conv.input[0]
        del conv.input[:]
        conv.input.extend([x, wname, bname])
        conv.output[0] = n.output[0]
        drop.add(id(n))
        folded += 1
    for n in graph.node:
        if id(n) not in drop:
            nodes.append(n)
    return nodes, folded


def module_names(nodes):
    """Names each Conv after its PyTorch module. Convolutions whose weights kept their module
    name ("backbone.model1.conv1.conv1.weight") use it; the ones the exporter fused with a batch
    norm got numeric names ("462") and are named from their place: the depthwise conv2 of a
    ConvDPUnit follows the unit's 1x1 conv1, and the stem's conv1 reads the input."""
    producer = {o: n for n in nodes for o in n.output}
    names = {}
    for n in nodes:
        if n.op_type != "Conv":
            continue
        w = n.input[1]
        if w.endswith(".weight.bn_folded") and not w[0].isdigit():  # folded by fold_batch_norms
            names[n.name] = (w[: -len(".weight.bn_folded")], True)
            continue
        if w.endswith(".weight") and not w[0].isdigit():
            names[n.name] = (w[: -len(".weight")], False)
            continue
        src = producer.get(n.input[0])
        if n.input[0] == "input":
            names[n.name] = ("backbone.model0.conv1", True)
        elif src is not None and src.op_type == "Conv" and src.name in names and names[src.name][0].endswith(".conv1"):
            names[n.name] = (names[src.name][0][: -len(".conv1")] + ".conv2", True)
        else:
            sys.exit(f"cannot name convolution {n.name} (weights {w})")
    return names


def build(onnx_path):
    model = onnx.load(onnx_path)
    graph = model.graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    nodes, folded = fold_batch_norms(graph, inits)
    shapes = {}
    for vi in list(graph.value_info) + list(graph.output) + list(graph.input):
        shapes[vi.name] = [d.dim_value for d in vi.type.tensor_type.shape.dim]

    conv_names = module_names(nodes)
    # value name -> node name, so that later nodes name their inputs by node.
    value_to_node = {"input": "input"}
    out_nodes, tensors, op_attrs = [], {}, collections.defaultdict(set)
    head_of = {}  # ONNX value produced by a head conv -> the output it ends up as
    producer = {o: n for n in nodes for o in n.output}
    for out in OUTPUT_NAMES:
        v = out
        while producer[v].op_type in ("Sigmoid", "Reshape", "Transpose"):
            v = producer[v].input[0]
        head_of[v] = out

    def channels(value):
        return int(shapes[value][1]) if len(shapes.get(value, [])) == 4 else int(shapes[value][2])

    for n in nodes:
        a = attrs_of(n)
        for k, v in a.items():
            op_attrs[n.op_type].add(f"{k}={v}")
        ins = [value_to_node[i] for i in n.input if i in value_to_node]
        out = n.output[0]
        if n.op_type == "Conv":
            name, bn = conv_names[n.name]
            w = inits[n.input[1]].astype(np.float32)
            b = inits[n.input[2]].astype(np.float32) if len(n.input) > 2 else np.zeros(w.shape[0], np.float32)
            pads = a.get("pads", [0, 0, 0, 0])
            if pads[0] != pads[2] or pads[1] != pads[3] or pads[0] != pads[1]:
                sys.exit(f"{n.name}: asymmetric padding {pads}")
            ks, st, dl = a["kernel_shape"], a.get("strides", [1, 1]), a.get("dilations", [1, 1])
            if ks[0] != ks[1] or st[0] != st[1] or dl[0] != dl[1]:
                sys.exit(f"{n.name}: non-square kernel/stride/dilation")
            groups = a.get("group", 1)
            cin = w.shape[1] * groups
            tensors[name + ".weight"] = w
            tensors[name + ".bias"] = b
            node = {"name": name, "type": "conv2d", "inputs": ins, "in_channels": int(cin),
                    "channels": int(w.shape[0]), "kernel": int(ks[0]), "stride": int(st[0]),
                    "padding": int(pads[0]), "dilation": int(dl[0]), "groups": int(groups),
                    "depthwise": bool(groups == cin == w.shape[0]),  # one filter per channel (also 1 channel)
                    "weight": name + ".weight", "bias": name + ".bias", "batch_norm_folded": bn}
            if out in head_of:
                node["head"] = head_of[out]
        elif n.op_type == "Relu":
            name = ins[0] + ".relu"
            node = {"name": name, "type": "relu", "inputs": ins, "channels": channels(out)}
        elif n.op_type == "MaxPool":
            if a.get("ceil_mode", 0) or any(a.get("pads", [0])) or a["kernel_shape"] != [2, 2] or a["strides"] != [2, 2]:
                sys.exit(f"{n.name}: unsupported pooling {a}")
            stage = ins[0].split(".")[1]  # backbone.modelN...
            name = f"backbone.{stage}.pool"
            node = {"name": name, "type": "max_pool", "inputs": ins, "channels": channels(out),
                    "size": 2, "stride": 2, "padding": 0, "ceil_mode": False}
        elif n.op_type == "Resize":
            scales = inits[n.input[2]].tolist()
            if (a.get("mode"), a.get("coordinate_transformation_mode"), a.get("nearest_mode"), scales) != (
                    "nearest", "asymmetric", "floor", [1.0, 1.0, 2.0, 2.0]):
                sys.exit(f"{n.name}: unsupported resize {a} {scales}")
            name = ins[0].rsplit(".", 2)[0] + ".upsample"  # neck.lateral_convs.K.upsample
            node = {"name": name, "type": "upsample_nearest", "inputs": ins, "channels": channels(out), "scale": 2}
        elif n.op_type == "Add":
            node = {"type": "add", "inputs": ins, "channels": channels(out)}
        elif n.op_type == "Transpose":
            if a["perm"] != [0, 2, 3, 1]:
                sys.exit(f"{n.name}: unsupported transpose {a}")
            # folded into the Reshape that follows: to_rows is Transpose + Reshape
            value_to_node[out] = ins[0]
            continue
        elif n.op_type == "Reshape":
            shape = inits[n.input[1]].tolist()
            c = channels(n.output[0])
            if shape != [1, -1, c] or producer[n.input[0]].op_type != "Transpose":
                sys.exit(f"{n.name}: unsupported reshape {shape}")
            target = n.output[0] if n.output[0] in OUTPUT_NAMES else next(
                o for o in OUTPUT_NAMES if producer[o].input[0] == n.output[0])
            name = target + ".rows" if target != n.output[0] else target
            node = {"name": name, "type": "to_rows", "inputs": ins, "channels": c}
            op_attrs["Reshape"].add(f"shape={shape}")
        elif n.op_type == "Sigmoid":
            name = n.output[0]
            node = {"name": name, "type": "sigmoid", "inputs": ins, "channels": channels(out)}
        else:
            sys.exit(f"unsupported op {n.op_type} ({n.name})")
        if node["type"] == "add":
            node["name"] = "neck.add" + str(sum(1 for x in out_nodes if x["type"] == "add"))
        node["onnx_node"] = n.name
        node["onnx_output"] = out
        value_to_node[out] = node["name"]
        # keys in a stable, readable order
        order = ["name", "type", "inputs", "in_channels", "channels", "kernel", "stride", "padding",
                 "dilation", "groups", "depthwise", "size", "ceil_mode", "scale", "weight", "bias",
                 "batch_norm_folded", "head", "onnx_node", "onnx_output"]
        out_nodes.append({k: node[k] for k in order if k in node})

    # add nodes: name them after the lateral conv that reads them
    for node in out_nodes:
        if node["type"] == "add":
            reader = next(x for x in out_nodes if node["name"] in x["inputs"])
            new = reader["name"].rsplit(".", 1)[0] + ".add"  # neck.lateral_convs.K.add
            for x in out_nodes:
                x["inputs"] = [new if i == node["name"] else i for i in x["inputs"]]
            node["name"] = new
    names = [x["name"] for x in out_nodes]
    assert len(set(names)) == len(names), "node names must be unique"

    outputs = []
    for out in OUTPUT_NAMES:
        kind, stride = out.split("_")
        outputs.append({"name": out, "node": out, "kind": kind, "stride": int(stride),
                        "channels": channels(out), "shape_320": shapes[out]})
    params = int(sum(t.size for t in tensors.values()))
    arch = {
        "name": "yunet_n",
        "source": {"file": "yunet_n_320_320.onnx", "repository": "ShiqiYu/libfacedetection.train",
                   "path": "onnx/yunet_n_320_320.onnx", "commit": "0047ac24a",
                   "sha256": hashlib.sha256(open(onnx_path, "rb").read()).hexdigest(),
                   "licence": "Apache-2.0"},
        "input": {"name": "input", "channels": 3, "channel_order": "bgr", "scale": 1.0,
                  "mean": [0.0, 0.0, 0.0], "size_divisor": 32, "padding": "zeros at the bottom and right"},
        "strides": STRIDES,
        "landmarks": ["right_eye", "left_eye", "nose_tip", "right_mouth_corner", "left_mouth_corner"],
        "parameters": params,
        "batch_norm": "folded by the ONNX export" if folded == 0 else f"{folded} folded by tools/yunet_convert.py",
        "nodes": out_nodes,
        "outputs": outputs,
    }
    return model, arch, tensors, op_attrs, folded, shapes


def save_safetensors(path, tensors, metadata):
    """A safetensors file with the tensors and the metadata keys in sorted order, so that a rerun
    writes identical bytes (the safetensors package orders metadata by a hash map). Header
    padded with spaces to a multiple of 8 bytes, as the format allows; every tensor float32."""
    header, blobs, offset = {"__metadata__": dict(sorted(metadata.items()))}, [], 0
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name], dtype="<f4")
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        blobs.append(a.tobytes())
        offset += a.nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        for b in blobs:
            f.write(b)
    os.chmod(path, 0o644)
    from safetensors.numpy import load_file
    back = load_file(path)
    assert sorted(back) == sorted(tensors) and all(np.array_equal(back[k], tensors[k]) for k in tensors)


def dump_json(arch):
    """One node per line: readable and diff-friendly."""
    lines = ["{"]
    items = [(k, v) for k, v in arch.items()]
    for i, (k, v) in enumerate(items):
        comma = "," if i + 1 < len(items) else ""
        if k in ("nodes", "outputs"):
            lines.append(f'  "{k}": [')
            for j, x in enumerate(v):
                lines.append("    " + json.dumps(x) + ("," if j + 1 < len(v) else ""))
            lines.append("  ]" + comma)
        else:
            lines.append(f'  "{k}": {json.dumps(v)}{comma}')
    lines.append("}")
    return "\n".join(lines) + "\n"


# ---- a plain numpy interpreter of the architecture JSON (the check, and a spec for Rust) ----

def conv2d(x, w, b, stride, pad, dil, groups):
    c, h, wd = x.shape
    o, ci, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad)))
    oh = (h + 2 * pad - dil * (kh - 1) - 1) // stride + 1
    ow = (wd + 2 * pad - dil * (kw - 1) - 1) // stride + 1
    y = np.zeros((o, oh, ow), np.float64)
    if groups == c == o:  # depthwise: one 3x3 filter per channel
        for i in range(kh):
            for j in range(kw):
                patch = xp[:, i * dil: i * dil + stride * (oh - 1) + 1: stride, j * dil: j * dil + stride * (ow - 1) + 1: stride]
                y += w[:, 0, i, j].astype(np.float64)[:, None, None] * patch
        return (y + b[:, None, None]).astype(np.float32)
    og = o // groups
    for g in range(groups):
        xs = xp[g * ci:(g + 1) * ci]
        for i in range(kh):
            for j in range(kw):
                patch = xs[:, i * dil: i * dil + stride * (oh - 1) + 1: stride,
                           j * dil: j * dil + stride * (ow - 1) + 1: stride]
                wg = w[g * og:(g + 1) * og, :, i, j].astype(np.float64)
                y[g * og:(g + 1) * og] += np.tensordot(wg, patch, axes=([1], [0]))
    return (y + b[:, None, None]).astype(np.float32)


def run_numpy(arch, tensors, image_chw):
    vals = {"input": image_chw.astype(np.float32)}
    for n in arch["nodes"]:
        x = [vals[i] for i in n["inputs"]]
        t = n["type"]
        if t == "conv2d":
            y = conv2d(x[0], tensors[n["weight"]], tensors[n["bias"]], n["stride"], n["padding"], n["dilation"], n["groups"])
        elif t == "relu":
            y = np.maximum(x[0], 0)
        elif t == "max_pool":
            c, h, w = x[0].shape
            y = x[0][:, : h // 2 * 2, : w // 2 * 2].reshape(c, h // 2, 2, w // 2, 2).max(axis=(2, 4))
        elif t == "upsample_nearest":
            y = x[0].repeat(2, axis=1).repeat(2, axis=2)
        elif t == "add":
            y = x[0] + x[1]
        elif t == "to_rows":
            y = x[0].transpose(1, 2, 0).reshape(1, -1, x[0].shape[0])
        elif t == "sigmoid":
            y = (1 / (1 + np.exp(-x[0].astype(np.float64)))).astype(np.float32)
        else:
            raise ValueError(t)
        vals[n["name"]] = y
    return vals


def check(arch, tensors, onnx_path):
    import cv2
    cv2.setNumThreads(1)
    img = cv2.imread(os.path.join(ROOT, "data", "photos", "astronaut.png"))
    img = cv2.resize(img, (320, 256), interpolation=cv2.INTER_AREA)  # any multiple of 32
    blob = cv2.dnn.blobFromImage(img)
    net = cv2.dnn.readNet(onnx_path)
    # Every node's layer ("onnx_node!<ONNX node name>"); asking for a layer keeps OpenCV from fusing it away.
    wanted = ["onnx_node!" + n["onnx_node"] for n in arch["nodes"]]
    net.setInput(blob)
    ref = dict(zip(wanted, net.forward(wanted)))
    ours = run_numpy(arch, tensors, blob[0])
    worst = 0.0
    for n in arch["nodes"]:
        r = ref["onnx_node!" + n["onnx_node"]]
        o = ours[n["name"]]
        r = r.reshape(o.shape) if r.size == o.size else r
        if r.shape != o.shape:
            sys.exit(f"check: {n['name']}: shape {o.shape} vs OpenCV {r.shape}")
        err = float(np.max(np.abs(o - r)) / max(1.0, float(np.max(np.abs(r)))))
        worst = max(worst, err)
        if err > 1e-4:
            sys.exit(f"check: {n['name']} differs from cv2.dnn: relative error {err:.3g}")
    print(f"check: all {len(arch['nodes'])} nodes match cv2.dnn on a 320x256 photo "
          f"(largest error relative to the layer's largest value: {worst:.2g})")


def self_test_folding():
    """Folding on a synthetic Conv -> BatchNormalization -> Relu graph, against cv2.dnn."""
    import cv2
    from onnx import helper, TensorProto
    rng = np.random.default_rng(1)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    g, beta, m = (rng.standard_normal(4).astype(np.float32) for _ in range(3))
    v = rng.uniform(0.5, 2, 4).astype(np.float32)
    inits = [numpy_helper.from_array(a, n) for a, n in [(w, "w"), (b, "b"), (g, "g"), (beta, "beta"), (m, "m"), (v, "v")]]
    nodes = [helper.make_node("Conv", ["input", "w", "b"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "g", "beta", "m", "v"], ["bn"], epsilon=1e-3),
             helper.make_node("Relu", ["bn"], ["out"])]
    graph = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    x = rng.standard_normal((1, 3, 8, 8)).astype(np.float32)
    net = cv2.dnn.readNetFromONNXBuffer(model.SerializeToString()) if hasattr(cv2.dnn, "readNetFromONNXBuffer") else None
    if net is None:
        net = cv2.dnn.readNetFromONNX(np.frombuffer(model.SerializeToString(), np.uint8))
    net.setInput(x)
    ref = net.forward()
    d = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    kept, n = fold_batch_norms(graph, d)
    assert n == 1 and [k.op_type for k in kept] == ["Conv", "Relu"]
    conv = kept[0]
    y = np.maximum(conv2d(x[0], d[conv.input[1]], d[conv.input[2]], 1, 1, 1, 1), 0)
    err = float(np.max(np.abs(y - ref[0])))
    print(f"self-test: batch norm folding matches cv2.dnn to {err:.2g}")
    assert err < 1e-4


def summary(model, arch, op_attrs, folded, tensors):
    g = model.graph
    counts = collections.Counter(n.op_type for n in g.node)
    print(f"ONNX: {os.path.basename(arch['source']['file'])}, producer {model.producer_name} {model.producer_version}, "
          f"opset {model.opset_import[0].version}, {len(g.node)} nodes")
    print("op types and every attribute value present:")
    for op, c in sorted(counts.items()):
        at = sorted(op_attrs.get(op, []))
        print(f"  {op:10s} x{c:2d}  " + ("; ".join(at) if at else "(no attributes)"))
    print("BatchNormalization nodes: " + ("none: the export folded every batch norm into the convolution before it"
                                          if folded == 0 else f"{folded}, folded here"))
    t = collections.Counter(n["type"] for n in arch["nodes"])
    convs = [n for n in arch["nodes"] if n["type"] == "conv2d"]
    kinds = collections.Counter((n["kernel"], n["stride"], "depthwise" if n["depthwise"] else f"groups={n['groups']}") for n in convs)
    print("mien nodes: " + ", ".join(f"{k} x{v}" for k, v in t.items()))
    print("convolutions: " + ", ".join(f"{k}x{k} stride {s} {g}: {v}" for (k, s, g), v in sorted(kinds.items())))
    print(f"parameters: {arch['parameters']} ({len(tensors)} tensors: {len(convs)} weights + {len(convs)} biases)")
    print("outputs for a 1x3x320x320 input:")
    for o in arch["outputs"]:
        print(f"  {o['name']:8s} {o['shape_320']}  ({o['kind']}, stride {o['stride']}, {o['channels']} per cell)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--onnx", default=DEFAULT_ONNX)
    ap.add_argument("--out", default=OUT)
    ap.add_argument("--no-check", action="store_true")
    ap.add_argument("--self-test", action="store_true", help="also test batch-norm folding on a synthetic graph")
    args = ap.parse_args()
    model, arch, tensors, op_attrs, folded, _ = build(args.onnx)
    os.makedirs(args.out, exist_ok=True)
    text = dump_json(arch)
    with open(os.path.join(args.out, "yunet_n.json"), "w") as f:
        f.write(text)
    save_safetensors(os.path.join(args.out, "yunet_n.safetensors"), tensors,
                     {"architecture": json.dumps(arch, separators=(",", ":")), "source_sha256": arch["source"]["sha256"]})
    summary(model, arch, op_attrs, folded, tensors)
    print(f"wrote {os.path.relpath(args.out, ROOT)}/yunet_n.json and yunet_n.safetensors")
    if args.self_test:
        self_test_folding()
    if not args.no_check:
        from safetensors.numpy import load_file
        check(json.loads(text), load_file(os.path.join(args.out, "yunet_n.safetensors")), args.onnx)


if __name__ == "__main__":
    main()
