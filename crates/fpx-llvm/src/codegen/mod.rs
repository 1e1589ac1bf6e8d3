//! LLVM IR for the quantized matrix-product kernels (see the crate docs for the scheme).
//!
//! Vocabulary used below (all from [`fpx_quant::layout`]): a *tile* is 16 output rows × 32 K
//! columns; its low plane is 2 *halves* (`j`) × 32 *lanes* of `u32` words, lane `l = 4g + t`
//! holding rows `g` and `g + 8` at columns `16j + 2t (+1) (+8)`; *pair* `p` of a word is its
//! elements `2p` and `2p + 1`: row `g + 8 (p & 1)`, columns `16j + 8 (p >> 1) + 2t` and `+1`.
//! A *T-vector* is `W` words of one half reordered so that its two halves (*chunks*, `W/2`
//! lanes each) each have a single `t`: after conversion a chunk of pair `p` is a `<W x float>`
//! of (row, column parity) lanes for the two columns `col, col + 1`, multiplied by a broadcast
//! of `x[col], x[col + 1]` and accumulated into the accumulator of its row set.
//!
//! The modules: [`builder`] (the [`Gen`] context and IR helpers), [`lanes`] (the transpose's
//! lane bookkeeping), [`decode`] (format decoders: packed codes to FP16 and `f32`),
//! [`epilogue`] (scales, bias, reduction, stores of y), [`f32`](mod@f32) (the
//! `f32`-activation loops), [`int8`] (the AVX2 int8-activation panel loops), [`int8_direct`]
//! (the AVX2 int8 GEMV, tiles decoded in registers) and [`vnni`] (the
//! AVX-512 VBMI/VNNI int8 loops). This module holds the entry points and the per-kernel
//! driver.

use fpx_quant::layout::{PackedShape, TILE_K, TILE_N};
use fpx_quant::Format;
use inkwell::context::Context;
use inkwell::module::Module;
use inkwell::passes::PassBuilderOptions;
use inkwell::targets::FileType;
use inkwell::types::BasicMetadataTypeEnum;
use inkwell::values::{BasicValueEnum, FunctionValue, IntValue, PointerValue};
use inkwell::IntPredicate;

use crate::target::{Isa, Machine};
use crate::{Activations, CpuTiling, LlvmError, QuantGemm, Variant};

mod builder;
mod decode;
mod epilogue;
mod f32;
mod int8;
mod int8_direct;
mod lanes;
mod vnni;

use builder::Gen;
use decode::Dequant;
use lanes::Lanes;

/// Results of code generation.
type R<T> = Result<T, LlvmError>;

/// `log2(TILE_N)`: a column's n-tile is `column >> TILE_N_SHIFT`.
const TILE_N_SHIFT: u64 = TILE_N.trailing_zeros() as u64;
const _: () = assert!(TILE_N.is_power_of_two());

/// Whether `format` has a CPU kernel.
pub(crate) fn supports(format: Format) -> bool {
    Dequant::of(format).is_some()
}

/// Compile-time facts about one kernel.
struct Plan {
    /// The spec.
    spec: QuantGemm,
    /// How its codes are decoded to `f32`.
    dq: Dequant,
    /// Tiles along K.
    kt: u64,
    /// Tiles along K whose 32 columns are all valid.
    ft: u64,
    /// Valid columns of the last tile (32 if K is a multiple of 32).
    krem: u32,
    /// Bytes of the low plane.
    low_bytes: u64,
    /// Scale groups along K.
    groups: u64,
    /// The group size (K for one group).
    group: u64,
    /// Tiles per group when group boundaries fall on tile boundaries.
    tpg: Option<u64>,
}

impl Plan {
    /// The plan of a validated spec.
    fn new(spec: &QuantGemm) -> Plan {
        let dq = Dequant::of(spec.format).expect("validated format");
        let shape = PackedShape::new(spec.n, spec.k, spec.format.bits());
        let kt = shape.k_tiles() as u64;
        let krem = (spec.k - (kt as usize - 1) * TILE_K) as u32;
        let ft = if krem == TILE_K as u32 { kt } else { kt - 1 };
        let groups = spec.groups() as u64;
        let group = if groups == 1 { spec.k as u64 } else { spec.group_size as u64 };
        let tpg = if groups == 1 {
            Some(kt)
        } else if group.is_multiple_of(TILE_K as u64) {
            Some(group / TILE_K as u64)
        } else {
            None
        };
        Plan { spec: *spec, dq, kt, ft, krem, low_bytes: shape.low_plane_bytes() as u64, groups, group, tpg }
    }

    /// K.
    fn k(&self) -> u64 {
        self.spec.k as u64
    }

    /// N.
    fn n(&self) -> u64 {
        self.spec.n as u64
    }
}

