//! Resolving a model argument to a local diffusers folder: an existing path, or a hub id
//! (`owner/name`) fetched with hf-hub into the standard Hugging Face cache
//! (`HF_HUB_CACHE` / `$HF_HOME/hub` / `~/.cache/huggingface/hub`, shared with Python users).
//! A cache hit makes no network request when `HF_HUB_OFFLINE=1`.

use std::path::{Path, PathBuf};

use hf_hub::{HFClientSync, HFError};

use super::ModelError;

/// Where a model comes from, as the user named it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    Local(PathBuf),
    Hub {
        owner: String,
        name: String,
        revision: Option<String>,
    },
}

impl ModelSource {
    /// An existing path is a local folder; `owner/name[@revision]` that is not a path on disk
    /// is a hub id; anything else is an error that says which.
    pub fn parse(spec: &str) -> Result<Self, ModelError> {
        let path = Path::new(spec);
        if path.exists() {
            return Ok(Self::Local(path.to_owned()));
        }
        let (id, revision) = match spec.split_once('@') {
            Some((id, rev)) => (id, Some(rev.to_owned())),
            None => (spec, None),
        };
        let valid = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        match id.split_once('/') {
            Some((owner, name)) if valid(owner) && valid(name) && !spec.starts_with('.') => Ok(Self::Hub {
                owner: owner.to_owned(),
                name: name.to_owned(),
                revision,
            }),
            _ if spec.contains('/') || spec.contains('\\') || spec.starts_with('.') => Err(ModelError::NoSuchFolder(path.to_owned())),
            _ => Err(ModelError::BadModelSpec(spec.to_owned())),
        }
    }
}

fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
}

/// The config files of a diffusers repo this app reads (all required).
const CONFIG_FILES: &[&str] = &[
    "model_index.json",
    "unet/config.json",
    "vae/config.json",
    "text_encoder/config.json",
    "scheduler/scheduler_config.json",
];

/// Tokenizer files: a repo has vocab.json + merges.txt (SD hub repos) or tokenizer.json
/// (transformers 5), and optionally the two config files. Fetched when present.
const TOKENIZER_FILES: &[&str] = &[
    "tokenizer/tokenizer_config.json",
    "tokenizer/special_tokens_map.json",
    "tokenizer/vocab.json",
    "tokenizer/merges.txt",
    "tokenizer/tokenizer.json",
];

const WEIGHT_FILES: &[(&str, &str)] = &[
    ("unet", "diffusion_pytorch_model"),
    ("vae", "diffusion_pytorch_model"),
    ("text_encoder", "model"),
];

/// Makes the model available as a local folder and returns it. For a hub id this downloads
/// what is missing from the cache (or only looks in the cache when `HF_HUB_OFFLINE` is set)
/// and returns the cache's snapshot folder, which has the repo's layout.
pub fn resolve(source: &ModelSource, prefer_fp16: bool) -> Result<PathBuf, ModelError> {
    match source {
        ModelSource::Local(p) => local_folder(p),
        ModelSource::Hub { owner, name, revision } => {
            let hub = HubRepo::new(owner, name, revision)?;
            let fetch_opt = |file: &str, optional: bool| hub.fetch(file, optional);
            let fetch = |file: &str| fetch_opt(file, false);
            let index = fetch("model_index.json")?
                .ok_or_else(|| ModelError::Hub(format!("{owner}/{name} has no model_index.json (not a diffusers pipeline repo)")))?;
            // SDXL pipelines add a second text encoder and tokenizer.
            let xl = super::config::ModelIndex::from_file(&index)?.is_xl();
            let mut configs: Vec<String> = CONFIG_FILES[1..].iter().map(|f| f.to_string()).collect();
            let mut tokenizer_files: Vec<String> = TOKENIZER_FILES.iter().map(|f| f.to_string()).collect();
            let mut weights: Vec<(&str, &str)> = WEIGHT_FILES.to_vec();
            if xl {
                configs.push("text_encoder_2/config.json".into());
                tokenizer_files.extend(TOKENIZER_FILES.iter().map(|f| f.replacen("tokenizer/", "tokenizer_2/", 1)));
                weights.push(("text_encoder_2", "model"));
            }
            for f in &configs {
                fetch(f)?.ok_or_else(|| ModelError::Hub(format!("{owner}/{name} has no {f}")))?;
            }
            for f in &tokenizer_files {
                fetch_opt(f, true)?;
            }
            for (dir, stem) in &weights {
                let variants: &[&str] = if prefer_fp16 { &[".fp16", ""] } else { &["", ".fp16"] };
                let mut found = false;
                for (k, v) in variants.iter().enumerate() {
                    // Offline, a variant that is not cached is simply not the one to use,
                    // unless it is the last candidate.
                    let last = k + 1 == variants.len();
                    if fetch_opt(&format!("{dir}/{stem}{v}.safetensors"), !last)?.is_some() {
                        found = true;
                        break;
                    }
                }
                if !found {
                    return Err(ModelError::Hub(format!("{owner}/{name}: no safetensors weights for {dir}")));
                }
            }
            let root = index
                .parent()
                .map(Path::to_path_buf)
                .ok_or_else(|| ModelError::Hub("cache path has no parent".into()))?;
            Ok(root)
        }
    }
}

