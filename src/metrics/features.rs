//! Feature files: the contract between feature extraction and the metrics, which other tools
//! may write too. A safetensors file with
//! - `features` [n, d] f32: one row per image, in input order (FID, KID, precision/recall);
//! - `logits` [n, classes] f32, when the network has class logits (Inception Score);
//! - `fid.count` [1] f64, `fid.sum` [d] f64, `fid.outer` [d, d] f64: FID's sufficient
//!   statistics (they add across shards); computed from `features` when absent;
//! - metadata (all optional): `network`, `resize`, `shard` ("I/N", 1-based), `images` (the
//!   count of the whole input the shard was cut from).

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};

use super::MetricsError;
use super::math::{Rows, Stats};

#[derive(Debug, Clone, Default, PartialEq)]
pub struct FeatureMeta {
    pub network: Option<String>,
    pub resize: Option<String>,
    /// (index from 1, count).
    pub shard: Option<(usize, usize)>,
    /// The size of the whole input a shard was cut from.
    pub images: Option<usize>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FeatureFile {
    pub features: Option<Rows>,
    pub logits: Option<Rows>,
    pub stats: Option<Stats>,
    pub meta: FeatureMeta,
}

fn bad(path: &Path, what: impl std::fmt::Display) -> MetricsError {
    MetricsError::File(format!("{}: {what}", path.display()))
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn f64_bytes(v: &[f64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// "I/N" with 1 <= I <= N.
pub fn parse_shard(s: &str) -> Result<(usize, usize), String> {
    let (i, n) = s.split_once('/').ok_or_else(|| format!("'{s}' is not I/N (e.g. 3/8)"))?;
    let i: usize = i.trim().parse().map_err(|_| format!("'{s}': '{i}' is not a whole number"))?;
    let n: usize = n.trim().parse().map_err(|_| format!("'{s}': '{n}' is not a whole number"))?;
    if n == 0 || i == 0 || i > n {
        return Err(format!("'{s}': needs 1 <= I <= N"));
    }
    Ok((i, n))
}

/// The items of shard (i, n) of `total`: contiguous slices, the first `total % n` one longer.
pub fn shard_range(total: usize, (i, n): (usize, usize)) -> std::ops::Range<usize> {
    let (base, extra) = (total / n, total % n);
    let k = i - 1;
    let start = k * base + k.min(extra);
    start..start + base + usize::from(k < extra)
}

impl FeatureFile {
    /// A file of feature rows (and logits), its statistics computed.
    pub fn from_rows(features: Rows, logits: Option<Rows>, meta: FeatureMeta) -> Self {
        let stats = Some(Stats::of(&features));
        Self {
            features: Some(features),
            logits,
            stats,
            meta,
        }
    }

    pub fn count(&self) -> usize {
        match (&self.features, &self.stats) {
            (Some(r), _) => r.n,
            (None, Some(s)) => s.count as usize,
            _ => 0,
        }
    }

    pub fn dim(&self) -> Option<usize> {
        self.features.as_ref().map(|r| r.d).or(self.stats.as_ref().map(Stats::dim))
    }

    /// FID's statistics: stored ones, or computed from the rows.
    pub fn fid_stats(&self) -> Option<Stats> {
        self.stats.clone().or_else(|| self.features.as_ref().map(Stats::of))
    }

    pub fn write(&self, path: &Path) -> Result<(), MetricsError> {
        let mut buffers: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
        if let Some(r) = &self.features {
            buffers.push(("features".into(), Dtype::F32, vec![r.n, r.d], f32_bytes(&r.data)));
        }
        if let Some(r) = &self.logits {
            buffers.push(("logits".into(), Dtype::F32, vec![r.n, r.d], f32_bytes(&r.data)));
        }
        if let Some(s) = &self.stats {
            let d = s.dim();
            buffers.push(("fid.count".into(), Dtype::F64, vec![1], f64_bytes(&[s.count as f64])));
            buffers.push(("fid.sum".into(), Dtype::F64, vec![d], f64_bytes(&s.sum)));
            buffers.push(("fid.outer".into(), Dtype::F64, vec![d, d], f64_bytes(&s.outer)));
        }
        let views: Vec<(String, TensorView)> = buffers
            .iter()
            .map(|(k, dt, shape, bytes)| TensorView::new(*dt, shape.clone(), bytes).map(|v| (k.clone(), v)))
            .collect::<Result<_, _>>()
            .map_err(|e| bad(path, e))?;
        let mut meta = HashMap::new();
        meta.insert("format".to_string(), "diffusion-scope-features/1".to_string());
        if let Some(n) = &self.meta.network {
            meta.insert("network".into(), n.clone());
        }
        if let Some(r) = &self.meta.resize {
            meta.insert("resize".into(), r.clone());
        }
        if let Some((i, n)) = self.meta.shard {
            meta.insert("shard".into(), format!("{i}/{n}"));
        }
        if let Some(n) = self.meta.images {
            meta.insert("images".into(), n.to_string());
        }
        // Written next to the target and renamed: an interrupted write leaves no half file.
        let tmp = path.with_extension("safetensors.partial");
        safetensors::serialize_to_file(views, Some(meta), &tmp).map_err(|e| bad(path, e))?;
        std::fs::rename(&tmp, path).map_err(|e| bad(path, e))
    }

    pub fn read(path: &Path) -> Result<Self, MetricsError> {
        let bytes = std::fs::read(path).map_err(|e| bad(path, e))?;
        let (_, header) =
            safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| bad(path, format!("not a safetensors file ({e})")))?;
        let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| bad(path, e))?;
        let names: Vec<String> = st.names().into_iter().map(|s| s.to_string()).collect();
        let has = |n: &str| names.iter().any(|x| x == n);
        let matrix = |name: &str| -> Result<Option<Rows>, MetricsError> {
            if !has(name) {
                return Ok(None);
            }
            let t = st.tensor(name).map_err(|e| bad(path, e))?;
            let shape = t.shape();
            if shape.len() != 2 {
                return Err(bad(path, format!("{name} has shape {shape:?}, expected [images, dims]")));
            }
            let data: Vec<f32> = match t.dtype() {
                Dtype::F32 => t
                    .data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
                Dtype::F64 => t
                    .data()
                    .chunks_exact(8)
                    .map(|b| f64::from_le_bytes(b.try_into().unwrap()) as f32)
                    .collect(),
                Dtype::F16 => t
                    .data()
                    .chunks_exact(2)
                    .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                    .collect(),
                other => return Err(bad(path, format!("{name} is {other:?}, expected F32"))),
            };
            if let Some(i) = data.iter().position(|v| !v.is_finite()) {
                return Err(bad(path, format!("{name} row {} holds a non-finite value", i / shape[1])));
            }
            Ok(Some(Rows::new(shape[0], shape[1], data)))
        };
        let f64s = |name: &str| -> Result<Option<(Vec<usize>, Vec<f64>)>, MetricsError> {
            if !has(name) {
                return Ok(None);
            }
            let t = st.tensor(name).map_err(|e| bad(path, e))?;
            if t.dtype() != Dtype::F64 {
                return Err(bad(path, format!("{name} is {:?}, expected F64", t.dtype())));
            }
            let v = t
                .data()
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
                .collect();
            Ok(Some((t.shape().to_vec(), v)))
        };
        let features = matrix("features")?;
        let logits = matrix("logits")?;
        let stats = match (f64s("fid.count")?, f64s("fid.sum")?, f64s("fid.outer")?) {
            (None, None, None) => None,
            (Some((_, c)), Some((ss, sum)), Some((os, outer))) => {
                let d = sum.len();
                if ss != [d] || os != [d, d] || c.len() != 1 || c[0] < 0.0 || c[0].fract() != 0.0 {
                    return Err(bad(
                        path,
                        format!("fid.* statistics have inconsistent shapes (sum {ss:?}, outer {os:?})"),
                    ));
                }
                Some(Stats {
                    count: c[0] as u64,
                    sum,
                    outer,
                })
            }
            _ => return Err(bad(path, "holds some of fid.count, fid.sum and fid.outer but not all three")),
        };
        if features.is_none() && stats.is_none() {
            return Err(bad(
                path,
                format!(
                    "holds neither `features` [n, d] nor fid.* statistics (tensors: {})",
                    names.join(", ")
                ),
            ));
        }
        if let (Some(f), Some(s)) = (&features, &stats) {
            if f.d != s.dim() || f.n as u64 != s.count {
                return Err(bad(
                    path,
                    format!(
                        "features [{}, {}] disagree with fid.* statistics of {} {}-d rows",
                        f.n,
                        f.d,
                        s.count,
                        s.dim()
                    ),
                ));
            }
        }
        if let (Some(f), Some(l)) = (&features, &logits) {
            if f.n != l.n {
                return Err(bad(path, format!("{} feature rows but {} logit rows", f.n, l.n)));
            }
        }
        let m = header.metadata().clone().unwrap_or_default();
        let meta = FeatureMeta {
            network: m.get("network").cloned(),
            resize: m.get("resize").cloned(),
            shard: m.get("shard").and_then(|s| parse_shard(s).ok()),
            images: m.get("images").and_then(|s| s.parse().ok()),
        };
        Ok(Self {
            features,
            logits,
            stats,
            meta,
        })
    }

    /// Combines shards (or any sets) into one, rows in the given order. Shards that say which
    /// they are must come from the same network and resize and be given once each, in order.
    pub fn merge(parts: &[(String, FeatureFile)]) -> Result<FeatureFile, MetricsError> {
        let Some((first_name, first)) = parts.first() else {
            return Err(MetricsError::File("nothing to merge".into()));
        };
        for (name, p) in &parts[1..] {
            for (what, a, b) in [
                ("network", &first.meta.network, &p.meta.network),
                ("resize", &first.meta.resize, &p.meta.resize),
            ] {
                if let (Some(a), Some(b)) = (a, b) {
                    if a != b {
                        return Err(MetricsError::File(format!("{name}: {what} {b}, but {first_name} has {a}")));
                    }
                }
            }
            if p.dim() != first.dim() {
                return Err(MetricsError::Dimensions(format!(
                    "{name}: {}-d features, but {first_name} has {}-d",
                    p.dim().unwrap_or(0),
                    first.dim().unwrap_or(0)
                )));
            }
        }
        // Shards of one job: all of them, each once.
        let shards: Vec<(usize, usize)> = parts.iter().filter_map(|(_, p)| p.meta.shard).collect();
        if shards.len() == parts.len() {
            let n = shards[0].1;
            let mut seen: Vec<usize> = shards.iter().map(|s| s.0).collect();
            seen.sort_unstable();
            if shards.iter().any(|s| s.1 != n) || seen != (1..=n).collect::<Vec<_>>() {
                let got: Vec<String> = shards.iter().map(|(i, n)| format!("{i}/{n}")).collect();
                return Err(MetricsError::File(format!(
                    "the shards given are {}: a merge of sharded files needs each of 1/{n} .. {n}/{n} once",
                    got.join(", ")
                )));
            }
            if shards.iter().map(|s| s.0).collect::<Vec<_>>() != (1..=n).collect::<Vec<_>>() {
                return Err(MetricsError::File(format!(
                    "give the shards in order (1/{n} first): the rows keep the order of the files"
                )));
            }
        }
        let all_rows = parts.iter().all(|(_, p)| p.features.is_some());
        let all_logits = parts.iter().all(|(_, p)| p.logits.is_some());
        let concat = |get: &dyn Fn(&FeatureFile) -> Option<&Rows>| -> Rows {
            let first = get(&parts[0].1).unwrap();
            let mut data = Vec::new();
            let mut n = 0;
            for (_, p) in parts {
                let r = get(p).unwrap();
                data.extend_from_slice(&r.data);
                n += r.n;
            }
            Rows::new(n, first.d, data)
        };
        let features = all_rows.then(|| concat(&|p| p.features.as_ref()));
        let logits = all_logits.then(|| concat(&|p| p.logits.as_ref()));
        let mut stats = parts[0].1.fid_stats().unwrap();
        for (_, p) in &parts[1..] {
            stats = stats.merge(&p.fid_stats().unwrap())?;
        }
        Ok(FeatureFile {
            features,
            logits,
            stats: Some(stats),
            meta: FeatureMeta {
                network: first.meta.network.clone(),
                resize: first.meta.resize.clone(),
                shard: None,
                images: None,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_the_input_once() {
        for total in [0, 1, 7, 10, 101] {
            for n in 1..=8 {
                let mut next = 0;
                for i in 1..=n {
                    let r = shard_range(total, (i, n));
                    assert_eq!(r.start, next);
                    next = r.end;
                }
                assert_eq!(next, total);
            }
        }
        assert_eq!(parse_shard("2/4"), Ok((2, 4)));
        assert!(parse_shard("0/4").is_err() && parse_shard("5/4").is_err() && parse_shard("x").is_err());
    }
}