/// The parameters of an n-tile function: the kernel's, with the n-tile index `nt`.
struct NtileArgs<'ctx> {
    /// Activations (`f32` rows or an int8 activation buffer).
    x: PointerValue<'ctx>,
    /// Rows of X.
    m: IntValue<'ctx>,
    /// The packed codes.
    packed: PointerValue<'ctx>,
    /// Scales, `[groups][N]`.
    scales: PointerValue<'ctx>,
    /// Bias (may be null).
    bias: BasicValueEnum<'ctx>,
    /// Output, `[m][N]`.
    y: PointerValue<'ctx>,
    /// The n-tile.
    nt: IntValue<'ctx>,
    /// End of the column range.
    ne: IntValue<'ctx>,
}

/// Builds the module with every kernel of `specs` (already validated, sorted and deduplicated),
/// each product in its blocking (`default` is the target's, which keeps the plain symbol).
fn build_module<'ctx>(
    ctx: &'ctx Context,
    specs: &[(QuantGemm, Variant, CpuTiling)],
    default: CpuTiling,
    machine: &Machine,
) -> R<Module<'ctx>> {
    let module = ctx.create_module("fpx_kernels");
    module.set_source_file_name("fpx_kernels");
    module.set_triple(&machine.tm.get_triple());
    module.set_data_layout(&machine.tm.get_target_data().get_data_layout());
    let gen = Gen { ctx, module: &module, b: ctx.create_builder(), isa: machine.isa, lanes: Lanes::new(machine.isa.w as usize) };
    // The int8 kernels are written for 256-bit vectors (AVX2 byte dot products), also on AVX-512.
    let isa8 = Isa { w: 8, vnni8: false, ..machine.isa };
    let gen8 = Gen { ctx, module: &module, b: ctx.create_builder(), isa: isa8, lanes: Lanes::new(8) };
    for (spec, variant, tiling) in specs {
        let plan = Plan::new(spec);
        let tiled;
        let g = if spec.activations == Activations::Int8 && !vnni::runs(&machine.isa, &plan) {
            &gen8
        } else if *tiling != default {
            tiled = Gen {
                ctx,
                module: &module,
                b: ctx.create_builder(),
                isa: machine.isa.with_tiling(*tiling),
                lanes: Lanes::new(machine.isa.w as usize),
            };
            &tiled
        } else {
            &gen
        };
        g.kernel(&plan, *variant, &crate::symbol_for(spec, *variant, *tiling, default))?;
    }
    module.verify().map_err(|e| LlvmError::Llvm(format!("generated IR does not verify: {e}")))?;
    Ok(module)
}

/// Runs LLVM's O3 pipeline for the machine.
fn optimize(module: &Module<'_>, machine: &Machine) -> R<()> {
    module.run_passes("default<O3>", &machine.tm, PassBuilderOptions::create()).map_err(|e| LlvmError::Llvm(format!("O3 pipeline: {e}")))
}

/// Generates, optimizes and emits the object file holding every kernel of `specs`.
pub(crate) fn compile_object(specs: &[(QuantGemm, Variant, CpuTiling)], default: CpuTiling, machine: &Machine) -> R<Vec<u8>> {
    let ctx = Context::create();
    let module = build_module(&ctx, specs, default, machine)?;
    optimize(&module, machine)?;
    let buf =
        machine.tm.write_to_memory_buffer(&module, FileType::Object).map_err(|e| LlvmError::Llvm(format!("emitting the object: {e}")))?;
    Ok(buf.as_slice().to_vec())
}

/// The unoptimized IR and the optimized assembly of `specs`' kernels.
pub(crate) fn ir_and_asm(specs: &[QuantGemm], machine: &Machine) -> R<(String, String)> {
    let ctx = Context::create();
    let default = machine.isa.tiling();
    let specs: Vec<(QuantGemm, Variant, CpuTiling)> = specs.iter().flat_map(|g| Variant::ALL.map(|v| (*g, v, default))).collect();
    let module = build_module(&ctx, &specs, default, machine)?;
    let ir = module.print_to_string().to_string();
    optimize(&module, machine)?;
    let buf =
        machine.tm.write_to_memory_buffer(&module, FileType::Assembly).map_err(|e| LlvmError::Llvm(format!("emitting assembly: {e}")))?;
    Ok((ir, String::from_utf8_lossy(buf.as_slice()).into_owned()))
}

