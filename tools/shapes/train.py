"""Train the bundled shapes-world model (PyTorch, CPU).

Stages (run in this order, each resumable with --resume):
  vae      AutoencoderKL on the dataset images (L1 + MSE reconstruction + small KL); reports PSNR
  latents  encode the dataset with the trained VAE (posterior mean and std, fp16) and measure
           the latent scaling factor (1 / std, as SD's 0.18215)
  unet     CLIP text encoder + UNet2DConditionModel jointly: epsilon prediction, DDPM
           scaled_linear schedule (SD's), Min-SNR-5 loss weighting, 10% caption dropout
           (classifier-free guidance), EMA of the weights; optional TokenCompose grounding
           loss (--ground-weight), x0-weight floor (--x0-floor), high-noise-only training
           (--t-min), batch focus on captions with given words (--focus, --focus-frac) and
           fresh embeddings for collapsed words (--reinit-tokens): see README.md
  plot     redraw the loss curves (also done at the end of each stage)

Everything lives in one run folder (--run): checkpoints ckpt_<stage>.pt, loss_<stage>.csv,
loss_<stage>.png, latents.pt, tokenizer/. export.py then writes the diffusers folder.

Example:  python train.py vae --data DS --run RUN --steps 6000
          python train.py latents --data DS --run RUN
          python train.py unet --data DS --run RUN --steps 60000
"""
import argparse
import copy
import csv
import json
import math
import os
import random
import shutil
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.numpy import load_file
from tqdm import tqdm

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from shapes_config import MAX_LENGTH, SCHEDULE, TEXT_CONFIG, UNET_CONFIG, VAE_CONFIG  # noqa: E402


# ---------------------------------------------------------------- data

def load_images(data_dir):
    t = load_file(os.path.join(data_dir, "images.safetensors"))
    return torch.from_numpy(t["images"])  # U8 [N,H,W,3]


def load_captions(data_dir):
    with open(os.path.join(data_dir, "captions.jsonl")) as f:
        return [json.loads(line)["caption"] for line in f]


def to_float(images_u8):
    """U8 [B,H,W,3] -> float [B,3,H,W] in [-1, 1] (the range diffusers' VAE works in)."""
    return images_u8.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


class Order:
    """Deterministic, resumable sample order: a fresh permutation per epoch from (seed, epoch)."""

    def __init__(self, n, batch, seed):
        self.n, self.batch, self.seed = n, batch, seed
        self.per_epoch = n // batch
        self._epoch, self._perm = None, None

    def indices(self, step):
        epoch, k = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 1000003 + epoch)
            self._perm, self._epoch = torch.randperm(self.n, generator=g), epoch
        return self._perm[k * self.batch : (k + 1) * self.batch]


# ---------------------------------------------------------------- models

def tokenizer_dir(run):
    return os.path.join(run, "tokenizer")


def ensure_tokenizer(args):
    d = tokenizer_dir(args.run)
    if not os.path.exists(os.path.join(d, "vocab.json")):
        if args.tokenizer:
            shutil.copytree(args.tokenizer, d)
        else:
            import subprocess
            subprocess.check_call([sys.executable, os.path.join(HERE, "make_tokenizer.py"), d,
                                   "--captions", os.path.join(args.data, "captions.jsonl")])
    from transformers import CLIPTokenizer
    return CLIPTokenizer.from_pretrained(d)


def make_vae():
    from diffusers import AutoencoderKL
    return AutoencoderKL(**VAE_CONFIG)


def make_text_encoder(tok):
    from transformers import CLIPTextConfig, CLIPTextModel
    cfg = CLIPTextConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, **TEXT_CONFIG)
    return CLIPTextModel(cfg)


def make_unet():
    from diffusers import UNet2DConditionModel
    return UNet2DConditionModel(**UNET_CONFIG)


def n_params(m):
    return sum(p.numel() for p in m.parameters())


