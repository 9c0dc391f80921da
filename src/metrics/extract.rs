//! Feature extraction: images from a folder (or the images of run folders), streamed through a
//! feature network in batches, into a [`FeatureFile`]. Unreadable images are skipped and
//! counted, always (never silently, never an abort half-way): the caller prints them and the
//! file's metadata keeps the count.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::Tensor;

use super::MetricsError;
use super::clip::Clip;
use super::features::{FeatureFile, FeatureMeta, shard_range};
use super::inception::{self, Inception};
use super::math::Rows;
use super::resize::{self, Resize};
use super::shapes_net::ShapesNet;

/// The image files a folder holds (PNG, JPEG), sorted by name: the rows' order.
pub fn list_images(dir: &Path) -> Result<Vec<PathBuf>, MetricsError> {
    let rd = std::fs::read_dir(dir).map_err(|e| MetricsError::File(format!("{}: {e}", dir.display())))?;
    let mut files: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
        })
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(MetricsError::File(format!(
            "{}: no PNG or JPEG images in this folder",
            dir.display()
        )));
    }
    Ok(files)
}

/// The final images of the run folders under `dir` (every folder with a trace.json and an
/// image.png, at any depth), sorted by path.
pub fn list_run_images(dir: &Path) -> Result<Vec<PathBuf>, MetricsError> {
    fn walk(d: &Path, out: &mut Vec<PathBuf>, depth: usize) {
        if d.join("trace.json").is_file() && d.join("image.png").is_file() {
            out.push(d.join("image.png"));
        }
        if depth == 0 {
            return;
        }
        if let Ok(rd) = std::fs::read_dir(d) {
            for e in rd.flatten() {
                if e.path().is_dir() {
                    walk(&e.path(), out, depth - 1);
                }
            }
        }
    }
    if !dir.is_dir() {
        return Err(MetricsError::File(format!("{}: not a folder", dir.display())));
    }
    let mut out = Vec::new();
    walk(dir, &mut out, 4);
    out.sort();
    if out.is_empty() {
        return Err(MetricsError::File(format!(
            "{}: no run folders (trace.json + image.png) under it",
            dir.display()
        )));
    }
    Ok(out)
}

/// Images in order, from files or from memory.
pub trait ImageSource {
    fn count(&self) -> usize;
    /// The image as interleaved RGB u8, width, height; or why it could not be read.
    fn rgb(&self, i: usize) -> Result<(Vec<u8>, usize, usize), String>;
    /// How to name image `i` in messages.
    fn name(&self, i: usize) -> String;
}

impl ImageSource for [PathBuf] {
    fn count(&self) -> usize {
        self.len()
    }
    fn rgb(&self, i: usize) -> Result<(Vec<u8>, usize, usize), String> {
        load_rgb(&self[i])
    }
    fn name(&self, i: usize) -> String {
        self[i].display().to_string()
    }
}

impl ImageSource for [crate::trace::RgbImage] {
    fn count(&self) -> usize {
        self.len()
    }
    fn rgb(&self, i: usize) -> Result<(Vec<u8>, usize, usize), String> {
        let im = &self[i];
        if im.width == 0 || im.height == 0 || im.pixels.len() != im.width * im.height * 3 {
            return Err("empty or malformed image".into());
        }
        Ok((im.pixels.clone(), im.width, im.height))
    }
    fn name(&self, i: usize) -> String {
        format!("image {i}")
    }
}

impl<T> ImageSource for Vec<T>
where
    [T]: ImageSource,
{
    fn count(&self) -> usize {
        self.as_slice().count()
    }
    fn rgb(&self, i: usize) -> Result<(Vec<u8>, usize, usize), String> {
        self.as_slice().rgb(i)
    }
    fn name(&self, i: usize) -> String {
        self.as_slice().name(i)
    }
}

/// Which feature network to load.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum NetworkChoice {
    /// The FID Inception; weights from this file, or found in the torch hub cache.
    Inception { weights: Option<PathBuf> },
    /// A CLIP folder or hub id.
    Clip { model: String },
    /// The shapes world's feature network (this folder, or the shipped one).
    Shapes { dir: Option<PathBuf> },
}

impl NetworkChoice {
    pub fn load(&self, device: &candle_core::Device) -> Result<Network, MetricsError> {
        match self {
            NetworkChoice::Inception { weights } => {
                let path = match weights {
                    Some(p) => p.clone(),
                    None => inception::find_weights().ok_or_else(|| {
                        MetricsError::File(format!(
                            "the FID Inception weights were not found: give the weights file ({} from pytorch-fid, {} from \
                             torch-fidelity, the TorchScript {} of clean-fid, or a safetensors conversion); looked in \
                             $TORCH_HOME/hub/checkpoints (default ~/.cache/torch/hub/checkpoints) and {}",
                            inception::WEIGHT_FILES[0],
                            inception::WEIGHT_FILES[1],
                            inception::TORCHSCRIPT_FILE,
                            std::env::temp_dir().display()
                        ))
                    })?,
                };
                Ok(Network::Inception(Inception::load(&path, device)?))
            }
            NetworkChoice::Clip { model } => Ok(Network::Clip(std::sync::Arc::new(Clip::load(model, device)?))),
            NetworkChoice::Shapes { dir } => {
                let dir = dir.clone().unwrap_or_else(crate::shapes_featnet_path);
                Ok(Network::Shapes(std::sync::Arc::new(ShapesNet::load(&dir, device)?)))
            }
        }
    }
}

/// The networks features come from.
pub enum Network {
    /// The FID Inception-v3: pool3 features and the 1008 logits.
    Inception(Inception),
    /// A CLIP image tower: projected image embeddings (clean-fid's CLIP features), no logits.
    Clip(std::sync::Arc<Clip>),
    /// The shapes world's feature network: 256-d pooled features, 24 colour x shape logits.
    Shapes(std::sync::Arc<ShapesNet>),
}