impl<'m, 'ctx> Gen<'m, 'ctx> {
    /// Emits the exported kernel `name` (`crate::symbol_for` of the product, variant and this
    /// generator's blocking) and its internal helpers. Gemv runs the
    /// register-streaming loop when `m` fits one register block of rows and the groups are
    /// tile-aligned, the panel loop otherwise (still one dequantization per weight).
    fn kernel(&self, plan: &Plan, variant: Variant, name: &str) -> R<()> {
        let name = name.to_string();
        let int8 = plan.spec.activations == Activations::Int8;
        // Int8 kernels share their loops between both exported symbols.
        let shared = crate::symbol(&plan.spec, Variant::Gemm);
        // The pair kernel, where there is one, takes the panel loop's n-tiles two at a time.
        let (direct, panel, pair) = if vnni::runs(&self.isa, plan) {
            let direct = Some((self.vn_direct_ntile(plan, &shared)?, vnni::DIRECT_ROWS));
            (direct, self.vn_panel_ntile(plan, &shared)?, Some(self.vn_pair_ntile(plan, &shared)?))
        } else if int8 {
            let direct =
                if int8_direct::runs(plan) { Some((self.i8_direct_ntile(plan, &shared)?, int8_direct::DIRECT_ROWS)) } else { None };
            (direct, self.i8_ntile(plan, &shared)?, None)
        } else {
            // `crate::loop_shape` mirrors this dispatch for the tuner.
            let direct = if variant == Variant::Gemv && plan.tpg.is_some() {
                Some((self.direct_ntile(plan, &name)?, self.isa.gemv_rows))
            } else {
                None
            };
            (direct, self.panel_ntile(plan, &name)?, None)
        };

        let (f, a) = self.begin_function(&name, &self.kernel_params(), false);
        let (x, m, packed, scales, bias, y) = (a.get(0), a.int(1), a.get(2), a.get(3), a.get(4), a.get(5));
        let (nb, ne) = (a.int(6), a.int(7));
        let n = self.i64c(plan.n());
        let zero = self.i64c(0);
        let over = self.b.build_int_compare(IntPredicate::SGT, ne, n, "")?;
        let ne = self.b.build_select(over, n, ne, "")?.into_int_value();
        let under = self.b.build_int_compare(IntPredicate::SLT, nb, zero, "")?;
        let nb = self.b.build_select(under, zero, nb, "")?.into_int_value();
        let has_rows = self.b.build_int_compare(IntPredicate::SGT, m, zero, "")?;
        let has_cols = self.b.build_int_compare(IntPredicate::SLT, nb, ne, "")?;
        let work = self.b.build_and(has_rows, has_cols, "")?;
        self.if_then(f, work, vec![], &mut |g| {
            let ntb = g.b.build_right_shift(nb, g.i64c(TILE_N_SHIFT), false, "")?;
            let nte = g.b.build_right_shift(g.add(ne, g.i64c(TILE_N as u64 - 1))?, g.i64c(TILE_N_SHIFT), false, "")?;
            let args = |nt: IntValue<'ctx>| [x, m.into(), packed, scales, bias, y, nt.into(), ne.into()];
            let loop_over = |g: &Self, ntile: FunctionValue<'ctx>| {
                g.for_loop(f, ntb, nte, vec![], &mut |g, nt, _| {
                    g.call(ntile, &args(nt))?;
                    Ok(vec![])
                })
            };
            // The panel loop: pairs of n-tiles through the pair kernel, an odd last one alone.
            let loop_panel = |g: &Self| -> R<()> {
                let Some(pair) = pair else {
                    loop_over(g, panel)?;
                    return Ok(());
                };
                let tiles = g.b.build_int_nsw_sub(nte, ntb, "")?;
                let pairs = g.b.build_right_shift(tiles, g.i64c(1), false, "")?;
                g.for_loop(f, g.i64c(0), pairs, vec![], &mut |g, i, _| {
                    g.call(pair, &args(g.add(ntb, g.mul(i, 2)?)?))?;
                    Ok(vec![])
                })?;
                let odd = g.b.build_int_compare(IntPredicate::NE, g.b.build_and(tiles, g.i64c(1), "")?, g.i64c(0), "")?;
                g.if_then(f, odd, vec![], &mut |g| {
                    g.call(panel, &args(g.b.build_int_nsw_sub(nte, g.i64c(1), "")?))?;
                    Ok(vec![])
                })?;
                Ok(())
            };
            match direct {
                Some((d, rows)) => {
                    let few = g.b.build_int_compare(IntPredicate::SLE, m, g.i64c(rows as u64), "")?;
                    let (db, pb, done) = (g.block(f, "direct"), g.block(f, "panel"), g.block(f, "done"));
                    g.b.build_conditional_branch(few, db, pb)?;
                    g.b.position_at_end(db);
                    loop_over(g, d)?;
                    g.b.build_unconditional_branch(done)?;
                    g.b.position_at_end(pb);
                    loop_panel(g)?;
                    g.b.build_unconditional_branch(done)?;
                    g.b.position_at_end(done);
                }
                None => loop_panel(g)?,
            }
            Ok(vec![])
        })?;
        self.end_function(f)?;
        Ok(())
    }

    /// Creates the internal n-tile function `name` (the exported kernel's parameters, with the
    /// n-tile index in place of `n_begin`), positioned at its entry.
    fn ntile_function(&self, name: &str) -> (FunctionValue<'ctx>, NtileArgs<'ctx>) {
        let (f, a) = self.begin_function(name, &self.kernel_params(), true);
        let args = NtileArgs {
            x: a.ptr(0),
            m: a.int(1),
            packed: a.ptr(2),
            scales: a.ptr(3),
            bias: a.get(4),
            y: a.ptr(5),
            nt: a.int(6),
            ne: a.int(7),
        };
        (f, args)
    }

    /// The parameter types of the exported kernels (and of the n-tile functions).
    fn kernel_params(&self) -> [BasicMetadataTypeEnum<'ctx>; 8] {
        let (p, i) = (self.ptr_t(), self.i64_t());
        [p, i, p, p, p, p, i, i]
    }
}
