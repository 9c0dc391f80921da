//! NumPy's legacy `RandomState` (MT19937 seeded with an integer), as far as the reference
//! metrics use it: `permutation(n)` and `choice(n, m, replace=False)`. torch-fidelity draws its
//! KID subsets and its Inception Score shuffle from `RandomState(2020)`; drawing the same indices
//! is what makes our KID and IS equal to theirs on the same features, not merely close.

use crate::sampling::rng::Mt19937;

pub struct RandomState {
    mt: Mt19937,
}

impl RandomState {
    /// `np.random.RandomState(seed)` for an integer seed: NumPy's `mt19937_seed` is the
    /// standard `init_genrand`.
    pub fn new(seed: u32) -> Self {
        Self { mt: Mt19937::new(seed) }
    }

    /// The next 32-bit output (`genrand_int32`).
    pub fn next_u32(&mut self) -> u32 {
        self.mt.next_u32()
    }

    /// `random_sample()`: a double in [0, 1) from two outputs (53 bits).
    pub fn random_sample(&mut self) -> f64 {
        let a = (self.next_u32() >> 5) as f64;
        let b = (self.next_u32() >> 6) as f64;
        (a * 67_108_864.0 + b) / 9_007_199_254_740_992.0
    }

    /// A uniform integer in 0..=max by masked rejection (NumPy's legacy `random_interval`).
    fn interval(&mut self, max: u32) -> u32 {
        if max == 0 {
            return 0;
        }
        let mut mask = max;
        for s in [1, 2, 4, 8, 16] {
            mask |= mask >> s;
        }
        loop {
            let v = self.next_u32() & mask;
            if v <= max {
                return v;
            }
        }
    }

    /// `permutation(n)`: a Fisher-Yates shuffle of 0..n from the last element down.
    pub fn permutation(&mut self, n: usize) -> Vec<usize> {
        assert!(n <= u32::MAX as usize, "permutation of more than 2^32 items");
        let mut v: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            let j = self.interval(i as u32) as usize;
            v.swap(i, j);
        }
        v
    }

    /// `choice(n, m, replace=False)`: the first `m` of a permutation.
    pub fn choice(&mut self, n: usize, m: usize) -> Vec<usize> {
        let mut p = self.permutation(n);
        p.truncate(m);
        p
    }
}
