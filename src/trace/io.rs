//! Saving and loading a run folder: `trace.json`, `trace.safetensors`, `image.png`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, TensorView};

use super::{AttnMap, RgbImage, Run, RunMeta, RunStatus, SaliencyMap, StepRecord};

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Format { path: PathBuf, message: String },
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> TraceError + '_ {
    move |source| TraceError::Io {
        path: path.to_owned(),
        source,
    }
}

fn fmt_err(path: &Path, message: impl std::fmt::Display) -> TraceError {
    TraceError::Format {
        path: path.to_owned(),
        message: message.to_string(),
    }
}

fn f32_bytes(values: impl Iterator<Item = f32>) -> Vec<u8> {
    values.flat_map(f32::to_le_bytes).collect()
}

/// Writes the run folder `dir`: `trace.json`, `trace.safetensors` and (if there is one)
/// `image.png`. Steps already recorded are written even for a cancelled or failed run.
///
/// A reader never sees a mix of two runs or a half-written folder: everything is written into
/// a fresh folder beside `dir` and synced, then renamed into place; a folder already at `dir`
/// is replaced whole (moved aside, then removed), never file by file.
pub fn save_run(run: &Run, dir: &Path) -> Result<(), TraceError> {
    static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let name = dir
        .file_name()
        .ok_or_else(|| fmt_err(dir, "not a folder name"))?
        .to_string_lossy()
        .into_owned();
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if dir.exists() && !dir.is_dir() {
        return Err(fmt_err(dir, "exists and is not a folder"));
    }
    if let Some(other) = foreign_entry(dir) {
        return Err(fmt_err(
            dir,
            format!("holds {other}, which is not part of a run folder; refusing to replace it"),
        ));
    }
    std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    let unique = format!(
        "{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let fresh = parent.join(format!(".{name}.writing-{unique}"));
    let _ = std::fs::remove_dir_all(&fresh);
    if let Err(e) = write_run_files(run, &fresh) {
        let _ = std::fs::remove_dir_all(&fresh);
        return Err(e);
    }
    if dir.exists() {
        let aside = parent.join(format!(".{name}.replaced-{unique}"));
        std::fs::rename(dir, &aside).map_err(io_err(dir))?;
        if let Err(e) = std::fs::rename(&fresh, dir) {
            let _ = std::fs::rename(&aside, dir);
            return Err(io_err(dir)(e));
        }
        let _ = std::fs::remove_dir_all(&aside);
    } else {
        std::fs::rename(&fresh, dir).map_err(io_err(dir))?;
    }
    Ok(())
}

/// The files a run folder consists of.
pub const RUN_FILES: [&str; 3] = ["trace.json", "trace.safetensors", "image.png"];

/// The first entry of `dir` that is not one of a run folder's files (None when `dir` is
/// missing, empty or a run folder): replacing such a folder could destroy someone's data.
pub fn foreign_entry(dir: &Path) -> Option<String> {
    std::fs::read_dir(dir).ok()?.flatten().find_map(|e| {
        let name = e.file_name().to_string_lossy().into_owned();
        let is_file = e.file_type().is_ok_and(|t| t.is_file());
        (!(is_file && RUN_FILES.contains(&name.as_str()))).then_some(name)
    })
}

/// Writes the files of a run into `dir` (created) and syncs them to disk.
fn write_run_files(run: &Run, dir: &Path) -> Result<(), TraceError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let meta_path = dir.join("trace.json");
    let json = serde_json::to_string_pretty(&run.meta).map_err(|e| fmt_err(&meta_path, e))?;
    std::fs::write(&meta_path, json).map_err(io_err(&meta_path))?;

    let n = run.steps.len();
    let [c, h, w] = run.meta.latent_shape;
    let mut buffers: BTreeMap<String, (Vec<usize>, Vec<u8>)> = BTreeMap::new();
    buffers.insert(
        "timesteps".into(),
        (vec![n], f32_bytes(run.steps.iter().map(|s| s.timestep as f32))),
    );
    buffers.insert("sigmas".into(), (vec![n], f32_bytes(run.steps.iter().map(|s| s.sigma))));
    if n > 0 {
        let stack = |get: fn(&StepRecord) -> &Vec<f32>| f32_bytes(run.steps.iter().flat_map(|s| get(s).iter().copied()));
        buffers.insert("latents".into(), (vec![n, c, h, w], stack(|s| &s.latents)));
        buffers.insert("x0".into(), (vec![n, c, h, w], stack(|s| &s.x0)));
        buffers.insert("model_output".into(), (vec![n, c, h, w], stack(|s| &s.model_output)));
        // Attention: one tensor per key, stacked over steps; every step has the same keys.
        for (k, first) in run.steps[0].attention.iter().enumerate() {
            let mut bytes = Vec::with_capacity(n * first.data.len() * 4);
            for s in &run.steps {
                let m = s
                    .attention
                    .get(k)
                    .filter(|m| m.key == first.key)
                    .ok_or_else(|| fmt_err(dir, format!("step {} lacks {}", s.index, first.key)))?;
                bytes.extend(f32_bytes(m.data.iter().copied()));
            }
            buffers.insert(first.key.clone(), (vec![n, first.height * first.width, first.tokens], bytes));
        }
        // Saliency: one [N, h, w] tensor per key; a step without that map is a row of NaN.
        let mut keys: Vec<(&str, usize, usize)> = Vec::new();
        for m in run.steps.iter().flat_map(|s| &s.saliency) {
            if !keys.iter().any(|(k, _, _)| *k == m.key) {
                keys.push((&m.key, m.height, m.width));
            }
        }
        for (key, mh, mw) in keys {
            let mut bytes = Vec::with_capacity(n * mh * mw * 4);
            for s in &run.steps {
                match s.saliency.iter().find(|m| m.key == key) {
                    Some(m) if m.height == mh && m.width == mw && m.data.len() == mh * mw => {
                        bytes.extend(f32_bytes(m.data.iter().copied()))
                    }
                    Some(m) => {
                        return Err(fmt_err(
                            dir,
                            format!("step {} has a {}x{} {key} map, other steps {mh}x{mw}", s.index, m.height, m.width),
                        ));
                    }
                    None => bytes.extend(f32_bytes(std::iter::repeat_n(f32::NAN, mh * mw))),
                }
            }
            buffers.insert(key.to_owned(), (vec![n, mh, mw], bytes));
        }
    }
    let views: Vec<(String, TensorView)> = buffers
        .iter()
        .map(|(k, (shape, bytes))| TensorView::new(Dtype::F32, shape.clone(), bytes).map(|v| (k.clone(), v)))
        .collect::<Result<_, _>>()
        .map_err(|e| fmt_err(dir, e))?;
    let st_path = dir.join("trace.safetensors");
    safetensors::serialize_to_file(views, None, &st_path).map_err(|e| fmt_err(&st_path, e))?;

    if let Some(img) = &run.image {
        save_png(img, &dir.join("image.png"))?;
    }
    for f in RUN_FILES {
        let p = dir.join(f);
        if p.is_file() {
            std::fs::File::open(&p).and_then(|f| f.sync_all()).map_err(io_err(&p))?;
        }
    }
    Ok(())
}

