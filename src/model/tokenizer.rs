//! CLIP tokenizer producing the same ids as transformers' `CLIPTokenizer`, the class
//! `StableDiffusionPipeline` loads. Two flavours, because transformers changed it:
//!
//! - [`ClipFlavor::Transformers5`] (default): today's `CLIPTokenizer`, backed by the `tokenizers`
//!   library: NFC, runs of whitespace → one space, lower-case, then the CLIP split and BPE.
//! - [`ClipFlavor::SlowNoFtfy`]: transformers 4.x's slow `CLIPTokenizer` without `ftfy`
//!   installed (BasicTokenizer clean-up). It differs only on rare input: control/format
//!   characters are dropped and CJK ideographs become words of their own.
//!
//! Pipeline for one prompt (mirrors the reference behaviour, not its code):
//!
//! 1. The raw text is cut around the special tokens (`bos`, `eos`, `unk`, `pad` strings, longest
//!    match first); those pieces become single tokens. For SD2 (`pad_token = "!"`) this means every
//!    `!` in a prompt is its own token.
//! 2. Every other piece is cleaned. Transformers5: NFC, whitespace runs → ' ', lower-case.
//!    SlowNoFtfy: the "basic" clean-up: NUL, U+FFFD and control/format
//!    characters (general category `C*`, except `\t \n \r`) are dropped, whitespace (`\t \n \r`,
//!    category `Zs`) becomes a space, CJK ideographs are surrounded by spaces, the text is NFC
//!    normalised, split on whitespace and lower-cased (no accent stripping, no punctuation split).
//! 3. The cleaned text is split by the CLIP pattern
//!    `<|startoftext|>|<|endoftext|>|'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+`
//!    (case-insensitive); each piece is a "word".
//! 4. Each word is mapped byte-wise to the GPT-2 byte alphabet and split by BPE (ranked merges,
//!    `</w>` on the last symbol). Symbols missing from the vocabulary become the unk id.
//! 5. `bos + tokens[..max_length-2] + eos`, padded with `pad_id` to `max_length`.
//!
//! A folder that only has `tokenizer.json` is served by the `tokenizers` crate instead (which is
//! what transformers 5 uses); its output is reshaped into the same [`TokenizedPrompt`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use unicode_normalization::UnicodeNormalization;

/// Errors while loading a tokenizer folder. Each names the file involved.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid JSON in {path}: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("invalid tokenizer file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("no tokenizer in {dir}: expected vocab.json + merges.txt or tokenizer.json")]
    NotFound { dir: PathBuf },
}

/// One prompt, tokenized, truncated and padded the way the pipeline feeds the text encoder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenizedPrompt {
    /// Exactly `max_length` ids: bos, tokens (truncated to `max_length - 2`), eos, then pad ids.
    pub ids: Vec<u32>,
    /// The vocabulary string of every id (same length as `ids`).
    pub tokens: Vec<String>,
    /// bos + kept tokens + eos: the positions before the padding.
    pub n_used: usize,
    /// For every position, the index into `words` of the word the sub-token came from
    /// (`None` for bos, eos and padding).
    pub word_of_token: Vec<Option<usize>>,
    /// The words of the cleaned, lower-cased prompt as the tokenizer split them (pre-BPE pieces;
    /// special tokens found in the text count as words).
    pub words: Vec<String>,
    /// Words that lost at least one sub-token to truncation, in order (a word cut in the middle is
    /// listed here and still owns its kept sub-tokens). Empty if nothing was truncated.
    pub truncated_words: Vec<String>,
}

const DEFAULT_BOS: &str = "<|startoftext|>";
const DEFAULT_EOS: &str = "<|endoftext|>";
const DEFAULT_MAX_LENGTH: usize = 77;
/// transformers reads at most this many merge lines (after the header line).
const MAX_MERGES: usize = 49152 - 256 - 2;
const CLIP_PATTERN: &str = r"(?i)<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+";

#[derive(Clone)]
enum Backend {
    /// Our own implementation of the slow tokenizer.
    Bpe(Box<SlowBpe>),
    /// `tokenizer.json` through the `tokenizers` crate.
    Fast(Box<tokenizers::Tokenizer>),
}

/// Which transformers `CLIPTokenizer` to reproduce (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum ClipFlavor {
    #[default]
    Transformers5,
    SlowNoFtfy,
}