impl Network {
    pub fn name(&self) -> String {
        match self {
            Network::Inception(_) => "inception".into(),
            Network::Clip(c) => format!("clip:{}", c.name),
            Network::Shapes(_) => "shapes".into(),
        }
    }

    fn input_size(&self) -> usize {
        match self {
            Network::Inception(_) => inception::SIZE,
            Network::Clip(c) => c.image_size,
            Network::Shapes(n) => n.input_size,
        }
    }

    fn input(&self, rgb: &[u8], w: usize, h: usize, r: Resize) -> Vec<f32> {
        match self {
            Network::Inception(_) => resize::network_input(rgb, w, h, r),
            Network::Clip(c) => c.feature_input(rgb, w, h),
            Network::Shapes(n) => n.input(rgb, w, h),
        }
    }

    fn device(&self) -> &candle_core::Device {
        match self {
            Network::Inception(i) => i.device(),
            Network::Clip(c) => c.device(),
            Network::Shapes(n) => n.device(),
        }
    }

    /// Features [B, d] and, where the network has them, logits [B, classes].
    fn forward(&self, x: &Tensor) -> Result<(Tensor, Option<Tensor>), MetricsError> {
        match self {
            Network::Inception(i) => i.forward(x).map(|o| (o.pool3, o.logits)),
            Network::Clip(c) => c.image_embeds(x).map(|e| (e, None)),
            Network::Shapes(n) => n.forward(x).map(|o| {
                let logits = n.logits(&o).clone();
                (o.features, Some(logits))
            }),
        }
    }

    fn dims(&self) -> (usize, Option<usize>) {
        match self {
            Network::Inception(i) => (inception::FEATURES, i.has_logits().then_some(inception::CLASSES)),
            Network::Clip(c) => (c.projection_dim, None),
            Network::Shapes(n) => (n.features, Some(n.classes)),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExtractSettings {
    pub resize: Resize,
    pub batch: usize,
    /// (index from 1, count) of the input to process.
    pub shard: Option<(usize, usize)>,
}

impl Default for ExtractSettings {
    fn default() -> Self {
        Self {
            resize: Resize::Clean,
            batch: 8,
            shard: None,
        }
    }
}

/// What extraction made: the file, and the images skipped (named) with why.
pub struct Extracted {
    pub file: FeatureFile,
    pub skipped: Vec<(String, String)>,
}

pub(crate) fn load_rgb(p: &Path) -> Result<(Vec<u8>, usize, usize), String> {
    // Grey, grey+alpha and RGBA become RGB as PIL's convert("RGB") makes them (alpha dropped).
    let img = image::open(p).map_err(|e| e.to_string())?.to_rgb8();
    let (w, h) = (img.width() as usize, img.height() as usize);
    if w == 0 || h == 0 {
        return Err("empty image".into());
    }
    Ok((img.into_raw(), w, h))
}

/// Features of `files` (the shard of them `s.shard` names). `progress(done, total)` after each
/// batch; `cancel` stops after the current batch (then `Err(Cancelled)`-like: None).
pub fn extract<S: ImageSource + ?Sized>(
    net: &Network,
    files: &S,
    s: &ExtractSettings,
    cancel: &AtomicBool,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Option<Extracted>, MetricsError> {
    let range = s.shard.map_or(0..files.count(), |sh| shard_range(files.count(), sh));
    let mine: Vec<usize> = range.collect();
    if mine.is_empty() {
        return Err(MetricsError::TooFew(format!(
            "shard {:?} of {} images holds none",
            s.shard.unwrap_or((1, 1)),
            files.count()
        )));
    }
    let size = net.input_size();
    let mut features = Vec::new();
    let mut logits = Vec::new();
    let mut skipped = Vec::new();
    let mut n = 0;
    for (bi, chunk) in mine.chunks(s.batch.max(1)).enumerate() {
        if cancel.load(Ordering::SeqCst) {
            return Ok(None);
        }
        let mut input = Vec::with_capacity(chunk.len() * 3 * size * size);
        let mut count = 0;
        for &i in chunk {
            match files.rgb(i) {
                Ok((rgb, w, h)) => {
                    input.extend(net.input(&rgb, w, h, s.resize));
                    count += 1;
                }
                Err(e) => skipped.push((files.name(i), e)),
            }
        }
        if count > 0 {
            let x = Tensor::from_vec(input, (count, 3, size, size), net.device()).map_err(|e| MetricsError::Numeric(e.to_string()))?;
            let (feats, logit_rows) = net.forward(&x)?;
            let rows = |t: &Tensor| -> Result<Vec<f32>, MetricsError> {
                t.flatten_all()
                    .and_then(|t| t.to_vec1())
                    .map_err(|e| MetricsError::Numeric(e.to_string()))
            };
            features.extend(rows(&feats)?);
            if let Some(l) = &logit_rows {
                logits.extend(rows(l)?);
            }
            n += count;
        }
        progress((bi * s.batch.max(1) + chunk.len()).min(mine.len()), mine.len());
    }
    if n == 0 {
        return Err(MetricsError::File(format!(
            "none of the {} images could be read (first: {}: {})",
            mine.len(),
            skipped[0].0,
            skipped[0].1
        )));
    }
    let (dim, classes) = net.dims();
    let logits = classes.map(|c| Rows::new(n, c, logits));
    let meta = FeatureMeta {
        network: Some(net.name()),
        resize: Some(s.resize.name().into()),
        shard: s.shard,
        images: Some(files.count()),
    };
    Ok(Some(Extracted {
        file: FeatureFile::from_rows(Rows::new(n, dim, features), logits, meta),
        skipped,
    }))
}