fn local_folder(p: &Path) -> Result<PathBuf, ModelError> {
    if p.is_dir() {
        Ok(p.to_path_buf())
    } else {
        Err(ModelError::NoSuchFolder(p.to_path_buf()))
    }
}

/// One hub repo at one revision, fetched file by file into the shared cache.
struct HubRepo {
    repo: hf_hub::HFRepositorySync<hf_hub::repository::RepoTypeModel>,
    id: String,
    revision: Option<String>,
    local_only: bool,
}

impl HubRepo {
    fn new(owner: &str, name: &str, revision: &Option<String>) -> Result<Self, ModelError> {
        let client = HFClientSync::new().map_err(|e| ModelError::Hub(e.to_string()))?;
        Ok(Self {
            repo: client.model(owner, name),
            id: format!("{owner}/{name}"),
            revision: revision.clone(),
            local_only: offline(),
        })
    }

    /// The cached path of `file`. `optional`: a file that may legitimately be absent from the
    /// repo; offline, "not cached" then counts as absent and the loader reports what is really
    /// missing.
    fn fetch(&self, file: &str, optional: bool) -> Result<Option<PathBuf>, ModelError> {
        let res = self
            .repo
            .download_file()
            .filename(file)
            .maybe_revision(self.revision.clone())
            .local_files_only(self.local_only)
            .send();
        let id = &self.id;
        match res {
            Ok(p) => Ok(Some(p)),
            Err(HFError::EntryNotFound { .. }) => Ok(None),
            Err(HFError::LocalEntryNotFound { .. }) if self.local_only && optional => Ok(None),
            Err(HFError::LocalEntryNotFound { .. }) if self.local_only => Err(ModelError::Hub(format!(
                "{id}: {file} is not in the Hugging Face cache and HF_HUB_OFFLINE is set"
            ))),
            Err(e) => Err(ModelError::Hub(format!("{id}: {file}: {e}"))),
        }
    }
}

/// A plain (non-diffusers) repo as a local folder: `required` files must exist, `optional` ones
/// are fetched when the repo has them. Local folders are returned as they are.
pub fn resolve_files(source: &ModelSource, required: &[&str], optional: &[&str]) -> Result<PathBuf, ModelError> {
    match source {
        ModelSource::Local(p) => local_folder(p),
        ModelSource::Hub { owner, name, revision } => {
            let hub = HubRepo::new(owner, name, revision)?;
            let mut root = None;
            for f in required {
                let p = hub
                    .fetch(f, false)?
                    .ok_or_else(|| ModelError::Hub(format!("{owner}/{name} has no {f}")))?;
                root = root.or_else(|| p.parent().map(Path::to_path_buf));
            }
            for f in optional {
                hub.fetch(f, true)?;
            }
            root.ok_or_else(|| ModelError::Hub("nothing to fetch".into()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(spec: &str, expected: Result<ModelSource, &str>) {
        let got = ModelSource::parse(spec);
        match (got, expected) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "{spec}"),
            (Err(e), Err(msg)) => assert!(e.to_string().contains(msg), "{spec}: {e}"),
            (a, b) => panic!("{spec}: got {a:?}, expected {b:?}"),
        }
    }

    #[test]
    fn model_specs() {
        let hub = |o: &str, n: &str, r: Option<&str>| ModelSource::Hub {
            owner: o.into(),
            name: n.into(),
            revision: r.map(String::from),
        };
        check(
            "stabilityai/stable-diffusion-2-1-base",
            Ok(hub("stabilityai", "stable-diffusion-2-1-base", None)),
        );
        check(
            "stable-diffusion-v1-5/stable-diffusion-v1-5@main",
            Ok(hub("stable-diffusion-v1-5", "stable-diffusion-v1-5", Some("main"))),
        );
        check("./no/such/folder", Err("does not exist"));
        check("/no/such/folder", Err("does not exist"));
        check("justaname", Err("neither an existing folder"));
        check(
            env!("CARGO_MANIFEST_DIR"),
            Ok(ModelSource::Local(PathBuf::from(env!("CARGO_MANIFEST_DIR")))),
        );
    }
}
