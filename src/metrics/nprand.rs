//! NumPy's legacy `RandomState` (MT19937 seeded with an integer), as far as the reference
//! metrics use it: `permutation(n)` and `choice(n, m, replace=False)`. torch-fidelity draws its
//! KID subsets and its Inception Score shuffle from `RandomState(2020)`; drawing the same indices
//! is what makes our KID and IS equal to theirs on the same features, not merely close.

const N: usize = 624;
const M: usize = 397;

pub struct RandomState {
    key: [u32; N],
    pos: usize,
}

impl RandomState {
    /// `np.random.RandomState(seed)` for an integer seed (NumPy's `mt19937_seed`).
    pub fn new(seed: u32) -> Self {
        let mut key = [0u32; N];
        let mut s = seed;
        for (pos, k) in key.iter_mut().enumerate() {
            *k = s;
            s = 1_812_433_253u32.wrapping_mul(s ^ (s >> 30)).wrapping_add(pos as u32 + 1);
        }
        Self { key, pos: N }
    }

    fn generate(&mut self) {
        const UPPER: u32 = 0x8000_0000;
        const LOWER: u32 = 0x7fff_ffff;
        const MATRIX_A: u32 = 0x9908_b0df;
        for i in 0..N {
            let y = (self.key[i] & UPPER) | (self.key[(i + 1) % N] & LOWER);
            let mut v = self.key[(i + M) % N] ^ (y >> 1);
            if y & 1 == 1 {
                v ^= MATRIX_A;
            }
            self.key[i] = v;
        }
        self.pos = 0;
    }

    /// The next 32-bit output (`genrand_int32`).
    pub fn next_u32(&mut self) -> u32 {
        if self.pos == N {
            self.generate();
        }
        let mut y = self.key[self.pos];
        self.pos += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_reference_mt19937() {
        // The reference implementation's `init_genrand(5489)` starts 3499211612, 581869302
        // (Matsumoto and Nishimura's mt19937ar.out uses init_by_array; 5489 is the default
        // seed of C++ std::mt19937, whose first output is 3499211612).
        let mut r = RandomState::new(5489);
        assert_eq!(r.next_u32(), 3_499_211_612);
        assert_eq!(r.next_u32(), 581_869_302);
        // std::mt19937's 10000th output with the default seed is 4123659995 (C++ standard).
        let mut r = RandomState::new(5489);
        let v = (0..10_000).map(|_| r.next_u32()).last().unwrap();
        assert_eq!(v, 4_123_659_995);
    }
}
