"""Architecture of the bundled shapes-world model (one place; train.py, export.py and
bench_train.py import it). Sizes: 64x64 RGB images, VAE factor 4 -> 16x16x4 latents.

Sized for 2 CPU cores: the whole model trains in about an hour with PyTorch on 2 cores and
a 30-step generation with classifier-free guidance runs in well under 1.5 s in our engine."""

IMAGE_SIZE = 64
LATENT_CHANNELS = 4
LATENT_SIZE = IMAGE_SIZE // 4
MAX_LENGTH = 77
TEXT_HIDDEN = 64

VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=["DownEncoderBlock2D"] * 3,
    up_block_types=["UpDecoderBlock2D"] * 3,
    block_out_channels=[16, 32, 32],
    layers_per_block=1,
    latent_channels=LATENT_CHANNELS,
    norm_num_groups=8,
    sample_size=IMAGE_SIZE,
    act_fn="silu",
    mid_block_add_attention=True,
)

# Cross-attention at 16x16, 8x8 and in the 4x4 mid block.
UNET_CONFIG = dict(
    sample_size=LATENT_SIZE,
    in_channels=LATENT_CHANNELS,
    out_channels=LATENT_CHANNELS,
    down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    block_out_channels=[32, 64, 128],
    layers_per_block=1,
    attention_head_dim=2,  # diffusers' SD1 quirk: this is the number of heads
    cross_attention_dim=TEXT_HIDDEN,
    norm_num_groups=16,
)

# vocab_size is filled in from the tokenizer (make_tokenizer.py)
TEXT_CONFIG = dict(
    hidden_size=TEXT_HIDDEN,
    intermediate_size=4 * TEXT_HIDDEN,
    num_hidden_layers=2,
    num_attention_heads=2,
    max_position_embeddings=MAX_LENGTH,
    hidden_act="quick_gelu",
    projection_dim=TEXT_HIDDEN,
)

# Stable Diffusion's training schedule
SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
