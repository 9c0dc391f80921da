//! Up-front memory estimates. On the CPU a failed allocation aborts the process (16 TB asked
//! for a 4000x4000 image took 17 s to die), so a run whose size cannot fit is refused before
//! anything is allocated, naming the size and what it would need.
//!
//! The estimate follows what the forward passes hold at their peak, from the model's configs:
//! - UNet: per self-attention layer the scores and their softmax, 2 x batch x heads x L^2 f32
//!   (L = latent cells at that layer's level; ours computes attention in f32 in one piece), over
//!   the activations kept for the skip connections and a working set of the widest level.
//! - VAE decode: the mid-block attention over the latent cells (scores, scaled, softmax: 3 x
//!   L^2 f32) and six full-size buffers of the widest up-block at each resolution.
//! - The trace held in memory: latents, x0 and model output per step, plus the captured
//!   attention maps.
//!
//! The UNet and the VAE peaks do not overlap; the trace grows beside both.

use crate::model::StableDiffusion;
use crate::types::CaptureMode;

/// What a run of a given size needs, and the part that dominates it.
#[derive(Debug, Clone, PartialEq)]
pub struct Estimate {
    pub bytes: f64,
    /// A few words naming the largest part, e.g. "the UNet's self-attention at 500x500".
    pub dominant: String,
}

/// What a run at latents `[c, h, w]` (batch 2 with guidance) needs.
pub fn run_estimate(sd: &StableDiffusion, latent: [usize; 3], guided: bool, steps: usize, capture: CaptureMode) -> Estimate {
    let f = sd.vae_scale_factor() as f64;
    let [c, h, w] = latent.map(|v| v as f64);
    let batch = if guided { 2.0 } else { 1.0 };
    let unet = unet_bytes(sd, latent, batch);
    let attn = largest_self_attention(sd, latent, batch);
    // VAE decode: mid-block attention at latent resolution, then the up blocks.
    let cells = h * w;
    let vae_attn = 3.0 * cells * cells * 4.0;
    let vcfg = &sd.vae.config;
    let mut vae_act = 0.0f64;
    let rev: Vec<usize> = vcfg.block_out_channels.iter().rev().copied().collect();
    for (j, &ch) in rev.iter().enumerate() {
        let scale = (1u64 << j.min(60)) as f64;
        let wider = rev.get(j.wrapping_sub(1)).copied().unwrap_or(ch).max(ch);
        vae_act = vae_act.max(6.0 * wider as f64 * h * scale * w * scale * 4.0);
    }
    let vae = vae_attn.max(vae_act) + 2.0 * 3.0 * h * f * w * f * 4.0;

    // The trace held in memory.
    let tokens = sd.text_encoder.config.max_position_embeddings as f64;
    let per_step_maps: f64 = match capture {
        CaptureMode::None => 0.0,
        CaptureMode::Aggregate => {
            let mut levels: Vec<usize> = sd.unet.attn_layers().iter().map(|l| l.level).collect();
            levels.sort_unstable();
            levels.dedup();
            levels.iter().map(|&l| level_dims(h, w, l)).map(|(lh, lw)| lh * lw * tokens).sum()
        }
        CaptureMode::Full => sd
            .unet
            .attn_layers()
            .iter()
            .map(|l| level_dims(h, w, l.level))
            .map(|(lh, lw)| lh * lw * tokens)
            .sum(),
    };
    let trace = steps as f64 * (3.0 * c * h * w + per_step_maps) * 4.0;

    let (peak, dominant) = if unet >= vae {
        let (lh, lw) = level_dims(h, w, attn.1);
        if attn.0 >= unet - attn.0 {
            (unet, format!("the UNet's self-attention over {lh}x{lw} latent cells"))
        } else {
            (unet, "the UNet's activations".to_string())
        }
    } else if vae_attn >= vae_act {
        (vae, format!("the VAE's attention over {h}x{w} latent cells"))
    } else {
        (vae, format!("the VAE decoder at {}x{} pixels", h * f, w * f))
    };
    let dominant = if trace > peak {
        format!("the trace of {steps} steps kept in memory")
    } else {
        dominant
    };
    Estimate {
        bytes: peak + trace,
        dominant,
    }
}

/// The spatial size after `level` halvings (rounding up, as the UNet's strided convolutions).
fn level_dims(h: f64, w: f64, level: usize) -> (f64, f64) {
    (0..level).fold((h, w), |(a, b), _| ((a / 2.0).ceil(), (b / 2.0).ceil()))
}

/// The largest self-attention score matrix of a UNet call of `batch` items, and its level.
fn largest_self_attention(sd: &StableDiffusion, latent: [usize; 3], batch: f64) -> (f64, usize) {
    let (h, w) = (latent[1] as f64, latent[2] as f64);
    let mut attn = (0.0f64, 0usize);
    for l in sd.unet.attn_layers() {
        let (lh, lw) = level_dims(h, w, l.level);
        let cells = lh * lw;
        let bytes = 2.0 * batch * l.heads as f64 * cells * cells * 4.0;
        if bytes > attn.0 {
            attn = (bytes, l.level);
        }
    }
    attn
}

/// What one UNet call of `batch` items at latents `[c, h, w]` needs: the largest
/// self-attention, the skip connections and the widest working set.
pub fn unet_bytes(sd: &StableDiffusion, latent: [usize; 3], batch: f64) -> f64 {
    let (h, w) = (latent[1] as f64, latent[2] as f64);
    let ucfg = &sd.unet.config;
    let attn = largest_self_attention(sd, latent, batch);
    let mut skips = 0.0;
    let mut widest = 0.0f64;
    for (i, &ch) in ucfg.block_out_channels.iter().enumerate() {
        let (lh, lw) = level_dims(h, w, i);
        let size = batch * ch as f64 * lh * lw * 4.0;
        skips += (ucfg.layers_per_block + 1) as f64 * size;
        // Transformer feed-forward (GEGLU: 8x the channels, then 4x twice) dominates the
        // working set where there is attention; resnets need a handful of buffers.
        let has_attn = sd.unet.attn_layers().iter().any(|l| l.level == i);
        widest = widest.max(if has_attn { 16.0 } else { 6.0 } * size);
    }
    attn.0 + skips + widest
}

/// Memory this process can still use, in bytes: `MemAvailable`, lowered by a cgroup (v2)
/// limit when there is one. None where it cannot be read (then nothing is refused).
pub fn available_bytes() -> Option<f64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib = |key: &str| {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
    };
    let mut avail = kib("MemAvailable:")? * 1024.0;
    let read = |p: &str| std::fs::read_to_string(p).ok().and_then(|s| s.trim().parse::<f64>().ok());
    if let (Some(max), Some(cur)) = (read("/sys/fs/cgroup/memory.max"), read("/sys/fs/cgroup/memory.current")) {
        avail = avail.min((max - cur).max(0.0));
    }
    Some(avail)
}

/// "16.0 TB", "512 MiB".
pub fn human_bytes(b: f64) -> String {
    const UNITS: [&str; 8] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB"];
    let mut v = b;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{v:.0} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

#[cfg(test)]
mod tests {
    use super::human_bytes;

    #[test]
    fn human_sizes() {
        assert_eq!(human_bytes(512.0), "512 B");
        assert_eq!(human_bytes(1536.0), "1.5 KiB");
        assert_eq!(human_bytes(16.0 * 1024f64.powi(4)), "16.0 TiB");
    }
}
