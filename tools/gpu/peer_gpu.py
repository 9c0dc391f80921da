"""The diffusers peer on the GPU (issue 18), on the folder tools/gpu/make_sd15_random.py writes:
one UNet call at batch 2 (CFG) timed eager (SDPA), eager with every attn2's head-mean
probabilities kept (what `aggregate` capture computes), and replayed as a CUDA graph; then a
whole generation (prompt to image). CUDA events, warm-up first, medians.

    python3 tools/gpu/peer_gpu.py MODEL [--size 512] [--steps 50] [--reps 20]

Prints `peer <what> ms: X` lines that tools/gpu/visit.sh reads. Without a GPU it runs on the CPU
in float32 with no graph (a smoke test of the script, not a measurement).
"""
import argparse
import statistics
import time

import torch
from diffusers import StableDiffusionPipeline


class ProbsProcessor:
    """attn2 as diffusers' AttnProcessor computes it, keeping the head-mean probabilities."""

    def __init__(self, store):
        self.store = store

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
        b, n, _ = hidden_states.shape
        q = attn.head_to_batch_dim(attn.to_q(hidden_states))
        k = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))
        v = attn.head_to_batch_dim(attn.to_v(encoder_hidden_states))
        probs = attn.get_attention_scores(q, k, None)
        self.store.append(probs.view(b, attn.heads, n, -1).mean(1)[-1])
        out = attn.batch_to_head_dim(torch.bmm(probs, v))
        return attn.to_out[1](attn.to_out[0](out))


def timer(cuda):
    if cuda:
        def run(f, reps):
            out = []
            for _ in range(reps):
                s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                s.record()
                f()
                e.record()
                torch.cuda.synchronize()
                out.append(s.elapsed_time(e))
            return statistics.median(out)
    else:
        def run(f, reps):
            out = []
            for _ in range(reps):
                t = time.perf_counter()
                f()
                out.append((time.perf_counter() - t) * 1000)
            return statistics.median(out)
    return run


def main():
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--reps", type=int, default=20)
    a = p.parse_args()
    cuda = torch.cuda.is_available()
    dev, dtype = ("cuda", torch.float16) if cuda else ("cpu", torch.float32)
    pipe = StableDiffusionPipeline.from_pretrained(a.model, torch_dtype=dtype, safety_checker=None).to(dev)
    pipe.set_progress_bar_config(disable=True)
    unet = pipe.unet
    lat = a.size // pipe.vae_scale_factor
    x = torch.randn(2, 4, lat, lat, device=dev, dtype=dtype)
    ctx = torch.randn(2, 77, unet.config.cross_attention_dim, device=dev, dtype=dtype)
    t = torch.tensor(500, device=dev)
    run = timer(cuda)
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name() if cuda else 'cpu'}, {dtype}, latents {lat}x{lat}, batch 2")

    with torch.no_grad():
        call = lambda: unet(x, t, encoder_hidden_states=ctx)  # noqa: E731
        for _ in range(3):
            call()
        print(f"peer eager ms: {run(call, a.reps):.3f}")

        default = dict(unet.attn_processors)
        store = []
        unet.set_attn_processor({k: ProbsProcessor(store) if ".attn2." in k else v for k, v in default.items()})
        def call_probs():  # noqa: E306
            store.clear()
            unet(x, t, encoder_hidden_states=ctx)
        for _ in range(3):
            call_probs()
        print(f"peer eager+capture ms: {run(call_probs, a.reps):.3f}  ({len(store)} attn2 maps)")
        unet.set_attn_processor(default)

        if cuda:
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                for _ in range(3):
                    call()
            torch.cuda.current_stream().wait_stream(s)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                call()
            print(f"peer cuda-graph ms: {run(g.replay, a.reps):.3f}")

        gen = lambda: pipe("a photo of a red circle", num_inference_steps=a.steps, guidance_scale=7.5,  # noqa: E731
                           height=a.size, width=a.size, generator=torch.Generator(dev).manual_seed(0))
        gen()
        print(f"peer generation {a.steps} steps ms: {run(gen, 3):.1f}")


if __name__ == "__main__":
    main()
