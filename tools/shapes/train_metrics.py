"""Train the shapes world's evaluation networks (PyTorch, CPU), from `diffusion-scope dataset`
folders:

  featnet  a small CNN classifier of rendered scenes. Heads: object count; the larger object's
           colour, shape, size and 3x3 grid cell; the other object's colour, shape, size (or
           "none"); and the larger object's colour x shape (24 classes, the logits of the
           Inception Score). Its global-average-pooled last convolution (256-d) is the feature
           vector of FID / KID / precision-recall. Batch norm is folded into the convolutions
           at export, so the shipped network is conv + bias + ReLU only.
  clip     a shapes CLIP as a transformers `CLIPModel`: the text tower is the bundled model's own
           text encoder (frozen), the image tower a small ViT trained from scratch with the two
           projections and the temperature by the symmetric contrastive loss on (render,
           caption) pairs. Reports caption -> image top-1 retrieval among 100 on held-out
           captions.

    python tools/shapes/train_metrics.py featnet --train DATA --test DATA --out assets/shapes-metrics/featnet
    python tools/shapes/train_metrics.py clip    --train DATA --test DATA --out assets/shapes-metrics/clip

Seeds are fixed; see tools/shapes/README.md for the exact commands and the numbers they gave.
"""
import argparse
import json
import math
import os
import shutil
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.numpy import load_file
from safetensors.torch import save_file

COLOURS = ["red", "orange", "yellow", "green", "blue", "purple"]
SHAPES = ["circle", "square", "triangle", "diamond"]
SIZES = ["small", "big"]
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
BUNDLED = os.path.join(ROOT, "assets", "shapes-model")

# Heads of the feature network: name -> classes. The order is the shipped file's.
HEADS = [("count", 2), ("colour_a", 6), ("shape_a", 4), ("size_a", 2), ("cell_a", 9),
         ("colour_b", 7), ("shape_b", 5), ("size_b", 3), ("class", 24)]
WIDTHS = [(3, 32, 1), (32, 32, 2), (32, 64, 1), (64, 64, 2), (64, 128, 1), (128, 128, 2), (128, 256, 1)]


def load(data):
    images = torch.from_numpy(load_file(os.path.join(data, "images.safetensors"))["images"])  # [N,H,W,3] u8
    with open(os.path.join(data, "captions.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return images, rows


def labels(rows):
    out = {name: [] for name, _ in HEADS}
    for r in rows:
        objs = sorted(r["objects"], key=lambda o: -o["radius"])
        a = objs[0]
        b = objs[1] if len(objs) > 1 else None
        ca, sa = COLOURS.index(a["colour"]), SHAPES.index(a["shape"])
        out["count"].append(len(objs) - 1)
        out["colour_a"].append(ca)
        out["shape_a"].append(sa)
        out["size_a"].append(SIZES.index(a["size"]))
        gx, gy = min(int(a["cx"] * 3), 2), min(int(a["cy"] * 3), 2)
        out["cell_a"].append(gy * 3 + gx)
        out["colour_b"].append(COLOURS.index(b["colour"]) if b else 6)
        out["shape_b"].append(SHAPES.index(b["shape"]) if b else 4)
        out["size_b"].append(SIZES.index(b["size"]) if b else 2)
        out["class"].append(ca * 4 + sa)
    return {k: torch.tensor(v) for k, v in out.items()}


def to_input(u8):
    """U8 [B,H,W,3] -> [-1, 1] [B,3,H,W] (the Rust side does the same)."""
    return u8.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


class FeatNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv2d(i, o, 3, stride=s, padding=1, bias=False) for i, o, s in WIDTHS])
        self.norms = nn.ModuleList([nn.BatchNorm2d(o) for _, o, _ in WIDTHS])
        self.heads = nn.ModuleDict({name: nn.Linear(256, k) for name, k in HEADS})

    def features(self, x):
        for conv, bn in zip(self.convs, self.norms):
            x = F.relu(bn(conv(x)))
        return x.mean(dim=(2, 3))

    def forward(self, x):
        f = self.features(x)
        return f, {name: head(f) for name, head in self.heads.items()}


def evaluate_featnet(net, images, lab, batch=500):
    net.eval()
    correct = {name: 0 for name, _ in HEADS}
    with torch.no_grad():
        for i in range(0, len(images), batch):
            _, out = net(to_input(images[i:i + batch]))
            for name, _ in HEADS:
                correct[name] += (out[name].argmax(1) == lab[name][i:i + batch]).sum().item()
    net.train()
    return {k: v / len(images) for k, v in correct.items()}