#[derive(Clone)]
struct SlowBpe {
    flavor: ClipFlavor,
    encoder: HashMap<String, u32>,
    ranks: HashMap<(String, String), usize>,
    pattern: regex::Regex,
    /// `^\p{C}$`: control, format, private-use and unassigned characters.
    control: regex::Regex,
    /// `^\p{Zs}$`: space separators.
    space_sep: regex::Regex,
    byte_encoder: [char; 256],
}

/// CLIP BPE tokenizer. See the module documentation.
#[derive(Clone)]
pub struct ClipTokenizer {
    backend: Backend,
    decoder: HashMap<u32, String>,
    vocab_len: usize,
    /// Strings cut out of the raw text before BPE, with their ids.
    special: Vec<(String, u32)>,
    bos_id: u32,
    eos_id: u32,
    pad_id: u32,
    unk_id: u32,
    max_length: usize,
}

impl std::fmt::Debug for ClipTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipTokenizer")
            .field(
                "backend",
                &match self.backend {
                    Backend::Bpe(_) => "vocab.json+merges.txt",
                    Backend::Fast(_) => "tokenizer.json",
                },
            )
            .field("vocab_size", &self.vocab_len)
            .field("bos_id", &self.bos_id)
            .field("eos_id", &self.eos_id)
            .field("pad_id", &self.pad_id)
            .field("unk_id", &self.unk_id)
            .field("max_length", &self.max_length)
            .finish()
    }
}

/// Special-token settings read from `tokenizer_config.json` / `special_tokens_map.json`.
#[derive(Debug, Clone)]
struct SpecialConfig {
    bos: String,
    eos: String,
    unk: String,
    pad: String,
    max_length: usize,
}

impl Default for SpecialConfig {
    fn default() -> Self {
        Self {
            bos: DEFAULT_BOS.into(),
            eos: DEFAULT_EOS.into(),
            unk: DEFAULT_EOS.into(),
            pad: DEFAULT_EOS.into(),
            max_length: DEFAULT_MAX_LENGTH,
        }
    }
}

fn read_text(path: &Path) -> Result<String, TokenizerError> {
    std::fs::read_to_string(path).map_err(|source| TokenizerError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn read_json(path: &Path) -> Result<serde_json::Value, TokenizerError> {
    let text = read_text(path)?;
    serde_json::from_str(&text).map_err(|source| TokenizerError::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// A token given as `"text"` or `{"content": "text", ...}`.
fn token_string(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content").and_then(|c| c.as_str()).map(str::to_owned),
        _ => None,
    }
}

impl SpecialConfig {
    fn apply(&mut self, json: &serde_json::Value) {
        for (key, slot) in [
            ("bos_token", &mut self.bos),
            ("eos_token", &mut self.eos),
            ("unk_token", &mut self.unk),
            ("pad_token", &mut self.pad),
        ] {
            if let Some(s) = json.get(key).and_then(token_string) {
                *slot = s;
            }
        }
        if let Some(v) = json.get("model_max_length").and_then(|v| v.as_f64()) {
            // transformers writes 1e30 ("VERY_LARGE_INTEGER") when unset; CLIP is 77 positions.
            self.max_length = if (3.0..=4096.0).contains(&v) {
                v as usize
            } else {
                DEFAULT_MAX_LENGTH
            };
        }
    }

    /// `tokenizer_config.json`, then `special_tokens_map.json` (which wins, as in transformers).
    fn load(dir: &Path) -> Result<Self, TokenizerError> {
        let mut cfg = Self::default();
        for name in ["tokenizer_config.json", "special_tokens_map.json"] {
            let path = dir.join(name);
            if path.is_file() {
                cfg.apply(&read_json(&path)?);
            }
        }
        Ok(cfg)
    }
}

/// GPT-2 / CLIP reversible byte → printable character table.
fn byte_alphabet() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut extra = 0u32;
    for b in 0..256u32 {
        let printable = (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b);
        table[b as usize] = if printable {
            char::from_u32(b).unwrap()
        } else {
            extra += 1;
            char::from_u32(255 + extra).unwrap()
        };
    }
    table
}

fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x4E00..=0x9FFF | 0x3400..=0x4DBF | 0x20000..=0x2A6DF | 0x2A700..=0x2B73F
        | 0x2B740..=0x2B81F | 0x2B820..=0x2CEAF | 0xF900..=0xFAFF | 0x2F800..=0x2FA1F)
}