/// Writes an 8-bit RGB image as a PNG.
pub fn save_png(img: &RgbImage, path: &Path) -> Result<(), TraceError> {
    let buf = image::RgbImage::from_raw(img.width as u32, img.height as u32, img.pixels.clone())
        .ok_or_else(|| fmt_err(path, "pixel buffer does not match the image size"))?;
    buf.save(path).map_err(|e| fmt_err(path, e))
}

/// Reads a run folder written by [`save_run`] (by this app or another tool writing the same
/// format), without recomputing anything.
pub fn load_run(dir: &Path) -> Result<Run, TraceError> {
    load_run_with_progress(dir, &|_| {})
}

/// [`load_run`], calling `progress` with the fraction of `trace.safetensors` read so far (the
/// file is read in 8 MiB pieces; the parsing after the last piece is quick by comparison).
pub fn load_run_with_progress(dir: &Path, progress: &dyn Fn(f32)) -> Result<Run, TraceError> {
    let meta_path = dir.join("trace.json");
    let text = std::fs::read_to_string(&meta_path).map_err(io_err(&meta_path))?;
    let meta: RunMeta = serde_json::from_str(&text).map_err(|e| fmt_err(&meta_path, e))?;
    check_meta(&meta).map_err(|e| fmt_err(&meta_path, e))?;
    let st_path = dir.join("trace.safetensors");
    let bytes = read_with_progress(&st_path, progress)?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| fmt_err(&st_path, e))?;
    let read = |name: &str| -> Result<(Vec<usize>, Vec<f32>), TraceError> {
        let t = st.tensor(name).map_err(|e| fmt_err(&st_path, format!("{name}: {e}")))?;
        if t.dtype() != Dtype::F32 {
            return Err(fmt_err(&st_path, format!("{name}: expected F32, found {:?}", t.dtype())));
        }
        let v = t
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        Ok((t.shape().to_vec(), v))
    };
    let (ts_shape, timesteps) = read("timesteps")?;
    let n = timesteps.len();
    // Everything read is checked against everything else read: a mismatch is an error naming
    // the file, never an index out of bounds later.
    if ts_shape.len() != 1 {
        return Err(fmt_err(&st_path, format!("timesteps: shape {ts_shape:?}, expected [steps]")));
    }
    let [c, h, w] = meta.latent_shape;
    if let Some(t) = timesteps.iter().find(|t| !t.is_finite()) {
        return Err(fmt_err(&st_path, format!("timesteps: {t} is not a finite number")));
    }
    let schedule = meta.timesteps.len();
    let finished = meta.status == RunStatus::Complete;
    if schedule > 0 && (n > schedule || (finished && n != schedule)) {
        return Err(fmt_err(
            &st_path,
            format!(
                "holds {n} steps, but trace.json's schedule has {schedule} timesteps and the run is {}",
                format!("{:?}", meta.status).to_lowercase()
            ),
        ));
    }
    let sigmas = match read("sigmas") {
        Ok((shape, v)) if shape == [n] => v,
        Ok((shape, _)) => return Err(fmt_err(&st_path, format!("sigmas: shape {shape:?}, but there are {n} timesteps"))),
        Err(_) => vec![0.0; n],
    };
    let mut steps: Vec<StepRecord> = (0..n)
        .map(|i| StepRecord {
            index: i,
            timestep: meta.timesteps.get(i).copied().unwrap_or(timesteps[i] as f64),
            sigma: sigmas.get(i).copied().unwrap_or(0.0),
            latents: Vec::new(),
            x0: Vec::new(),
            x0_from_scheduler: false,
            model_output: Vec::new(),
            attention: Vec::new(),
            saliency: Vec::new(),
            elapsed_secs: meta.step_secs.get(i).copied().unwrap_or(0.0),
        })
        .collect();
    if n > 0 {
        let per = |name: &str| -> Result<Vec<Vec<f32>>, TraceError> {
            let (shape, v) = read(name)?;
            if shape != [n, c, h, w] {
                return Err(fmt_err(
                    &st_path,
                    format!(
                        "{name}: shape {shape:?}, but {n} timesteps and latent_shape {:?} in trace.json need {:?}",
                        meta.latent_shape,
                        [n, c, h, w]
                    ),
                ));
            }
            let chunk = c * h * w;
            Ok(v.chunks_exact(chunk).map(<[f32]>::to_vec).collect())
        };
        for (i, v) in per("latents")?.into_iter().enumerate() {
            steps[i].latents = v;
        }
        for (i, v) in per("x0")?.into_iter().enumerate() {
            steps[i].x0 = v;
        }
        for (i, v) in per("model_output")?.into_iter().enumerate() {
            steps[i].model_output = v;
        }
        let mut names: Vec<String> = st.names().into_iter().filter(|k| k.starts_with("attn")).map(String::from).collect();
        names.sort_by_key(|k| attn_order(&meta, k));
        for name in names {
            let (shape, v) = read(&name)?;
            let [steps_n, hw, tokens] = shape[..] else {
                return Err(fmt_err(&st_path, format!("{name}: expected [N, h*w, tokens], found {shape:?}")));
            };
            let (height, width) = attn_size(&meta, &name).unwrap_or((hw, 1));
            let token_count = meta.token_ids.len();
            if steps_n != n || hw == 0 || height.checked_mul(width) != Some(hw) || tokens != token_count {
                return Err(fmt_err(
                    &st_path,
                    format!(
                        "{name}: shape {shape:?} does not fit {n} steps of {height}x{width} maps of {token_count} tokens (from its name, attn_layers and token_ids in trace.json)"
                    ),
                ));
            }
            for (i, chunk) in v.chunks_exact(hw * tokens).enumerate().take(n) {
                steps[i].attention.push(AttnMap {
                    key: name.clone(),
                    height,
                    width,
                    tokens,
                    data: chunk.to_vec(),
                });
            }
        }
        let mut names: Vec<String> = st
            .names()
            .into_iter()
            .filter(|k| SaliencyMap::is_key(k))
            .map(String::from)
            .collect();
        names.sort();
        for name in names {
            let (shape, v) = read(&name)?;
            if shape.len() != 3 || shape[0] != n || shape[1] == 0 || shape[2] == 0 {
                return Err(fmt_err(
                    &st_path,
                    format!("{name}: shape {shape:?}, expected [{n}, h, w] (one map per step)"),
                ));
            }
            let (height, width) = (shape[1], shape[2]);
            for (i, chunk) in v.chunks_exact(height * width).enumerate() {
                // A row of NaN is a step the map was not computed at.
                if chunk.iter().all(|x| x.is_nan()) {
                    continue;
                }
                steps[i].saliency.push(SaliencyMap {
                    key: name.clone(),
                    height,
                    width,
                    data: chunk.to_vec(),
                });
            }
        }
    }
    let img_path = dir.join("image.png");
    let image = if img_path.is_file() {
        let img = image::open(&img_path).map_err(|e| fmt_err(&img_path, e))?.to_rgb8();
        if (img.width() as usize, img.height() as usize) != (meta.width, meta.height) {
            return Err(fmt_err(
                &img_path,
                format!(
                    "is {}x{}, but trace.json describes a {}x{} run (a folder mixed from two runs?)",
                    img.width(),
                    img.height(),
                    meta.width,
                    meta.height
                ),
            ));
        }
        Some(RgbImage {
            width: img.width() as usize,
            height: img.height() as usize,
            pixels: img.into_raw(),
        })
    } else {
        None
    };
    Ok(Run { meta, steps, image })
}