def featnet(a):
    torch.manual_seed(0)
    images, rows = load(a.train)
    lab = labels(rows)
    timages, trows = load(a.test)
    tlab = labels(trows)
    net = FeatNet()
    opt = torch.optim.AdamW(net.parameters(), lr=a.lr, weight_decay=1e-4)
    n = len(images)
    steps = a.epochs * (n // a.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=a.lr, total_steps=steps, pct_start=0.15)
    g = torch.Generator().manual_seed(0)
    t0 = time.time()
    step = 0
    for epoch in range(a.epochs):
        perm = torch.randperm(n, generator=g)
        for i in range(0, n - a.batch + 1, a.batch):
            idx = perm[i:i + a.batch]
            _, out = net(to_input(images[idx]))
            loss = sum(F.cross_entropy(out[name], lab[name][idx]) for name, _ in HEADS)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if step % 50 == 0:
                print(f"step {step}/{steps} loss {loss.item():.4f} {time.time() - t0:.0f}s", flush=True)
        acc = evaluate_featnet(net, timages, tlab)
        print(f"epoch {epoch + 1}: held-out accuracy " + ", ".join(f"{k} {v:.4f}" for k, v in acc.items()), flush=True)
    export_featnet(net, acc, a, time.time() - t0, len(images), len(timages))


def export_featnet(net, acc, a, secs, n_train, n_test):
    net.eval()
    os.makedirs(a.out, exist_ok=True)
    tensors = {}
    with torch.no_grad():
        for k, (conv, bn) in enumerate(zip(net.convs, net.norms)):
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            tensors[f"convs.{k}.weight"] = (conv.weight * scale.view(-1, 1, 1, 1)).contiguous()
            tensors[f"convs.{k}.bias"] = (bn.bias - bn.running_mean * scale).contiguous()
        for name, head in net.heads.items():
            tensors[f"heads.{name}.weight"] = head.weight.detach().contiguous()
            tensors[f"heads.{name}.bias"] = head.bias.detach().contiguous()
    save_file(tensors, os.path.join(a.out, "model.safetensors"))
    config = {
        "architecture": "shapes-featnet",
        "input_size": 64,
        "input_scaling": "x / 127.5 - 1",
        "convs": [{"in": i, "out": o, "stride": s} for i, o, s in WIDTHS],
        "features": 256,
        "heads": [{"name": n, "classes": k} for n, k in HEADS],
        "logits_head": "class",
        "labels": {"colour": COLOURS, "shape": SHAPES, "size": SIZES,
                   "cell": "3x3 grid cell of the larger object's centre, row-major from the top left",
                   "b": "the smaller object; the last class is 'no second object'",
                   "class": "colour x 4 + shape of the larger object"},
    }
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump(config, f, indent=1)
    report = {"held_out_accuracy": acc, "train_images": n_train, "test_images": n_test, "epochs": a.epochs,
              "batch": a.batch, "lr": a.lr, "train_secs": secs, "torch": torch.__version__}
    with open(os.path.join(a.out, "training.json"), "w") as f:
        json.dump(report, f, indent=1)
    # Reference outputs for the Rust parity test: the first 16 test images.
    timages, _ = load(a.test)
    x = to_input(timages[:16])
    with torch.no_grad():
        f, out = net(x)
    ref = {"images": timages[:16].contiguous(), "features": f.contiguous()}
    ref.update({f"logits.{k}": v.contiguous() for k, v in out.items()})
    save_file(ref, os.path.join(a.out, "reference.safetensors"))
    print("wrote", a.out)


# ---------------------------------------------------------------- clip

def clip(a):
    from transformers import CLIPConfig, CLIPModel, CLIPTextModel, PreTrainedTokenizerFast

    torch.manual_seed(0)
    text = CLIPTextModel.from_pretrained(os.path.join(BUNDLED, "text_encoder")).eval()
    tok = PreTrainedTokenizerFast.from_pretrained(os.path.join(BUNDLED, "tokenizer"))
    tcfg = text.config.to_dict()
    config = CLIPConfig(
        text_config=tcfg,
        vision_config=dict(hidden_size=a.width, intermediate_size=a.width * 2, num_hidden_layers=a.layers,
                           num_attention_heads=4, image_size=64, patch_size=8, hidden_act="quick_gelu"),
        projection_dim=a.proj,
    )
    model = CLIPModel(config)
    model.text_model.load_state_dict(text.state_dict())
    for p in model.text_model.parameters():
        p.requires_grad_(False)
    mean = torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1)
    std = torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1)

    def pixels(u8):
        return (u8.permute(0, 3, 1, 2).float() / 255.0 - mean) / std

    def text_states(captions):
        """Pooled (EOS) outputs of the frozen text tower, computed once per caption."""
        uniq = sorted(set(captions))
        out = {}
        with torch.no_grad():
            for i in range(0, len(uniq), 512):
                chunk = uniq[i:i + 512]
                t = tok(chunk, padding=True, return_tensors="pt")
                o = model.text_model(input_ids=t["input_ids"], attention_mask=t["attention_mask"])
                for c, v in zip(chunk, o.pooler_output):
                    out[c] = v
        return torch.stack([out[c] for c in captions])

    images, rows = load(a.train)
    caps = [r["caption"] for r in rows]
    pooled = text_states(caps)
    timages, trows = load(a.test)
    tcaps = [r["caption"] for r in trows]
    tpooled = text_states(tcaps)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.05)
    n = len(images)
    steps = a.epochs * (n // a.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=a.lr, total_steps=steps, pct_start=0.1)
    g = torch.Generator().manual_seed(0)
    t0 = time.time()
    step = 0

    def retrieval(k=100):
        """Caption -> image top-1 among k: held-out pairs in groups of k (distinct captions)."""
        model.eval()
        with torch.no_grad():
            ie = F.normalize(model.visual_projection(model.vision_model(pixel_values=pixels(timages)).pooler_output), dim=-1)
            te = F.normalize(model.text_projection(tpooled), dim=-1)
        model.train()
        hits, total = 0, 0
        for s in range(0, len(timages) - k + 1, k):
            sim = te[s:s + k] @ ie[s:s + k].T
            # A caption may describe several images of the group equally well (same caption):
            # any image with that exact caption counts.
            best = sim.argmax(1)
            for i in range(k):
                hits += tcaps[s + best[i].item()] == tcaps[s + i]
            total += k
        return hits / total

    for epoch in range(a.epochs):
        perm = torch.randperm(n, generator=g)
        for i in range(0, n - a.batch + 1, a.batch):
            idx = perm[i:i + a.batch]
            ie = F.normalize(model.visual_projection(model.vision_model(pixel_values=pixels(images[idx])).pooler_output), dim=-1)
            te = F.normalize(model.text_projection(pooled[idx]), dim=-1)
            logits = model.logit_scale.exp().clamp(max=100) * te @ ie.T
            # Identical captions in a batch are positives of each other.
            same = torch.tensor([[caps[p] == caps[q] for q in idx.tolist()] for p in idx.tolist()], dtype=torch.float32)
            target = same / same.sum(1, keepdim=True)
            loss = 0.5 * (torch.sum(-target * F.log_softmax(logits, 1), 1).mean()
                          + torch.sum(-target.T * F.log_softmax(logits.T, 1), 1).mean())
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if step % 25 == 0:
                print(f"step {step}/{steps} loss {loss.item():.4f} scale {model.logit_scale.exp().item():.1f} "
                      f"{time.time() - t0:.0f}s", flush=True)
        r = retrieval()
        print(f"epoch {epoch + 1}: held-out caption->image top-1 among 100: {r:.4f}", flush=True)
    secs = time.time() - t0
    for p in model.text_model.parameters():
        p.requires_grad_(True)
    os.makedirs(a.out, exist_ok=True)
    model.save_pretrained(a.out)
    for f in os.listdir(os.path.join(BUNDLED, "tokenizer")):
        shutil.copy(os.path.join(BUNDLED, "tokenizer", f), a.out)
    with open(os.path.join(a.out, "preprocessor_config.json"), "w") as f:
        json.dump({"crop_size": {"height": 64, "width": 64}, "do_center_crop": True, "do_normalize": True,
                   "do_rescale": True, "do_resize": True, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
                   "image_processor_type": "CLIPImageProcessor", "resample": 3, "rescale_factor": 1 / 255,
                   "size": {"shortest_edge": 64}}, f, indent=1)
    report = {"held_out_retrieval_top1_among_100": r, "train_pairs": n, "test_pairs": len(timages),
              "epochs": a.epochs, "batch": a.batch, "lr": a.lr, "train_secs": secs, "text_tower": "bundled, frozen",
              "torch": torch.__version__}
    with open(os.path.join(a.out, "training.json"), "w") as f:
        json.dump(report, f, indent=1)
    print("wrote", a.out)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=["featnet", "clip"])
    p.add_argument("--train", required=True)
    p.add_argument("--test", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--proj", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    featnet(a) if a.what == "featnet" else clip(a)


if __name__ == "__main__":
    main()