/// Symbols of `word` after BPE with the given merge ranks (the last one carries `</w>`).
fn bpe(word: &str, ranks: &HashMap<(String, String), usize>) -> Vec<String> {
    let chars: Vec<char> = word.chars().collect();
    let Some((last, init)) = chars.split_last() else {
        return Vec::new();
    };
    let mut parts: Vec<String> = init.iter().map(|c| c.to_string()).collect();
    parts.push(format!("{last}</w>"));
    while parts.len() > 1 {
        // The adjacent pair with the lowest merge rank.
        let best = parts
            .windows(2)
            .filter_map(|w| ranks.get(&(w[0].clone(), w[1].clone())).map(|&r| (r, w[0].clone(), w[1].clone())))
            .min_by_key(|(r, _, _)| *r);
        let Some((_, first, second)) = best else {
            break;
        };
        let mut merged = Vec::with_capacity(parts.len());
        let mut i = 0;
        while i < parts.len() {
            if i + 1 < parts.len() && parts[i] == first && parts[i + 1] == second {
                merged.push(format!("{first}{second}"));
                i += 2;
            } else {
                merged.push(std::mem::take(&mut parts[i]));
                i += 1;
            }
        }
        parts = merged;
    }
    parts
}

/// A word of the prompt and the (id, vocab token) pairs it became.
type WordPieces = (String, Vec<(u32, String)>);

impl ClipTokenizer {
    /// Load a diffusers `tokenizer/` folder: `vocab.json` + `merges.txt` (preferred) or
    /// `tokenizer.json`, plus the optional `tokenizer_config.json` / `special_tokens_map.json`.
    pub fn from_dir(dir: &Path) -> Result<Self, TokenizerError> {
        let cfg = SpecialConfig::load(dir)?;
        let vocab_path = dir.join("vocab.json");
        let merges_path = dir.join("merges.txt");
        let json_path = dir.join("tokenizer.json");
        if vocab_path.is_file() || merges_path.is_file() || !json_path.is_file() {
            if !vocab_path.is_file() && !merges_path.is_file() {
                return Err(TokenizerError::NotFound { dir: dir.to_path_buf() });
            }
            Self::from_vocab_merges(&vocab_path, &merges_path, &cfg)
        } else {
            Self::from_tokenizer_json(&json_path, &cfg)
        }
    }

    /// Load `vocab.json` + `merges.txt` with explicit special tokens (`pad_token`, e.g. `"!"` for
    /// SD2), like `CLIPTokenizer(vocab_file, merges_file, pad_token=...)`.
    pub fn from_files(vocab: &Path, merges: &Path, pad_token: &str) -> Result<Self, TokenizerError> {
        let cfg = SpecialConfig {
            pad: pad_token.to_owned(),
            ..SpecialConfig::default()
        };
        Self::from_vocab_merges(vocab, merges, &cfg)
    }

    fn from_vocab_merges(vocab_path: &Path, merges_path: &Path, cfg: &SpecialConfig) -> Result<Self, TokenizerError> {
        let encoder: HashMap<String, u32> = serde_json::from_value(read_json(vocab_path)?).map_err(|e| TokenizerError::Invalid {
            path: vocab_path.to_path_buf(),
            message: format!("not a token → id map: {e}"),
        })?;
        let merges_text = read_text(merges_path)?;
        let mut ranks = HashMap::new();
        // Like transformers: strip the file, skip the first (header) line, keep at most MAX_MERGES.
        for (rank, line) in merges_text.trim().split('\n').skip(1).take(MAX_MERGES).enumerate() {
            let mut it = line.split_whitespace();
            if let (Some(a), Some(b), None) = (it.next(), it.next(), it.next()) {
                ranks.entry((a.to_owned(), b.to_owned())).or_insert(rank);
            }
        }
        let decoder: HashMap<u32, String> = encoder.iter().map(|(k, &v)| (v, k.clone())).collect();
        let vocab_len = encoder.len();
        let backend = Backend::Bpe(Box::new(SlowBpe {
            flavor: ClipFlavor::default(),
            encoder,
            ranks,
            pattern: regex::Regex::new(CLIP_PATTERN).expect("CLIP pattern"),
            control: regex::Regex::new(r"^\p{C}$").expect("control pattern"),
            space_sep: regex::Regex::new(r"^\p{Zs}$").expect("space pattern"),
            byte_encoder: byte_alphabet(),
        }));
        Ok(Self::assemble(backend, decoder, vocab_len, cfg))
    }

