//! Where stochastic samplers (DDPM, Euler-ancestral) and the initial latents get their
//! Gaussian noise from. The default source is [`super::rng::TorchRng`], which reproduces
//! `torch.randn(.., generator=torch.Generator().manual_seed(seed))` on the CPU so that a seed
//! means the same thing here as in diffusers.

/// A stream of standard-normal f32 samples. Each call consumes the stream like one
/// `torch.randn(n, generator=g)` call would.
pub trait NoiseSource: Send {
    fn randn(&mut self, n: usize) -> Vec<f32>;
}

/// Replays noise that was recorded elsewhere (tests, or a trace saved by another tool).
/// Returns an error-free stream; asking for more than was recorded panics in tests only,
/// so callers outside tests must size it correctly.
pub struct ReplayNoise {
    chunks: std::collections::VecDeque<Vec<f32>>,
}

impl ReplayNoise {
    pub fn new(chunks: impl IntoIterator<Item = Vec<f32>>) -> Self {
        Self {
            chunks: chunks.into_iter().collect(),
        }
    }
}

impl NoiseSource for ReplayNoise {
    fn randn(&mut self, n: usize) -> Vec<f32> {
        match self.chunks.pop_front() {
            Some(chunk) if chunk.len() == n => chunk,
            Some(chunk) => panic!("replayed noise chunk has {} values, {n} requested", chunk.len()),
            None => panic!("replayed noise exhausted ({n} values requested)"),
        }
    }
}
