//! `fpx report`: run a model in FP32 and under each weight scheme on the same inputs, and say
//! how far each drifts — per output (max-abs, relative error, cosine) and per layer (weight
//! relative RMSE) — as a text table or one self-contained HTML page with plots.

use crate::{Activations, Error, Model, QuantizeOptions, WeightScheme};
use fpx_ir::Tensor;
use fpx_passes::{LayerQuant, PassError};
use fpx_quant::lorc::FactorStorage;
use fpx_quant::Format;
use std::fmt::Write;
use std::path::Path;
use std::time::Instant;

/// The schemes `fpx report` compares when none are named.
pub const DEFAULT_SCHEMES: &str = "fp6-e3m2,fp6-e2m3,fp6-auto,fp5-e2m2,fp4-e2m1,int4,int4:g128,int8";

/// One scheme to compare: a label (`int4:g128`) and its options.
#[derive(Debug, Clone, PartialEq)]
pub struct SchemeSpec {
    /// As the user wrote it.
    pub label: String,
    /// The options it stands for.
    pub options: QuantizeOptions,
}

/// Parses `a,b:g128,c:a8,d:p2:fp8:lorc8,...`: scheme names, each optionally followed by modifiers
/// in any order: `:gN` for a group size along K, `:p2` for power-of-two scales, the activations
/// (`:a8` for int8, `:fp8` for FP8 e4m3, also `:fp8-e4m3`, or `:fp8-e5m2`) and `:lorcR` for a
/// LoRC correction of rank R (`:lorcR@FORMAT` with factors stored in a float format, e.g.
/// `:lorc8@fp8-e4m3`). `group_size` applies to
/// every scheme without its own `:gN`; `scale_search` and `pow2_scales` (`--scale-pow2`) to every
/// scheme.
pub fn parse_schemes(list: &str, group_size: Option<usize>, scale_search: bool, pow2_scales: bool) -> Result<Vec<SchemeSpec>, Error> {
    let mut out = Vec::new();
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let bad = |message: String| Error::from(PassError::Option(format!("'{item}': {message}")));
        let mut parts = item.split(':');
        let name = parts.next().unwrap_or_default();
        let (mut group, mut pow2, mut activations, mut lorc) = (None, pow2_scales, None, None);
        for m in parts {
            let act = match m {
                "a8" | "int8" => Some(Activations::Int8),
                "fp8" | "fp8-e4m3" | "e4m3" => Some(Activations::Fp8E4M3),
                "fp8-e5m2" | "e5m2" => Some(Activations::Fp8E5M2),
                _ => None,
            };
            if let Some(a) = act {
                if activations.replace(a).is_some() {
                    return Err(bad("the activations are given twice".into()));
                }
            } else if m == "p2" {
                pow2 = true;
            } else if let Some(spec) = m.strip_prefix("lorc") {
                // `lorcR` or `lorcR@FORMAT` (the factors' storage).
                let (r, storage) = match spec.split_once('@') {
                    None => (spec, FactorStorage::F16),
                    Some((r, f)) => (
                        r,
                        FactorStorage::parse(f)
                            .ok_or_else(|| bad(format!("unknown LoRC factor storage '{f}' after '@' (f16 or a float format)")))?,
                    ),
                };
                let r: usize = r.parse().map_err(|_| bad("the rank after ':lorc' must be a number".into()))?;
                if lorc.replace((r, storage)).is_some() {
                    return Err(bad("the LoRC rank is given twice".into()));
                }
            } else if let Some(g) = m.strip_prefix('g') {
                let g: usize = g.parse().map_err(|_| bad("the group size after ':g' must be a number".into()))?;
                if group.replace(g).is_some() {
                    return Err(bad("the group size is given twice".into()));
                }
            } else {
                return Err(bad(format!(
                    "unknown modifier ':{m}' (use :gN for groups, :p2 for power-of-two scales, :a8, :fp8 or :fp8-e5m2 for the activations, :lorcR or :lorcR@FORMAT for a LoRC rank and factor storage)"
                )));
            }
        }
        let scheme = WeightScheme::parse(name)?;
        if scheme == WeightScheme::None {
            return Err(
                PassError::Option("'none' is the FP32 baseline every scheme is compared with; leave it out of --schemes".into()).into()
            );
        }
        let options = QuantizeOptions {
            group_size: group.or(group_size),
            scale_search,
            pow2_scales: pow2,
            activations: activations.unwrap_or_default(),
            lorc_rank: lorc.map(|(r, _)| r),
            lorc_factors: lorc.map_or(FactorStorage::F16, |(_, s)| s),
            ..QuantizeOptions::new(scheme)
        };
        options.validate()?;
        out.push(SchemeSpec { label: item.to_string(), options });
    }
    if out.is_empty() {
        return Err(PassError::Option("no schemes given".into()).into());
    }
    Ok(out)
}

