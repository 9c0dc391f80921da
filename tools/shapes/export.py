"""Write the diffusers folder of the shapes-world model from a train.py run, then reload it
with StableDiffusionPipeline.from_pretrained and generate a check grid.

Usage: python export.py --run RUN --out FOLDER [--dtype fp32|fp16] [--no-ema]
"""
import argparse
import json
import os
import shutil
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from shapes_config import IMAGE_SIZE, SCHEDULE  # noqa: E402
import train  # noqa: E402

CHECK_PROMPTS = ["a red circle", "a big blue square", "a small green triangle on the left",
                 "a yellow diamond above a purple circle"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--dtype", choices=["fp32", "fp16"], default="fp32")
    ap.add_argument("--no-ema", action="store_true", help="export the raw weights instead of the EMA")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--guidance", type=float, default=5.0)
    ap.add_argument("--check", type=int, default=len(CHECK_PROMPTS), help="how many check prompts to generate after reloading")
    a = ap.parse_args()
    torch.set_num_threads(2)
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(train.tokenizer_dir(a.run))
    vae = train.make_vae()
    vae.load_state_dict(torch.load(os.path.join(a.run, "ckpt_vae.pt"), weights_only=False)["model"])
    s = torch.load(os.path.join(a.run, "ckpt_unet.pt"), weights_only=False)
    vae.register_to_config(scaling_factor=float(s["scaling_factor"]))
    model = train.TextUNet(train.make_text_encoder(tok), train.make_unet())
    model.load_state_dict(s["model"] if a.no_ema else s["ema"])
    sched = DDIMScheduler(**SCHEDULE, clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                          prediction_type="epsilon", timestep_spacing="leading")
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=model.text_encoder, tokenizer=tok, unet=model.unet,
                                   scheduler=sched, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    if a.dtype == "fp16":
        pipe.to(torch.float16)
    if os.path.exists(a.out):
        shutil.rmtree(a.out)
    pipe.save_pretrained(a.out, safe_serialization=True)
    with open(os.path.join(a.out, "training.json"), "w") as f:
        json.dump({"unet_step": s["step"], "ema": not a.no_ema, "dtype": a.dtype,
                   "vae": json.load(open(os.path.join(a.run, "vae_metrics.json"))) if os.path.exists(os.path.join(a.run, "vae_metrics.json")) else None}, f, indent=2)
    size = sum(os.path.getsize(os.path.join(dp, fn)) for dp, _, fns in os.walk(a.out) for fn in fns)
    print(f"wrote {a.out}: {size / 2**20:.2f} MiB")

    # reload exactly as a user would, and generate
    p2 = StableDiffusionPipeline.from_pretrained(a.out, torch_dtype=torch.float32, safety_checker=None)
    p2.set_progress_bar_config(disable=True)
    t0 = time.time()
    imgs = []
    parity = {}
    for i, prompt in enumerate(CHECK_PROMPTS[: a.check]):
        g = torch.Generator().manual_seed(i)
        lat = p2(prompt, num_inference_steps=a.steps, guidance_scale=a.guidance, generator=g,
                 output_type="latent").images
        parity[f"latents_{i}"] = lat.float().contiguous()
        with torch.no_grad():
            img = p2.vae.decode(lat / p2.vae.config.scaling_factor).sample
        imgs.append(p2.image_processor.postprocess(img)[0])
    dt = (time.time() - t0) / max(1, len(imgs))
    # Final latents of the check prompts (seed i for prompt i): the engine's parity test
    # (tests/engine/bundled.rs) reads them from tests/fixtures/ref/shapes_model_parity.*
    from safetensors.torch import save_file
    save_file(parity, os.path.join(a.run, "parity.safetensors"))
    with open(os.path.join(a.run, "parity.json"), "w") as f:
        json.dump({"prompts": CHECK_PROMPTS[: a.check], "seeds": list(range(len(imgs))), "steps": a.steps,
                   "guidance": a.guidance, "scheduler": "DDIMScheduler (the model's own)"}, f, indent=2)
    from PIL import Image
    grid = Image.new("RGB", (IMAGE_SIZE * len(imgs), IMAGE_SIZE))
    for i, im in enumerate(imgs):
        grid.paste(im, (IMAGE_SIZE * i, 0))
    grid.save(os.path.join(a.run, "export_check.png"))
    print(f"reloaded in diffusers; {a.steps}-step generation with guidance {a.guidance}: {dt:.2f} s/image "
          f"(PyTorch, 2 threads); grid of {CHECK_PROMPTS[: a.check]} -> {os.path.join(a.run, 'export_check.png')}")


if __name__ == "__main__":
    main()
