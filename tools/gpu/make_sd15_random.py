"""A Stable Diffusion 1.5-shaped diffusers folder with random weights (issue 18): the real
SD 1.5 configs (UNet 320/640/1280/1280, CLIP ViT-L/14 text encoder, the 4-channel VAE, PNDM),
the real CLIP tokenizer files from tests/fixtures/clip-tokenizer, weights drawn from a seed.
Both diffusion-scope and diffusers load the same folder, so timings compare the same model.

    python3 tools/gpu/make_sd15_random.py OUT [--dtype fp16|fp32] [--tiny]

--tiny shrinks every width (for a CPU smoke test of the scripts; the numbers mean nothing).
"""
import argparse
import os

import torch
from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
TOKENIZER = os.path.join(HERE, "..", "..", "tests", "fixtures", "clip-tokenizer")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--dtype", default="fp16", choices=["fp16", "fp32"])
    p.add_argument("--tiny", action="store_true")
    a = p.parse_args()
    torch.manual_seed(0)
    tiny = a.tiny
    unet = UNet2DConditionModel(
        sample_size=64,
        block_out_channels=(32, 64, 64, 64) if tiny else (320, 640, 1280, 1280),
        attention_head_dim=8,
        cross_attention_dim=64 if tiny else 768,
        layers_per_block=1 if tiny else 2,
        norm_num_groups=32,
    )
    vae = AutoencoderKL(
        block_out_channels=(32, 32, 64, 64) if tiny else (128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=1 if tiny else 2,
        norm_num_groups=32,
        sample_size=512,
    )
    tokenizer = CLIPTokenizer(os.path.join(TOKENIZER, "vocab.json"), os.path.join(TOKENIZER, "merges.txt"),
                              model_max_length=77, pad_token="<|endoftext|>")
    te = CLIPTextModel(CLIPTextConfig(
        hidden_size=64 if tiny else 768, intermediate_size=128 if tiny else 3072,
        num_attention_heads=4 if tiny else 12, num_hidden_layers=2 if tiny else 12,
        vocab_size=49408, max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=64 if tiny else 768,
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
    ))
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                              set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    if a.dtype == "fp16":
        pipe = pipe.to(torch.float16)
    pipe.save_pretrained(a.out, safe_serialization=True)
    print("wrote", a.out)


if __name__ == "__main__":
    main()