    fn from_tokenizer_json(path: &Path, cfg: &SpecialConfig) -> Result<Self, TokenizerError> {
        // Parse ourselves first so that bad JSON is reported as such.
        read_json(path)?;
        let tok = tokenizers::Tokenizer::from_file(path).map_err(|e| TokenizerError::Invalid {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let vocab = tok.get_vocab(true);
        let decoder: HashMap<u32, String> = vocab.iter().map(|(k, &v)| (v, k.clone())).collect();
        let vocab_len = tok.get_vocab_size(true);
        Ok(Self::assemble(Backend::Fast(Box::new(tok)), decoder, vocab_len, cfg))
    }

    /// Resolve the special tokens; ones missing from the vocabulary get new ids after it
    /// (bos, eos, unk, pad order), as transformers' added tokens do.
    fn assemble(backend: Backend, mut decoder: HashMap<u32, String>, mut vocab_len: usize, cfg: &SpecialConfig) -> Self {
        let mut lookup: HashMap<String, u32> = decoder.iter().map(|(&id, t)| (t.clone(), id)).collect();
        let mut special: Vec<(String, u32)> = Vec::new();
        let mut ids = [0u32; 4];
        for (slot, name) in [&cfg.bos, &cfg.eos, &cfg.unk, &cfg.pad].into_iter().enumerate() {
            let id = match lookup.get(name.as_str()) {
                Some(&id) => id,
                None => {
                    let id = vocab_len as u32;
                    vocab_len += 1;
                    lookup.insert(name.clone(), id);
                    decoder.insert(id, name.clone());
                    id
                }
            };
            ids[slot] = id;
            if !name.is_empty() && !special.iter().any(|(s, _)| s == name) {
                special.push((name.clone(), id));
            }
        }
        Self {
            backend,
            decoder,
            vocab_len,
            special,
            bos_id: ids[0],
            eos_id: ids[1],
            unk_id: ids[2],
            pad_id: ids[3],
            max_length: cfg.max_length,
        }
    }

    /// Sequence length of every encoding (`model_max_length`, 77 for SD).
    /// Switches the vocab.json + merges.txt path to another transformers behaviour (a folder
    /// with only `tokenizer.json` always behaves as transformers 5).
    pub fn with_flavor(mut self, flavor: ClipFlavor) -> Self {
        if let Backend::Bpe(b) = &mut self.backend {
            b.flavor = flavor;
        }
        self
    }

    pub fn max_length(&self) -> usize {
        self.max_length
    }
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }
    pub fn bos_id(&self) -> u32 {
        self.bos_id
    }
    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }
    pub fn unk_id(&self) -> u32 {
        self.unk_id
    }
    /// Number of ids (vocabulary plus any special tokens that had to be added), i.e. `len(tokenizer)`.
    pub fn vocab_size(&self) -> usize {
        self.vocab_len
    }
    pub fn id_to_token(&self, id: u32) -> Option<&str> {
        self.decoder.get(&id).map(String::as_str)
    }
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        if let Some((_, id)) = self.special.iter().find(|(s, _)| s == token) {
            return Some(*id);
        }
        match &self.backend {
            Backend::Bpe(slow) => slow.encoder.get(token).copied(),
            Backend::Fast(tok) => tok.token_to_id(token),
        }
    }

    /// Tokenize `text` into exactly `max_length()` ids (bos, tokens, eos, padding).
    pub fn encode(&self, text: &str) -> TokenizedPrompt {
        let words = match &self.backend {
            Backend::Bpe(slow) => self.words_slow(slow, text),
            Backend::Fast(tok) => self.words_fast(tok, text),
        };
        self.assemble_prompt(words)
    }

    /// bos, every token of `text`, eos: no truncation and no padding (what a tokenizer call
    /// without `truncation=True` returns; CLIP-score readers cut it themselves).
    pub fn encode_untruncated(&self, text: &str) -> Vec<u32> {
        let words = match &self.backend {
            Backend::Bpe(slow) => self.words_slow(slow, text),
            Backend::Fast(tok) => self.words_fast(tok, text),
        };
        let mut ids = vec![self.bos_id];
        ids.extend(words.into_iter().flat_map(|(_, pieces)| pieces.into_iter().map(|(id, _)| id)));
        ids.push(self.eos_id);
        ids
    }

    /// Cut the raw text around special-token strings (longest match at the earliest position).
    fn split_special<'a>(&self, text: &'a str) -> Vec<(&'a str, Option<u32>)> {
        let mut out = Vec::new();
        let mut start = 0;
        let mut i = 0;
        while i < text.len() {
            let rest = &text[i..];
            let hit = self
                .special
                .iter()
                .filter(|(s, _)| rest.starts_with(s.as_str()))
                .max_by_key(|(s, _)| s.len());
            if let Some((s, id)) = hit {
                if start < i {
                    out.push((&text[start..i], None));
                }
                out.push((&text[i..i + s.len()], Some(*id)));
                i += s.len();
                start = i;
            } else {
                i += rest.chars().next().map_or(1, char::len_utf8);
            }
        }
        if start < text.len() {
            out.push((&text[start..], None));
        }
        out
    }

    fn words_slow(&self, slow: &SlowBpe, text: &str) -> Vec<WordPieces> {
        let SlowBpe {
            flavor,
            encoder,
            ranks,
            pattern,
            control,
            space_sep,
            byte_encoder,
        } = slow;
        let mut words = Vec::new();
        let mut buf = [0u8; 4];
        for (segment, special_id) in self.split_special(text) {
            if let Some(id) = special_id {
                words.push((segment.to_owned(), vec![(id, segment.to_owned())]));
                continue;
            }
            let mut cleaned = String::with_capacity(segment.len());
            if *flavor == ClipFlavor::Transformers5 {
                // NFC, then whitespace runs become one space, then lower-case.
                let nfc: String = segment.nfc().collect();
                cleaned = nfc.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase();
            }
            // Clean-up: drop NUL / U+FFFD / control+format chars, whitespace → ' ', space out CJK.
            for c in segment.chars().filter(|_| *flavor == ClipFlavor::SlowNoFtfy) {
                let is_ws = matches!(c, ' ' | '\t' | '\n' | '\r') || space_sep.is_match(c.encode_utf8(&mut buf));
                let is_ctrl = !matches!(c, '\t' | '\n' | '\r') && control.is_match(c.encode_utf8(&mut buf));
                if c == '\0' || c == '\u{FFFD}' || is_ctrl {
                    continue;
                }
                if is_ws {
                    cleaned.push(' ');
                } else if is_cjk(c) {
                    cleaned.push(' ');
                    cleaned.push(c);
                    cleaned.push(' ');
                } else {
                    cleaned.push(c);
                }
            }
            let joined = if *flavor == ClipFlavor::Transformers5 {
                cleaned
            } else {
                let normalized: String = cleaned.nfc().collect();
                normalized.split_whitespace().map(str::to_lowercase).collect::<Vec<_>>().join(" ")
            };
            for m in pattern.find_iter(&joined) {
                let word = m.as_str();
                let symbols = if word == DEFAULT_BOS || word == DEFAULT_EOS {
                    vec![word.to_owned()]
                } else {
                    let mapped: String = word.bytes().map(|b| byte_encoder[b as usize]).collect();
                    bpe(&mapped, ranks)
                };
                let pieces = symbols
                    .into_iter()
                    .map(|s| {
                        let id = encoder.get(&s).copied().unwrap_or(self.unk_id);
                        (id, self.decoder.get(&id).cloned().unwrap_or(s))
                    })
                    .collect();
                words.push((word.to_owned(), pieces));
            }
        }
        words
    }

    fn words_fast(&self, tok: &tokenizers::Tokenizer, text: &str) -> Vec<WordPieces> {
        let enc = match tok.encode(text, false) {
            Ok(enc) => enc,
            Err(_) => return Vec::new(),
        };
        let decode = byte_decoder();
        let mut words: Vec<WordPieces> = Vec::new();
        let mut last_word: Option<u32> = None;
        for ((&id, token), &word) in enc.get_ids().iter().zip(enc.get_tokens()).zip(enc.get_word_ids()) {
            let same = word.is_some() && word == last_word && !words.is_empty();
            let vocab_token = self.decoder.get(&id).cloned().unwrap_or_else(|| token.clone());
            if same {
                words.last_mut().expect("non-empty").1.push((id, vocab_token));
            } else {
                words.push((String::new(), vec![(id, vocab_token)]));
            }
            last_word = word;
        }
        // Word text = the byte-decoded concatenation of its sub-tokens.
        for (text, pieces) in &mut words {
            let mut bytes = Vec::new();
            for (_, t) in pieces.iter() {
                if self.special.iter().any(|(s, _)| s == t) {
                    bytes.extend_from_slice(t.as_bytes());
                    continue;
                }
                for c in t.strip_suffix("</w>").unwrap_or(t).chars() {
                    match decode.get(&c) {
                        Some(&b) => bytes.push(b),
                        None => bytes.extend_from_slice(c.encode_utf8(&mut [0u8; 4]).as_bytes()),
                    }
                }
            }
            *text = String::from_utf8_lossy(&bytes).into_owned();
        }
        words
    }

    fn assemble_prompt(&self, words: Vec<WordPieces>) -> TokenizedPrompt {
        let max_length = self.max_length.max(2);
        let budget = max_length - 2;
        let mut ids = Vec::with_capacity(max_length);
        let mut tokens = Vec::with_capacity(max_length);
        let mut word_of_token = Vec::with_capacity(max_length);
        let mut truncated_words = Vec::new();
        let bos = self.id_to_token(self.bos_id).unwrap_or_default().to_owned();
        let eos = self.id_to_token(self.eos_id).unwrap_or_default().to_owned();
        let pad = self.id_to_token(self.pad_id).unwrap_or_default().to_owned();
        ids.push(self.bos_id);
        tokens.push(bos);
        word_of_token.push(None);
        let mut out_words = Vec::with_capacity(words.len());
        for (w, (word, pieces)) in words.into_iter().enumerate() {
            let mut cut = false;
            for (id, tok) in pieces {
                if ids.len() - 1 < budget {
                    ids.push(id);
                    tokens.push(tok);
                    word_of_token.push(Some(w));
                } else {
                    cut = true;
                }
            }
            if cut {
                truncated_words.push(word.clone());
            }
            out_words.push(word);
        }
        ids.push(self.eos_id);
        tokens.push(eos);
        word_of_token.push(None);
        let n_used = ids.len();
        while ids.len() < max_length {
            ids.push(self.pad_id);
            tokens.push(pad.clone());
            word_of_token.push(None);
        }
        TokenizedPrompt {
            ids,
            tokens,
            n_used,
            word_of_token,
            words: out_words,
            truncated_words,
        }
    }
}