/// How one output of a quantized model differs from FP32.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputError {
    /// Output name.
    pub name: String,
    /// Largest absolute difference.
    pub max_abs: f64,
    /// ‖y − y₃₂‖ / ‖y₃₂‖.
    pub rel: f64,
    /// Cosine between the flattened outputs.
    pub cosine: f64,
    /// Mean cosine over rows of the last dimension (e.g. per token).
    pub mean_row_cosine: f64,
    /// Mean cosine of the mask-pooled rows (sentence embeddings), when a pooling mask is given
    /// and the output is `[batch, seq, dim]`.
    pub pooled_cosine: Option<f64>,
}

/// What `fpx report` compares and how.
#[derive(Debug, Clone, Default)]
pub struct ReportOptions {
    /// Schemes to compare with FP32.
    pub schemes: Vec<SchemeSpec>,
    /// The layer whose weight histogram the HTML page draws (default: the first weight product).
    pub histogram_layer: Option<String>,
    /// A `[batch, seq]` input (e.g. `attention_mask`) to mean-pool `[batch, seq, dim]` outputs
    /// over, as sentence-embedding models are used.
    pub pool_mask: Option<String>,
}

/// Mean over rows where `mask` is non-zero, per batch: `[batch, seq, dim]` → `[batch][dim]`.
pub fn mean_pool(h: &Tensor, mask: &Tensor) -> Option<Vec<Vec<f64>>> {
    let [b, s, d] = *h.shape() else { return None };
    if mask.shape() != [b, s] {
        return None;
    }
    let (hv, mv) = (h.to_f64_vec(), mask.to_f64_vec());
    Some(
        (0..b)
            .map(|i| {
                let count: f64 = (0..s).map(|t| mv[i * s + t]).sum::<f64>().max(1.0);
                (0..d).map(|j| (0..s).map(|t| hv[(i * s + t) * d + j] * mv[i * s + t]).sum::<f64>() / count).collect()
            })
            .collect(),
    )
}

fn pooled_cosine(got: &Tensor, fp32: &Tensor, mask: Option<&Tensor>) -> Option<f64> {
    let (a, b) = (mean_pool(got, mask?)?, mean_pool(fp32, mask?)?);
    Some(a.iter().zip(&b).map(|(x, y)| cosine(x, y)).sum::<f64>() / a.len().max(1) as f64)
}

/// Results for one scheme.
#[derive(Debug, Clone)]
pub struct SchemeResult {
    /// The scheme's label.
    pub label: String,
    /// Per output, vs FP32.
    pub outputs: Vec<OutputError>,
    /// Per quantized layer.
    pub layers: Vec<LayerQuant>,
    /// Bytes of the original weights.
    pub weight_bytes_in: usize,
    /// Bytes of codes plus scales (plus LoRC factors).
    pub weight_bytes_out: usize,
    /// Parameters of the quantized weights (each distinct weight once): what bytes per
    /// parameter divide by.
    pub weight_params: usize,
    /// Time of one run on the reference path.
    pub run_ms: f64,
    /// The model's outputs under this scheme (for callers that compare further).
    pub values: Vec<(String, Tensor)>,
}