/// trace.json checked against itself: known format version, positive sizes that agree with
/// each other, token lists of one length, words that exist.
fn check_meta(meta: &RunMeta) -> Result<(), String> {
    if meta.format_version != super::FORMAT_VERSION {
        return Err(format!(
            "format_version {} is not one this build reads ({}){}",
            meta.format_version,
            super::FORMAT_VERSION,
            if meta.format_version > super::FORMAT_VERSION {
                format!("; it was written by a newer Diffusion Scope ({})", meta.app_version)
            } else {
                String::new()
            }
        ));
    }
    let [c, h, w] = meta.latent_shape;
    if c == 0 || h == 0 || w == 0 {
        return Err(format!("latent_shape {:?} has a zero", meta.latent_shape));
    }
    let f = meta.vae_scale_factor;
    if c.checked_mul(h).and_then(|v| v.checked_mul(w)).is_none()
        || h.checked_mul(f) != Some(meta.height)
        || w.checked_mul(f) != Some(meta.width)
    {
        return Err(format!(
            "latent_shape {:?} with vae_scale_factor {f} does not give height x width {}x{}",
            meta.latent_shape, meta.height, meta.width
        ));
    }
    let t = meta.token_ids.len();
    if meta.tokens.len() != t || meta.word_of_token.len() != t || meta.tokens_used > t {
        return Err(format!(
            "token lists disagree: {} token_ids, {} tokens, {} word_of_token entries, tokens_used {}",
            t,
            meta.tokens.len(),
            meta.word_of_token.len(),
            meta.tokens_used
        ));
    }
    if let Some(wi) = meta.word_of_token.iter().flatten().find(|&&wi| wi >= meta.words.len()) {
        return Err(format!("word_of_token names word {wi}, but there are {} words", meta.words.len()));
    }
    if let Some(l) = meta.attn_layers.iter().find(|l| l.height == 0 || l.width == 0 || l.heads == 0) {
        return Err(format!(
            "attn_layers: {} has a zero size ({} heads, {}x{})",
            l.path, l.heads, l.height, l.width
        ));
    }
    Ok(())
}

