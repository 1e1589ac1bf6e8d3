//! `fpx.Generator`: token-by-token generation with a decoder's KV cache, the loop `fpx generate`
//! runs (`fpx::Generator`), with the GIL released between the tokens it streams.

use crate::model::Model;
use crate::{error, failed, FpxError};
use fpx::generate::StopReason;
use fpx::{GenerateOptions, SamplingOptions, SignatureNames};
use pyo3::prelude::*;

/// A finished generation: the new tokens, why it stopped, and its timings.
#[pyclass(frozen, module = "fpx", get_all)]
#[derive(Debug, Clone)]
pub struct Generation {
    /// The generated token ids (the prompt left out).
    pub tokens: Vec<i64>,
    /// "eos" (an end token came) or "max_new_tokens".
    pub stop: &'static str,
    /// Seconds from the start to the first generated token.
    pub time_to_first_token: f64,
    /// Prompt tokens per second of the prefill step.
    pub prefill_tokens_per_second: f64,
    /// Generated tokens per second after the first (one decode step each).
    pub decode_tokens_per_second: f64,
}

#[pymethods]
impl Generation {
    fn __repr__(&self) -> String {
        format!(
            "Generation(tokens={:?}, stop='{}', time_to_first_token={:.4}, decode_tokens_per_second={:.2})",
            self.tokens, self.stop, self.time_to_first_token, self.decode_tokens_per_second
        )
    }
}

/// Generates tokens with a decoder graph (optimum / `torch.onnx.export` signature: `input_ids`,
/// `attention_mask`, `position_ids`, `past_key_values.N.key|value` in; `logits`, `present.N.*`
/// out). The keyword arguments rename those where a model differs.
#[pyclass(frozen, module = "fpx")]
pub struct Generator {
    model: Py<Model>,
    names: SignatureNames,
}

#[pymethods]
impl Generator {
    /// A generator over `model` (an `fpx.Model`); fails if the model is not a decoder with a
    /// KV cache under these names.
    #[new]
    #[pyo3(signature = (model, *, input_ids = "input_ids", attention_mask = "attention_mask", position_ids = "position_ids",
        logits = "logits", past_prefix = "past_key_values.", present_prefix = "present."))]
    fn new(
        model: Py<Model>,
        input_ids: &str,
        attention_mask: &str,
        position_ids: &str,
        logits: &str,
        past_prefix: &str,
        present_prefix: &str,
    ) -> PyResult<Generator> {
        let names = SignatureNames {
            input_ids: input_ids.into(),
            attention_mask: attention_mask.into(),
            position_ids: position_ids.into(),
            logits: logits.into(),
            past_prefix: past_prefix.into(),
            present_prefix: present_prefix.into(),
        };
        // Found once here so that a model that is no decoder fails now, not at the first call.
        fpx::Generator::new(&model.get().runnable, &names).map_err(|e| error(&e))?;
        Ok(Generator { model, names })
    }

    /// Generates up to `max_new_tokens` after `prompt_ids` (a list or 1-D array of ints):
    /// greedy at temperature 0, else sampled with `top_k`, `top_p` and `seed` (the same seed gives
    /// the same tokens). Stops early at any token in `eos`. `on_token(id)` is called as each
    /// token is produced (streaming).
    #[pyo3(signature = (prompt_ids, *, max_new_tokens = 32, temperature = 0.0, top_k = 0, top_p = 1.0, seed = 0, eos = Vec::new(), on_token = None))]
    #[allow(clippy::too_many_arguments)]
    fn generate(
        &self,
        py: Python<'_>,
        prompt_ids: Vec<i64>,
        max_new_tokens: usize,
        temperature: f32,
        top_k: usize,
        top_p: f32,
        seed: u64,
        eos: Vec<i64>,
        on_token: Option<Py<PyAny>>,
    ) -> PyResult<Generation> {
        let options = GenerateOptions { max_new_tokens, sampling: SamplingOptions { temperature, top_k, top_p, seed }, eos };
        let model = self.model.get();
        let (runnable, path, names) = (&model.runnable, &model.path, &self.names);
        let mut callback_error: Option<PyErr> = None;
        let result = py.detach(|| {
            let generator = fpx::Generator::new(runnable, names).map_err(|e| failed(fpx::Action::RunModel, path, e))?;
            generator
                .generate(&prompt_ids, &options, |token| {
                    let Some(cb) = on_token.as_ref().filter(|_| callback_error.is_none()) else { return };
                    if let Err(e) = Python::attach(|py| cb.call1(py, (token,))) {
                        callback_error = Some(e);
                    }
                })
                .map_err(|e| failed(fpx::Action::RunModel, path, e))
        });
        let generation = result.map_err(FpxError::new_err)?;
        if let Some(e) = callback_error {
            return Err(e);
        }
        let stats = generation.stats;
        Ok(Generation {
            tokens: generation.tokens,
            stop: match generation.stop {
                StopReason::Eos => "eos",
                StopReason::MaxTokens => "max_new_tokens",
            },
            time_to_first_token: stats.time_to_first_token.as_secs_f64(),
            prefill_tokens_per_second: stats.prefill_tokens_per_second(),
            decode_tokens_per_second: stats.decode_tokens_per_second(),
        })
    }

    /// The model's cache inputs as found (e.g. ["past_key_values.0.key", ...]).
    #[getter]
    fn cache_inputs(&self) -> PyResult<Vec<String>> {
        let g = fpx::Generator::new(&self.model.get().runnable, &self.names).map_err(|e| error(&e))?;
        Ok(g.signature().cache.iter().map(|c| c.past.clone()).collect())
    }
}
