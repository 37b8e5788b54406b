//! CLIP's byte-level BPE tokenizer (Radford et al. 2021 §2.5; transformers `CLIPTokenizerFast`).
//!
//! Loads `tokenizer.json`, or builds the same pipeline from `vocab.json` + `merges.txt` (the
//! files real CLIP and Karlo folders ship), exactly as transformers' `CLIPConverter` does: NFC,
//! whitespace runs to one space, lower case; split on CLIP's word pattern; byte-level BPE with
//! `</w>` ending each word. Every sequence is `<|startoftext|> ... <|endoftext|>`, truncated so
//! that the end token stays last and padded to the context length.
//! It can also train a new vocabulary from captions (the `tokenizers` crate's BPE trainer).

use crate::checkpoint::write_atomic;
use crate::error::{Error, Result};
use candle_core::{Device, Tensor};
use std::path::Path;
use tokenizers::models::bpe::{BpeTrainer, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::normalizers::replace::ReplacePattern;
use tokenizers::normalizers::{Lowercase, Replace, Sequence as NormalizerSequence, NFC};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::roberta::RobertaProcessing;
use tokenizers::Model;
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

pub const START_OF_TEXT: &str = "<|startoftext|>";
pub const END_OF_TEXT: &str = "<|endoftext|>";
/// CLIP's word pattern (the OpenAI `SimpleTokenizer` regex, as transformers converts it).
const WORD_PATTERN: &str = r"'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";
pub const DEFAULT_CONTEXT_LENGTH: usize = 77;

fn tok_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Tokenizer(format!("{what}: {e}"))
}

/// The files of a transformers CLIP tokenizer folder, copied as a set wherever one is re-saved.
pub const TOKENIZER_FILES: [&str; 5] = [
    "tokenizer.json",
    "vocab.json",
    "merges.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
];

/// A batch of token sequences, all `context_length` long.
#[derive(Debug, Clone)]
pub struct TokenBatch {
    pub input_ids: Vec<Vec<u32>>,
    pub attention_mask: Vec<Vec<u32>>,
}

impl TokenBatch {
    /// (input_ids (B, T), attention_mask (B, T)) as u32 tensors.
    pub fn to_tensors(&self, device: &Device) -> Result<(Tensor, Tensor)> {
        let b = self.input_ids.len();
        let t = self.input_ids.first().map_or(0, Vec::len);
        let ids = Tensor::from_vec(self.input_ids.concat(), (b, t), device)?;
        let mask = Tensor::from_vec(self.attention_mask.concat(), (b, t), device)?;
        Ok((ids, mask))
    }
}

#[derive(Clone)]
pub struct ClipTokenizer {
    inner: Tokenizer,
    bos: u32,
    eos: u32,
    pad: u32,
    context_length: usize,
}

impl std::fmt::Debug for ClipTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipTokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("pad", &self.pad)
            .field("context_length", &self.context_length)
            .finish()
    }
}

