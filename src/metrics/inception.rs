//! The FID Inception-v3: the TensorFlow graph of 2015-12-05 that pytorch-fid, torch-fidelity,
//! clean-fid and torchmetrics all use, as torch-fidelity's `FeatureExtractorInceptionV3`
//! writes it (the "FID variants" of the blocks: average pools that do not count the padding,
//! a max pool in the last block's pool branch; batch norm with eps 0.001). Outputs the pool3
//! features (2048) and, when the weights have the classifier, torch-fidelity's
//! `logits_unbiased` (the 1008-way fc without its bias), the Inception Score's input.
//!
//! Weights: pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` or torch-fidelity's
//! `weights-inception-2015-12-05-6726825d.pth` (the same state dict), or a safetensors file
//! with the same names. Batch norm is folded into the convolutions when loading.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use super::MetricsError;

/// The input side the network expects.
pub const SIZE: usize = 299;
pub const FEATURES: usize = 2048;
pub const CLASSES: usize = 1008;

/// The file names the network's weights go by, looked for in the torch hub cache.
pub const WEIGHT_FILES: [&str; 2] = ["pt_inception-2015-12-05-6726825d.pth", "weights-inception-2015-12-05-6726825d.pth"];

fn err(e: impl std::fmt::Display) -> MetricsError {
    MetricsError::Numeric(format!("inception: {e}"))
}

/// A convolution with its batch norm folded in, then ReLU.
struct BasicConv {
    weight: Tensor,
    bias: Tensor,
    stride: usize,
    /// (rows, columns) of zero padding.
    pad: (usize, usize),
}

impl BasicConv {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (ph, pw) = self.pad;
        let y = if ph == pw {
            x.conv2d(&self.weight, ph, self.stride, 1, 1)?
        } else {
            x.pad_with_zeros(2, ph, ph)?
                .pad_with_zeros(3, pw, pw)?
                .conv2d(&self.weight, 0, self.stride, 1, 1)?
        };
        y.broadcast_add(&self.bias.reshape((1, (), 1, 1))?)?.relu()
    }
}

struct Loader<'a> {
    tensors: &'a HashMap<String, Tensor>,
    device: &'a Device,
}

impl Loader<'_> {
    fn get(&self, name: &str) -> Result<Tensor, MetricsError> {
        let t = self.tensors.get(name).ok_or_else(|| {
            MetricsError::File(format!(
                "the weights lack `{name}`: not the FID Inception-v3 (pt_inception-2015-12-05 / torch-fidelity names)"
            ))
        })?;
        t.to_dtype(DType::F32).and_then(|t| t.to_device(self.device)).map_err(err)
    }

    fn conv(&self, name: &str, stride: usize, pad: (usize, usize)) -> Result<BasicConv, MetricsError> {
        let w = self.get(&format!("{name}.conv.weight"))?;
        let gamma = self.get(&format!("{name}.bn.weight"))?;
        let beta = self.get(&format!("{name}.bn.bias"))?;
        let mean = self.get(&format!("{name}.bn.running_mean"))?;
        let var = self.get(&format!("{name}.bn.running_var"))?;
        let fold = || -> candle_core::Result<(Tensor, Tensor)> {
            let scale = gamma.broadcast_div(&(var + 1e-3)?.sqrt()?)?;
            let weight = w.broadcast_mul(&scale.reshape(((), 1, 1, 1))?)?;
            let bias = (beta - mean.mul(&scale)?)?;
            Ok((weight, bias))
        };
        let (weight, bias) = fold().map_err(err)?;
        Ok(BasicConv { weight, bias, stride, pad })
    }
}

enum Pool {
    /// 3x3, stride 1, padding 1, the padding not counted (TF's average pool).
    Avg,
    /// 3x3, stride 1, padding 1 (the last block).
    Max,
}

