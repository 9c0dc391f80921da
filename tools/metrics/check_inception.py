"""Check `diffusion-scope metrics features` against the reference implementations with the
real FID Inception weights, on a folder of real images:

    python tools/metrics/convert_inception.py default_1.pt inception.safetensors
    python tools/metrics/check_inception.py inception.safetensors IMAGES_DIR ARCHIVE.pt [path/to/diffusion-scope]

- tf-bilinear protocol: torch-fidelity's FeatureExtractorInceptionV3 (its own resize) with the
  converted weights;
- clean protocol: clean-fid's resize (PIL bicubic on float, clip) and the original TorchScript
  archive's layers on (x - 128) / 128, as clean-fid runs them.

Prints the largest feature difference per protocol and FID between the first and second half
of the folder from their features and from ours.
"""
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")


def main():
    weights, images, archive = sys.argv[1], sys.argv[2], sys.argv[3]
    binary = sys.argv[4] if len(sys.argv) > 4 else os.path.join(ROOT, "target", "release", "diffusion-scope")
    torch.set_num_threads(2)
    tmp = tempfile.mkdtemp()
    sd = load_file(weights)
    if "fc.weight" not in sd:  # the archive has no classifier; torch-fidelity's module wants one
        sd["fc.weight"] = torch.zeros(1008, 2048)
        sd["fc.bias"] = torch.zeros(1008)
    pth = os.path.join(tmp, "w.pth")
    torch.save(sd, pth)
    fidelity = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=pth)
    script = torch.jit.load(archive, map_location="cpu").eval()
    files = sorted(f for f in os.listdir(images) if f.lower().endswith((".png", ".jpg", ".jpeg")))
    theirs = {"tf-bilinear": [], "clean": []}
    with torch.no_grad():
        for f in files:
            img = np.array(Image.open(os.path.join(images, f)).convert("RGB"))
            x = torch.from_numpy(img).permute(2, 0, 1).unsqueeze(0)
            theirs["tf-bilinear"].append(fidelity(x)[0][0])
            planes = [np.asarray(Image.fromarray(img[:, :, c].astype(np.float32), mode="F").resize((299, 299), Image.BICUBIC)).clip(0, 255)
                      for c in range(3)]
            t = torch.from_numpy(np.stack(planes).astype(np.float32)).unsqueeze(0)
            theirs["clean"].append(script.net(((t - 128) / 128)).reshape(2048))
    half = len(files) // 2
    for protocol, feats in theirs.items():
        ref = torch.stack(feats)
        out = os.path.join(tmp, f"{protocol}.safetensors")
        subprocess.run([binary, "metrics", "features", "--images", images, "--weights", weights, "--resize", protocol,
                        "--quiet", "--out", out], check=True)
        ours = load_file(out)["features"]
        diff = (ours - ref).abs()
        rel = float(diff.max() / ref.abs().max())
        fid = lambda a: fid_statistics_to_metric(fid_features_to_statistics(a[:half].double()),
                                                  fid_features_to_statistics(a[half:].double()), False)["frechet_inception_distance"]
        print(f"{protocol:>11}: {len(files)} images, max |ours - reference| {float(diff.max()):.3e} "
              f"({rel:.2e} of the largest feature), mean {float(diff.mean()):.2e}; "
              f"FID(first half, second half): reference {fid(ref):.6f}, ours {fid(ours):.6f}")


if __name__ == "__main__":
    main()
