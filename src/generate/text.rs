//! Text in and out of generation: a Hugging Face `tokenizer.json` (the `tokenizers` crate) turns
//! the prompt into ids and generated ids back into text, streamed as whole characters.

use super::GenerateError;
use std::path::{Path, PathBuf};

/// Largest `tokenizer.json` read (real ones are a few MB).
const MAX_TOKENIZER_BYTES: u64 = 256 << 20;

/// A tokenizer loaded from a `tokenizer.json`.
pub struct TextCodec {
    tokenizer: tokenizers::Tokenizer,
    path: PathBuf,
}

impl std::fmt::Debug for TextCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextCodec").field("path", &self.path).finish_non_exhaustive()
    }
}

impl TextCodec {
    /// Loads `path` (a regular file of at most 256 MiB).
    pub fn open(path: &Path) -> Result<TextCodec, GenerateError> {
        let error = |message: String| GenerateError::Tokenizer { path: path.to_path_buf(), message };
        let bytes = fpx_ir::file::read_regular(path, MAX_TOKENIZER_BYTES).map_err(|e| error(e.to_string()))?;
        let tokenizer = tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| error(e.to_string()))?;
        Ok(TextCodec { tokenizer, path: path.to_path_buf() })
    }

    /// The ids of `text` (with the special tokens the tokenizer adds, such as BOS).
    pub fn encode(&self, text: &str) -> Result<Vec<i64>, GenerateError> {
        let encoding =
            self.tokenizer.encode(text, true).map_err(|e| GenerateError::Tokenizer { path: self.path.clone(), message: e.to_string() })?;
        Ok(encoding.get_ids().iter().map(|&id| i64::from(id)).collect())
    }

    /// The text of `ids` (special tokens skipped). An id outside the tokenizer's range is an error.
    pub fn decode(&self, ids: &[i64]) -> Result<String, GenerateError> {
        let ids: Vec<u32> = ids
            .iter()
            .map(|&id| {
                u32::try_from(id).ok().filter(|&u| (u as usize) < self.tokenizer.get_vocab_size(true)).ok_or_else(|| {
                    GenerateError::Tokenizer {
                        path: self.path.clone(),
                        message: format!("token id {id} is outside its vocabulary of {}", self.tokenizer.get_vocab_size(true)),
                    }
                })
            })
            .collect::<Result<_, _>>()?;
        self.tokenizer.decode(&ids, true).map_err(|e| GenerateError::Tokenizer { path: self.path.clone(), message: e.to_string() })
    }

    /// A stream that turns ids, one at a time, into the text they add.
    pub fn stream(&self) -> TextStream<'_> {
        TextStream { codec: self, ids: Vec::new(), emitted: String::new() }
    }
}

/// Incremental decoding: [`TextStream::push`] returns the text an id completes. A character
/// split across several byte tokens is held back until its last byte arrives, so the pieces
/// concatenate to the decoding of all ids.
#[derive(Debug)]
pub struct TextStream<'c> {
    codec: &'c TextCodec,
    ids: Vec<i64>,
    emitted: String,
}

impl TextStream<'_> {
    /// Adds `id`; returns the new text (empty while a character is incomplete).
    pub fn push(&mut self, id: i64) -> Result<String, GenerateError> {
        self.ids.push(id);
        let text = self.codec.decode(&self.ids)?;
        if text.ends_with('\u{FFFD}') || !text.starts_with(&self.emitted) {
            return Ok(String::new());
        }
        let new = text[self.emitted.len()..].to_string();
        self.emitted = text;
        Ok(new)
    }

    /// Whatever is still held back (an incomplete character at the end), as the full decoding
    /// gives it.
    pub fn finish(self) -> Result<String, GenerateError> {
        let text = self.codec.decode(&self.ids)?;
        Ok(text.strip_prefix(self.emitted.as_str()).map_or_else(|| text.clone(), str::to_string))
    }
}