fn byte_decoder() -> HashMap<char, u8> {
    byte_alphabet().iter().enumerate().map(|(b, &c)| (c, b as u8)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
    }

    fn full() -> ClipTokenizer {
        let d = fixtures().join("clip-tokenizer");
        ClipTokenizer::from_files(&d.join("vocab.json"), &d.join("merges.txt"), "<|endoftext|>").unwrap()
    }

    fn full_bang() -> ClipTokenizer {
        let d = fixtures().join("clip-tokenizer");
        ClipTokenizer::from_files(&d.join("vocab.json"), &d.join("merges.txt"), "!").unwrap()
    }

    fn tiny() -> ClipTokenizer {
        ClipTokenizer::from_dir(&fixtures().join("tiny-sd1/tokenizer")).unwrap()
    }

    fn load_ref(name: &str) -> Option<Value> {
        let text = std::fs::read_to_string(fixtures().join("ref").join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        Some(serde_json::from_str(&text).unwrap())
    }

    fn u32s(v: &Value) -> Vec<u32> {
        v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
    }

    /// Data-driven check: `expected` are the unpadded ids (bos .. eos, possibly longer than 77).
    fn check(tok: &ClipTokenizer, prompt: &str, expected_unpadded: &[u32]) {
        let enc = tok.encode(prompt);
        let n = tok.max_length();
        assert_eq!(enc.ids.len(), n, "{prompt:?}");
        assert_eq!(enc.tokens.len(), n);
        assert_eq!(enc.word_of_token.len(), n);
        let mut want: Vec<u32> = expected_unpadded.to_vec();
        if want.len() > n {
            want.truncate(n - 1);
            want.push(tok.eos_id());
        }
        assert_eq!(enc.n_used, want.len(), "{prompt:?}");
        want.resize(n, tok.pad_id());
        assert_eq!(enc.ids, want, "{prompt:?}");
        for (id, t) in enc.ids.iter().zip(&enc.tokens) {
            assert_eq!(tok.id_to_token(*id), Some(t.as_str()));
        }
        assert_eq!(enc.truncated_words.is_empty(), expected_unpadded.len() <= n, "{prompt:?}");
    }

    /// Compare every prompt of one section of a reference file; returns (#matching, mismatching prompts).
    fn run_ref(tok: &ClipTokenizer, cases: &Value) -> (usize, Vec<String>) {
        let mut ok = 0;
        let mut bad = Vec::new();
        for case in cases.as_array().unwrap() {
            let prompt = case["prompt"].as_str().unwrap();
            let unpadded = u32s(&case["ids_unpadded"]);
            let enc = tok.encode(prompt);
            if enc.ids == u32s(&case["ids"]) {
                check(tok, prompt, &unpadded);
                let toks: Vec<&str> = case["tokens"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
                if unpadded.len() <= tok.max_length() {
                    assert_eq!(&enc.tokens[..enc.n_used], &toks[..], "{prompt:?}");
                }
                ok += 1;
            } else {
                bad.push(prompt.to_owned());
            }
        }
        (ok, bad)
    }

    #[test]
    fn matches_slow_transformers_reference() {
        let Some(r) = load_ref("tokenizer_slow.json") else {
            eprintln!("tokenizer_slow.json missing; skipped");
            return;
        };
        for (key, tok) in [("full", full()), ("full_pad_bang", full_bang()), ("tiny", tiny())] {
            let tok = tok.with_flavor(ClipFlavor::SlowNoFtfy);
            let meta = &r["meta"][key];
            assert_eq!(tok.vocab_size() as u64, meta["vocab_size"].as_u64().unwrap());
            assert_eq!(tok.bos_id() as u64, meta["bos_token_id"].as_u64().unwrap());
            assert_eq!(tok.eos_id() as u64, meta["eos_token_id"].as_u64().unwrap());
            assert_eq!(tok.pad_id() as u64, meta["pad_token_id"].as_u64().unwrap());
            assert_eq!(tok.unk_id() as u64, meta["unk_token_id"].as_u64().unwrap());
            let (ok, bad) = run_ref(&tok, &r[key]);
            eprintln!("slow reference {key}: {ok} match, mismatches: {bad:?}");
            assert!(bad.is_empty(), "{key}: {bad:?}");
        }
    }

    #[test]
    fn matches_transformers5_reference() {
        // ref/tokenizer.json comes from transformers 5 (tokenizers-backed): the default flavour
        // must agree on every prompt, and the slow flavour only differs on CJK.
        let Some(r) = load_ref("tokenizer.json") else {
            eprintln!("tokenizer.json missing; skipped");
            return;
        };
        for (key, tok) in [("full", full()), ("full_pad_bang", full_bang()), ("tiny", tiny())] {
            let (ok, bad) = run_ref(&tok, &r[key]);
            eprintln!("transformers 5 reference {key}: {ok} match, mismatches: {bad:?}");
            assert!(bad.is_empty(), "{key}: {bad:?}");
            let (_, bad) = run_ref(&tok.with_flavor(ClipFlavor::SlowNoFtfy), &r[key]);
            assert!(!bad.is_empty(), "the CJK prompt should tell the flavours apart");
            for p in &bad {
                assert!(p.chars().any(is_cjk), "{key}: unexpected mismatch on {p:?}");
            }
        }
    }

    #[test]
    fn known_ids() {
        let tok = full();
        check(&tok, "a photo of a cat", &[49406, 320, 1125, 539, 320, 2368, 49407]);
        check(&tok, "", &[49406, 49407]);
        check(&tok, "  A   PHOTO\tof a\ncat ", &[49406, 320, 1125, 539, 320, 2368, 49407]);
    }

    #[test]
    fn word_of_token_groups_sub_tokens() {
        let tok = full();
        let enc = tok.encode("antidisestablishmentarianism, don't");
        assert_eq!(enc.words, vec!["antidisestablishmentarianism", ",", "don", "'t"]);
        let w0: Vec<usize> = (0..enc.n_used).filter(|&i| enc.word_of_token[i] == Some(0)).collect();
        assert!(w0.len() > 1, "long word should be several BPE tokens: {:?}", enc.tokens);
        assert!(w0.windows(2).all(|p| p[1] == p[0] + 1), "sub-tokens are contiguous");
        let joined: String = w0.iter().map(|&i| enc.tokens[i].trim_end_matches("</w>")).collect();
        assert_eq!(joined, "antidisestablishmentarianism");
        assert_eq!(enc.word_of_token[0], None);
        assert_eq!(enc.word_of_token[enc.n_used - 1], None);
        assert_eq!(enc.word_of_token[enc.n_used], None);
        let last = enc.word_of_token[enc.n_used - 2];
        assert_eq!(last, Some(3));
        assert!(enc.truncated_words.is_empty());
    }

    #[test]
    fn truncation_reports_dropped_words() {
        let tok = full();
        // Frequent words: one token each.
        let plain: Vec<&str> = (0..80).map(|i| ["cat", "dog", "tree", "house"][i % 4]).collect();
        let enc = tok.encode(&plain.join(" "));
        assert_eq!(enc.n_used, 77);
        assert_eq!(enc.ids[76], tok.eos_id());
        assert_eq!(enc.truncated_words, plain[75..].iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(enc.words.len(), 80);
        assert_eq!(enc.word_of_token[75], Some(74));
        // A word cut in the middle counts as truncated and keeps its first sub-tokens.
        let mut p: Vec<&str> = vec!["cat"; 74];
        p.push("antidisestablishmentarianism");
        let enc = tok.encode(&p.join(" "));
        assert_eq!(enc.truncated_words, vec!["antidisestablishmentarianism".to_string()]);
        assert_eq!(enc.word_of_token[75], Some(74));
    }

    #[test]
    fn pad_bang_splits_exclamation_marks() {
        let tok = full_bang();
        assert_eq!(tok.pad_id(), 0);
        let enc = tok.encode("wow!!");
        assert_eq!(enc.n_used, 5);
        assert_eq!(enc.words, vec!["wow", "!", "!"]);
        assert_eq!(&enc.ids[..5], &[49406, tok.token_to_id("wow</w>").unwrap(), 0, 0, 49407]);
        assert!(enc.ids[5..].iter().all(|&i| i == 0));
        assert_eq!(enc.tokens[6], "!");
        // With the SD1 pad, "!!" is one BPE token.
        let enc = full().encode("wow!!");
        assert_eq!(enc.n_used, 4);
        assert_eq!(enc.tokens[2], "!!</w>");
    }

    #[test]
    fn special_tokens_in_text_and_unknown_symbols() {
        let tok = tiny();
        let enc = tok.encode("<|startoftext|> hi <|endoftext|>");
        assert_eq!(enc.words[0], "<|startoftext|>");
        assert_eq!(enc.ids[1], tok.bos_id());
        // The tiny vocabulary has no emoji merges: unknown symbols fall back to unk.
        let enc = tok.encode("😀");
        assert!(enc.n_used > 2);
    }

    #[test]
    fn config_parsing() {
        let mut cfg = SpecialConfig::default();
        cfg.apply(&serde_json::json!({
            "pad_token": {"content": "!", "lstrip": false},
            "model_max_length": 1e30,
        }));
        assert_eq!(cfg.pad, "!");
        assert_eq!(cfg.max_length, 77);
        cfg.apply(&serde_json::json!({"model_max_length": 64}));
        assert_eq!(cfg.max_length, 64);
        let t = tiny();
        assert_eq!((t.max_length(), t.bos_id(), t.eos_id(), t.pad_id()), (77, 998, 999, 999));
    }

    #[test]
    fn missing_and_broken_files_are_errors() {
        let dir = std::env::temp_dir().join(format!("clip-tok-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let err = ClipTokenizer::from_dir(&dir).unwrap_err();
        assert!(matches!(err, TokenizerError::NotFound { .. }), "{err}");
        let src = fixtures().join("tiny-sd1/tokenizer");
        std::fs::copy(src.join("vocab.json"), dir.join("vocab.json")).unwrap();
        let err = ClipTokenizer::from_dir(&dir).unwrap_err();
        assert!(err.to_string().contains("merges.txt"), "{err}");
        std::fs::copy(src.join("merges.txt"), dir.join("merges.txt")).unwrap();
        std::fs::write(dir.join("tokenizer_config.json"), "{not json").unwrap();
        let err = ClipTokenizer::from_dir(&dir).unwrap_err();
        assert!(err.to_string().contains("tokenizer_config.json"), "{err}");
        std::fs::write(dir.join("tokenizer_config.json"), r#"{"pad_token": "!"}"#).unwrap();
        let tok = ClipTokenizer::from_dir(&dir).unwrap();
        assert_eq!(tok.pad_id(), 0);
        std::fs::write(dir.join("vocab.json"), "[1, 2]").unwrap();
        let err = ClipTokenizer::from_dir(&dir).unwrap_err();
        assert!(err.to_string().contains("vocab.json"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
