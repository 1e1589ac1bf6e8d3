//! The checks of a manifest's code entries: every section they name exists and holds what it
//! should, kernel tables are well formed, names are unique, and every name that may become part
//! of a path (a GPU architecture, a module) is one plain path component. The reader runs them on
//! every file it opens, the writer on every manifest it writes.

use crate::format::{cpu_tables, gpu_tables, NodeKernels};
use crate::manifest as pb;
use crate::{ArtifactError, CpuKernel, CpuTiling, GpuKernel, SectionInfo, SectionKind};
use fpx_ir::ops::quant_matmul;
use fpx_ir::Graph;
use fpx_quant::layout::TILE_N;
use std::collections::BTreeMap;
use std::collections::BTreeSet;

/// A checked CPU code entry: [`crate::CpuCode`] with its shared object still in the file.
#[derive(Debug)]
pub(crate) struct CheckedCpu {
    pub target: String,
    pub features: Vec<String>,
    pub section: usize,
    pub kernels: Vec<NodeKernels<CpuKernel>>,
}

/// A checked PTX module entry.
#[derive(Debug)]
pub(crate) struct CheckedModule {
    pub name: String,
    pub section: usize,
    pub entries: Vec<String>,
}

/// A checked GPU code entry.
#[derive(Debug)]
pub(crate) struct CheckedPtx {
    pub arch: String,
    pub sm_count: u32,
    pub modules: Vec<CheckedModule>,
    pub kernels: Vec<NodeKernels<GpuKernel>>,
}

/// Whether `name` can be used as one file or folder name: non-empty, at most 200 bytes, only
/// ASCII letters, digits, `_`, `-` and `.`, and not `.` or `..`.
pub fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// Checks the CPU and PTX entries of `m` against the section table.
pub(crate) fn check_code(
    what: &str,
    m: &pb::Manifest,
    sections: &[SectionInfo],
) -> Result<(Vec<CheckedCpu>, Vec<CheckedPtx>), ArtifactError> {
    let section = |i: u32, want: SectionKind, who: &str| -> Result<usize, ArtifactError> {
        let s = sections.get(i as usize).ok_or_else(|| {
            ArtifactError::corrupt(what, format!("{who} refers to section #{i}, but there are only {} sections", sections.len()))
        })?;
        if s.kind != want {
            return Err(ArtifactError::corrupt(
                what,
                format!("{who} refers to section #{i} '{}', which holds a {}, not a {want}", s.name, s.kind),
            ));
        }
        Ok(i as usize)
    };
    let mut cpu = Vec::with_capacity(m.cpu_code.len());
    for c in &m.cpu_code {
        let who = format!("the CPU code for '{}'", c.target);
        if cpu.iter().any(|e: &CheckedCpu| e.target == c.target) {
            return Err(ArtifactError::corrupt(what, format!("{who} is listed twice")));
        }
        let section = section(c.section, SectionKind::CpuSharedObject, &who)?;
        let kernels = cpu_tables(c).map_err(|e| ArtifactError::corrupt(what, format!("{who}: {e}")))?;
        for k in &kernels {
            for (_, e) in k.table.rows() {
                if e.symbol.is_empty() {
                    return Err(ArtifactError::corrupt(what, format!("{who}: node '{}' has a kernel without a symbol", k.node)));
                }
                if e.column_split == 0 || !(e.column_split as usize).is_multiple_of(TILE_N) {
                    let message = format!("{who}: node '{}' splits columns at multiples of {}, not of {TILE_N}", k.node, e.column_split);
                    return Err(ArtifactError::corrupt(what, message));
                }
                if let Some(c) = e.config.filter(|c| !c.tiling.is_valid()) {
                    let message =
                        format!("{who}: node '{}' records the kernel blocking {}, outside 1..={}", k.node, c.tiling, CpuTiling::MAX);
                    return Err(ArtifactError::corrupt(what, message));
                }
            }
        }
        cpu.push(CheckedCpu { target: c.target.clone(), features: c.features.clone(), section, kernels });
    }
    let mut ptx: Vec<CheckedPtx> = Vec::with_capacity(m.ptx_code.len());
    for p in &m.ptx_code {
        if !is_plain_name(&p.arch) {
            return Err(ArtifactError::corrupt(what, format!("GPU code names the architecture {:?}, which is not a plain name", p.arch)));
        }
        if ptx.iter().any(|e| e.arch == p.arch) {
            return Err(ArtifactError::corrupt(what, format!("the GPU code for '{}' is listed twice", p.arch)));
        }
        ptx.push(check_ptx(what, p, &section)?);
    }
    Ok((cpu, ptx))
}