@torch.no_grad()
def ema_update(ema, model, decay):
    for pe, pm in zip(ema.parameters(), model.parameters()):
        pe.lerp_(pm, 1.0 - decay)
    for be, bm in zip(ema.buffers(), model.buffers()):
        be.copy_(bm)


# ---------------------------------------------------------------- logging

class Log:
    def __init__(self, run, stage, fields, resume_step):
        self.path = os.path.join(run, f"loss_{stage}.csv")
        self.png = os.path.join(run, f"loss_{stage}.png")
        rows = []
        if resume_step and os.path.exists(self.path):  # keep the rows up to the checkpoint
            with open(self.path) as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        self.f = open(self.path, "w", newline="")
        self.w = csv.DictWriter(self.f, fieldnames=fields)
        self.w.writeheader()
        self.w.writerows(rows)
        self.f.flush()

    def row(self, **kw):
        self.w.writerow(kw)

    def close(self):
        self.f.close()
        plot_csv(self.path, self.png)


def plot_csv(path, png):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    with open(path) as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return
    keys = [k for k in rows[0] if k not in ("step", "lr", "seconds")]
    steps = np.array([int(r["step"]) for r in rows])
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.5), squeeze=False)
    for ax, k in zip(axes[0], keys):
        v = np.array([float(r[k]) if r[k] != "" else np.nan for r in rows])
        ok = ~np.isnan(v)
        ax.plot(steps[ok], v[ok], lw=0.5, alpha=0.4, label="raw")
        if ok.sum() > 20:
            w = max(1, ok.sum() // 50)
            sm = np.convolve(v[ok], np.ones(w) / w, mode="valid")
            ax.plot(steps[ok][w - 1 :], sm, lw=1.5, label=f"mean of {w}")
        ax.set_title(k)
        ax.set_xlabel("step")
        if k != "psnr" and np.nanmin(v) > 0:
            ax.set_yscale("log")
        ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def save_ckpt(path, **state):
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def rng_state():
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_state(s):
    torch.set_rng_state(s["torch"])
    np.random.set_state(s["numpy"])
    random.setstate(s["python"])


def seed_all(seed):
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def last_step(args):
    """Where this invocation stops: --steps, or --stop-at when earlier (the schedule still spans --steps)."""
    return args.steps if args.stop_at is None else min(args.stop_at, args.steps)


def lr_at(step, base, warmup, total, min_frac=0.1):
    if step < warmup:
        return base * (step + 1) / warmup
    p = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (min_frac + (1 - min_frac) * 0.5 * (1 + math.cos(math.pi * p)))


def psnr(a, b):
    """a, b in [-1, 1]; PSNR of the 8-bit images in dB, per sample."""
    mse = ((a.clamp(-1, 1) - b.clamp(-1, 1)) / 2).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-10))


# ---------------------------------------------------------------- stage: vae