/// A mixed block: its branches (each a chain of convolutions, a pool first where it has one)
/// concatenated over channels; the E blocks split the end of two branches in two.
enum Block {
    /// InceptionA / InceptionC: [1x1], [chain], [chain], [pool, 1x1].
    Four(Vec<Vec<BasicConv>>),
    /// InceptionB / InceptionD: [chain], [chain], max pool 3x3 stride 2.
    Reduce(Vec<Vec<BasicConv>>),
    /// InceptionE: 1x1; 1x1 then (1x3 | 3x1); 1x1, 3x3 then (1x3 | 3x1); pool, 1x1.
    E {
        b1: BasicConv,
        b3: BasicConv,
        b3a: BasicConv,
        b3b: BasicConv,
        d1: BasicConv,
        d2: BasicConv,
        d3a: BasicConv,
        d3b: BasicConv,
        pool_conv: BasicConv,
        pool: Pool,
    },
}

fn chain(x: &Tensor, convs: &[BasicConv]) -> candle_core::Result<Tensor> {
    let mut y = x.clone();
    for c in convs {
        y = c.forward(&y)?;
    }
    Ok(y)
}

fn pool3(x: &Tensor, pool: &Pool) -> candle_core::Result<Tensor> {
    match pool {
        Pool::Avg => {
            let (_, _, h, w) = x.dims4()?;
            let sum = x.pad_with_zeros(2, 1, 1)?.pad_with_zeros(3, 1, 1)?.avg_pool2d_with_stride(3, 1)?;
            // How many real cells each window holds (9 inside, 6 on edges, 4 in corners).
            let ones = Tensor::ones((1, 1, h, w), x.dtype(), x.device())?;
            let count = ones
                .pad_with_zeros(2, 1, 1)?
                .pad_with_zeros(3, 1, 1)?
                .avg_pool2d_with_stride(3, 1)?;
            sum.broadcast_div(&count)
        }
        // Replicated edges never exceed the window's own maximum: the same as -inf padding.
        Pool::Max => x.pad_with_same(2, 1, 1)?.pad_with_same(3, 1, 1)?.max_pool2d_with_stride(3, 1),
    }
}

impl Block {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Block::Four(b) => {
                let p = pool3(x, &Pool::Avg)?;
                Tensor::cat(&[chain(x, &b[0])?, chain(x, &b[1])?, chain(x, &b[2])?, chain(&p, &b[3])?], 1)
            }
            Block::Reduce(b) => Tensor::cat(&[chain(x, &b[0])?, chain(x, &b[1])?, x.max_pool2d_with_stride(3, 2)?], 1),
            Block::E {
                b1,
                b3,
                b3a,
                b3b,
                d1,
                d2,
                d3a,
                d3b,
                pool_conv,
                pool,
            } => {
                let a = b3.forward(x)?;
                let d = d2.forward(&d1.forward(x)?)?;
                let p = pool_conv.forward(&pool3(x, pool)?)?;
                Tensor::cat(
                    &[
                        b1.forward(x)?,
                        b3a.forward(&a)?,
                        b3b.forward(&a)?,
                        d3a.forward(&d)?,
                        d3b.forward(&d)?,
                        p,
                    ],
                    1,
                )
            }
        }
    }
}

pub struct Inception {
    stem: Vec<BasicConv>,
    blocks: Vec<Block>,
    /// fc.weight [1008, 2048] transposed, when the weights have it.
    fc_t: Option<Tensor>,
    device: Device,
}

/// What the network gives per image.
pub struct Output {
    /// [batch, 2048].
    pub pool3: Tensor,
    /// [batch, 1008]: fc without its bias (torch-fidelity's `logits_unbiased`).
    pub logits: Option<Tensor>,
}