/// The weights of one layer, each normalized by its channel's absmax (so every value lies in
/// [-1, 1], where the format grids can be drawn).
#[derive(Debug, Clone)]
pub struct LayerHistogram {
    /// Node name.
    pub layer: String,
    /// Normalized weights.
    pub values: Vec<f32>,
}

/// The whole comparison.
#[derive(Debug, Clone)]
pub struct AccuracyReport {
    /// Model path, as given.
    pub model: String,
    /// FP32 outputs.
    pub fp32: Vec<(String, Tensor)>,
    /// Time of one FP32 run.
    pub fp32_ms: f64,
    /// One entry per scheme, in the order asked.
    pub schemes: Vec<SchemeResult>,
    /// The weight histogram of the chosen layer.
    pub histogram: Option<LayerHistogram>,
}

/// Cosine similarity of two equally long vectors (1 when both are zero).
pub fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let (mut ab, mut aa, mut bb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    if aa == 0.0 && bb == 0.0 {
        1.0
    } else {
        ab / (aa.sqrt() * bb.sqrt()).max(f64::MIN_POSITIVE)
    }
}

/// Compares one output with its FP32 value (pooled over `mask` too, when given and shapes fit).
pub fn compare_output(name: &str, got: &Tensor, fp32: &Tensor, mask: Option<&Tensor>) -> OutputError {
    let (g, w) = (got.to_f64_vec(), fp32.to_f64_vec());
    let max_abs = g.iter().zip(&w).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    let diff: f64 = g.iter().zip(&w).map(|(a, b)| (a - b) * (a - b)).sum::<f64>().sqrt();
    let norm: f64 = w.iter().map(|b| b * b).sum::<f64>().sqrt();
    let row = fp32.shape().last().copied().unwrap_or(1).max(1);
    let rows = g.chunks(row).zip(w.chunks(row)).map(|(a, b)| cosine(a, b)).collect::<Vec<_>>();
    OutputError {
        name: name.to_string(),
        max_abs,
        rel: if norm > 0.0 { diff / norm } else { diff },
        cosine: cosine(&g, &w),
        mean_row_cosine: rows.iter().sum::<f64>() / rows.len().max(1) as f64,
        pooled_cosine: pooled_cosine(got, fp32, mask),
    }
}

fn time<T>(f: impl FnOnce() -> Result<T, Error>) -> Result<(T, f64), Error> {
    let t = Instant::now();
    let v = f()?;
    Ok((v, t.elapsed().as_secs_f64() * 1e3))
}

/// Per-channel-normalized weights of the MatMul/Gemm named `layer` (or the first one).
fn layer_histogram(fp32: &Model, layer: Option<&str>) -> Option<LayerHistogram> {
    let g = fp32.graph();
    let site = fpx_passes::weight_sites(g).ok()?.into_iter().find(|s| layer.is_none_or(|l| l == g.node(s.node).name))?;
    let node = g.node(site.node);
    let w = g.load_constant(site.weight).ok()??;
    let transposed = site.transposed;
    let a = w.to_f32();
    let a = if transposed { a.t().to_owned() } else { a };
    let (k, n) = (a.shape()[0], a.shape()[1]);
    let mut absmax = vec![0f32; n];
    for r in 0..k {
        for (c, m) in absmax.iter_mut().enumerate() {
            *m = m.max(a[[r, c]].abs());
        }
    }
    let values =
        (0..k).flat_map(|r| (0..n).map(move |c| (r, c))).map(|(r, c)| if absmax[c] > 0.0 { a[[r, c]] / absmax[c] } else { 0.0 }).collect();
    Some(LayerHistogram { layer: node.name.clone(), values })
}