/// Checks one architecture's GPU code: modules point at PTX sections, names are plain and
/// unique, every GEMM names an existing module and entry, and each node's table is well formed.
fn check_ptx(
    what: &str,
    p: &pb::PtxCode,
    section: &dyn Fn(u32, SectionKind, &str) -> Result<usize, ArtifactError>,
) -> Result<CheckedPtx, ArtifactError> {
    let bad = |message: String| ArtifactError::corrupt(what, format!("the GPU code for '{}': {message}", p.arch));
    let mut modules: Vec<CheckedModule> = Vec::with_capacity(p.modules.len());
    let mut names = BTreeSet::new();
    for m in &p.modules {
        if !is_plain_name(&m.name) {
            return Err(bad(format!("module name {:?} is not a plain name", m.name)));
        }
        if !names.insert(m.name.as_str()) {
            return Err(bad(format!("module '{}' is listed twice", m.name)));
        }
        let s = section(m.section, SectionKind::Ptx, &format!("PTX module '{}' for '{}'", m.name, p.arch))?;
        modules.push(CheckedModule { name: m.name.clone(), section: s, entries: m.entries.clone() });
    }
    let kernels = gpu_tables(p).map_err(bad)?;
    for k in &kernels {
        for (_, g) in k.table.rows() {
            let module = modules
                .iter()
                .find(|e| e.name == g.module)
                .ok_or_else(|| bad(format!("node '{}' uses module '{}', which is not there", k.node, g.module)))?;
            for entry in std::iter::once(&g.kernel).chain(g.reduce.as_ref()) {
                if !module.entries.contains(entry) {
                    return Err(bad(format!("node '{}' uses kernel '{entry}', which module '{}' does not have", k.node, g.module)));
                }
            }
        }
    }
    Ok(CheckedPtx { arch: p.arch.clone(), sm_count: p.sm_count, modules, kernels })
}

/// Checks the kernel tables against the graph they serve: each names a quantized product of the
/// graph; CPU kernels take the activations the node's [`fpx_quant::QuantGemm`] says, and a CPU
/// code entry has a table for every quantized product (none may silently fall back to the slow
/// reference kernel); GPU kernels were tiled for the node's format, N and K.
pub(crate) fn check_tables(what: &str, graph: &Graph, cpu: &[CheckedCpu], ptx: &[CheckedPtx]) -> Result<(), ArtifactError> {
    let mut products = BTreeMap::new();
    for id in graph.node_ids() {
        let n = graph.node(id);
        if quant_matmul::is_quant_matmul(n) {
            let gemm = quant_matmul::read(n).map_err(|source| ArtifactError::Ir { what: what.to_string(), source })?;
            products.insert(n.name.as_str(), gemm);
        }
    }
    let product = |who: &str, node: &str| {
        products
            .get(node)
            .copied()
            .ok_or_else(|| ArtifactError::corrupt(what, format!("{who}: node '{node}' is not a quantized product of the graph")))
    };
    for c in cpu {
        let who = format!("the CPU code for '{}'", c.target);
        for k in &c.kernels {
            let gemm = product(&who, &k.node)?;
            if let Some((_, e)) = k.table.rows().iter().find(|(_, e)| e.activations != gemm.activations) {
                let message = format!(
                    "{who}: kernel '{}' takes {} activations, but node '{}' multiplies {}",
                    e.symbol, e.activations, k.node, gemm.activations
                );
                return Err(ArtifactError::corrupt(what, message));
            }
        }
        if let Some(node) = products.keys().find(|n| !c.kernels.iter().any(|k| k.node == **n)) {
            return Err(ArtifactError::corrupt(what, format!("{who} has no kernels for the quantized product '{node}'")));
        }
    }
    for p in ptx {
        let who = format!("the GPU code for '{}'", p.arch);
        for k in &p.kernels {
            let gemm = product(&who, &k.node)?;
            for (_, g) in k.table.rows() {
                let t = &g.tiles;
                if t.format != gemm.format || t.n != gemm.n as u64 || t.k != gemm.k as u64 {
                    let message = format!(
                        "{who}: kernel '{}' was tiled for {} n={} k={}, but node '{}' is {gemm}",
                        g.kernel, t.format, t.n, t.k, k.node
                    );
                    return Err(ArtifactError::corrupt(what, message));
                }
            }
        }
    }
    Ok(())
}