fn read_with_progress(path: &Path, progress: &dyn Fn(f32)) -> Result<Vec<u8>, TraceError> {
    use std::io::Read;
    const PIECE: usize = 8 << 20;
    let mut file = std::fs::File::open(path).map_err(io_err(path))?;
    let len = file.metadata().map_err(io_err(path))?.len() as usize;
    let mut bytes = Vec::with_capacity(len);
    loop {
        let before = bytes.len();
        let n = file.by_ref().take(PIECE as u64).read_to_end(&mut bytes).map_err(io_err(path))?;
        progress((bytes.len() as f32 / len.max(1) as f32).min(1.0));
        if n == 0 || bytes.len() == before {
            break;
        }
    }
    Ok(bytes)
}

fn attn_size(meta: &RunMeta, key: &str) -> Option<(usize, usize)> {
    if let Some(path) = key.strip_prefix("attn.") {
        return meta.attn_layers.iter().find(|l| l.path == path).map(|l| (l.height, l.width));
    }
    let (h, w) = key.strip_prefix("attn_res.")?.split_once('x')?;
    Some((h.parse().ok()?, w.parse().ok()?))
}

/// Layers in UNet order; resolutions from the finest down.
fn attn_order(meta: &RunMeta, key: &str) -> (usize, usize) {
    if let Some(path) = key.strip_prefix("attn.") {
        return (0, meta.attn_layers.iter().position(|l| l.path == path).unwrap_or(usize::MAX));
    }
    (1, usize::MAX - attn_size(meta, key).map(|(h, w)| h * w).unwrap_or(0))
}
