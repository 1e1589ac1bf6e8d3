//! Token-by-token generation with a KV cache: [`Generator`] drives a decoder graph as optimum and
//! `torch.onnx.export` emit it (tokens, mask and positions in, logits and the grown cache out),
//! feeding each step's `present.*` back as the next step's `past_key_values.*`. `fpx generate`
//! is this loop.

mod sampling;
mod signature;
mod text;

pub use sampling::{argmax, Sampler, SamplingOptions};
pub use signature::{CacheSlot, DecoderSignature, SignatureError, SignatureNames};
pub use text::{TextCodec, TextStream};

use crate::{Error, Runnable};
use fpx_ir::ndarray::{ArrayD, IxDyn};
use fpx_ir::{DType, Tensor};
use std::time::{Duration, Instant};
use thiserror::Error;

/// Why generation stopped or could not start.
#[derive(Debug, Error)]
pub enum GenerateError {
    /// The graph is not a decoder the loop can drive.
    #[error(transparent)]
    Signature(#[from] SignatureError),
    /// No prompt tokens.
    #[error("the prompt is empty: give at least one token")]
    EmptyPrompt,
    /// Bad sampling options.
    #[error("{0}")]
    Options(String),
    /// The tokenizer could not be read, or could not encode or decode.
    #[error("tokenizer '{path}': {message}")]
    Tokenizer {
        /// The `tokenizer.json`.
        path: std::path::PathBuf,
        /// What went wrong.
        message: String,
    },
    /// An output of a step is not what a decoder returns.
    #[error("step {step}: {message}")]
    Step {
        /// The step (0: the prompt).
        step: usize,
        /// What is wrong.
        message: String,
    },
}

/// What to generate and how.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateOptions {
    /// Most tokens to generate after the prompt.
    pub max_new_tokens: usize,
    /// How each token is chosen.
    pub sampling: SamplingOptions,
    /// Tokens that end generation (kept in the output).
    pub eos: Vec<i64>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions { max_new_tokens: 32, sampling: SamplingOptions::default(), eos: Vec::new() }
    }
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// An end-of-sequence token was produced.
    Eos,
    /// `max_new_tokens` were produced.
    MaxTokens,
}

/// Timings of one generation.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct GenerationStats {
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// Tokens generated.
    pub generated_tokens: usize,
    /// From the start to the first generated token (the prompt's step and the first pick).
    pub time_to_first_token: Duration,
    /// The prompt's step (prefill).
    pub prefill: Duration,
    /// Every later step (one token each).
    pub decode: Duration,
}

impl GenerationStats {
    /// Prompt tokens per second of prefill.
    pub fn prefill_tokens_per_second(&self) -> f64 {
        self.prompt_tokens as f64 / self.prefill.as_secs_f64().max(1e-9)
    }

    /// Generated tokens per second after the first (each a decode step).
    pub fn decode_tokens_per_second(&self) -> f64 {
        self.generated_tokens.saturating_sub(1) as f64 / self.decode.as_secs_f64().max(1e-9)
    }
}

/// The result of [`Generator::generate`].
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// The generated tokens (not the prompt).
    pub tokens: Vec<i64>,
    /// Why it stopped.
    pub stop: StopReason,
    /// Timings.
    pub stats: GenerationStats,
}

/// Drives a decoder graph token by token, batch 1.
#[derive(Debug)]
pub struct Generator<'m> {
    model: &'m Runnable,
    signature: DecoderSignature,
}