impl Inception {
    /// From tensors named as torch-fidelity's module (`Conv2d_1a_3x3.conv.weight`, ...).
    pub fn from_tensors(tensors: &HashMap<String, Tensor>, device: &Device) -> Result<Self, MetricsError> {
        let l = Loader { tensors, device };
        let k1 = (0, 0);
        let stem = vec![
            l.conv("Conv2d_1a_3x3", 2, k1)?,
            l.conv("Conv2d_2a_3x3", 1, k1)?,
            l.conv("Conv2d_2b_3x3", 1, (1, 1))?,
            // max pool, then:
            l.conv("Conv2d_3b_1x1", 1, k1)?,
            l.conv("Conv2d_4a_3x3", 1, k1)?,
        ];
        let a = |n: &str| -> Result<Block, MetricsError> {
            let c = |s: &str, pad| l.conv(&format!("{n}.{s}"), 1, pad);
            Ok(Block::Four(vec![
                vec![c("branch1x1", k1)?],
                vec![c("branch5x5_1", k1)?, c("branch5x5_2", (2, 2))?],
                vec![c("branch3x3dbl_1", k1)?, c("branch3x3dbl_2", (1, 1))?, c("branch3x3dbl_3", (1, 1))?],
                vec![c("branch_pool", k1)?],
            ]))
        };
        let cblock = |n: &str| -> Result<Block, MetricsError> {
            let c = |s: &str, pad| l.conv(&format!("{n}.{s}"), 1, pad);
            let (row, col) = ((0, 3), (3, 0));
            Ok(Block::Four(vec![
                vec![c("branch1x1", k1)?],
                vec![c("branch7x7_1", k1)?, c("branch7x7_2", row)?, c("branch7x7_3", col)?],
                vec![
                    c("branch7x7dbl_1", k1)?,
                    c("branch7x7dbl_2", col)?,
                    c("branch7x7dbl_3", row)?,
                    c("branch7x7dbl_4", col)?,
                    c("branch7x7dbl_5", row)?,
                ],
                vec![c("branch_pool", k1)?],
            ]))
        };
        let e = |n: &str, pool: Pool| -> Result<Block, MetricsError> {
            let c = |s: &str, pad| l.conv(&format!("{n}.{s}"), 1, pad);
            Ok(Block::E {
                b1: c("branch1x1", k1)?,
                b3: c("branch3x3_1", k1)?,
                b3a: c("branch3x3_2a", (0, 1))?,
                b3b: c("branch3x3_2b", (1, 0))?,
                d1: c("branch3x3dbl_1", k1)?,
                d2: c("branch3x3dbl_2", (1, 1))?,
                d3a: c("branch3x3dbl_3a", (0, 1))?,
                d3b: c("branch3x3dbl_3b", (1, 0))?,
                pool_conv: c("branch_pool", k1)?,
                pool,
            })
        };
        let blocks = vec![
            a("Mixed_5b")?,
            a("Mixed_5c")?,
            a("Mixed_5d")?,
            Block::Reduce(vec![
                vec![l.conv("Mixed_6a.branch3x3", 2, k1)?],
                vec![
                    l.conv("Mixed_6a.branch3x3dbl_1", 1, k1)?,
                    l.conv("Mixed_6a.branch3x3dbl_2", 1, (1, 1))?,
                    l.conv("Mixed_6a.branch3x3dbl_3", 2, k1)?,
                ],
            ]),
            cblock("Mixed_6b")?,
            cblock("Mixed_6c")?,
            cblock("Mixed_6d")?,
            cblock("Mixed_6e")?,
            Block::Reduce(vec![
                vec![l.conv("Mixed_7a.branch3x3_1", 1, k1)?, l.conv("Mixed_7a.branch3x3_2", 2, k1)?],
                vec![
                    l.conv("Mixed_7a.branch7x7x3_1", 1, k1)?,
                    l.conv("Mixed_7a.branch7x7x3_2", 1, (0, 3))?,
                    l.conv("Mixed_7a.branch7x7x3_3", 1, (3, 0))?,
                    l.conv("Mixed_7a.branch7x7x3_4", 2, k1)?,
                ],
            ]),
            e("Mixed_7b", Pool::Avg)?,
            e("Mixed_7c", Pool::Max)?,
        ];
        let fc_t = match tensors.get("fc.weight") {
            Some(_) => {
                let w = l.get("fc.weight")?;
                if w.dims() != [CLASSES, FEATURES] {
                    return Err(MetricsError::File(format!(
                        "fc.weight has shape {:?}, expected [{CLASSES}, {FEATURES}]",
                        w.dims()
                    )));
                }
                Some(w.t().and_then(|t| t.contiguous()).map_err(err)?)
            }
            None => None,
        };
        Ok(Self {
            stem,
            blocks,
            fc_t,
            device: device.clone(),
        })
    }