/// A special token as `tokenizer_config.json` writes it: a string or `{"content": ...}`.
fn special_token(config: &serde_json::Value, key: &str) -> Option<String> {
    match config.get(key)? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

/// A CLIP-style BPE tokenizer trained on `captions` with at most `vocab_size` tokens.
fn train_bpe(captions: &[String], vocab_size: usize) -> Result<Tokenizer> {
    let trainer: BpeTrainer = BpeTrainer::builder()
        .vocab_size(vocab_size)
        .min_frequency(2)
        .show_progress(false)
        .special_tokens(vec![
            AddedToken::from(START_OF_TEXT, true),
            AddedToken::from(END_OF_TEXT, true),
        ])
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .end_of_word_suffix("</w>".into())
        .build();
    let model = BPE::builder()
        .end_of_word_suffix("</w>".into())
        .unk_token(END_OF_TEXT.into())
        .build()
        .map_err(|e| tok_err("BPE", e))?;
    let mut inner = clip_pipeline(model)?;
    let mut trainer = TrainerWrapper::BpeTrainer(trainer);
    inner
        .train(&mut trainer, captions.iter())
        .map_err(|e| tok_err("training", e))?;
    Ok(inner)
}

/// How many bytes have no word-final token (`x</w>`) in `tokenizer`'s vocabulary.
fn missing_word_final_bytes(tokenizer: &Tokenizer) -> usize {
    ByteLevel::alphabet()
        .into_iter()
        .filter(|byte| tokenizer.token_to_id(&format!("{byte}</w>")).is_none())
        .count()
}

/// The trained tokenizer with a token for every byte at the end of a word (`x</w>`).
///
/// The BPE trainer's alphabet holds each byte, but a byte's word-final form only if some
/// caption ends a word with it; any other word-final byte then encodes as the unknown token,
/// which is `<|endoftext|>`, and the text tower pools there: "a red circle!" would read as "a
/// red circle" cut short. CLIP's own vocabulary holds all 512 forms, so these are appended
/// (new ids after the trained ones; the merges are unchanged).
fn with_every_word_final_byte(trained: &Tokenizer) -> Result<Tokenizer> {
    // The tokenizer's own JSON form, edited in place: its pipeline and merges stay as trained.
    let text = trained
        .to_string(false)
        .map_err(|e| tok_err("serialise", e))?;
    let mut json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| tok_err("trained tokenizer", e))?;
    let vocab = json["model"]["vocab"]
        .as_object_mut()
        .ok_or_else(|| Error::Tokenizer("trained tokenizer has no model.vocab".into()))?;
    let mut next = vocab
        .values()
        .filter_map(|id| id.as_u64())
        .max()
        .map_or(0, |id| id + 1);
    for byte in ByteLevel::alphabet() {
        if let serde_json::map::Entry::Vacant(slot) = vocab.entry(format!("{byte}</w>")) {
            slot.insert(next.into());
            next += 1;
        }
    }
    json.to_string()
        .parse::<Tokenizer>()
        .map_err(|e| tok_err("completed vocabulary", e))
}

fn clip_pipeline(model: BPE) -> Result<Tokenizer> {
    let mut tokenizer = Tokenizer::new(model);
    let whitespace = Replace::new(ReplacePattern::Regex(r"\s+".into()), " ")
        .map_err(|e| tok_err("normalizer", e))?;
    tokenizer
        .with_normalizer(Some(NormalizerSequence::new(vec![
            NFC.into(),
            whitespace.into(),
            Lowercase.into(),
        ])))
        .map_err(|e| tok_err("normalizer", e))?;
    let words = Split::new(
        SplitPattern::Regex(WORD_PATTERN.into()),
        SplitDelimiterBehavior::Removed,
        true,
    )
    .map_err(|e| tok_err("pre-tokenizer", e))?;
    tokenizer.with_pre_tokenizer(Some(PreTokenizerSequence::new(vec![
        words.into(),
        ByteLevel::new(false, true, true).into(),
    ])));
    tokenizer.with_decoder(Some(ByteLevel::default()));
    tokenizer
        .add_special_tokens(vec![
            AddedToken::from(START_OF_TEXT, true),
            AddedToken::from(END_OF_TEXT, true),
        ])
        .map_err(|e| tok_err("special tokens", e))?;
    Ok(tokenizer)
}