/// Runs FP32 and every scheme of `options` on `inputs` and compares.
pub fn accuracy_report(path: &Path, inputs: Vec<(String, Tensor)>, options: &ReportOptions) -> Result<AccuracyReport, Error> {
    let histogram_layer = options.histogram_layer.as_deref();
    let mask = match &options.pool_mask {
        None => None,
        Some(m) => Some(inputs.iter().find(|(n, _)| n == m).map(|(_, t)| t.clone()).ok_or_else(|| {
            PassError::Option(format!(
                "--pool-mask '{m}' is not one of the given inputs ({})",
                inputs.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", ")
            ))
        })?),
    };
    let schemes = &options.schemes;
    let graph = fpx_onnx::load_model(path)?;
    let fp32_model = Model::from_graph(graph.clone())?;
    let (fp32, fp32_ms) = time(|| fp32_model.run(inputs.clone()))?;
    let histogram = layer_histogram(&fp32_model, histogram_layer);
    if let (Some(l), None) = (histogram_layer, &histogram) {
        return Err(PassError::Option(format!("--layer '{l}' is not a MatMul/Gemm with a constant 2-D weight")).into());
    }
    let mut results = Vec::new();
    for spec in schemes {
        let model = Model::from_graph_with(graph.clone(), &spec.options)?;
        let (values, run_ms) = time(|| model.run(inputs.clone()))?;
        let q = model.quantization().cloned().unwrap_or_default();
        let outputs = values.iter().zip(&fp32).map(|((n, v), (_, w))| compare_output(n, v, w, mask.as_ref())).collect();
        let mut seen = std::collections::HashSet::new();
        let weight_params = q.layers.iter().filter(|l| seen.insert(l.weight.as_str())).map(|l| l.k * l.n).sum();
        results.push(SchemeResult {
            label: spec.label.clone(),
            outputs,
            layers: q.layers,
            weight_bytes_in: q.weight_bytes_in,
            weight_bytes_out: q.weight_bytes_out,
            weight_params,
            run_ms,
            values,
        });
    }
    Ok(AccuracyReport { model: path.display().to_string(), fp32, fp32_ms, schemes: results, histogram })
}

impl SchemeResult {
    /// Bytes of the quantized weights (codes, scales, LoRC factors) per parameter: 4 for FP32,
    /// 0.75 for FP6 codes alone.
    pub fn bytes_per_param(&self) -> f64 {
        self.weight_bytes_out as f64 / self.weight_params.max(1) as f64
    }
}

