"""Images/s of FID Inception features: ours (`metrics features`, release build) against
torch-fidelity's FeatureExtractorInceptionV3 on the same machine, in one run, same images, same
batch size, both protocols' own resize, 2 torch threads:

    python tools/metrics/bench_features.py inception.safetensors IMAGES_DIR [path/to/diffusion-scope]
"""
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
BATCH = 8


def main():
    weights, images = sys.argv[1], sys.argv[2]
    binary = sys.argv[3] if len(sys.argv) > 3 else os.path.join(ROOT, "target", "release", "diffusion-scope")
    torch.set_num_threads(2)
    tmp = tempfile.mkdtemp()
    sd = load_file(weights)
    sd.setdefault("fc.weight", torch.zeros(1008, 2048))
    sd.setdefault("fc.bias", torch.zeros(1008))
    pth = os.path.join(tmp, "w.pth")
    torch.save(sd, pth)
    net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=pth)
    files = sorted(f for f in os.listdir(images) if f.lower().endswith(".png"))
    t0 = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(files), BATCH):
            # Same-size batches only (torch stacks them); the bench folder holds one size.
            x = torch.stack([torch.from_numpy(np.array(Image.open(os.path.join(images, f)).convert("RGB"))).permute(2, 0, 1)
                             for f in files[i:i + BATCH]])
            net(x)
    theirs = len(files) / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    subprocess.run([binary, "metrics", "features", "--images", images, "--weights", weights, "--resize", "tf-bilinear",
                    "--batch", str(BATCH), "--quiet", "--out", os.path.join(tmp, "f.safetensors")], check=True,
                   stderr=subprocess.DEVNULL)
    ours = len(files) / (time.perf_counter() - t0)
    print(f"{len(files)} images, batch {BATCH}: torch-fidelity {theirs:.2f} images/s, ours {ours:.2f} images/s "
          f"(process start and weight load included), ours/theirs {ours / theirs:.2f}")


if __name__ == "__main__":
    main()