impl ClipTokenizer {
    /// Loads a tokenizer folder: `tokenizer.json`, or `vocab.json` + `merges.txt`, with
    /// `tokenizer_config.json` / `special_tokens_map.json` naming the special tokens when present.
    /// A `tokenizer/` subfolder is looked into as well (pipeline folders keep it there).
    pub fn load(dir: &Path) -> Result<Self> {
        let dir = if !dir.join("tokenizer.json").is_file()
            && !dir.join("vocab.json").is_file()
            && dir.join("tokenizer").is_dir()
        {
            dir.join("tokenizer")
        } else {
            dir.to_path_buf()
        };
        let json = dir.join("tokenizer.json");
        let (vocab, merges) = (dir.join("vocab.json"), dir.join("merges.txt"));
        let inner = if json.is_file() {
            Tokenizer::from_file(&json).map_err(|e| tok_err(&json.display().to_string(), e))?
        } else if vocab.is_file() && merges.is_file() {
            let model = BPE::from_file(&vocab.to_string_lossy(), &merges.to_string_lossy())
                .end_of_word_suffix("</w>".into())
                .continuing_subword_prefix(String::new())
                .unk_token(END_OF_TEXT.into())
                .build()
                .map_err(|e| tok_err(&format!("{} + {}", vocab.display(), merges.display()), e))?;
            clip_pipeline(model)?
        } else {
            return Err(Error::Tokenizer(format!(
                "{}: no tokenizer.json, and no vocab.json + merges.txt pair",
                dir.display()
            )));
        };
        let mut config = serde_json::Value::Null;
        for name in ["special_tokens_map.json", "tokenizer_config.json"] {
            let path = dir.join(name);
            if path.is_file() {
                let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
                let value: serde_json::Value =
                    serde_json::from_str(&text).map_err(|cause| Error::Json {
                        path: path.clone(),
                        what: "a tokenizer config",
                        cause,
                    })?;
                merge_json(&mut config, value);
            }
        }
        let id_of = |key: &str, default: &str| -> Result<u32> {
            let token = special_token(&config, key).unwrap_or_else(|| default.to_string());
            inner.token_to_id(&token).ok_or_else(|| {
                Error::Tokenizer(format!(
                    "{}: {key} `{token}` is not in the vocabulary",
                    dir.display()
                ))
            })
        };
        let bos = id_of("bos_token", START_OF_TEXT)?;
        let eos = id_of("eos_token", END_OF_TEXT)?;
        let pad = match special_token(&config, "pad_token") {
            Some(_) => id_of("pad_token", END_OF_TEXT)?,
            None => eos,
        };
        let context_length = config
            .get("model_max_length")
            .and_then(|v| v.as_f64())
            .filter(|n| (2.0..=65_536.0).contains(n))
            .map_or(DEFAULT_CONTEXT_LENGTH, |n| n as usize);
        Ok(Self {
            inner,
            bos,
            eos,
            pad,
            context_length,
        })
    }

    /// Sets the padded length (the text tower's `max_position_embeddings`).
    pub fn with_context_length(mut self, context_length: usize) -> Result<Self> {
        if context_length < 2 {
            return Err(Error::InvalidInput(format!(
                "context length {context_length} leaves no room for the start and end tokens"
            )));
        }
        self.context_length = context_length;
        Ok(self)
    }

    pub fn context_length(&self) -> usize {
        self.context_length
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn bos_id(&self) -> u32 {
        self.bos
    }

    pub fn eos_id(&self) -> u32 {
        self.eos
    }

    pub fn pad_id(&self) -> u32 {
        self.pad
    }

    /// The BPE ids of `text` without special tokens, truncation or padding.
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode(text, false)
            .map_err(|e| tok_err("encode", e))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// `[bos] + ids[..T-2] + [eos] + pad...`, and the mask of real tokens.
    pub fn encode(&self, text: &str) -> Result<(Vec<u32>, Vec<u32>)> {
        let mut body = self.tokenize(text)?;
        body.truncate(self.context_length - 2);
        let mut ids = Vec::with_capacity(self.context_length);
        ids.push(self.bos);
        ids.extend(body);
        ids.push(self.eos);
        let mut mask = vec![1u32; ids.len()];
        ids.resize(self.context_length, self.pad);
        mask.resize(self.context_length, 0);
        Ok((ids, mask))
    }

    pub fn encode_batch<S: AsRef<str>>(&self, texts: &[S]) -> Result<TokenBatch> {
        let mut batch = TokenBatch {
            input_ids: Vec::with_capacity(texts.len()),
            attention_mask: Vec::with_capacity(texts.len()),
        };
        for text in texts {
            let (ids, mask) = self.encode(text.as_ref())?;
            batch.input_ids.push(ids);
            batch.attention_mask.push(mask);
        }
        Ok(batch)
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, true)
            .map_err(|e| tok_err("decode", e))
    }