def stage_vae(args):
    seed_all(args.seed)
    images = load_images(args.data)
    n_val = min(256, len(images) // 10)
    val, train = images[:n_val], images[n_val:]
    vae = make_vae()
    print(f"VAE: {n_params(vae):,} params; train {len(train)} images, val {n_val}")
    opt = torch.optim.AdamW(vae.parameters(), lr=args.lr, weight_decay=0.0)
    ck = os.path.join(args.run, "ckpt_vae.pt")
    step, reinit = 0, []
    if args.resume and os.path.exists(ck):
        s = torch.load(ck, weights_only=False)
        vae.load_state_dict(s["model"]); opt.load_state_dict(s["opt"]); set_rng_state(s["rng"]); step = s["step"]
        print(f"resumed VAE at step {step}")
    order = Order(len(train), args.batch, args.seed)
    log = Log(args.run, "vae", ["step", "loss", "rec", "kl", "psnr", "lr", "seconds"], step if args.resume else 0)

    def validate():
        vae.eval()
        ps = []
        with torch.no_grad():
            for i in range(0, n_val, 32):
                x = to_float(val[i : i + 32])
                ps.append(psnr(vae(x, sample_posterior=False).sample, x))
        vae.train()
        return torch.cat(ps).mean().item()

    vae.train()
    stop = last_step(args)
    bar = tqdm(total=stop, initial=step, desc="vae", unit="it", dynamic_ncols=True, smoothing=0.05)
    t0 = time.time()
    while step < stop:
        lr = lr_at(step, args.lr, args.warmup, args.steps)
        for g in opt.param_groups:
            g["lr"] = lr
        x = to_float(train[order.indices(step)])
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample()).sample
        l_rec = F.l1_loss(rec, x) + F.mse_loss(rec, x)
        kl = post.kl().mean() / x[0].numel()
        loss = l_rec + args.kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        step += 1
        p = validate() if (step % args.val_every == 0 or step == args.steps) else None
        log.row(step=step, loss=f"{loss.item():.6f}", rec=f"{l_rec.item():.6f}", kl=f"{kl.item():.4f}",
                psnr="" if p is None else f"{p:.2f}", lr=f"{lr:.3g}", seconds=f"{time.time() - t0:.1f}")
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}", **({"psnr": f"{p:.1f}"} if p is not None else {}))
        if step % args.ckpt_every == 0 or step == stop:
            save_ckpt(ck, model=vae.state_dict(), opt=opt.state_dict(), rng=rng_state(), step=step)
            log.f.flush()
    bar.close()
    p = validate()
    log.close()
    with open(os.path.join(args.run, "vae_metrics.json"), "w") as f:
        json.dump({"step": step, "val_psnr_db": p, "n_val": n_val}, f, indent=2)
    print(f"VAE done: step {step}, validation PSNR {p:.2f} dB (posterior mean)")


# ---------------------------------------------------------------- stage: latents

@torch.no_grad()
def stage_latents(args):
    images = load_images(args.data)
    vae = make_vae()
    vae.load_state_dict(torch.load(os.path.join(args.run, "ckpt_vae.pt"), weights_only=False)["model"])
    vae.eval()
    means, stds = [], []
    for i in tqdm(range(0, len(images), 64), desc="encode", unit="batch"):
        d = vae.encode(to_float(images[i : i + 64])).latent_dist
        means.append(d.mean.half()); stds.append(d.std.half())
    mean, std = torch.cat(means), torch.cat(stds)
    # SD's scaling factor: 1 / std of the latents (sampled), so scaled latents have unit variance
    sample = mean[:4096].float() + std[:4096].float() * torch.randn(mean[:4096].shape)
    scaling = 1.0 / sample.std().item()
    torch.save({"mean": mean, "std": std, "scaling_factor": scaling, "n": len(images)}, os.path.join(args.run, "latents.pt"))
    print(f"latents {tuple(mean.shape)}; mean {sample.mean():.4f} std {sample.std():.4f} -> scaling_factor {scaling:.5f}")


# ---------------------------------------------------------------- stage: unet

class CaptureProbs:
    """An attention processor for the cross-attention (attn2) layers: diffusers' plain
    AttnProcessor, keeping the softmax probabilities [batch * heads, h * w, 77] in `store`."""

    def __init__(self, store, name):
        from diffusers.models.attention_processor import AttnProcessor
        self.inner, self.store, self.name = AttnProcessor(), store, name

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        orig = attn.get_attention_scores

        def grab(q, k, mask=None):
            p = orig(q, k, mask)
            self.store[self.name] = (p, attn.heads)
            return p
        attn.get_attention_scores = grab
        try:
            return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        finally:
            del attn.get_attention_scores


def install_capture(unet, store):
    procs = {}
    for name, proc in unet.attn_processors.items():
        procs[name] = CaptureProbs(store, name) if ".attn2." in name else proc
    unet.set_attn_processor(procs)


