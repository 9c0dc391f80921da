"""The diffusers peer of `diffusion-scope bench` (issue 17): the same work in diffusers + torch on
the CPU, timed the same way (median of interleaved repetitions after one warm-up).

    .venv/bin/python tools/perf/peer.py generate [--model assets/shapes-model] [--steps 30] [--guidance 5]
    .venv/bin/python tools/perf/peer.py unet-sd15 [--size 256]

`generate` times whole generations (prompt to decoded PIL image) with the model's own scheduler,
as `bench --generate` does; `unet-sd15` one UNet call of the SD 1.5 config with random weights,
batch 2 (CFG), as `bench` does. Prints one line `peer median s: X` that tools/perf/peer.sh
reads. Threads: --threads (default 2, this project's machines).
"""
import argparse
import statistics
import time

import torch


def generate(a):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(a.model, torch_dtype=torch.float32, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)

    def once(seed):
        t = time.perf_counter()
        with torch.no_grad():
            pipe(a.prompt, num_inference_steps=a.steps, guidance_scale=a.guidance,
                 generator=torch.Generator("cpu").manual_seed(seed))
        return time.perf_counter() - t

    once(0)
    return [once(r + 1) for r in range(a.reps)]


def unet_sd15(a):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=64, attention_head_dim=8, block_out_channels=(320, 640, 1280, 1280),
                                cross_attention_dim=768, layers_per_block=2).eval()
    lat = a.size // 8
    x = torch.randn(2, 4, lat, lat)
    ctx = torch.randn(2, 77, 768)

    def once(_):
        t = time.perf_counter()
        with torch.no_grad():
            unet(x, 500, encoder_hidden_states=ctx)
        return time.perf_counter() - t

    once(0)
    return [once(r) for r in range(a.reps)]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("work", choices=["generate", "unet-sd15"])
    p.add_argument("--model", default="assets/shapes-model")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--prompt", default="a small red circle on the left")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    times = generate(a) if a.work == "generate" else unet_sd15(a)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, runs: {[round(t, 3) for t in times]}")
    print(f"peer median s: {statistics.median(times):.4f}")


if __name__ == "__main__":
    main()
