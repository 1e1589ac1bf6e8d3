//! `fpx generate`: the library's [`fpx::Generator`] with the prompt from the command line, tokens
//! streamed to stdout as they come, and the timings at the end.

use crate::args::{BudgetArg, DeviceArg, ModelArg, QuantArgs};
use crate::commands::{check_device, open_model_at};
use anyhow::{bail, Context, Result};
use clap::Args;
use fpx::generate::{TextCodec, TextStream};
use fpx::{GenerateOptions, Generator, SamplingOptions, SignatureNames};
use std::io::Write;
use std::path::Path;

/// Most tokens `--max-new-tokens` allows.
const MAX_NEW_TOKENS: u64 = 1 << 20;

/// Arguments of `fpx generate`.
#[derive(Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArg,
    /// The prompt's token ids: comma-separated (1,15043,29892) or a .npy file of integers.
    #[arg(long, value_name = "IDS|FILE.npy", required_unless_present = "prompt", conflicts_with = "prompt")]
    pub prompt_ids: Option<String>,
    /// The prompt as text (needs --tokenizer).
    #[arg(long, value_name = "TEXT", requires = "tokenizer")]
    pub prompt: Option<String>,
    /// A Hugging Face tokenizer.json: encodes --prompt, and the output is printed as text.
    #[arg(long, value_name = "FILE")]
    pub tokenizer: Option<std::path::PathBuf>,
    /// Most tokens to generate after the prompt, 1 to 1048576.
    #[arg(long, default_value_t = 32, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=MAX_NEW_TOKENS))]
    pub max_new_tokens: usize,
    /// Softmax temperature; 0 (the default) is greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Sample from the k most likely tokens only (0: all).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Sample from the smallest set of most likely tokens whose probability reaches p (1: all).
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Seed of the sampler: the same seed gives the same tokens.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// End-of-sequence token ids, comma-separated: generation stops after one.
    #[arg(long, value_name = "IDS", value_delimiter = ',')]
    pub eos: Vec<i64>,
    #[command(flatten)]
    pub names: NameArgs,
    #[command(flatten)]
    pub device: DeviceArg,
    #[command(flatten)]
    pub budget: BudgetArg,
    #[command(flatten)]
    pub quant: QuantArgs,
}

/// Names of the decoder's inputs and outputs, where a model differs from optimum's.
#[derive(Args)]
pub struct NameArgs {
    /// The token-ids input.
    #[arg(long, default_value = "input_ids", value_name = "NAME")]
    pub input_ids_name: String,
    /// The attention-mask input (filled with ones; skipped if the model has none).
    #[arg(long, default_value = "attention_mask", value_name = "NAME")]
    pub attention_mask_name: String,
    /// The position-ids input (skipped if the model has none).
    #[arg(long, default_value = "position_ids", value_name = "NAME")]
    pub position_ids_name: String,
    /// The logits output.
    #[arg(long, default_value = "logits", value_name = "NAME")]
    pub logits_name: String,
    /// Prefix of the cache inputs.
    #[arg(long, default_value = "past_key_values.", value_name = "PREFIX")]
    pub past_prefix: String,
    /// Prefix of the cache outputs: input PAST_PREFIX+rest is fed from output PRESENT_PREFIX+rest.
    #[arg(long, default_value = "present.", value_name = "PREFIX")]
    pub present_prefix: String,
}

impl NameArgs {
    fn names(&self) -> SignatureNames {
        SignatureNames {
            input_ids: self.input_ids_name.clone(),
            attention_mask: self.attention_mask_name.clone(),
            position_ids: self.position_ids_name.clone(),
            logits: self.logits_name.clone(),
            past_prefix: self.past_prefix.clone(),
            present_prefix: self.present_prefix.clone(),
        }
    }
}

/// The prompt: a comma-separated list, or a `.npy` file of integers (any shape, read in order).
fn prompt_ids(spec: &str) -> Result<Vec<i64>> {
    if spec.ends_with(".npy") || Path::new(spec).is_file() {
        let t = fpx::runtime::npy::read(Path::new(spec)).with_context(|| format!("cannot read the prompt '{spec}'"))?;
        if !t.dtype().is_int() {
            bail!("the prompt '{spec}' holds {}, not integer token ids", t.dtype());
        }
        return Ok(t.to_i64_vec());
    }
    spec.split(',')
        .map(|s| {
            s.trim()
                .parse::<i64>()
                .map_err(|_| anyhow::anyhow!("'{s}' in --prompt-ids is not a token id (expected e.g. 1,15043,29892 or a .npy file)"))
        })
        .collect()
}

/// `fpx generate`.
pub fn generate(args: &GenerateArgs) -> Result<()> {
    check_device(args.device.device)?;
    let codec = args.tokenizer.as_deref().map(TextCodec::open).transpose()?;
    let prompt = match (&args.prompt_ids, &args.prompt, &codec) {
        (Some(ids), _, _) => prompt_ids(ids)?,
        (None, Some(text), Some(codec)) => codec.encode(text)?,
        _ => bail!("give the prompt as --prompt-ids, or as --prompt with --tokenizer"),
    };
    if prompt.is_empty() || prompt.iter().any(|&t| t < 0) {
        bail!("--prompt-ids needs at least one token id, none negative");
    }
    let sampling = SamplingOptions { temperature: args.temperature, top_k: args.top_k, top_p: args.top_p, seed: args.seed };
    sampling.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
    let model = open_model_at(&args.model.model, &args.budget, &args.quant, true)?;
    let generator =
        Generator::new(&model, &args.names.names()).with_context(|| format!("'{}' cannot generate", args.model.model.display()))?;
    let options = GenerateOptions { max_new_tokens: args.max_new_tokens, sampling, eos: args.eos.clone() };
    let mut out = std::io::stdout().lock();
    let mut first = true;
    let mut text = codec.as_ref().map(TextCodec::stream);
    let mut decode_error = None;
    let generation = generator.generate(&prompt, &options, |token| {
        match text.as_mut().map(|t| t.push(token)) {
            Some(Ok(piece)) => {
                let _ = write!(out, "{piece}");
            }
            Some(Err(e)) => decode_error = decode_error.take().or(Some(e)),
            None => {
                let _ = write!(out, "{}{token}", if first { "" } else { " " });
            }
        }
        let _ = out.flush();
        first = false;
    })?;
    if let Some(e) = decode_error {
        return Err(e.into());
    }
    if let Some(rest) = text.map(TextStream::finish).transpose()? {
        let _ = write!(out, "{rest}");
    }
    let _ = writeln!(out);
    drop(out);
    let s = generation.stats;
    eprintln!(
        "prompt {} tokens, generated {} ({}); time to first token {:.1} ms, prefill {:.1} tokens/s, decode {:.1} tokens/s",
        s.prompt_tokens,
        s.generated_tokens,
        match generation.stop {
            fpx::generate::StopReason::Eos => "stopped at an end-of-sequence token",
            fpx::generate::StopReason::MaxTokens => "reached --max-new-tokens",
        },
        s.time_to_first_token.as_secs_f64() * 1e3,
        s.prefill_tokens_per_second(),
        s.decode_tokens_per_second()
    );
    Ok(())
}