def grounding_targets(data_dir, n, captions, tok_ids, tok):
    """Per sample: which prompt token describes which object (-1: none) [N, 77], and the
    objects' coverage masks [N, 2, 64, 64] as float16 in [0, 1]. The world's tokenizer makes
    every world word one token, so word k is token k + 1 (after <|startoftext|>); checked."""
    with open(os.path.join(data_dir, "captions.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    owner = torch.full((n, MAX_LENGTH), -1, dtype=torch.int8)
    for i, r in enumerate(rows):
        if i < 200:  # one token per word
            assert len(tok(r["caption"]).input_ids) == len(r["words"]) + 2, r["caption"]
        for k, o in enumerate(r["word_object"]):
            if o is not None and k + 1 < MAX_LENGTH - 1:
                owner[i, k + 1] = o
    masks = torch.from_numpy(load_file(os.path.join(data_dir, "images.safetensors"))["masks"])
    return owner, masks


def grounding_loss(store, owner, masks):
    """TokenCompose's token loss (Wang et al., CVPR 2024), per attn2 layer: for every object
    word's token, 1 - (attention inside the object's mask) / (all its attention), with the
    head-mean map and the mask area-averaged to the layer's resolution; mean over tokens and
    layers. `owner` [B, 77] (-1: no object), `masks` [B, 2, H, W] float in [0, 1]."""
    valid = owner >= 0
    if not bool(valid.any()):
        return torch.zeros(())
    idx = owner.clamp(min=0).long()
    losses = []
    for probs, heads in store.values():
        bh, n, t = probs.shape
        b = bh // heads
        a = probs.view(b, heads, n, t).mean(1)  # [B, n, 77]
        side = int(round(n ** 0.5))
        m = F.adaptive_avg_pool2d(masks, side).flatten(2)  # [B, 2, n]
        tok_mask = torch.gather(m, 1, idx.unsqueeze(-1).expand(b, t, n))  # [B, 77, n]
        inside = torch.einsum("bnt,btn->bt", a, tok_mask)
        total = a.sum(1) + 1e-8
        losses.append(((1 - inside / total) * valid).sum() / valid.sum())
    return torch.stack(losses).mean()


@torch.no_grad()
def reinit_tokens(models, tok, caption_ids, words, seed):
    """Give `words` fresh, distinct input embeddings (random directions, twice the mean norm of the
    caption tokens) in every model of `models`. Words the loss has had no reason to tell apart
    (left / right while the UNet ignored them) collapse together under weight decay, and then
    neither the text encoder nor the UNet gets a gradient to separate them: this breaks that tie."""
    rows = [tok.convert_tokens_to_ids(w + "</w>") for w in words]
    assert tok.unk_token_id not in rows, f"not single tokens: {words}"
    weight = models[0].text_encoder.get_input_embeddings().weight
    norm = 2.0 * weight[torch.unique(caption_ids)].norm(dim=1).mean()
    new = torch.randn(len(rows), weight.shape[1], generator=torch.Generator().manual_seed(seed))
    new = new / new.norm(dim=1, keepdim=True) * norm
    for m in models:
        m.text_encoder.get_input_embeddings().weight[rows] = new


class TextUNet(torch.nn.Module):
    def __init__(self, text_encoder, unet):
        super().__init__()
        self.text_encoder, self.unet = text_encoder, unet

    def forward(self, noisy, t, ids):
        ctx = self.text_encoder(ids).last_hidden_state
        return self.unet(noisy, t, encoder_hidden_states=ctx).sample


def stage_unet(args):
    from diffusers import DDPMScheduler
    seed_all(args.seed)
    tok = ensure_tokenizer(args)
    lat = torch.load(os.path.join(args.run, "latents.pt"), weights_only=False)
    captions = load_captions(args.data)
    assert len(captions) == lat["n"], "latents.pt does not match the dataset; rerun the latents stage"
    ids = tok(captions, padding="max_length", max_length=MAX_LENGTH, truncation=True, return_tensors="pt").input_ids
    empty = tok([""], padding="max_length", max_length=MAX_LENGTH, return_tensors="pt").input_ids[0]
    scaling = lat["scaling_factor"]
    sched = DDPMScheduler(**SCHEDULE)
    acp = sched.alphas_cumprod
    model = TextUNet(make_text_encoder(tok), make_unet())
    ema = copy.deepcopy(model).requires_grad_(False)
    print(f"text encoder {n_params(model.text_encoder):,} params, UNet {n_params(model.unet):,} params; "
          f"{len(captions)} samples, vocab {len(tok)}, latent scaling {scaling:.5f}")
    store = {}
    if args.ground_weight > 0:
        install_capture(model.unet, store)
        owner_all, masks_all = grounding_targets(args.data, len(captions), captions, ids, tok)
        print(f"grounding loss (TokenCompose token loss) on the object words, weight {args.ground_weight}")
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    ck = os.path.join(args.run, "ckpt_unet.pt")
    step, reinit = 0, []
    if args.resume and os.path.exists(ck):
        s = torch.load(ck, weights_only=False)
        model.load_state_dict(s["model"]); ema.load_state_dict(s["ema"]); opt.load_state_dict(s["opt"])
        set_rng_state(s["rng"]); step = s["step"]
        reinit = s.get("reinit", [])
        print(f"resumed UNet at step {step}")
    todo = [w for w in args.reinit_tokens.split() if w not in reinit]
    if todo:
        reinit_tokens([model, ema], tok, ids, todo, args.seed + step)
        reinit = reinit + todo
        print(f"re-initialised the input embeddings of {' '.join(todo)}")
    if args.focus_frac > 0:
        focus = set(args.focus.split())
        focus_idx = torch.tensor([i for i, c in enumerate(captions) if focus & set(c.split())], dtype=torch.long)
        assert len(focus_idx) > 0, f"no caption contains any of {sorted(focus)}"
        print(f"{args.focus_frac:.0%} of each batch drawn from the {len(focus_idx)} captions with {' / '.join(sorted(focus))}")
    order = Order(len(captions), args.batch, args.seed)
    log = Log(args.run, "unet", ["step", "loss", "ground", "lr", "seconds"], step if args.resume else 0)
    model.train()
    stop = last_step(args)
    bar = tqdm(total=stop, initial=step, desc="unet", unit="it", dynamic_ncols=True, smoothing=0.05)
    t0 = time.time()
    while step < stop:
        lr = lr_at(step, args.lr, args.warmup, args.steps)
        for g in opt.param_groups:
            g["lr"] = lr
        idx = order.indices(step)
        b = len(idx)
        k = int(round(b * args.focus_frac))
        if k > 0:
            idx = idx.clone()
            idx[:k] = focus_idx[torch.randint(len(focus_idx), (k,))]
        x0 = (lat["mean"][idx].float() + lat["std"][idx].float() * torch.randn(b, *lat["mean"].shape[1:])) * scaling
        tok_ids = ids[idx].clone()
        drop = torch.rand(b) < args.caption_dropout
        tok_ids[drop] = empty
        t = torch.randint(args.t_min, SCHEDULE["num_train_timesteps"], (b,))
        noise = torch.randn_like(x0)
        a = acp[t].view(b, 1, 1, 1)
        noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise
        err = (model(noisy, t, tok_ids) - noise).pow(2).mean(dim=(1, 2, 3))
        if args.min_snr > 0 or args.x0_floor > 0:
            # The epsilon loss weighs the x0 error by SNR. Min-SNR-gamma (Hang et al. 2023) caps that
            # weight at gamma; --x0-floor raises it to at least the floor at high noise, where SNR is
            # ~0.01 and the layout (position) is decided: epsilon weight max(min(SNR, g), floor) / SNR.
            snr = a.view(b) / (1 - a.view(b))
            x0_weight = snr.clamp(max=args.min_snr) if args.min_snr > 0 else snr
            err = err * x0_weight.clamp(min=args.x0_floor) / snr
        loss = err.mean()
        l_ground = None
        if args.ground_weight > 0:
            owner = owner_all[idx].clone()
            owner[drop] = -1
            l_ground = grounding_loss(store, owner, masks_all[idx].float() / 255.0)
            loss = loss + args.ground_weight * l_ground
        store.clear()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        ema_update(ema, model, min(args.ema, (1 + step) / (10 + step)))
        log.row(step=step, loss=f"{loss.item():.6f}", ground="" if l_ground is None else f"{l_ground.item():.4f}",
                lr=f"{lr:.3g}", seconds=f"{time.time() - t0:.1f}")
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}", **({} if l_ground is None else {"ground": f"{l_ground.item():.3f}"}))
        if step % args.ckpt_every == 0 or step == stop:
            save_ckpt(ck, model=model.state_dict(), ema=ema.state_dict(), opt=opt.state_dict(), rng=rng_state(),
                      step=step, scaling_factor=scaling, reinit=reinit)
            log.f.flush()
    bar.close()
    log.close()
    print(f"UNet done: step {step}")


# ---------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", choices=["vae", "latents", "unet", "plot"])
    ap.add_argument("--data", help="dataset folder written by `diffusion-scope dataset`")
    ap.add_argument("--run", required=True, help="run folder (checkpoints, logs)")
    ap.add_argument("--tokenizer", help="tokenizer folder from make_tokenizer.py (default: build one into RUN/tokenizer)")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--stop-at", type=int, default=None,
                    help="stop (with a checkpoint) at this step; the learning-rate schedule still spans --steps")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--kl-weight", type=float, default=1e-4, help="VAE: weight of the KL term (per-pixel normalised)")
    ap.add_argument("--val-every", type=int, default=250)
    ap.add_argument("--caption-dropout", type=float, default=0.1)
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--min-snr", type=float, default=5.0, help="UNet: Min-SNR-gamma loss weighting (0 = plain MSE)")
    ap.add_argument("--x0-floor", type=float, default=0.0,
                    help="UNet: lowest weight of the x0 error in the loss (0 = none; epsilon loss weighs it by SNR, "
                         "~0.01 at the high-noise steps that decide the layout)")
    ap.add_argument("--reinit-tokens", default="",
                    help="UNet: words whose input embeddings get fresh random values (once per run; see reinit_tokens)")
    ap.add_argument("--t-min", type=int, default=0, help="UNet: lowest training timestep (0 = all)")
    ap.add_argument("--focus", default="", help="UNet: words; --focus-frac of each batch comes from captions with any of them")
    ap.add_argument("--focus-frac", type=float, default=0.0)
    ap.add_argument("--ground-weight", type=float, default=0.0,
                    help="UNet: weight of the TokenCompose grounding loss on object-word attention (0 = off)")
    ap.add_argument("--ckpt-every", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--resume", action="store_true", help="continue from RUN/ckpt_<stage>.pt")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.makedirs(args.run, exist_ok=True)
    defaults = {"vae": (4000, 16, 1e-3, 200), "unet": (60000, 64, 4e-4, 1000)}
    if args.stage in defaults:
        s, b, lr, w = defaults[args.stage]
        args.steps = args.steps or s
        args.batch = args.batch or b
        args.lr = args.lr or lr
        args.warmup = args.warmup if args.warmup is not None else w
    if args.stage == "plot":
        for st in ("vae", "unet"):
            p = os.path.join(args.run, f"loss_{st}.csv")
            if os.path.exists(p):
                plot_csv(p, os.path.join(args.run, f"loss_{st}.png"))
        return
    with open(os.path.join(args.run, f"args_{args.stage}.json"), "w") as f:
        json.dump(vars(args), f, indent=2)
    {"vae": stage_vae, "latents": stage_latents, "unet": stage_unet}[args.stage](args)


if __name__ == "__main__":
    main()