    /// Learns a CLIP-style BPE vocabulary of at most `vocab_size` tokens from `captions`.
    pub fn train<I, S>(captions: I, vocab_size: usize, context_length: usize) -> Result<Self>
    where
        I: Iterator<Item = S> + Send,
        S: AsRef<str> + Send,
    {
        let alphabet = ByteLevel::alphabet();
        if vocab_size < 2 * alphabet.len() + 2 {
            return Err(Error::InvalidInput(format!(
                "a vocabulary of {vocab_size} tokens is too small: the byte alphabet alone needs {}",
                2 * alphabet.len() + 2
            )));
        }
        // CLIP's own vocabulary is 49,408; a BPE trainer asked for billions allocates until the
        // machine runs out of memory.
        const MAX_VOCAB: usize = 1 << 20;
        if vocab_size > MAX_VOCAB {
            return Err(Error::InvalidInput(format!(
                "a vocabulary of {vocab_size} tokens; allowed: {}..={MAX_VOCAB} (CLIP's is 49408)",
                2 * alphabet.len() + 2
            )));
        }
        if !(2..=1024).contains(&context_length) {
            return Err(Error::InvalidInput(format!(
                "context length {context_length}; allowed: 2..=1024 (CLIP's is 77)"
            )));
        }
        // The word-final bytes no caption ends a word with are added after training; they
        // need room in the budget, and how many there are shows only after a first training
        // (the alphabet part of a BPE vocabulary does not depend on the budget), so a corpus
        // that lacks some is trained again with that many fewer merges.
        let captions: Vec<String> = captions.map(|c| c.as_ref().to_string()).collect();
        let mut inner = train_bpe(&captions, vocab_size)?;
        let missing = missing_word_final_bytes(&inner);
        if missing > 0 {
            inner = train_bpe(&captions, vocab_size - missing)?;
        }
        let inner = with_every_word_final_byte(&inner)?;
        let id = |t: &str| {
            inner
                .token_to_id(t)
                .ok_or_else(|| Error::Tokenizer(format!("{t} missing after training")))
        };
        let (bos, eos) = (id(START_OF_TEXT)?, id(END_OF_TEXT)?);
        let mut tokenizer = Self {
            inner,
            bos,
            eos,
            pad: eos,
            context_length: DEFAULT_CONTEXT_LENGTH,
        };
        tokenizer.attach_post_processor();
        tokenizer.with_context_length(context_length)
    }

    /// Writes `tokenizer.json`, `vocab.json`, `merges.txt` and the two config files that
    /// transformers' CLIPTokenizer / CLIPTokenizerFast read.
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let json = self
            .inner
            .to_string(false)
            .map_err(|e| tok_err("serialise", e))?;
        write_atomic(&dir.join("tokenizer.json"), json.as_bytes())?;
        self.inner.get_model().save(dir, None).map_err(|e| {
            tok_err(
                &format!("saving vocab.json/merges.txt to {}", dir.display()),
                e,
            )
        })?;
        let token = |id: u32| self.inner.id_to_token(id).unwrap_or_default();
        let special = serde_json::json!({
            "bos_token": token(self.bos),
            "eos_token": token(self.eos),
            "unk_token": token(self.eos),
            "pad_token": token(self.pad),
        });
        let mut config = special.clone();
        merge_json(
            &mut config,
            serde_json::json!({
                "model_max_length": self.context_length,
                "tokenizer_class": "CLIPTokenizer",
                "do_lower_case": true,
                "errors": "replace",
                "add_prefix_space": false,
            }),
        );
        let pretty =
            |v: &serde_json::Value| serde_json::to_string_pretty(v).unwrap_or_default() + "\n";
        write_atomic(
            &dir.join("special_tokens_map.json"),
            pretty(&special).as_bytes(),
        )?;
        write_atomic(
            &dir.join("tokenizer_config.json"),
            pretty(&config).as_bytes(),
        )?;
        Ok(())
    }

    /// The roberta-style post-processor transformers attaches; unused by `encode` (which adds
    /// the special tokens itself) but kept in saved files so other readers add them too.
    fn attach_post_processor(&mut self) {
        let token = |id: u32| self.inner.id_to_token(id).unwrap_or_default();
        let processor =
            RobertaProcessing::new((token(self.eos), self.eos), (token(self.bos), self.bos))
                .trim_offsets(false)
                .add_prefix_space(false);
        self.inner.with_post_processor(Some(processor));
    }
}

fn merge_json(into: &mut serde_json::Value, from: serde_json::Value) {
    match (into, from) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => a.extend(b),
        (slot, value) => *slot = value,
    }
}
