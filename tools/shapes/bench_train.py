"""Time one UNet training step in PyTorch (forward + backward + AdamW, MSE epsilon loss).
Usage: python bench_train.py [--threads 2] [--batch 32] [--steps 6]"""
import argparse, time
import torch
from diffusers import UNet2DConditionModel
from shapes_config import UNET_CONFIG, TEXT_HIDDEN, LATENT_SIZE, LATENT_CHANNELS, MAX_LENGTH

p = argparse.ArgumentParser()
p.add_argument("--threads", type=int, default=2)
p.add_argument("--batch", type=int, default=32)
p.add_argument("--steps", type=int, default=6)
p.add_argument("--channels-last", action="store_true")
p.add_argument("--bf16", action="store_true")
a = p.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(0)
unet = UNet2DConditionModel(**UNET_CONFIG)
print("unet params", sum(p.numel() for p in unet.parameters()))
x = torch.randn(a.batch, LATENT_CHANNELS, LATENT_SIZE, LATENT_SIZE)
noise = torch.randn_like(x)
ctx = torch.randn(a.batch, MAX_LENGTH, TEXT_HIDDEN)
t = torch.randint(0, 1000, (a.batch,))
if a.channels_last:
    unet = unet.to(memory_format=torch.channels_last); x = x.to(memory_format=torch.channels_last)
opt = torch.optim.AdamW(unet.parameters(), lr=1e-4, weight_decay=0.01)
unet.eval()
with torch.no_grad():
    for i in range(6):
        t0 = time.perf_counter(); unet(x[:2], 500, encoder_hidden_states=ctx[:2]); dt = time.perf_counter() - t0
        if i: print(f"infer fwd batch2: {dt*1e3:.1f} ms")
unet.train()
times = []
for i in range(a.steps):
    t0 = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.bf16):
        pred = unet(x, t, encoder_hidden_states=ctx).sample
    loss = torch.nn.functional.mse_loss(pred.float(), noise)
    t1 = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    t2 = time.perf_counter()
    opt.step()
    t3 = time.perf_counter()
    times.append(t3 - t0)
    print(f"step {i}: loss {loss.item():.4f} fwd {t1-t0:.3f}s bwd {t2-t1:.3f}s opt {t3-t2:.3f}s total {t3-t0:.3f}s")
st = sorted(times[1:])
print(f"median s/step (batch {a.batch}, {a.threads} threads): {st[len(st)//2]:.3f}")