    /// Loads `.pth` (a torch state dict), `.safetensors` weights, or the network's TorchScript
    /// archive (`inception-2015-12-05.pt`, `default_1.pt`: no classifier, so no logits).
    pub fn load(path: &Path, device: &Device) -> Result<Self, MetricsError> {
        let bad = |e: String| MetricsError::File(format!("{}: {e}", path.display()));
        let tensors: HashMap<String, Tensor> = if path.extension().is_some_and(|e| e == "safetensors") {
            candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| bad(e.to_string()))?
        } else if super::torchscript::is_torchscript(path) {
            super::torchscript::inception_weights(path)?
        } else {
            candle_core::pickle::read_all(path)
                .map_err(|e| bad(format!("not a torch state dict ({e})")))?
                .into_iter()
                .collect()
        };
        if tensors.is_empty() {
            return Err(bad(
                "holds no tensors (not a torch state dict, TorchScript archive or safetensors file)".into(),
            ));
        }
        Self::from_tensors(&tensors, device).map_err(|e| match e {
            MetricsError::File(m) => bad(m),
            e => e,
        })
    }

    pub fn has_logits(&self) -> bool {
        self.fc_t.is_some()
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// `x`: [batch, 3, 299, 299], already scaled to (v - 128) / 128.
    pub fn forward(&self, x: &Tensor) -> Result<Output, MetricsError> {
        let run = || -> candle_core::Result<Output> {
            let mut y = x.clone();
            for (i, c) in self.stem.iter().enumerate() {
                if i == 3 {
                    y = y.max_pool2d_with_stride(3, 2)?;
                }
                y = c.forward(&y)?;
            }
            y = y.max_pool2d_with_stride(3, 2)?;
            for b in &self.blocks {
                y = b.forward(&y)?;
            }
            let pool3 = y.mean((2, 3))?;
            let logits = match &self.fc_t {
                Some(w) => Some(pool3.matmul(w)?),
                None => None,
            };
            Ok(Output { pool3, logits })
        };
        run().map_err(err)
    }
}

/// The TorchScript archive's file name (clean-fid downloads it into the temporary folder).
pub const TORCHSCRIPT_FILE: &str = "inception-2015-12-05.pt";

/// Where the weights are found without `--weights`: the torch hub cache
/// (`$TORCH_HOME/hub/checkpoints`, default `~/.cache/torch/hub/checkpoints`) holding one of
/// [`WEIGHT_FILES`] or the TorchScript archive, then clean-fid's copy of the archive in the
/// temporary folder.
pub fn find_weights() -> Option<PathBuf> {
    let home = std::env::var_os("TORCH_HOME").map(PathBuf::from).or_else(|| {
        std::env::var_os("XDG_CACHE_HOME")
            .map(|c| PathBuf::from(c).join("torch"))
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/torch")))
    })?;
    let dir = home.join("hub/checkpoints");
    WEIGHT_FILES
        .iter()
        .chain([&TORCHSCRIPT_FILE])
        .map(|f| dir.join(f))
        .chain([std::env::temp_dir().join(TORCHSCRIPT_FILE)])
        .find(|p| p.is_file())
}