impl AccuracyReport {
    /// The text tables `fpx report` prints.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "accuracy of weight schemes vs FP32 for {} (FP32 run: {:.1} ms)\n", self.model, self.fp32_ms);
        // The scheme column fits the longest label (`fp4-e2m1:g128:p2:a8`).
        let w = self.schemes.iter().map(|r| r.label.len()).max().unwrap_or(0).max(14);
        let _ = writeln!(
            s,
            "{:<w$} {:<24} {:>11} {:>11} {:>10} {:>10} {:>10} {:>9} {:>9} {:>8}",
            "scheme", "output", "max_abs", "rel_err", "cosine", "row_cos", "pooled_cos", "weights", "ratio", "B/param"
        );
        for r in &self.schemes {
            for o in &r.outputs {
                let ratio = if r.weight_bytes_out > 0 { r.weight_bytes_in as f64 / r.weight_bytes_out as f64 } else { 0.0 };
                let _ = writeln!(
                    s,
                    "{:<w$} {:<24} {:>11.4e} {:>11.4e} {:>10.6} {:>10.6} {:>10} {:>8.2}M {:>8.2}x {:>8.4}",
                    r.label,
                    o.name,
                    o.max_abs,
                    o.rel,
                    o.cosine,
                    o.mean_row_cosine,
                    o.pooled_cosine.map_or("-".to_string(), |c| format!("{c:.6}")),
                    r.weight_bytes_out as f64 / 1e6,
                    ratio,
                    r.bytes_per_param()
                );
            }
        }
        for r in self.schemes.iter().filter(|r| r.layers.iter().any(|l| l.tried.len() > 1)) {
            let mut counts: std::collections::BTreeMap<&str, usize> = Default::default();
            for l in &r.layers {
                *counts.entry(l.format.name()).or_default() += 1;
            }
            let _ = writeln!(
                s,
                "\n{} picked: {}",
                r.label,
                counts.iter().map(|(f, n)| format!("{f} for {n} layers")).collect::<Vec<_>>().join(", ")
            );
        }
        let _ = writeln!(s, "\nper-layer weight relative RMSE (‖W − Ŵ‖ / ‖W‖):");
        let _ = write!(s, "{:<40} {:>6} {:>6}", "layer", "K", "N");
        for r in &self.schemes {
            let _ = write!(s, " {:>11}", r.label);
        }
        let _ = writeln!(s);
        if let Some(first) = self.schemes.first() {
            for (i, l) in first.layers.iter().enumerate() {
                let _ = write!(s, "{:<40} {:>6} {:>6}", truncate(&l.node, 40), l.k, l.n);
                for r in &self.schemes {
                    match r.layers.get(i) {
                        Some(x) => {
                            let _ = write!(s, " {:>11.5}", x.rel_rmse);
                        }
                        None => {
                            let _ = write!(s, " {:>11}", "-");
                        }
                    }
                }
                let _ = writeln!(s);
            }
        }
        s
    }

    /// One self-contained HTML page: the tables, per-layer error bars for every scheme, and the
    /// chosen layer's weight histogram with the FP6 and INT4 grids over it.
    pub fn to_html(&self) -> String {
        let mut h = String::new();
        let _ = write!(
            h,
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>fpx accuracy report</title><style>\
body{{font-family:sans-serif;margin:2em;color:#222}} table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}} \
th{{background:#f3f3f3}} td:first-child,td:nth-child(2){{text-align:left}} .legend span{{display:inline-block;margin-right:1em}}</style></head><body>\
<h1>fpx accuracy report</h1><p>Model <code>{}</code>; FP32 run {:.1} ms.</p><h2>Outputs vs FP32</h2><table><tr><th>scheme</th><th>output</th><th>max abs</th><th>rel err</th><th>cosine</th><th>row cosine</th><th>pooled cosine</th><th>weights (MB)</th><th>bytes/param</th></tr>",
            esc(&self.model),
            self.fp32_ms
        );
        for r in &self.schemes {
            for o in &r.outputs {
                let _ = write!(
                    h,
                    "<tr><td>{}</td><td>{}</td><td>{:.4e}</td><td>{:.4e}</td><td>{:.6}</td><td>{:.6}</td><td>{}</td><td>{:.2}</td><td>{:.4}</td></tr>",
                    esc(&r.label),
                    esc(&o.name),
                    o.max_abs,
                    o.rel,
                    o.cosine,
                    o.mean_row_cosine,
                    o.pooled_cosine.map_or("-".to_string(), |c| format!("{c:.6}")),
                    r.weight_bytes_out as f64 / 1e6,
                    r.bytes_per_param()
                );
            }
        }
        h.push_str("</table><h2>Per-layer weight relative RMSE</h2>");
        h.push_str(&self.layer_error_svg());
        if let Some(hist) = &self.histogram {
            let _ = write!(h, "<h2>Weights of <code>{}</code>, normalized per channel, with format grids</h2>", esc(&hist.layer));
            h.push_str(&histogram_svg(&hist.values));
        }
        h.push_str("</body></html>\n");
        h
    }

    fn layer_error_svg(&self) -> String {
        let Some(first) = self.schemes.first() else { return String::new() };
        let layers = first.layers.len();
        let ns = self.schemes.len();
        let (bar, gap, height, left, top) = (6.0, 6.0, 260.0, 60.0, 20.0);
        let group = bar * ns as f64 + gap;
        let width = left + group * layers as f64 + 20.0;
        let max = self.schemes.iter().flat_map(|r| r.layers.iter().map(|l| l.rel_rmse)).fold(1e-9, f64::max);
        let mut s = format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" height=\"{:.0}\">", height + top + 40.0);
        for t in 0..=4 {
            let v = max * t as f64 / 4.0;
            let y = top + height - height * t as f64 / 4.0;
            let _ = write!(s, "<line x1=\"{left}\" x2=\"{width:.0}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#eee\"/><text x=\"4\" y=\"{:.1}\" font-size=\"10\">{v:.3}</text>", y + 3.0);
        }
        for (si, r) in self.schemes.iter().enumerate() {
            for (li, l) in r.layers.iter().enumerate() {
                let hgt = height * l.rel_rmse / max;
                let x = left + li as f64 * group + si as f64 * bar;
                let _ = write!(
                    s,
                    "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{bar}\" height=\"{hgt:.1}\" fill=\"{}\"><title>{} {}: {:.5}</title></rect>",
                    top + height - hgt,
                    color(si),
                    esc(&r.label),
                    esc(&l.node),
                    l.rel_rmse
                );
            }
        }
        let _ = write!(s, "<text x=\"{left}\" y=\"{:.0}\" font-size=\"11\">layers in graph order (hover a bar for its name)</text></svg><div class=\"legend\">", height + top + 30.0);
        for (si, r) in self.schemes.iter().enumerate() {
            let _ = write!(
                s,
                "<span><svg width=\"10\" height=\"10\"><rect width=\"10\" height=\"10\" fill=\"{}\"/></svg> {}</span>",
                color(si),
                esc(&r.label)
            );
        }
        s.push_str("</div>");
        s
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let tail: String = s.chars().rev().take(n - 1).collect::<Vec<_>>().into_iter().rev().collect();
        format!("…{tail}")
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn color(i: usize) -> &'static str {
    const C: [&str; 10] = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
    C[i % C.len()]
}

/// A histogram of values in [-1, 1] with the grids of FP6 e3m2, FP6 e2m3 and INT4 (each format's
/// representable values divided by its max, as per-channel absmax scaling maps them).
fn histogram_svg(values: &[f32]) -> String {
    const BINS: usize = 200;
    let (w, hgt, left, top) = (900.0, 260.0, 40.0, 10.0);
    let mut counts = [0usize; BINS];
    for v in values {
        let b = (((v + 1.0) / 2.0) * BINS as f32).floor().clamp(0.0, BINS as f32 - 1.0) as usize;
        counts[b] += 1;
    }
    let max = *counts.iter().max().unwrap_or(&1) as f64;
    let x = |v: f64| left + (v + 1.0) / 2.0 * w;
    let mut s = format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{:.0}\" height=\"{:.0}\">", w + left + 20.0, hgt + top + 110.0);
    for (i, c) in counts.iter().enumerate() {
        let bh = hgt * (*c as f64 / max).sqrt();
        let _ = write!(
            s,
            "<rect x=\"{:.2}\" y=\"{:.2}\" width=\"{:.2}\" height=\"{bh:.2}\" fill=\"#9ab\"/>",
            left + i as f64 * w / BINS as f64,
            top + hgt - bh,
            w / BINS as f64
        );
    }
    let grids = [(Format::Fp6E3M2, "#d62728", 0.0), (Format::Fp6E2M3, "#2ca02c", 22.0), (Format::Int4, "#1f77b4", 44.0)];
    for (f, col, dy) in grids {
        let m = f.max_value();
        let y = top + hgt + 10.0 + dy;
        for c in f.codes() {
            let v = f.decode(c) as f64 / m;
            let _ = write!(s, "<line x1=\"{:.2}\" x2=\"{:.2}\" y1=\"{y:.1}\" y2=\"{:.1}\" stroke=\"{col}\"/>", x(v), x(v), y + 16.0);
        }
        let _ = write!(s, "<text x=\"{:.0}\" y=\"{:.1}\" font-size=\"11\" fill=\"{col}\">{}</text>", w + left - 60.0, y + 12.0, f.name());
    }
    let _ = write!(s, "<text x=\"{left}\" y=\"{:.0}\" font-size=\"11\">weight / channel absmax (bar height: sqrt of count); ticks: each format's grid</text></svg>", hgt + top + 100.0);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheme_lists_parse_with_groups() {
        let v = parse_schemes("fp6-e3m2, int4:g128", None, false, false).unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v[1].options.group_size, Some(128));
        assert_eq!(v[0].options.group_size, None);
        assert!(parse_schemes("fp6-e3m2,fp9", None, false, false).unwrap_err().to_string().contains("'fp9'"));
        assert!(parse_schemes("int4:gx", None, false, false).is_err());
        assert!(parse_schemes("int4:g0", None, false, false).unwrap_err().to_string().contains("at least 1"));
        assert!(parse_schemes("none", None, false, false).is_err());
        let v = parse_schemes("fp6-e2m3:a8,int4:g64:a8,int4", None, false, false).unwrap();
        assert_eq!(v.iter().map(|s| s.options.activations).collect::<Vec<_>>(), [Activations::Int8, Activations::Int8, Activations::F32]);
        assert_eq!((v[1].options.group_size, v[1].label.as_str()), (Some(64), "int4:g64:a8"));
        assert!(parse_schemes("fp6-e3m2:a8", None, false, false).unwrap_err().to_string().contains("fp6-e3m2 has none"));
        let v = parse_schemes("fp4-e2m1:g128:p2,fp4-e2m1:p2:a8,int4", None, false, false).unwrap();
        assert_eq!((v[0].options.group_size, v[0].options.pow2_scales), (Some(128), true));
        assert_eq!((v[1].options.pow2_scales, v[1].options.activations), (true, Activations::Int8));
        assert!(!v[2].options.pow2_scales);
        assert!(parse_schemes("int4", None, false, true).unwrap()[0].options.pow2_scales, "--scale-pow2 applies to every scheme");
        // Modifiers in any order; FP8 activations with any format.
        let v = parse_schemes("fp4-e2m1:fp8:p2:g128,int4:fp8-e5m2,fp6-e3m2:e4m3", None, false, false).unwrap();
        let got: Vec<_> = v.iter().map(|s| (s.options.activations, s.options.pow2_scales, s.options.group_size)).collect();
        assert_eq!(
            got,
            [(Activations::Fp8E4M3, true, Some(128)), (Activations::Fp8E5M2, false, None), (Activations::Fp8E4M3, false, None)]
        );
        assert!(parse_schemes("int4:a8:fp8", None, false, false).unwrap_err().to_string().contains("twice"));
        assert!(parse_schemes("int4:g32:g64", None, false, false).unwrap_err().to_string().contains("twice"));
        assert!(parse_schemes("int4:q9", None, false, false).unwrap_err().to_string().contains("unknown modifier ':q9'"));
    }

    #[test]
    fn cosine_and_errors_are_right_on_known_vectors() {
        assert!((cosine(&[1.0, 0.0], &[0.0, 1.0])).abs() < 1e-12);
        assert!((cosine(&[1.0, 2.0], &[2.0, 4.0]) - 1.0).abs() < 1e-12);
        let a = Tensor::from(fpx_ir::ndarray::ArrayD::from_shape_vec(fpx_ir::ndarray::IxDyn(&[2, 2]), vec![1f32, 0.0, 0.0, 1.0]).unwrap());
        let b = Tensor::from(fpx_ir::ndarray::ArrayD::from_shape_vec(fpx_ir::ndarray::IxDyn(&[2, 2]), vec![1f32, 0.0, 0.0, -1.0]).unwrap());
        let e = compare_output("y", &b, &a, None);
        assert_eq!(e.max_abs, 2.0);
        assert!((e.rel - 2f64.sqrt()).abs() < 1e-12);
        assert!(e.cosine.abs() < 1e-12);
        assert!(e.mean_row_cosine.abs() < 1e-12, "rows: (1,0)·(1,0)=1 and (0,1)·(0,-1)=-1 average to 0");
    }
}