impl<'m> Generator<'m> {
    /// A generator for `model`, whose inputs and outputs are found by `names`.
    pub fn new(model: &'m Runnable, names: &SignatureNames) -> Result<Generator<'m>, Error> {
        let signature = DecoderSignature::find(model.graph(), names).map_err(GenerateError::from)?;
        Ok(Generator { model, signature })
    }

    /// The signature found.
    pub fn signature(&self) -> &DecoderSignature {
        &self.signature
    }

    /// The empty cache (sequence length 0) of each slot, batch 1, with room for `capacity`
    /// positions so that every step appends in place (`fpx:KvAppend`).
    fn empty_cache(&self, capacity: usize) -> Result<Vec<Tensor>, Error> {
        self.signature
            .cache
            .iter()
            .map(|slot| {
                let mut shape = Vec::with_capacity(slot.dims.len());
                for (axis, d) in slot.dims.iter().enumerate() {
                    shape.push(match (axis, d.fixed()) {
                        (a, _) if a == slot.seq_axis => 0,
                        (0, Some(1) | None) => 1,
                        (_, Some(n)) if axis != 0 => n,
                        _ => {
                            let ty = format!("{:?}", slot.dims);
                            return Err(GenerateError::Signature(SignatureError::CacheShape {
                                input: slot.past.clone(),
                                ty,
                                why: "its batch axis is fixed above 1; generation runs batch 1".into(),
                            })
                            .into());
                        }
                    });
                }
                fpx_runtime::kernels::kv_append::cache_with_capacity(slot.dtype, &shape, slot.seq_axis, capacity).map_err(|e| {
                    Error::from(GenerateError::Step { step: 0, message: format!("cache '{}' of {capacity} positions: {e}", slot.past) })
                })
            })
            .collect()
    }

    /// One step: `tokens` at positions `past..past + tokens.len()`; returns the last position's
    /// logits and the grown cache.
    fn step(&self, step: usize, tokens: &[i64], past: usize, cache: Vec<Tensor>) -> Result<(Vec<f32>, Vec<Tensor>), Error> {
        let sig = &self.signature;
        let n = tokens.len();
        let row = |dtype: DType, values: Vec<i64>| {
            let len = values.len();
            Tensor::from(ArrayD::from_shape_vec(IxDyn(&[1, len]), values).expect("1 x len")).cast(dtype)
        };
        let mut inputs = vec![(sig.input_ids.0.clone(), row(sig.input_ids.1, tokens.to_vec()))];
        if let Some((name, dtype)) = &sig.attention_mask {
            inputs.push((name.clone(), row(*dtype, vec![1; past + n])));
        }
        if let Some((name, dtype)) = &sig.position_ids {
            inputs.push((name.clone(), row(*dtype, (past as i64..(past + n) as i64).collect())));
        }
        inputs.extend(sig.cache.iter().map(|s| s.past.clone()).zip(cache));
        let mut outputs = self.model.run(inputs)?;
        let bad = |message: String| Error::from(GenerateError::Step { step, message });
        let take = |outputs: &mut Vec<(String, Tensor)>, name: &str| -> Result<Tensor, Error> {
            let i = outputs.iter().position(|(n, _)| n == name).ok_or_else(|| bad(format!("no output '{name}'")))?;
            Ok(outputs.swap_remove(i).1)
        };
        let logits = take(&mut outputs, &sig.logits)?;
        let shape = logits.shape().to_vec();
        if shape.len() != 3 || shape[0] != 1 || shape[1] != n || shape[2] == 0 {
            return Err(bad(format!("logits have shape {shape:?}, expected [1, {n}, vocabulary]")));
        }
        // The last position's row, converted once (no copy of the whole logits for f32).
        let widened;
        let all = match logits.as_f32() {
            Some(a) => a,
            None => {
                widened = logits.to_f32();
                &widened
            }
        };
        let last: Vec<f32> = all.iter().skip((n - 1) * shape[2]).copied().collect();
        let mut grown = Vec::with_capacity(sig.cache.len());
        for slot in &sig.cache {
            let t = take(&mut outputs, &slot.present)?;
            if t.shape().get(slot.seq_axis) != Some(&(past + n)) {
                return Err(bad(format!(
                    "'{}' has shape {:?}: its axis {} should be {} (past {past} + {n} new)",
                    slot.present,
                    t.shape(),
                    slot.seq_axis,
                    past + n
                )));
            }
            grown.push(t);
        }
        Ok((last, grown))
    }

    /// Generates after `prompt`, calling `on_token` with each token as soon as it is chosen.
    pub fn generate(&self, prompt: &[i64], options: &GenerateOptions, mut on_token: impl FnMut(i64)) -> Result<Generation, Error> {
        if prompt.is_empty() {
            return Err(GenerateError::EmptyPrompt.into());
        }
        options.sampling.validate().map_err(GenerateError::Options)?;
        let mut sampler = Sampler::new(options.sampling);
        let mut stats = GenerationStats { prompt_tokens: prompt.len(), ..Default::default() };
        let mut tokens = Vec::new();
        if options.max_new_tokens == 0 {
            return Ok(Generation { tokens, stop: StopReason::MaxTokens, stats });
        }
        let start = Instant::now();
        let capacity = prompt.len().saturating_add(options.max_new_tokens);
        let (mut logits, mut cache) = self.step(0, prompt, 0, self.empty_cache(capacity)?)?;
        stats.prefill = start.elapsed();
        let mut past = prompt.len();
        let decode_start = Instant::now();
        loop {
            let step = tokens.len();
            let next = sampler.pick(&logits).ok_or_else(|| GenerateError::Step { step, message: "every logit is NaN".into() })?;
            let next = next as i64;
            if tokens.is_empty() {
                stats.time_to_first_token = start.elapsed();
            }
            tokens.push(next);
            on_token(next);
            if options.eos.contains(&next) {
                stats.generated_tokens = tokens.len();
                stats.decode = decode_start.elapsed();
                return Ok(Generation { tokens, stop: StopReason::Eos, stats });
            }
            if tokens.len() >= options.max_new_tokens {
                stats.generated_tokens = tokens.len();
                stats.decode = decode_start.elapsed();
                return Ok(Generation { tokens, stop: StopReason::MaxTokens, stats });
            }
            (logits, cache) = self.step(step + 1, &[next], past, cache)?;
            past += 1;
        }
    }
}
