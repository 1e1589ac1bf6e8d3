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

use fpx_quant::layout::PackedShape;
use fpx_quant::{fold, Format};
use inkwell::attributes::{Attribute, AttributeLoc};
use inkwell::builder::Builder;
use inkwell::context::Context;
use inkwell::intrinsics::Intrinsic;
use inkwell::module::{Linkage, Module};
use inkwell::passes::PassBuilderOptions;
use inkwell::targets::FileType;
use inkwell::types::{BasicMetadataTypeEnum, BasicType, VectorType};
use inkwell::values::{BasicValue, BasicValueEnum, FunctionValue, IntValue, PointerValue, VectorValue};
use inkwell::{AddressSpace, IntPredicate};

use crate::target::{Isa, Machine};
use crate::{Activations, KernelSpec, LlvmError, Variant};

mod vnni;

type R<T> = Result<T, LlvmError>;

/// Bytes of one tile's low plane.
const LOW_TILE_BYTES: u64 = 256;
/// Bytes of one tile of dequantized `f32` values in a panel (16 × 32 × 4).
const PANEL_TILE_BYTES: u64 = 2048;

/// Whether `format` has a CPU kernel.
pub(crate) fn supports(format: Format) -> bool {
    Dequant::of(format).is_some()
}

/// How a format's codes become `f32`: both codes of a pair are assembled in the two 16-bit
/// halves of a 32-bit lane (low nibble at bit `nib`, the `h` high-plane bits right above it),
/// then turned into FP16 bits and converted.
#[derive(Debug, Clone, Copy)]
struct Dequant {
    kind: Kind,
    /// Code width.
    bits: u32,
    /// High-plane bits per code (`bits - 4`).
    h: u32,
    /// Bit of each 16-bit half where the low nibble goes.
    nib: u32,
    /// The byte-table method, where the format allows it (see [`Bytes`]).
    bytes: Option<Bytes>,
}

/// Byte-level dequantization with `pshufb` table lookups: every byte of a low-plane word is
/// split into its two nibbles, each nibble becomes the high byte of its code's FP16 (the low
/// byte being 0), and the four pairs of a word are then one mask or one 16-bit shift each.
#[derive(Debug, Clone, Copy)]
enum Bytes {
    /// 4-bit formats: the table maps a code to the high byte of its FP16 value (exact: every
    /// FP4 and INT4 value has a zero low byte).
    Table([u8; 16]),
    /// FP6: the nibble is ORed with the high bits' byte `s << 7 | e << 4`, looked up from the
    /// high-plane fields; e2m3 then needs an arithmetic shift right by 1 and `mask`.
    Fp6 { shift: u32, mask: u16 },
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    /// Float codes sit at the top of the half (sign at bit 15); an arithmetic shift right by
    /// `d` and the mask `mask` give the bias-shifted FP16 (`bias_shift::f16_bits`).
    Float { d: u32, mask: u16 },
    /// Integer codes sit at the bottom; `^ xor` gives the FP16 `1024 + v + 2^(bits-1)` exactly,
    /// and `offset` is subtracted after conversion.
    Int { xor: u16, offset: f32 },
}

impl Dequant {
    fn of(format: Format) -> Option<Dequant> {
        let bits = format.bits();
        let h = bits - 4;
        let dq = match format {
            Format::Int4 => Dequant { kind: Kind::Int { xor: 0x6408, offset: 1032.0 }, bits, h, nib: 0, bytes: None },
            Format::Int8 => Dequant { kind: Kind::Int { xor: 0x6480, offset: 1152.0 }, bits, h, nib: 0, bytes: None },
            _ => {
                let m = format.mantissa_bits();
                let d = (6 + m).checked_sub(bits)?;
                let mask = 0x8000u32 | (((1u32 << (bits - 1)) - 1) << (10 - m));
                Dequant { kind: Kind::Float { d, mask: mask as u16 }, bits, h, nib: 16 - bits, bytes: None }
            }
        };
        let bytes = match (bits, dq.kind) {
            (4, _) => {
                let mut t = [0u8; 16];
                for (c, e) in t.iter_mut().enumerate() {
                    let h = if format.is_float() {
                        fpx_quant::bias_shift::f16_bits(format, c as u8)
                    } else {
                        f16_bits_exact(fold::stored_value(format, c as u8))?
                    };
                    if h & 0xff != 0 {
                        return Some(dq);
                    }
                    *e = (h >> 8) as u8;
                }
                Some(Bytes::Table(t))
            }
            (6, Kind::Float { d, mask }) if d >= 2 => Some(Bytes::Fp6 { shift: d - 2, mask }),
            _ => None,
        };
        Some(Dequant { bytes, ..dq })
    }
}

/// The FP16 bits of `v` if it is exactly representable as a normal FP16 or zero.
fn f16_bits_exact(v: f32) -> Option<u16> {
    if v == 0.0 {
        return Some(if v.is_sign_negative() { 0x8000 } else { 0 });
    }
    let b = v.to_bits();
    let sign = ((b >> 31) as u16) << 15;
    let exp = ((b >> 23) & 0xff) as i32 - 127 + 15;
    let mant = b & 0x7f_ffff;
    if !(1..31).contains(&exp) || mant & 0x1fff != 0 {
        return None;
    }
    Some(sign | ((exp as u16) << 10) | (mant >> 13) as u16)
}

/// `s << 7 | e << 4` for a 2-bit FP6 high-plane field `(s, e)`.
const fn fp6_high_byte(f: usize) -> u8 {
    ((((f >> 1) & 1) << 7) | ((f & 1) << 4)) as u8
}

/// pshufb table: the high byte of the field in bits 0..2 of the index.
const FP6_LOW_FIELD: [u8; 16] = {
    let mut t = [0u8; 16];
    let mut i = 0;
    while i < 16 {
        t[i] = fp6_high_byte(i & 3);
        i += 1;
    }
    t
};

/// pshufb table: the high byte of the field in bits 2..4 of the index.
const FP6_HIGH_FIELD: [u8; 16] = {
    let mut t = [0u8; 16];
    let mut i = 0;
    while i < 16 {
        t[i] = fp6_high_byte(i >> 2);
        i += 1;
    }
    t
};

/// The lane bookkeeping of the in-register transpose for a vector width.
struct Lanes {
    /// `f32` lanes per vector (8 or 16).
    w: usize,
    /// T-vectors per half (`32 / w`).
    nq: usize,
    /// The transpose as a program of two-source shuffles on `<w x i32>` registers: inputs are
    /// registers `0..nq` (words `w*a .. w*a + w`), each step appends a register.
    program: Vec<(usize, usize, Vec<u32>)>,
    /// Registers holding the T-vectors, in order.
    outputs: Vec<usize>,
    /// Lane (word index in the half) of each T-vector element.
    order: Vec<Vec<usize>>,
    /// Row sets (distinct accumulators per parity of `p`): 2 on AVX2, 1 on AVX-512.
    nrs: usize,
    /// Row (0..8) of each float lane of a chunk, per row set.
    rows: Vec<Vec<usize>>,
}

impl Lanes {
    fn new(w: usize) -> Lanes {
        let nq = 32 / w;
        let (program, outputs) = if w == 8 {
            // The classic 4x4 transpose of 32-bit elements within each 128-bit chunk.
            const LO32: [u32; 8] = [0, 8, 1, 9, 4, 12, 5, 13];
            const HI32: [u32; 8] = [2, 10, 3, 11, 6, 14, 7, 15];
            const LO64: [u32; 8] = [0, 1, 8, 9, 4, 5, 12, 13];
            const HI64: [u32; 8] = [2, 3, 10, 11, 6, 7, 14, 15];
            let p = vec![
                (0, 1, LO32.to_vec()),
                (0, 1, HI32.to_vec()),
                (2, 3, LO32.to_vec()),
                (2, 3, HI32.to_vec()),
                (4, 6, LO64.to_vec()),
                (4, 6, HI64.to_vec()),
                (5, 7, LO64.to_vec()),
                (5, 7, HI64.to_vec()),
            ];
            (p, vec![8, 9, 10, 11])
        } else {
            assert_eq!(w, 16, "vector width must be 8 or 16");
            // Two-source permutes (vpermt2d): T-vector q holds t = 2q (g = 0..8) then t = 2q + 1.
            let idx = |q: usize| (0..16).map(|i| (4 * (i % 8) + 2 * q + i / 8) as u32).collect::<Vec<_>>();
            (vec![(0, 1, idx(0)), (0, 1, idx(1))], vec![2, 3])
        };
        // Simulate the program on word indices.
        let mut regs: Vec<Vec<usize>> = (0..nq).map(|a| (w * a..w * a + w).collect()).collect();
        for (a, b, mask) in &program {
            let cat: Vec<usize> = regs[*a].iter().chain(regs[*b].iter()).copied().collect();
            regs.push(mask.iter().map(|&i| cat[i as usize]).collect());
        }
        let order: Vec<Vec<usize>> = outputs.iter().map(|&r| regs[r].clone()).collect();
        let nrs = if w == 8 { 2 } else { 1 };
        let mut lanes = Lanes { w, nq, program, outputs, order, nrs, rows: vec![Vec::new(); nrs] };
        // Every chunk must have one t, and chunks of one row set the same rows in the same order.
        for v in 0..nq {
            for c in 0..2 {
                let words = &lanes.order[v][c * w / 2..(c + 1) * w / 2];
                assert!(words.iter().all(|l| l % 4 == words[0] % 4), "chunk ({v}, {c}) mixes t");
                let rows: Vec<usize> = (0..w).map(|f| words[f / 2] / 4).collect();
                let rs = lanes.row_set(c);
                if lanes.rows[rs].is_empty() {
                    lanes.rows[rs] = rows;
                } else {
                    assert_eq!(lanes.rows[rs], rows, "row set {rs} differs between chunks");
                }
            }
        }
        let mut all: Vec<usize> = (0..nrs).flat_map(|rs| lanes.rows[rs].iter().step_by(2).copied()).collect();
        all.sort_unstable();
        assert_eq!(all, (0..8).collect::<Vec<_>>(), "row sets must cover rows 0..8 once");
        lanes
    }

    fn row_set(&self, c: usize) -> usize {
        if self.nrs == 2 {
            c
        } else {
            0
        }
    }

    /// `t` of chunk `c` of T-vector `v`.
    fn chunk_t(&self, v: usize, c: usize) -> usize {
        self.order[v][c * self.w / 2] % 4
    }

    /// Accumulators per row of X: (parity of `p`) × row sets.
    fn nacc(&self) -> usize {
        2 * self.nrs
    }

    /// Output row (0..16) of float lane `l` of accumulator `a`.
    fn acc_row(&self, a: usize, l: usize) -> usize {
        self.rows[a % self.nrs][l] + 8 * (a / self.nrs)
    }
}

/// One converted chunk, as enumerated in a tile.
#[derive(Debug, Clone, Copy)]
struct ChunkInfo {
    /// Half of the tile.
    j: usize,
    /// T-vector.
    v: usize,
    /// Pair.
    p: usize,
    /// Chunk of the T-vector (0 or 1).
    c: usize,
    /// Accumulator index.
    a: usize,
    /// First of the chunk's two K columns within the tile.
    col: u32,
    /// Position of the chunk in a panel tile (in vectors).
    slot: usize,
}

/// Compile-time facts about one kernel.
struct Plan {
    spec: KernelSpec,
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
    fn new(spec: &KernelSpec) -> Plan {
        let dq = Dequant::of(spec.format).expect("validated format");
        let shape = PackedShape::new(spec.n, spec.k, spec.format.bits());
        let kt = shape.k_tiles() as u64;
        let krem = (spec.k - (kt as usize - 1) * 32) as u32;
        let ft = if krem == 32 { kt } else { kt - 1 };
        let groups = spec.groups() as u64;
        let group = if groups == 1 { spec.k as u64 } else { spec.group_size as u64 };
        let tpg = if groups == 1 {
            Some(kt)
        } else if group % 32 == 0 {
            Some(group / 32)
        } else {
            None
        };
        Plan { spec: *spec, dq, kt, ft, krem, low_bytes: shape.low_plane_bytes() as u64, groups, group, tpg }
    }

    fn k(&self) -> u64 {
        self.spec.k as u64
    }

    fn n(&self) -> u64 {
        self.spec.n as u64
    }
}

/// The converted high-plane bits of a tile, transposed like the low-plane words.
enum High<'ctx> {
    None,
    /// One word per lane: pair `p` of half `j` has its even code's field at bit `h * q`,
    /// the odd code's at `h * q + 16` (`q = 7 - 4j - p`).
    Fields(Vec<VectorValue<'ctx>>),
    /// 8-bit formats: even codes' fields (bit `4q`) and odd codes' fields (bit `4q`) apart.
    Split(Vec<VectorValue<'ctx>>, Vec<VectorValue<'ctx>>),
}

/// A chunk handed to a sink: the converted `<W x float>` and where it belongs.
struct Chunk<'ctx> {
    value: VectorValue<'ctx>,
    info: ChunkInfo,
}

type Sink<'s, 'ctx> = dyn FnMut(&Gen<'_, 'ctx>, Chunk<'ctx>) -> R<()> + 's;

/// Values carried through a loop or a conditional.
type Values<'ctx> = Vec<BasicValueEnum<'ctx>>;

/// A loop body: gets the induction variable and the carried values, returns the new ones.
type LoopBody<'s, 'm, 'ctx> = dyn FnMut(&Gen<'m, 'ctx>, IntValue<'ctx>, Values<'ctx>) -> R<Values<'ctx>> + 's;

/// Pair vectors in FP16 are converted from memory: `vcvtph2ps ymm, m128` runs at twice the
/// rate of the register form, which also needs a `vextracti128` per upper half. The pair is
/// stored through `store` and read back through `load`, the same stack buffer laundered by an
/// empty inline asm so that LLVM cannot forward the store into registers.
#[derive(Clone, Copy)]
struct CvtBuf<'ctx> {
    store: PointerValue<'ctx>,
    load: PointerValue<'ctx>,
}

/// The parameters of an n-tile function: the kernel's, with the n-tile index `nt`.
struct NtileArgs<'ctx> {
    x: PointerValue<'ctx>,
    m: IntValue<'ctx>,
    packed: PointerValue<'ctx>,
    scales: PointerValue<'ctx>,
    bias: BasicValueEnum<'ctx>,
    y: PointerValue<'ctx>,
    nt: IntValue<'ctx>,
    ne: IntValue<'ctx>,
}

/// Slots of the conversion buffer (one per pair of a T-vector).
const CVT_SLOTS: u64 = 4;

struct Gen<'m, 'ctx> {
    ctx: &'ctx Context,
    module: &'m Module<'ctx>,
    b: Builder<'ctx>,
    isa: Isa,
    lanes: Lanes,
}

/// Builds the module with every kernel of `specs` (already validated, sorted and deduplicated).
fn build_module<'ctx>(ctx: &'ctx Context, specs: &[KernelSpec], machine: &Machine) -> R<Module<'ctx>> {
    let module = ctx.create_module("fpx_kernels");
    module.set_source_file_name("fpx_kernels");
    module.set_triple(&machine.tm.get_triple());
    module.set_data_layout(&machine.tm.get_target_data().get_data_layout());
    let gen = Gen { ctx, module: &module, b: ctx.create_builder(), isa: machine.isa, lanes: Lanes::new(machine.isa.w as usize) };
    // The int8 kernels are written for 256-bit vectors (AVX2 byte dot products), also on AVX-512.
    let isa8 = Isa { w: 8, vnni8: false, ..machine.isa };
    let gen8 = Gen { ctx, module: &module, b: ctx.create_builder(), isa: isa8, lanes: Lanes::new(8) };
    for spec in specs {
        let plan = Plan::new(spec);
        let g = if spec.activations == Activations::Int8 && !vnni::runs(&machine.isa, &plan) { &gen8 } else { &gen };
        for variant in Variant::ALL {
            g.kernel(&plan, variant)?;
        }
    }
    module.verify().map_err(|e| LlvmError::Llvm(format!("generated IR does not verify: {e}")))?;
    Ok(module)
}

fn optimize(module: &Module<'_>, machine: &Machine) -> R<()> {
    module.run_passes("default<O3>", &machine.tm, PassBuilderOptions::create()).map_err(|e| LlvmError::Llvm(format!("O3 pipeline: {e}")))
}

/// Generates, optimizes and emits the object file holding every kernel of `specs`.
pub(crate) fn compile_object(specs: &[KernelSpec], machine: &Machine) -> R<Vec<u8>> {
    let ctx = Context::create();
    let module = build_module(&ctx, specs, machine)?;
    optimize(&module, machine)?;
    let buf =
        machine.tm.write_to_memory_buffer(&module, FileType::Object).map_err(|e| LlvmError::Llvm(format!("emitting the object: {e}")))?;
    Ok(buf.as_slice().to_vec())
}

/// The unoptimized IR and the optimized assembly of `specs`' kernels.
pub(crate) fn ir_and_asm(specs: &[KernelSpec], machine: &Machine) -> R<(String, String)> {
    let ctx = Context::create();
    let module = build_module(&ctx, specs, machine)?;
    let ir = module.print_to_string().to_string();
    optimize(&module, machine)?;
    let buf =
        machine.tm.write_to_memory_buffer(&module, FileType::Assembly).map_err(|e| LlvmError::Llvm(format!("emitting assembly: {e}")))?;
    Ok((ir, String::from_utf8_lossy(buf.as_slice()).into_owned()))
}

impl<'m, 'ctx> Gen<'m, 'ctx> {
    // ---------------------------------------------------------------- small helpers

    fn w(&self) -> u32 {
        self.isa.w
    }

    fn i64c(&self, v: u64) -> IntValue<'ctx> {
        self.ctx.i64_type().const_int(v, false)
    }

    fn vi32(&self, n: u32) -> VectorType<'ctx> {
        self.ctx.i32_type().vec_type(n)
    }

    fn vf32(&self, n: u32) -> VectorType<'ctx> {
        self.ctx.f32_type().vec_type(n)
    }

    fn consts_i32(&self, vals: &[u32]) -> VectorValue<'ctx> {
        let t = self.ctx.i32_type();
        let v: Vec<IntValue<'ctx>> = vals.iter().map(|&x| t.const_int(x as u64, false)).collect();
        VectorType::const_vector(&v)
    }

    fn splat_i32(&self, x: u32, n: u32) -> VectorValue<'ctx> {
        self.consts_i32(&vec![x; n as usize])
    }

    fn splat_i16(&self, x: u16, n: u32) -> VectorValue<'ctx> {
        let t = self.ctx.i16_type();
        let v: Vec<IntValue<'ctx>> = (0..n).map(|_| t.const_int(x as u64, false)).collect();
        VectorType::const_vector(&v)
    }

    fn splat_f32(&self, x: f32, n: u32) -> VectorValue<'ctx> {
        let t = self.ctx.f32_type();
        let v: Vec<_> = (0..n).map(|_| t.const_float(x as f64)).collect();
        VectorType::const_vector(&v)
    }

    fn fzero(&self, n: u32) -> VectorValue<'ctx> {
        self.vf32(n).const_zero()
    }

    fn shuf(&self, a: VectorValue<'ctx>, b: VectorValue<'ctx>, idx: &[u32]) -> R<VectorValue<'ctx>> {
        Ok(self.b.build_shuffle_vector(a, b, self.consts_i32(idx), "")?)
    }

    /// `v << s` for `s > 0`, `v >> -s` (logical) for `s < 0`.
    fn shift(&self, v: VectorValue<'ctx>, s: i32) -> R<VectorValue<'ctx>> {
        let n = v.get_type().get_size();
        Ok(match s {
            0 => v,
            s if s > 0 => self.b.build_left_shift(v, self.splat_i32(s as u32, n), "")?,
            s => self.b.build_right_shift(v, self.splat_i32((-s) as u32, n), false, "")?,
        })
    }

    fn and(&self, v: VectorValue<'ctx>, mask: u32) -> R<VectorValue<'ctx>> {
        Ok(self.b.build_and(v, self.splat_i32(mask, v.get_type().get_size()), "")?)
    }

    /// `(a & !mask) | (b & mask)`.
    fn select_bits(&self, a: VectorValue<'ctx>, b: VectorValue<'ctx>, mask: u32) -> R<VectorValue<'ctx>> {
        let a = self.and(a, !mask)?;
        let b = self.and(b, mask)?;
        Ok(self.b.build_or(a, b, "")?)
    }

    fn add(&self, a: IntValue<'ctx>, b: IntValue<'ctx>) -> R<IntValue<'ctx>> {
        Ok(self.b.build_int_nsw_add(a, b, "")?)
    }

    fn mul(&self, a: IntValue<'ctx>, b: u64) -> R<IntValue<'ctx>> {
        Ok(self.b.build_int_nsw_mul(a, self.i64c(b), "")?)
    }

    fn gep(&self, base: PointerValue<'ctx>, off: IntValue<'ctx>) -> R<PointerValue<'ctx>> {
        // SAFETY: offsets are within the buffers the ABI describes (checked by the tests).
        Ok(unsafe { self.b.build_in_bounds_gep(self.ctx.i8_type(), base, &[off], "")? })
    }

    fn load<T: BasicType<'ctx>>(&self, ty: T, ptr: PointerValue<'ctx>, align: u32) -> R<BasicValueEnum<'ctx>> {
        let v = self.b.build_load(ty, ptr, "")?;
        if let Some(i) = v.as_instruction_value() {
            i.set_alignment(align).map_err(|e| LlvmError::Llvm(e.to_string()))?;
        }
        Ok(v)
    }

    fn store(&self, v: VectorValue<'ctx>, ptr: PointerValue<'ctx>, align: u32) -> R<()> {
        let i = self.b.build_store(ptr, v)?;
        i.set_alignment(align).map_err(|e| LlvmError::Llvm(e.to_string()))?;
        Ok(())
    }

    fn intrinsic(&self, name: &str, types: &[inkwell::types::BasicTypeEnum<'ctx>]) -> R<FunctionValue<'ctx>> {
        Intrinsic::find(name)
            .and_then(|i| i.get_declaration(self.module, types))
            .ok_or_else(|| LlvmError::Llvm(format!("intrinsic {name} not available")))
    }

    fn call(&self, f: FunctionValue<'ctx>, args: &[BasicValueEnum<'ctx>]) -> R<Option<BasicValueEnum<'ctx>>> {
        let args: Vec<_> = args.iter().map(|&a| a.into()).collect();
        Ok(self.b.build_call(f, &args, "")?.try_as_basic_value().basic())
    }

    fn fma(&self, a: VectorValue<'ctx>, b: VectorValue<'ctx>, c: VectorValue<'ctx>) -> R<VectorValue<'ctx>> {
        let f = self.intrinsic("llvm.fma", &[a.get_type().into()])?;
        Ok(self.call(f, &[a.into(), b.into(), c.into()])?.expect("fma returns").into_vector_value())
    }

    fn masked_load(&self, ptr: PointerValue<'ctx>, mask: VectorValue<'ctx>) -> R<VectorValue<'ctx>> {
        let ty = self.vf32(16);
        let f = self.intrinsic("llvm.masked.load", &[ty.into(), self.ctx.ptr_type(AddressSpace::default()).into()])?;
        let align = self.ctx.i32_type().const_int(4, false);
        Ok(self.call(f, &[ptr.into(), align.into(), mask.into(), ty.const_zero().into()])?.expect("returns").into_vector_value())
    }

    fn masked_store(&self, v: VectorValue<'ctx>, ptr: PointerValue<'ctx>, mask: VectorValue<'ctx>) -> R<()> {
        let f = self.intrinsic("llvm.masked.store", &[v.get_type().into(), self.ctx.ptr_type(AddressSpace::default()).into()])?;
        let align = self.ctx.i32_type().const_int(4, false);
        self.call(f, &[v.into(), ptr.into(), align.into(), mask.into()])?;
        Ok(())
    }

    /// `<16 x i1>`: lane `i < bound` (bound an i64, compared as i32; lanes ≥ 16 irrelevant).
    fn lanes_below(&self, bound: IntValue<'ctx>) -> R<VectorValue<'ctx>> {
        let b32 = self.b.build_int_truncate(bound, self.ctx.i32_type(), "")?;
        let splat = self.b.build_insert_element(self.vi32(16).get_poison(), b32, self.ctx.i32_type().const_zero(), "")?;
        let splat = self.shuf(splat, self.vi32(16).get_poison(), &[0; 16])?;
        let iota = self.consts_i32(&(0..16).collect::<Vec<_>>());
        Ok(self.b.build_int_compare(IntPredicate::SLT, iota, splat, "")?)
    }

    fn block(&self, f: FunctionValue<'ctx>, name: &str) -> inkwell::basic_block::BasicBlock<'ctx> {
        self.ctx.append_basic_block(f, name)
    }

    fn current(&self) -> inkwell::basic_block::BasicBlock<'ctx> {
        self.b.get_insert_block().expect("builder positioned")
    }

    /// `for iv in start..end` (signed; skipped when empty) carrying `init` through phis;
    /// returns the carried values after the loop.
    fn for_loop(
        &self,
        f: FunctionValue<'ctx>,
        start: IntValue<'ctx>,
        end: IntValue<'ctx>,
        init: Vec<BasicValueEnum<'ctx>>,
        body: &mut LoopBody<'_, 'm, 'ctx>,
    ) -> R<Vec<BasicValueEnum<'ctx>>> {
        let pre = self.current();
        let header = self.block(f, "loop");
        let exit = self.block(f, "loop.end");
        let enter = self.b.build_int_compare(IntPredicate::SLT, start, end, "")?;
        self.b.build_conditional_branch(enter, header, exit)?;
        self.b.position_at_end(header);
        let iv = self.b.build_phi(self.ctx.i64_type(), "iv")?;
        let phis: Vec<_> = init.iter().map(|v| self.b.build_phi(v.get_type(), "")).collect::<Result<_, _>>()?;
        let carried: Vec<BasicValueEnum<'ctx>> = phis.iter().map(|p| p.as_basic_value()).collect();
        let ivv = iv.as_basic_value().into_int_value();
        let out = body(self, ivv, carried)?;
        let next = self.b.build_int_nsw_add(ivv, self.i64c(1), "")?;
        let latch = self.current();
        let again = self.b.build_int_compare(IntPredicate::SLT, next, end, "")?;
        self.b.build_conditional_branch(again, header, exit)?;
        iv.add_incoming(&[(&start, pre), (&next, latch)]);
        for ((phi, i), o) in phis.iter().zip(&init).zip(&out) {
            phi.add_incoming(&[(i as &dyn BasicValue, pre), (o as &dyn BasicValue, latch)]);
        }
        self.b.position_at_end(exit);
        let mut results = Vec::with_capacity(init.len());
        for (i, o) in init.iter().zip(&out) {
            let phi = self.b.build_phi(i.get_type(), "")?;
            phi.add_incoming(&[(i as &dyn BasicValue, pre), (o as &dyn BasicValue, latch)]);
            results.push(phi.as_basic_value());
        }
        Ok(results)
    }

    /// `if cond { then() }` carrying `init` (the values when `cond` is false).
    fn if_then(
        &self,
        f: FunctionValue<'ctx>,
        cond: IntValue<'ctx>,
        init: Vec<BasicValueEnum<'ctx>>,
        then: &mut dyn FnMut(&Self) -> R<Vec<BasicValueEnum<'ctx>>>,
    ) -> R<Vec<BasicValueEnum<'ctx>>> {
        let pre = self.current();
        let tb = self.block(f, "then");
        let done = self.block(f, "endif");
        self.b.build_conditional_branch(cond, tb, done)?;
        self.b.position_at_end(tb);
        let out = then(self)?;
        let tend = self.current();
        self.b.build_unconditional_branch(done)?;
        self.b.position_at_end(done);
        let mut results = Vec::with_capacity(init.len());
        for (i, o) in init.iter().zip(&out) {
            let phi = self.b.build_phi(i.get_type(), "")?;
            phi.add_incoming(&[(i as &dyn BasicValue, pre), (o as &dyn BasicValue, tend)]);
            results.push(phi.as_basic_value());
        }
        Ok(results)
    }

    fn function(&self, name: &str, params: &[BasicMetadataTypeEnum<'ctx>], internal: bool) -> FunctionValue<'ctx> {
        let fty = self.ctx.void_type().fn_type(params, false);
        let linkage = if internal { Some(Linkage::Internal) } else { None };
        let f = self.module.add_function(name, fty, linkage);
        let kind = |n: &str| Attribute::get_named_enum_kind_id(n);
        f.add_attribute(AttributeLoc::Function, self.ctx.create_enum_attribute(kind("nounwind"), 0));
        for (i, p) in params.iter().enumerate() {
            if p.is_pointer_type() {
                f.add_attribute(AttributeLoc::Param(i as u32), self.ctx.create_enum_attribute(kind("noalias"), 0));
            }
        }
        f
    }

    // ---------------------------------------------------------------- dequantization

    /// Applies the transpose program to `inputs` (`32 / W` vectors of `W` words).
    fn transpose(&self, inputs: Vec<VectorValue<'ctx>>) -> R<Vec<VectorValue<'ctx>>> {
        let mut regs = inputs;
        for (a, b, mask) in &self.lanes.program {
            let r = self.shuf(regs[*a], regs[*b], mask)?;
            regs.push(r);
        }
        Ok(self.lanes.outputs.iter().map(|&r| regs[r]).collect())
    }

    /// The 32 low-plane words of half `j` of the tile at `lo`, transposed.
    fn low_words(&self, lo: PointerValue<'ctx>, j: u64) -> R<Vec<VectorValue<'ctx>>> {
        let w = self.w() as u64;
        let mut v = Vec::new();
        for a in 0..32 / w {
            let p = self.gep(lo, self.i64c(128 * j + 4 * w * a))?;
            v.push(self.load(self.vi32(self.w()), p, 1)?.into_vector_value());
        }
        self.transpose(v)
    }

    /// The high-plane fields of the tile at `hi` (see [`High`]).
    fn high_words(&self, dq: &Dequant, hi: PointerValue<'ctx>) -> R<High<'ctx>> {
        let w = self.w();
        let groups = 32 / w as u64;
        match dq.h {
            0 => Ok(High::None),
            1 => {
                let mut v = Vec::new();
                for a in 0..groups {
                    let p = self.gep(hi, self.i64c(2 * w as u64 * a))?;
                    let x = self.load(self.ctx.i16_type().vec_type(w), p, 1)?.into_vector_value();
                    v.push(self.b.build_int_z_extend(x, self.vi32(w), "")?);
                }
                // Spread the 16 one-bit fields so that the odd codes' bits are 16 above the even ones'.
                let mut out = Vec::new();
                for t in self.transpose(v)? {
                    let lo = self.and(t, 0xff)?;
                    let hi = self.shift(self.and(t, 0xff00)?, 8)?;
                    out.push(self.b.build_or(lo, hi, "")?);
                }
                Ok(High::Fields(out))
            }
            2 => {
                let mut v = Vec::new();
                for a in 0..groups {
                    let p = self.gep(hi, self.i64c(4 * w as u64 * a))?;
                    v.push(self.load(self.vi32(w), p, 1)?.into_vector_value());
                }
                Ok(High::Fields(self.transpose(v)?))
            }
            4 => {
                let (mut even, mut odd) = (Vec::new(), Vec::new());
                let ev: Vec<u32> = (0..w).map(|i| 2 * i).collect();
                let od: Vec<u32> = (0..w).map(|i| 2 * i + 1).collect();
                for a in 0..groups {
                    let p = self.gep(hi, self.i64c(8 * w as u64 * a))?;
                    let x = self.load(self.vi32(2 * w), p, 1)?.into_vector_value();
                    even.push(self.shuf(x, x, &ev)?);
                    odd.push(self.shuf(x, x, &od)?);
                }
                Ok(High::Split(self.transpose(even)?, self.transpose(odd)?))
            }
            h => Err(LlvmError::Llvm(format!("no high-plane handling for {h} bits"))),
        }
    }

    /// The two codes of pair `p` (half `j`) of T-vector `v`, as FP16 bits in `<2W x i16>`.
    fn pair_f16(&self, dq: &Dequant, low: VectorValue<'ctx>, high: &High<'ctx>, v: usize, j: u32, p: u32) -> R<VectorValue<'ctx>> {
        let pos = [2, 3, 1, 0][p as usize];
        let lo = self.shift(low, dq.nib as i32 - 4 * pos)?;
        let q = 7 - (4 * j + p) as i32;
        let top = (dq.nib + 4) as i32;
        let x = match high {
            High::None => lo,
            High::Fields(f) => {
                let hi = self.shift(f[v], top - dq.h as i32 * q)?;
                let m = ((1u32 << dq.h) - 1) << top;
                self.select_bits(lo, hi, m | (m << 16))?
            }
            High::Split(e, o) => {
                let he = self.shift(e[v], top - 4 * q)?;
                let ho = self.shift(o[v], top + 16 - 4 * q)?;
                let hi = self.select_bits(he, ho, 0xffff_0000)?;
                let m = 0xfu32 << top;
                self.select_bits(lo, hi, m | (m << 16))?
            }
        };
        let w = self.w();
        let i16v = self.ctx.i16_type().vec_type(2 * w);
        match dq.kind {
            Kind::Float { d, mask } => {
                let mut x16 = self.b.build_bit_cast(x, i16v, "")?.into_vector_value();
                if d > 0 {
                    x16 = self.b.build_right_shift(x16, self.splat_i16(d as u16, 2 * w), true, "")?;
                }
                Ok(self.b.build_and(x16, self.splat_i16(mask, 2 * w), "")?)
            }
            Kind::Int { xor, .. } => {
                let cm = (1u32 << dq.bits) - 1;
                let x = self.and(x, cm | (cm << 16))?;
                let x = self.b.build_xor(x, self.splat_i32(xor as u32 | ((xor as u32) << 16), w), "")?;
                Ok(self.b.build_bit_cast(x, i16v, "")?.into_vector_value())
            }
        }
    }

    /// A conversion buffer in the current function's entry block (see [`CvtBuf`]).
    fn cvt_buf(&self) -> R<CvtBuf<'ctx>> {
        let w = self.w();
        let store = self.aligned_alloca(self.ctx.i16_type().array_type(2 * w * CVT_SLOTS as u32), "cvtbuf")?;
        Ok(CvtBuf { store, load: self.launder(store)? })
    }

    /// Both chunks of a pair's FP16 bits as `<W x float>` (minus `offset` if given), converted
    /// from memory through `buf` slot `slot`.
    fn convert_pair(&self, buf: CvtBuf<'ctx>, slot: u64, f16: VectorValue<'ctx>, offset: Option<f32>) -> R<[VectorValue<'ctx>; 2]> {
        let w = self.w() as u64;
        let at = self.i64c(slot % CVT_SLOTS * 4 * w);
        self.store(f16, self.gep(buf.store, at)?, 32)?;
        let mut out = Vec::with_capacity(2);
        for c in 0..2u64 {
            let p = self.gep(buf.load, self.i64c(slot % CVT_SLOTS * 4 * w + 2 * w * c))?;
            let halves = self.load(self.ctx.f16_type().vec_type(w as u32), p, 16)?.into_vector_value();
            let f = self.b.build_float_ext(halves, self.vf32(w as u32), "")?;
            out.push(match offset {
                None => f,
                Some(o) => self.b.build_float_sub(f, self.splat_f32(o, w as u32), "")?,
            });
        }
        Ok([out[0], out[1]])
    }

    /// `pshufb` of every 128-bit lane of `idx` (`<W x i32>` seen as bytes) in `table`.
    fn pshufb(&self, table: &[u8; 16], idx: VectorValue<'ctx>) -> R<VectorValue<'ctx>> {
        let w = self.w();
        let bytes = self.ctx.i8_type().vec_type(4 * w);
        let name = if w == 8 { "llvm.x86.avx2.pshuf.b" } else { "llvm.x86.avx512.pshuf.b.512" };
        let f = self.intrinsic(name, &[])?;
        let i8t = self.ctx.i8_type();
        let t: Vec<IntValue<'ctx>> = (0..4 * w as usize).map(|i| i8t.const_int(table[i % 16] as u64, false)).collect();
        let iv = self.b.build_bit_cast(idx, bytes, "")?;
        let r = self.call(f, &[VectorType::const_vector(&t).into(), iv])?.expect("pshufb returns");
        Ok(self.b.build_bit_cast(r, self.vi32(w), "")?.into_vector_value())
    }

    /// Shift of each 16-bit half of `<W x i32>` (left for `s > 0`, logical right for `s < 0`).
    fn shift16(&self, v: VectorValue<'ctx>, s: i32) -> R<VectorValue<'ctx>> {
        let w = self.w();
        let x = self.b.build_bit_cast(v, self.ctx.i16_type().vec_type(2 * w), "")?.into_vector_value();
        let amount = self.splat_i16(s.unsigned_abs() as u16, 2 * w);
        let r = if s > 0 { self.b.build_left_shift(x, amount, "")? } else { self.b.build_right_shift(x, amount, false, "")? };
        Ok(self.b.build_bit_cast(r, self.vi32(w), "")?.into_vector_value())
    }

    /// FP6 byte method: per T-vector of the high plane, the bytes to OR into the low and the
    /// high nibbles of each half's words: `[(low, high); 2]` (index = half).
    fn fp6_sets(&self, high: &[VectorValue<'ctx>]) -> R<Vec<[(VectorValue<'ctx>, VectorValue<'ctx>); 2]>> {
        let mut out = Vec::new();
        for &hv in high {
            let low_i = self.and(hv, 0x0f0f_0f0f)?;
            let high_i = self.and(self.shift(hv, -4)?, 0x0f0f_0f0f)?;
            // Byte k of a: the field at bits 0..2 of H byte k; b: bits 6..8; c: 2..4; d: 4..6.
            let a = self.pshufb(&FP6_LOW_FIELD, low_i)?;
            let b = self.pshufb(&FP6_HIGH_FIELD, high_i)?;
            let c = self.pshufb(&FP6_HIGH_FIELD, low_i)?;
            let d = self.pshufb(&FP6_LOW_FIELD, high_i)?;
            // Half 0 reads H bytes 1 (even codes) and 3 (odd), half 1 bytes 0 and 2. Word byte 0
            // holds pairs 3 (low nibble) and 2, byte 1 pairs 0 and 1, bytes 2 and 3 the odd codes.
            // Even bytes from the first vector, odd bytes from the second (vpblendvb).
            let blend = |x: VectorValue<'ctx>, y: VectorValue<'ctx>| -> R<VectorValue<'ctx>> {
                let bytes = self.ctx.i8_type().vec_type(4 * self.w());
                let xb = self.b.build_bit_cast(x, bytes, "")?.into_vector_value();
                let yb = self.b.build_bit_cast(y, bytes, "")?.into_vector_value();
                let n = 4 * self.w();
                let idx: Vec<u32> = (0..n).map(|i| if i % 2 == 0 { i } else { n + i }).collect();
                Ok(self.b.build_bit_cast(self.shuf(xb, yb, &idx)?, self.vi32(self.w()), "")?.into_vector_value())
            };
            let half0 = (blend(self.shift16(a, -8)?, b)?, blend(self.shift16(c, -8)?, d)?);
            let half1 = (blend(a, self.shift16(b, 8)?)?, blend(c, self.shift16(d, 8)?)?);
            out.push([half0, half1]);
        }
        Ok(out)
    }

    /// Byte method: the four pairs' FP16 bits (`<2W x i16>`) of one T-vector of low-plane words.
    fn byte_pairs(
        &self,
        bytes: Bytes,
        low: VectorValue<'ctx>,
        sets: Option<(VectorValue<'ctx>, VectorValue<'ctx>)>,
    ) -> R<[VectorValue<'ctx>; 4]> {
        let low_n = self.and(low, 0x0f0f_0f0f)?;
        let high_n = self.and(self.shift(low, -4)?, 0x0f0f_0f0f)?;
        let (bl, bh) = match (bytes, sets) {
            (Bytes::Table(t), _) => (self.pshufb(&t, low_n)?, self.pshufb(&t, high_n)?),
            (Bytes::Fp6 { .. }, Some((sl, sh))) => (self.b.build_or(low_n, sl, "")?, self.b.build_or(high_n, sh, "")?),
            (Bytes::Fp6 { .. }, None) => return Err(LlvmError::Llvm("FP6 byte method without high-plane bytes".into())),
        };
        // Bytes per word: low nibbles [e6, e0, e7, e1], high nibbles [e4, e2, e5, e3].
        let pairs = [self.and(bl, 0xff00_ff00)?, self.and(bh, 0xff00_ff00)?, self.shift16(bh, 8)?, self.shift16(bl, 8)?];
        let w = self.w();
        let i16v = self.ctx.i16_type().vec_type(2 * w);
        let mut out = Vec::with_capacity(4);
        for p in pairs {
            let mut x = self.b.build_bit_cast(p, i16v, "")?.into_vector_value();
            if let Bytes::Fp6 { shift, mask } = bytes {
                if shift > 0 {
                    x = self.b.build_right_shift(x, self.splat_i16(shift as u16, 2 * w), true, "")?;
                    x = self.b.build_and(x, self.splat_i16(mask, 2 * w), "")?;
                }
            }
            out.push(x);
        }
        Ok([out[0], out[1], out[2], out[3]])
    }

    /// The chunks of a tile with `kvalid` valid columns, in emission order.
    fn chunks(&self, kvalid: u32) -> Vec<ChunkInfo> {
        let l = &self.lanes;
        let mut out = Vec::new();
        for j in 0..2 {
            for v in 0..l.nq {
                for p in 0..4 {
                    for c in 0..2 {
                        let t = l.chunk_t(v, c);
                        let col = (16 * j + 8 * (p >> 1) + 2 * t) as u32;
                        let slot = ((j * l.nq + v) * 4 + p) * 2 + c;
                        if col < kvalid {
                            out.push(ChunkInfo { j, v, p, c, a: (p & 1) * l.nrs + l.row_set(c), col, slot });
                        }
                    }
                }
            }
        }
        out
    }

    /// Dequantizes the tile `tile` (absolute tile index) and hands every chunk with a valid
    /// column to `sink`.
    fn tile(
        &self,
        plan: &Plan,
        packed: PointerValue<'ctx>,
        cvt: CvtBuf<'ctx>,
        tile: IntValue<'ctx>,
        kvalid: u32,
        sink: &mut Sink<'_, 'ctx>,
    ) -> R<()> {
        let dq = plan.dq;
        let lo = self.gep(packed, self.mul(tile, LOW_TILE_BYTES)?)?;
        let hi_off = self.add(self.i64c(plan.low_bytes), self.mul(tile, 64 * dq.h as u64)?)?;
        let high = if dq.h > 0 { self.high_words(&dq, self.gep(packed, hi_off)?)? } else { High::None };
        let chunks = self.chunks(kvalid);
        let sets = match (&dq.bytes, &high) {
            (Some(Bytes::Fp6 { .. }), High::Fields(f)) => Some(self.fp6_sets(f)?),
            _ => None,
        };
        let offset = match (dq.bytes, dq.kind) {
            (None, Kind::Int { offset, .. }) => Some(offset),
            _ => None,
        };
        let mut words: Option<(usize, Vec<VectorValue<'ctx>>)> = None;
        let mut byte_pairs: Option<((usize, usize), [VectorValue<'ctx>; 4])> = None;
        let mut i = 0;
        while i < chunks.len() {
            let ch = chunks[i];
            if words.as_ref().map(|(j, _)| *j) != Some(ch.j) {
                words = Some((ch.j, self.low_words(lo, ch.j as u64)?));
            }
            let low = words.as_ref().expect("loaded").1[ch.v];
            let f16 = match dq.bytes {
                Some(bytes) => {
                    if byte_pairs.as_ref().map(|(k, _)| *k) != Some((ch.j, ch.v)) {
                        let s = sets.as_ref().map(|s| s[ch.v][ch.j]);
                        byte_pairs = Some(((ch.j, ch.v), self.byte_pairs(bytes, low, s)?));
                    }
                    byte_pairs.as_ref().expect("computed").1[ch.p]
                }
                None => self.pair_f16(&dq, low, &high, ch.v, ch.j as u32, ch.p as u32)?,
            };
            let values = self.convert_pair(cvt, (ch.v * 4 + ch.p) as u64, f16, offset)?;
            while i < chunks.len() && (chunks[i].j, chunks[i].v, chunks[i].p) == (ch.j, ch.v, ch.p) {
                sink(self, Chunk { value: values[chunks[i].c], info: chunks[i] })?;
                i += 1;
            }
        }
        Ok(())
    }

    // ---------------------------------------------------------------- shared epilogue pieces

    /// `[x[col], x[col + 1]]` broadcast to `W` lanes (the second 0 past the valid columns).
    fn xpair(&self, xrow: PointerValue<'ctx>, kt: IntValue<'ctx>, col: u32, kvalid: u32) -> R<VectorValue<'ctx>> {
        let off = self.mul(self.add(self.mul(kt, 32)?, self.i64c(col as u64))?, 4)?;
        let p = self.gep(xrow, off)?;
        let v2 = self.vf32(2);
        let pair = if col + 1 < kvalid {
            self.load(v2, p, 4)?.into_vector_value()
        } else {
            let x = self.load(self.ctx.f32_type(), p, 4)?;
            self.b.build_insert_element(v2.const_zero(), x, self.ctx.i32_type().const_zero(), "")?
        };
        let idx: Vec<u32> = (0..self.w()).map(|i| i % 2).collect();
        self.shuf(pair, pair, &idx)
    }

    /// Natural-order scales of group `g` for the 16 columns at `n0` (zero past N).
    fn scales16(
        &self,
        plan: &Plan,
        scales: PointerValue<'ctx>,
        g: IntValue<'ctx>,
        n0: IntValue<'ctx>,
        valid: VectorValue<'ctx>,
    ) -> R<VectorValue<'ctx>> {
        let off = self.mul(self.add(self.mul(g, plan.n())?, n0)?, 4)?;
        self.masked_load(self.gep(scales, off)?, valid)
    }

    /// The 16 scales permuted into the lane layout of each accumulator.
    fn scales_per_acc(&self, s16: VectorValue<'ctx>) -> R<Vec<VectorValue<'ctx>>> {
        let l = &self.lanes;
        (0..l.nacc())
            .map(|a| {
                let idx: Vec<u32> = (0..l.w).map(|f| l.acc_row(a, f) as u32).collect();
                self.shuf(s16, s16, &idx)
            })
            .collect()
    }

    /// Sums the accumulators of one row of X into its 16 outputs (natural order).
    fn reduce(&self, acc: &[VectorValue<'ctx>]) -> R<VectorValue<'ctx>> {
        let l = &self.lanes;
        let w = l.w;
        // Output rows [w/2 * s, w/2 * (s + 1)) ... come from exactly two accumulators.
        let per = w; // outputs per group of two accumulators
        let mut parts = Vec::new();
        for s in 0..16 / per {
            let rows = s * per..(s + 1) * per;
            let srcs: Vec<usize> = (0..l.nacc()).filter(|&a| (0..w).any(|f| rows.contains(&l.acc_row(a, f)))).collect();
            assert_eq!(srcs.len(), 2, "each output group comes from two accumulators");
            let find = |row: usize, parity: usize| -> u32 {
                for (k, &a) in srcs.iter().enumerate() {
                    for f in 0..w {
                        if f % 2 == parity && l.acc_row(a, f) == row {
                            return (k * w + f) as u32;
                        }
                    }
                }
                unreachable!("row {row} parity {parity} not found")
            };
            let even: Vec<u32> = rows.clone().map(|r| find(r, 0)).collect();
            let odd: Vec<u32> = rows.clone().map(|r| find(r, 1)).collect();
            let e = self.shuf(acc[srcs[0]], acc[srcs[1]], &even)?;
            let o = self.shuf(acc[srcs[0]], acc[srcs[1]], &odd)?;
            parts.push(self.b.build_float_add(e, o, "")?);
        }
        if parts.len() == 1 {
            Ok(parts[0])
        } else {
            self.shuf(parts[0], parts[1], &(0..16).collect::<Vec<_>>())
        }
    }

    /// The bias for the 16 columns at `n0` (zero if `bias` is null or past N).
    fn bias16(
        &self,
        f: FunctionValue<'ctx>,
        bias: PointerValue<'ctx>,
        n0: IntValue<'ctx>,
        valid: VectorValue<'ctx>,
    ) -> R<VectorValue<'ctx>> {
        let present = self.b.build_is_not_null(bias, "")?;
        let out = self.if_then(f, present, vec![self.fzero(16).into()], &mut |g| {
            let p = g.gep(bias, g.mul(n0, 4)?)?;
            Ok(vec![g.masked_load(p, valid)?.into()])
        })?;
        Ok(out[0].into_vector_value())
    }

    /// Stores (or, with `base`, adds to `base` and stores) the 16 outputs at `yrow + n0`,
    /// only columns below `n_end`.
    fn store16(
        &self,
        f: FunctionValue<'ctx>,
        yrow: PointerValue<'ctx>,
        n0: IntValue<'ctx>,
        n_end: IntValue<'ctx>,
        vals: VectorValue<'ctx>,
    ) -> R<()> {
        let p = self.gep(yrow, self.mul(n0, 4)?)?;
        let end = self.add(n0, self.i64c(16))?;
        let full = self.b.build_int_compare(IntPredicate::SLE, end, n_end, "")?;
        let fb = self.block(f, "store.full");
        let pb = self.block(f, "store.part");
        let done = self.block(f, "store.done");
        self.b.build_conditional_branch(full, fb, pb)?;
        self.b.position_at_end(fb);
        self.store(vals, p, 4)?;
        self.b.build_unconditional_branch(done)?;
        self.b.position_at_end(pb);
        let mask = self.lanes_below(self.b.build_int_nsw_sub(n_end, n0, "")?)?;
        self.masked_store(vals, p, mask)?;
        self.b.build_unconditional_branch(done)?;
        self.b.position_at_end(done);
        Ok(())
    }

    /// Loads y's 16 values at `yrow + n0` (columns from `n_end` on read as 0).
    fn load16(&self, yrow: PointerValue<'ctx>, n0: IntValue<'ctx>, n_end: IntValue<'ctx>) -> R<VectorValue<'ctx>> {
        let p = self.gep(yrow, self.mul(n0, 4)?)?;
        let mask = self.lanes_below(self.b.build_int_nsw_sub(n_end, n0, "")?)?;
        self.masked_load(p, mask)
    }

    // ---------------------------------------------------------------- kernels

    fn ptr_t(&self) -> BasicMetadataTypeEnum<'ctx> {
        self.ctx.ptr_type(AddressSpace::default()).into()
    }

    fn i64_t(&self) -> BasicMetadataTypeEnum<'ctx> {
        self.ctx.i64_type().into()
    }

    /// Emits the exported kernel `spec.symbol(variant)` and its internal helpers. Gemv runs the
    /// register-streaming loop when `m` fits one register block of rows and the groups are
    /// tile-aligned, the panel loop otherwise (still one dequantization per weight).
    fn kernel(&self, plan: &Plan, variant: Variant) -> R<()> {
        let name = plan.spec.symbol(variant);
        let int8 = plan.spec.activations == Activations::Int8;
        // Int8 kernels share their loops between both exported symbols.
        let shared = plan.spec.symbol(Variant::Gemm);
        let (direct, panel) = if vnni::runs(&self.isa, plan) {
            (Some((self.vn_direct_ntile(plan, &shared)?, vnni::DIRECT_ROWS)), self.vn_panel_ntile(plan, &shared)?)
        } else if int8 {
            (None, self.i8_ntile(plan, &shared)?)
        } else {
            let direct = if variant == Variant::Gemv && plan.tpg.is_some() {
                Some((self.direct_ntile(plan, &name)?, self.isa.gemv_rows))
            } else {
                None
            };
            (direct, self.panel_ntile(plan, &name)?)
        };

        let (p, i) = (self.ptr_t(), self.i64_t());
        let f = self.function(&name, &[p, i, p, p, p, p, i, i], false);
        let entry = self.block(f, "entry");
        self.b.position_at_end(entry);
        let arg = |k: u32| f.get_nth_param(k).expect("param");
        let (x, m, packed, scales, bias, y) = (arg(0), arg(1).into_int_value(), arg(2), arg(3), arg(4), arg(5));
        let (nb, ne) = (arg(6).into_int_value(), arg(7).into_int_value());
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
            let ntb = g.b.build_right_shift(nb, g.i64c(4), false, "")?;
            let nte = g.b.build_right_shift(g.add(ne, g.i64c(15))?, g.i64c(4), false, "")?;
            let args = |nt: IntValue<'ctx>| [x, m.into(), packed, scales, bias, y, nt.into(), ne.into()];
            let loop_over = |g: &Self, ntile: FunctionValue<'ctx>| {
                g.for_loop(f, ntb, nte, vec![], &mut |g, nt, _| {
                    g.call(ntile, &args(nt))?;
                    Ok(vec![])
                })
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
                    loop_over(g, panel)?;
                    g.b.build_unconditional_branch(done)?;
                    g.b.position_at_end(done);
                }
                None => {
                    loop_over(g, panel)?;
                }
            }
            Ok(vec![])
        })?;
        self.b.build_return(None)?;
        Ok(())
    }

    /// Calls `call(b, xb, yb)` (row-block functions for `b` rows, `b` in `1..=rows`) over
    /// the `f32` rows of X and Y: full blocks of `rows` in a loop, then the remainder.
    fn row_blocks(
        &self,
        f: FunctionValue<'ctx>,
        plan: &Plan,
        rows: u32,
        m: IntValue<'ctx>,
        (x, y): (PointerValue<'ctx>, PointerValue<'ctx>),
        call: &mut dyn FnMut(&Self, u32, PointerValue<'ctx>, PointerValue<'ctx>) -> R<()>,
    ) -> R<()> {
        self.row_blocks_at(f, rows, m, &mut |g, b, r0| {
            let xb = g.gep(x, g.mul(r0, 4 * plan.k())?)?;
            let yb = g.gep(y, g.mul(r0, 4 * plan.n())?)?;
            call(g, b, xb, yb)
        })
    }

    /// Calls `call(b, r0)` for blocks of `b` rows starting at row `r0`: full blocks of `rows`
    /// in a loop, then the remainder (a switch over `1..rows`).
    fn row_blocks_at(
        &self,
        f: FunctionValue<'ctx>,
        rows: u32,
        m: IntValue<'ctx>,
        call: &mut dyn FnMut(&Self, u32, IntValue<'ctx>) -> R<()>,
    ) -> R<()> {
        let rows64 = self.i64c(rows as u64);
        let full = self.b.build_int_signed_div(m, rows64, "")?;
        self.for_loop(f, self.i64c(0), full, vec![], &mut |g, i, _| {
            call(g, rows, g.mul(i, rows as u64)?)?;
            Ok(vec![])
        })?;
        if rows > 1 {
            let r0 = self.mul(full, rows as u64)?;
            let rem = self.b.build_int_nsw_sub(m, r0, "")?;
            let done = self.block(f, "rows.done");
            let cases: Vec<_> = (1..rows).map(|b| (self.i64c(b as u64), self.block(f, "rows.rem"))).collect();
            self.b.build_switch(rem, done, &cases)?;
            for (b, (_, bb)) in (1..rows).zip(&cases) {
                self.b.position_at_end(*bb);
                call(self, b, r0)?;
                self.b.build_unconditional_branch(done)?;
            }
            self.b.position_at_end(done);
        }
        Ok(())
    }

    /// Gemv: for one n-tile, every block of rows streams the whole K of the tile column,
    /// dequantizing in registers.
    fn direct_ntile(&self, plan: &Plan, name: &str) -> R<FunctionValue<'ctx>> {
        let rows = self.isa.gemv_rows;
        let blocks: Vec<FunctionValue<'ctx>> = (1..=rows).map(|b| self.direct_rows(plan, name, b)).collect::<R<_>>()?;
        let (p, i) = (self.ptr_t(), self.i64_t());
        let f = self.function(&format!("{name}.direct"), &[p, i, p, p, p, p, i, i], true);
        self.b.position_at_end(self.block(f, "entry"));
        let arg = |k: u32| f.get_nth_param(k).expect("param");
        let (x, m, packed, scales, bias, y, nt, ne) = (arg(0), arg(1).into_int_value(), arg(2), arg(3), arg(4), arg(5), arg(6), arg(7));
        self.row_blocks(f, plan, rows, m, (x.into_pointer_value(), y.into_pointer_value()), &mut |g, b, xb, yb| {
            g.call(blocks[b as usize - 1], &[xb.into(), packed, scales, bias, yb.into(), nt, ne])?;
            Ok(())
        })?;
        self.b.build_return(None)?;
        Ok(f)
    }

    fn flat(acc: &[Vec<VectorValue<'ctx>>]) -> Vec<BasicValueEnum<'ctx>> {
        acc.iter().flatten().map(|&v| v.into()).collect()
    }

    fn unflat(&self, rows: u32, v: &[BasicValueEnum<'ctx>]) -> Vec<Vec<VectorValue<'ctx>>> {
        let nacc = self.lanes.nacc();
        (0..rows as usize).map(|r| (0..nacc).map(|a| v[r * nacc + a].into_vector_value()).collect()).collect()
    }

    fn zero_acc(&self, rows: u32) -> Vec<Vec<VectorValue<'ctx>>> {
        vec![vec![self.fzero(self.w()); self.lanes.nacc()]; rows as usize]
    }

    /// The Gemv row block: `rows` rows of X against one n-tile, all of K.
    fn direct_rows(&self, plan: &Plan, name: &str, rows: u32) -> R<FunctionValue<'ctx>> {
        let (p, i) = (self.ptr_t(), self.i64_t());
        let f = self.function(&format!("{name}.rows{rows}"), &[p, p, p, p, p, i, i], true);
        self.b.position_at_end(self.block(f, "entry"));
        let arg = |k: u32| f.get_nth_param(k).expect("param");
        let (x, packed, scales, bias, y) = (
            arg(0).into_pointer_value(),
            arg(1).into_pointer_value(),
            arg(2).into_pointer_value(),
            arg(3).into_pointer_value(),
            arg(4).into_pointer_value(),
        );
        let (nt, ne) = (arg(5).into_int_value(), arg(6).into_int_value());
        let n0 = self.mul(nt, 16)?;
        let tile0 = self.mul(nt, plan.kt)?;
        let valid = self.lanes_below(self.b.build_int_nsw_sub(self.i64c(plan.n()), n0, "")?)?;
        let xrows: Vec<PointerValue<'ctx>> = (0..rows as u64).map(|r| self.gep(x, self.i64c(r * 4 * plan.k()))).collect::<R<_>>()?;
        let tpg = plan.tpg.expect("direct path needs tile-aligned groups");
        let cvt = self.cvt_buf()?;

        // The tile body: FMAs of every chunk into its row's accumulator.
        let tile = |g: &Self, acc: &mut Vec<Vec<VectorValue<'ctx>>>, kt: IntValue<'ctx>, kvalid: u32| -> R<()> {
            let t = g.add(tile0, kt)?;
            g.tile(plan, packed, cvt, t, kvalid, &mut |g, ch| {
                for (r, xr) in xrows.iter().enumerate() {
                    let xv = g.xpair(*xr, kt, ch.info.col, kvalid)?;
                    acc[r][ch.info.a] = g.fma(ch.value, xv, acc[r][ch.info.a])?;
                }
                Ok(())
            })
        };
        // Tiles [first, first + count) of full columns (a loop), then optionally the tail tile.
        let group_body = |g: &Self, first: IntValue<'ctx>, count: u64, tail: bool| -> R<Vec<Vec<VectorValue<'ctx>>>> {
            let mut acc = g.zero_acc(rows);
            if count > 0 {
                let end = g.add(first, g.i64c(count))?;
                let out = g.for_loop(f, first, end, Self::flat(&acc), &mut |g, kt, carried| {
                    let mut acc = g.unflat(rows, &carried);
                    tile(g, &mut acc, kt, 32)?;
                    Ok(Self::flat(&acc))
                })?;
                acc = g.unflat(rows, &out);
            }
            if tail {
                tile(g, &mut acc, g.i64c(plan.kt - 1), plan.krem)?;
            }
            Ok(acc)
        };
        let flush = |g: &Self, yacc: &mut Vec<Vec<VectorValue<'ctx>>>, acc: &[Vec<VectorValue<'ctx>>], group: IntValue<'ctx>| -> R<()> {
            let s = g.scales_per_acc(g.scales16(plan, scales, group, n0, valid)?)?;
            for (yr, ar) in yacc.iter_mut().zip(acc) {
                for a in 0..ar.len() {
                    yr[a] = g.fma(ar[a], s[a], yr[a])?;
                }
            }
            Ok(())
        };

        let has_tail = plan.krem < 32;
        let full_groups = plan.ft / tpg;
        let rem_tiles = plan.ft - full_groups * tpg;
        let mut yacc = self.zero_acc(rows);
        if full_groups > 0 {
            let out = self.for_loop(f, self.i64c(0), self.i64c(full_groups), Self::flat(&yacc), &mut |g, gi, carried| {
                let mut yacc = g.unflat(rows, &carried);
                let first = g.mul(gi, tpg)?;
                let acc = group_body(g, first, tpg, false)?;
                flush(g, &mut yacc, &acc, gi)?;
                Ok(Self::flat(&yacc))
            })?;
            yacc = self.unflat(rows, &out);
        }
        if rem_tiles > 0 || has_tail {
            let acc = group_body(self, self.i64c(full_groups * tpg), rem_tiles, has_tail)?;
            flush(self, &mut yacc, &acc, self.i64c(full_groups))?;
        }
        let bias16 = self.bias16(f, bias, n0, valid)?;
        for (r, yr) in yacc.iter().enumerate() {
            let vals = self.b.build_float_add(self.reduce(yr)?, bias16, "")?;
            let yrow = self.gep(y, self.i64c(r as u64 * 4 * plan.n()))?;
            self.store16(f, yrow, n0, ne, vals)?;
        }
        self.b.build_return(None)?;
        Ok(f)
    }

    /// Creates the internal n-tile function `name` (the exported kernel's parameters, with the
    /// n-tile index in place of `n_begin`), positioned at its entry.
    fn ntile_function(&self, name: &str) -> (FunctionValue<'ctx>, NtileArgs<'ctx>) {
        let (p, i) = (self.ptr_t(), self.i64_t());
        let f = self.function(name, &[p, i, p, p, p, p, i, i], true);
        self.b.position_at_end(self.block(f, "entry"));
        let arg = |k: u32| f.get_nth_param(k).expect("param");
        let args = NtileArgs {
            x: arg(0).into_pointer_value(),
            m: arg(1).into_int_value(),
            packed: arg(2).into_pointer_value(),
            scales: arg(3).into_pointer_value(),
            bias: arg(4),
            y: arg(5).into_pointer_value(),
            nt: arg(6).into_int_value(),
            ne: arg(7).into_int_value(),
        };
        (f, args)
    }

    /// A 64-byte aligned stack buffer of type `ty` in the current function.
    fn aligned_alloca<T: BasicType<'ctx>>(&self, ty: T, name: &str) -> R<PointerValue<'ctx>> {
        let p = self.b.build_alloca(ty, name)?;
        p.as_instruction_value().expect("alloca").set_alignment(64).map_err(|e| LlvmError::Llvm(e.to_string()))?;
        Ok(p)
    }

    /// The tiles in K block `kb` of `per` tiles, out of `total`: `min(per, total - kb · per)`.
    fn tiles_in_block(&self, kb: IntValue<'ctx>, per: u64, total: u64) -> R<IntValue<'ctx>> {
        let left = self.b.build_int_nsw_sub(self.i64c(total), self.mul(kb, per)?, "")?;
        let small = self.b.build_int_compare(IntPredicate::SLT, left, self.i64c(per), "")?;
        Ok(self.b.build_select(small, left, self.i64c(per), "")?.into_int_value())
    }

    /// Gemm (and Gemv with ragged groups): per n-tile, blocks of tiles are dequantized with
    /// their scales into a panel, then every block of rows of X consumes the panel.
    fn panel_ntile(&self, plan: &Plan, name: &str) -> R<FunctionValue<'ctx>> {
        let rows = self.isa.gemm_rows;
        let blocks: Vec<FunctionValue<'ctx>> = (1..=rows).map(|b| self.panel_rows(plan, name, b)).collect::<R<_>>()?;
        let (f, NtileArgs { x, m, packed, scales, bias, y, nt, ne }) = self.ntile_function(&format!("{name}.panel"));
        let kct = self.isa.panel_tiles as u64;
        let panel = self.aligned_alloca(self.ctx.f32_type().array_type((kct * PANEL_TILE_BYTES / 4) as u32), "panel")?;
        let cvt = self.cvt_buf()?;
        let n0 = self.mul(nt, 16)?;
        let tile0 = self.mul(nt, plan.kt)?;
        let valid = self.lanes_below(self.b.build_int_nsw_sub(self.i64c(plan.n()), n0, "")?)?;
        // Per-channel scales are the same for every tile: permute them once.
        let per_channel =
            if plan.groups == 1 { Some(self.scales_per_acc(self.scales16(plan, scales, self.i64c(0), n0, valid)?)?) } else { None };
        let lanes = &self.lanes;
        let w = lanes.w as u64;

        // Dequantizes tile `kt` into panel slot `at` (both i64), scales applied.
        let build = |g: &Self, kt: IntValue<'ctx>, at: IntValue<'ctx>, kvalid: u32| -> R<()> {
            let dst = g.gep(panel, g.mul(at, PANEL_TILE_BYTES)?)?;
            let tile_scales = match (&per_channel, plan.tpg) {
                (Some(s), _) => Some(s.clone()),
                (None, Some(tpg)) => {
                    let grp = g.b.build_int_unsigned_div(kt, g.i64c(tpg), "")?;
                    Some(g.scales_per_acc(g.scales16(plan, scales, grp, n0, valid)?)?)
                }
                (None, None) => None,
            };
            let tile = g.add(tile0, kt)?;
            g.tile(plan, packed, cvt, tile, kvalid, &mut |g, ch| {
                let s = match &tile_scales {
                    Some(s) => s[ch.info.a],
                    None => g.ragged_scales(plan, scales, kt, ch.info, n0, valid)?,
                };
                let v = g.b.build_float_mul(ch.value, s, "")?;
                g.store(v, g.gep(dst, g.i64c(ch.info.slot as u64 * w * 4))?, w as u32 * 4)
            })
        };

        let has_tail = plan.krem < 32;
        let nkb = plan.kt.div_ceil(kct);
        self.for_loop(f, self.i64c(0), self.i64c(nkb), vec![], &mut |g, kb, _| {
            let kt0 = g.mul(kb, kct)?;
            // Full tiles in this block.
            let nfull = g.tiles_in_block(kb, kct, plan.ft)?;
            g.for_loop(f, g.i64c(0), nfull, vec![], &mut |g, i, _| {
                build(g, g.add(kt0, i)?, i, 32)?;
                Ok(vec![])
            })?;
            let last = g.b.build_int_compare(IntPredicate::EQ, kb, g.i64c(nkb - 1), "")?;
            let tail = if has_tail { last } else { g.ctx.bool_type().const_zero() };
            if has_tail {
                g.if_then(f, tail, vec![], &mut |g| {
                    build(g, g.i64c(plan.kt - 1), nfull, plan.krem)?;
                    Ok(vec![])
                })?;
            }
            let first = g.b.build_int_compare(IntPredicate::EQ, kb, g.i64c(0), "")?;
            g.row_blocks(f, plan, rows, m, (x, y), &mut |g, b, xb, yb| {
                g.call(
                    blocks[b as usize - 1],
                    &[xb.into(), panel.into(), kt0.into(), nfull.into(), tail.into(), first.into(), bias, yb.into(), nt.into(), ne.into()],
                )?;
                Ok(())
            })?;
            Ok(vec![])
        })?;
        self.b.build_return(None)?;
        Ok(f)
    }

    /// Scales for one chunk when groups do not align with tiles: each of its two columns
    /// takes its own group's scales.
    fn ragged_scales(
        &self,
        plan: &Plan,
        scales: PointerValue<'ctx>,
        kt: IntValue<'ctx>,
        ch: ChunkInfo,
        n0: IntValue<'ctx>,
        valid: VectorValue<'ctx>,
    ) -> R<VectorValue<'ctx>> {
        let c0 = self.add(self.mul(kt, 32)?, self.i64c(ch.col as u64))?;
        let group_of = |col: IntValue<'ctx>| -> R<IntValue<'ctx>> {
            let g = self.b.build_int_unsigned_div(col, self.i64c(plan.group), "")?;
            let last = self.i64c(plan.groups - 1);
            let over = self.b.build_int_compare(IntPredicate::UGT, g, last, "")?;
            Ok(self.b.build_select(over, last, g, "")?.into_int_value())
        };
        let ga = group_of(c0)?;
        let gb = group_of(self.add(c0, self.i64c(1))?)?;
        let sa = self.scales16(plan, scales, ga, n0, valid)?;
        let sb = self.scales16(plan, scales, gb, n0, valid)?;
        let l = &self.lanes;
        let idx: Vec<u32> = (0..l.w).map(|f| (l.acc_row(ch.a, f) + 16 * (f % 2)) as u32).collect();
        self.shuf(sa, sb, &idx)
    }

    /// The panel row block: `rows` rows of X against the panel's tiles; adds the result to y
    /// (or to the bias, for the first block of K).
    fn panel_rows(&self, plan: &Plan, name: &str, rows: u32) -> R<FunctionValue<'ctx>> {
        let (p, i) = (self.ptr_t(), self.i64_t());
        let b1 = self.ctx.bool_type().into();
        let f = self.function(&format!("{name}.prows{rows}"), &[p, p, i, i, b1, b1, p, p, i, i], true);
        self.b.position_at_end(self.block(f, "entry"));
        let arg = |k: u32| f.get_nth_param(k).expect("param");
        let (x, panel, kt0, nfull) =
            (arg(0).into_pointer_value(), arg(1).into_pointer_value(), arg(2).into_int_value(), arg(3).into_int_value());
        let (tail, first, bias, y) =
            (arg(4).into_int_value(), arg(5).into_int_value(), arg(6).into_pointer_value(), arg(7).into_pointer_value());
        let (nt, ne) = (arg(8).into_int_value(), arg(9).into_int_value());
        let xrows: Vec<PointerValue<'ctx>> = (0..rows as u64).map(|r| self.gep(x, self.i64c(r * 4 * plan.k()))).collect::<R<_>>()?;
        let w = self.w();

        let consume = |g: &Self, acc: &mut Vec<Vec<VectorValue<'ctx>>>, at: IntValue<'ctx>, kt: IntValue<'ctx>, kvalid: u32| -> R<()> {
            let src = g.gep(panel, g.mul(at, PANEL_TILE_BYTES)?)?;
            for ch in g.chunks(kvalid) {
                let wv = g.load(g.vf32(w), g.gep(src, g.i64c(ch.slot as u64 * w as u64 * 4))?, w * 4)?.into_vector_value();
                for (r, xr) in xrows.iter().enumerate() {
                    let xv = g.xpair(*xr, kt, ch.col, kvalid)?;
                    acc[r][ch.a] = g.fma(wv, xv, acc[r][ch.a])?;
                }
            }
            Ok(())
        };
        let acc0 = self.zero_acc(rows);
        let out = self.for_loop(f, self.i64c(0), nfull, Self::flat(&acc0), &mut |g, i, carried| {
            let mut acc = g.unflat(rows, &carried);
            consume(g, &mut acc, i, g.add(kt0, i)?, 32)?;
            Ok(Self::flat(&acc))
        })?;
        let mut acc = self.unflat(rows, &out);
        if plan.krem < 32 {
            let out = self.if_then(f, tail, Self::flat(&acc), &mut |g| {
                let mut acc = g.unflat(rows, &Self::flat(&acc));
                consume(g, &mut acc, nfull, g.i64c(plan.kt - 1), plan.krem)?;
                Ok(Self::flat(&acc))
            })?;
            acc = self.unflat(rows, &out);
        }
        let n0 = self.mul(nt, 16)?;
        let valid = self.lanes_below(self.b.build_int_nsw_sub(self.i64c(plan.n()), n0, "")?)?;
        let bias16 = self.bias16(f, bias, n0, valid)?;
        for (r, ar) in acc.iter().enumerate() {
            let yrow = self.gep(y, self.i64c(r as u64 * 4 * plan.n()))?;
            let old =
                self.if_then(f, self.b.build_not(first, "")?, vec![bias16.into()], &mut |g| Ok(vec![g.load16(yrow, n0, ne)?.into()]))?;
            let vals = self.b.build_float_add(self.reduce(ar)?, old[0].into_vector_value(), "")?;
            self.store16(f, yrow, n0, ne, vals)?;
        }
        self.b.build_return(None)?;
        Ok(f)
    }
}

// -------------------------------------------------------------------- int8 activations

/// Where row `r`'s parts of an int8 activation buffer ([`fpx_quant::act8::Int8Activations`]
/// of `m` rows: all scales, all corrections, then all codes) start.
struct Act8Rows<'ctx> {
    /// Codes: `32 · kt` bytes per row.
    q: PointerValue<'ctx>,
    /// Scales: `kt` `f32` per row.
    s: PointerValue<'ctx>,
    /// Corrections: `kt` `i32` per row.
    c: PointerValue<'ctx>,
}

/// Bytes of one int8 panel tile: 16 vectors of 32 unsigned weight bytes (`weight + 64`), then
/// two vectors of `f32` scales in accumulator lane order (grouped weights only).
const I8_TILE_BYTES: u64 = 576;
/// Where the scales start in an int8 panel tile.
const I8_SCALES_AT: u64 = 512;
/// Tiles per int8 panel (9 KiB: L1-resident with the activations).
const I8_PANEL_TILES: u64 = 16;
/// Rows of X per int8 row block: 2 `f32` accumulators each, plus one row's 2 `i32` ones at a time
/// (3 measured at least as fast as 4 or 5 on Zen 3 and spills least).
const I8_ROWS: u32 = 3;

/// How a format's codes become unsigned weight bytes `value · units + 64` for the int8 kernels.
#[derive(Debug, Clone, Copy)]
struct ByteDecode {
    /// `1 / units`: folded into the scales.
    inv_units: f32,
    kind: ByteKind,
}

#[derive(Debug, Clone, Copy)]
enum ByteKind {
    /// 4-bit codes: one table from the code to `value · units + 64`.
    Table([u8; 16]),
    /// FP6: the code byte `s << 7 | e << 4 | low nibble` (as the byte method assembles it);
    /// magnitudes from `mag[e][nibble]` (`identity0`: `mag[0]` is the nibble itself), sign from bit 7.
    Fp6 { mag: [[u8; 16]; 2], identity0: bool },
}

impl ByteDecode {
    fn of(format: Format) -> R<ByteDecode> {
        let units = fpx_quant::act8::int8_units(format)
            .ok_or_else(|| LlvmError::Llvm(format!("{format} has no integer form for int8 activations")))?;
        let value = |c: u8| fold::stored_value(format, c) * units;
        let kind = match format.bits() {
            4 => {
                let mut t = [0u8; 16];
                for (c, e) in t.iter_mut().enumerate() {
                    *e = (value(c as u8) as i32 + fpx_quant::act8::WEIGHT_OFFSET) as u8;
                }
                ByteKind::Table(t)
            }
            6 => {
                let mut mag = [[0u8; 16]; 2];
                for (e, row) in mag.iter_mut().enumerate() {
                    for (l, m) in row.iter_mut().enumerate() {
                        let c = (16 * e + l) as u8;
                        let (v, neg) = (value(c), value(c | 0x20));
                        if v < 0.0 || (neg != -v && !(v == 0.0 && neg == 0.0)) {
                            return Err(LlvmError::Llvm(format!("{format}: code {c:#x} is not sign-magnitude")));
                        }
                        *m = v as u8;
                    }
                }
                let identity0 = mag[0].iter().enumerate().all(|(l, &m)| m as usize == l);
                ByteKind::Fp6 { mag, identity0 }
            }
            b => return Err(LlvmError::Llvm(format!("no byte decoder for {b}-bit codes"))),
        };
        Ok(ByteDecode { inv_units: 1.0 / units, kind })
    }
}

impl<'m, 'ctx> Gen<'m, 'ctx> {
    fn as_bytes(&self, v: VectorValue<'ctx>) -> R<VectorValue<'ctx>> {
        let n = v.get_type().get_size() * v.get_type().get_element_type().into_int_type().get_bit_width() / 8;
        Ok(self.b.build_bit_cast(v, self.ctx.i8_type().vec_type(n), "")?.into_vector_value())
    }

    fn splat_i8(&self, x: u8, n: u32) -> VectorValue<'ctx> {
        let c = self.ctx.i8_type().const_int(x as u64, false);
        VectorType::const_vector(&vec![c; n as usize])
    }

    /// Row `r`'s parts of the int8 activation buffer `x` of `m` rows with `kt` blocks each.
    fn act8_rows(&self, x: PointerValue<'ctx>, m: IntValue<'ctx>, r: IntValue<'ctx>, kt: u64) -> R<Act8Rows<'ctx>> {
        let blocks = self.b.build_int_nsw_mul(m, self.i64c(kt), "")?;
        let (corrections, codes) = (self.gep(x, self.mul(blocks, 4)?)?, self.gep(x, self.mul(blocks, 8)?)?);
        Ok(Act8Rows {
            q: self.gep(codes, self.mul(r, 32 * kt)?)?,
            s: self.gep(x, self.mul(r, 4 * kt)?)?,
            c: self.gep(corrections, self.mul(r, 4 * kt)?)?,
        })
    }

    /// `p` passed through an empty inline asm: the same address, but LLVM cannot prove it, so
    /// loads through it are not merged with loads through `p` (or another laundered copy).
    fn launder(&self, p: PointerValue<'ctx>) -> R<PointerValue<'ctx>> {
        let ptr = self.ctx.ptr_type(AddressSpace::default());
        let fty = ptr.fn_type(&[ptr.into()], false);
        let asm = self.ctx.create_inline_asm(fty, String::new(), "=r,0".to_string(), false, false, None, false);
        Ok(self.b.build_indirect_call(fty, asm, &[p.into()], "")?.try_as_basic_value().basic().expect("asm returns").into_pointer_value())
    }

    /// The scalar `v` in every lane of a `<W x ty>` vector.
    fn splat_scalar(&self, v: BasicValueEnum<'ctx>, ty: VectorType<'ctx>) -> R<VectorValue<'ctx>> {
        let one = self.b.build_insert_element(ty.get_poison(), v, self.ctx.i32_type().const_zero(), "")?;
        self.shuf(one, ty.get_poison(), &vec![0; ty.get_size() as usize])
    }

    /// Even bytes of `a`, odd bytes of `b`.
    fn even_odd(&self, a: VectorValue<'ctx>, b: VectorValue<'ctx>) -> R<VectorValue<'ctx>> {
        let (ab, bb) = (self.as_bytes(a)?, self.as_bytes(b)?);
        let n = ab.get_type().get_size();
        let idx: Vec<u32> = (0..n).map(|i| if i % 2 == 0 { i } else { n + i }).collect();
        self.shuf(ab, bb, &idx)
    }

    /// Code bytes (see [`ByteKind`]) to unsigned weight bytes.
    fn decode_bytes(&self, dec: &ByteDecode, r: VectorValue<'ctx>) -> R<VectorValue<'ctx>> {
        let w = self.w();
        let to_bytes = |v: VectorValue<'ctx>| self.as_bytes(v);
        match dec.kind {
            ByteKind::Table(t) => to_bytes(self.pshufb(&t, self.b.build_bit_cast(r, self.vi32(w), "")?.into_vector_value())?),
            ByteKind::Fp6 { mag, identity0 } => {
                let n = 4 * w;
                let r32 = self.b.build_bit_cast(r, self.vi32(w), "")?.into_vector_value();
                let nib = self.and(r32, 0x0f0f_0f0f)?;
                let m0 = if identity0 { to_bytes(nib)? } else { to_bytes(self.pshufb(&mag[0], nib)?)? };
                let m1 = to_bytes(self.pshufb(&mag[1], nib)?)?;
                let rb = to_bytes(r)?;
                let zero = self.ctx.i8_type().vec_type(n).const_zero();
                // The exponent bit (bit 4) moved to each byte's sign by a 16-bit shift (bits
                // from the neighbouring byte land below bit 7): one vpsllw, then vpblendvb.
                let e = self.b.build_int_compare(IntPredicate::SLT, to_bytes(self.shift16(r32, 3)?)?, zero, "")?;
                let m = self.b.build_select(e, m1, m0, "")?.into_vector_value();
                // vpsignb: the magnitude negated where the code's sign (bit 7) is set (a zero
                // code byte is +0, whose magnitude is 0 anyway).
                let psign = self.intrinsic("llvm.x86.avx2.psign.b", &[])?;
                let signed = self.call(psign, &[m.into(), rb.into()])?.expect("returns").into_vector_value();
                let off = self.splat_i8(fpx_quant::act8::WEIGHT_OFFSET as u8, n);
                Ok(self.b.build_int_add(signed, off, "")?)
            }
        }
    }

    /// Row (0..8) of each `i32` lane of a T-vector: the same for every T-vector on AVX2.
    fn i8_lane_rows(&self) -> R<Vec<usize>> {
        let l = &self.lanes;
        let rows: Vec<usize> = l.order[0].iter().map(|w| w / 4).collect();
        for v in 0..l.nq {
            if l.order[v].iter().map(|w| w / 4).collect::<Vec<_>>() != rows || l.chunk_t(v, 0) != l.chunk_t(v, 1) {
                return Err(LlvmError::Llvm("int8 kernels need T-vectors of one t and fixed rows".into()));
            }
        }
        Ok(rows)
    }

    /// Decodes tile `kt` (relative to the n-tile) into int8 panel slot `at`: for each half `j`
    /// and T-vector `v`, the bytes of rows `g` then `g + 8` (4 codes per lane, columns
    /// `c + [8, 0, 9, 1]`, `c = 16j + 2t`), then the grouped scales.
    #[allow(clippy::too_many_arguments)]
    fn i8_build(
        &self,
        plan: &Plan,
        dec: &ByteDecode,
        (packed, scales): (PointerValue<'ctx>, PointerValue<'ctx>),
        (tile0, kt, n0): (IntValue<'ctx>, IntValue<'ctx>, IntValue<'ctx>),
        valid: VectorValue<'ctx>,
        dst: PointerValue<'ctx>,
        rows: &[usize],
    ) -> R<()> {
        let dq = plan.dq;
        let tile = self.add(tile0, kt)?;
        let lo = self.gep(packed, self.mul(tile, LOW_TILE_BYTES)?)?;
        let sets = if dq.h > 0 {
            let hi_off = self.add(self.i64c(plan.low_bytes), self.mul(tile, 64 * dq.h as u64)?)?;
            match self.high_words(&dq, self.gep(packed, hi_off)?)? {
                High::Fields(f) if dq.h == 2 => Some(self.fp6_sets(&f)?),
                _ => return Err(LlvmError::Llvm("int8 kernels decode 4- and 6-bit codes only".into())),
            }
        } else {
            None
        };
        let w = self.w() as u64;
        for j in 0..2usize {
            let words = self.low_words(lo, j as u64)?;
            for (v, &low) in words.iter().enumerate() {
                let low_n = self.and(low, 0x0f0f_0f0f)?;
                let high_n = self.and(self.shift(low, -4)?, 0x0f0f_0f0f)?;
                let (bl, bh) = match &sets {
                    Some(s) => {
                        let (sl, sh) = s[v][j];
                        (self.b.build_or(low_n, sl, "")?, self.b.build_or(high_n, sh, "")?)
                    }
                    None => (low_n, high_n),
                };
                // Word bytes: low nibbles [e6, e0, e7, e1], high nibbles [e4, e2, e5, e3].
                let row_g = self.even_odd(bh, bl)?; // [e4, e0, e5, e1]
                let row_g8 = self.even_odd(bl, bh)?; // [e6, e2, e7, e3]
                for (h, r) in [row_g, row_g8].into_iter().enumerate() {
                    let u = self.decode_bytes(dec, r)?;
                    let at = ((j * self.lanes.nq + v) * 2 + h) as u64 * 4 * w;
                    self.store(u, self.gep(dst, self.i64c(at))?, 32)?;
                }
            }
        }
        if let Some(tpg) = plan.tpg.filter(|_| plan.groups > 1) {
            let grp = self.b.build_int_unsigned_div(kt, self.i64c(tpg), "")?;
            let s16 = self.scales16(plan, scales, grp, n0, valid)?;
            for h in 0..2 {
                let idx: Vec<u32> = rows.iter().map(|&g| (g + 8 * h) as u32).collect();
                let s = self.b.build_float_mul(self.shuf(s16, s16, &idx)?, self.splat_f32(dec.inv_units, w as u32), "")?;
                self.store(s, self.gep(dst, self.i64c(I8_SCALES_AT + h as u64 * 4 * w))?, 32)?;
            }
        }
        Ok(())
    }

    /// The int8 n-tile loop: K in panels of [`I8_PANEL_TILES`] tiles, each decoded once and
    /// consumed by every block of rows.
    fn i8_ntile(&self, plan: &Plan, name: &str) -> R<FunctionValue<'ctx>> {
        let fname = format!("{name}.i8");
        if let Some(f) = self.module.get_function(&fname) {
            return Ok(f);
        }
        let dec = ByteDecode::of(plan.spec.format)?;
        let lane_rows = self.i8_lane_rows()?;
        let rows = I8_ROWS;
        let blocks: Vec<FunctionValue<'ctx>> = (1..=rows).map(|b| self.i8_rows(plan, &dec, &lane_rows, name, b)).collect::<R<_>>()?;
        let (f, NtileArgs { x, m, packed, scales, bias, y, nt, ne }) = self.ntile_function(&fname);
        let panel = self.aligned_alloca(self.ctx.i8_type().array_type((I8_PANEL_TILES * I8_TILE_BYTES) as u32), "i8panel")?;
        let kt = plan.kt;
        let n0 = self.mul(nt, 16)?;
        let tile0 = self.mul(nt, kt)?;
        let valid = self.lanes_below(self.b.build_int_nsw_sub(self.i64c(plan.n()), n0, "")?)?;
        let kct = I8_PANEL_TILES;
        let nkb = kt.div_ceil(kct);
        self.for_loop(f, self.i64c(0), self.i64c(nkb), vec![], &mut |g, kb, _| {
            let kt0 = g.mul(kb, kct)?;
            let count = g.tiles_in_block(kb, kct, kt)?;
            g.for_loop(f, g.i64c(0), count, vec![], &mut |g, i, _| {
                let dst = g.gep(panel, g.mul(i, I8_TILE_BYTES)?)?;
                g.i8_build(plan, &dec, (packed, scales), (tile0, g.add(kt0, i)?, n0), valid, dst, &lane_rows)?;
                Ok(vec![])
            })?;
            let first = g.b.build_int_compare(IntPredicate::EQ, kb, g.i64c(0), "")?;
            g.row_blocks_at(f, rows, m, &mut |g, b, r0| {
                let xr = g.act8_rows(x, m, r0, kt)?;
                let args = [
                    xr.q.into(),
                    xr.s.into(),
                    xr.c.into(),
                    panel.into(),
                    kt0.into(),
                    count.into(),
                    first.into(),
                    scales.into(),
                    bias,
                    g.gep(y, g.mul(r0, 4 * plan.n())?)?.into(),
                    nt.into(),
                    ne.into(),
                ];
                g.call(blocks[b as usize - 1], &args)?;
                Ok(())
            })?;
            Ok(vec![])
        })?;
        self.b.build_return(None)?;
        Ok(f)
    }

    /// The int8 row block: `rows` rows of quantized X against the panel's tiles; per tile and
    /// row, byte dot products into `i32`, then the correction, the activation scale (and the
    /// tile's weight scales) into `f32`; finally adds to y (or the bias, for the first panel).
    fn i8_rows(&self, plan: &Plan, dec: &ByteDecode, lane_rows: &[usize], name: &str, rows: u32) -> R<FunctionValue<'ctx>> {
        let (p, i) = (self.ptr_t(), self.i64_t());
        let b1 = self.ctx.bool_type().into();
        let f = self.function(&format!("{name}.i8rows{rows}"), &[p, p, p, p, i, i, b1, p, p, p, i, i], true);
        self.b.position_at_end(self.block(f, "entry"));
        let arg = |k: u32| f.get_nth_param(k).expect("param");
        let (xq, xs, xc, panel) =
            (arg(0).into_pointer_value(), arg(1).into_pointer_value(), arg(2).into_pointer_value(), arg(3).into_pointer_value());
        let (kt0, count, first) = (arg(4).into_int_value(), arg(5).into_int_value(), arg(6).into_int_value());
        let (scales, bias, y) = (arg(7).into_pointer_value(), arg(8).into_pointer_value(), arg(9).into_pointer_value());
        let (nt, ne) = (arg(10).into_int_value(), arg(11).into_int_value());
        let w = self.w();
        let kt = plan.kt;
        let grouped = plan.groups > 1;
        let bytes_t = self.ctx.i8_type().vec_type(4 * w);
        let pmaddubsw = self.intrinsic("llvm.x86.avx2.pmadd.ub.sw", &[])?;
        let pmaddwd = self.intrinsic("llvm.x86.avx2.pmadd.wd", &[])?;
        let ones = self.splat_i16(1, 2 * w);
        let rows_u = rows as usize;

        let yf0: Vec<BasicValueEnum<'ctx>> = vec![self.fzero(w).into(); 2 * rows_u];
        let yf = self.for_loop(f, self.i64c(0), count, yf0, &mut |g, ti, carried| {
            let tile = g.add(kt0, ti)?;
            let src = g.gep(panel, g.mul(ti, I8_TILE_BYTES)?)?;
            // Row by row, each reloading the panel from L1 through its own laundered pointer (else
            // LLVM merges the loads and keeps 16 panel vectors live across rows, spilling them):
            // only one row's `i32` accumulators are live next to the `f32` ones.
            let mut acc = vec![g.vi32(w).const_zero(); 2 * rows_u];
            for r in 0..rows_u {
                let src = g.launder(src)?;
                for q in 0..2 * g.lanes.nq {
                    let (j, v) = (q / g.lanes.nq, q % g.lanes.nq);
                    let t = g.lanes.chunk_t(v, 0) as u64;
                    let xoff = g.add(g.mul(tile, 32)?, g.i64c((4 * j as u64 + t) * 4 + r as u64 * 32 * kt))?;
                    let xd = g.load(g.ctx.i32_type(), g.gep(xq, xoff)?, 4)?;
                    let xb = g.as_bytes(g.splat_scalar(xd, g.vi32(w))?)?;
                    for h in 0..2 {
                        let at = g.i64c((q * 2 + h) as u64 * 4 * w as u64);
                        let wv = g.load(bytes_t, g.gep(src, at)?, 32)?;
                        let prod = g.call(pmaddubsw, &[wv, xb.into()])?.expect("returns").into_vector_value();
                        let sums = g.call(pmaddwd, &[prod.into(), ones.into()])?.expect("returns").into_vector_value();
                        acc[2 * r + h] = g.b.build_int_add(acc[2 * r + h], sums, "")?;
                    }
                }
            }
            let mut out = Vec::with_capacity(2 * rows_u);
            for r in 0..rows_u {
                let at = g.mul(g.add(tile, g.i64c(r as u64 * kt))?, 4)?;
                let c = g.load(g.ctx.i32_type(), g.gep(xc, at)?, 4)?;
                let s = g.load(g.ctx.f32_type(), g.gep(xs, at)?, 4)?;
                let (cv, sv) = (g.splat_scalar(c, g.vi32(w))?, g.splat_scalar(s, g.vf32(w))?);
                for h in 0..2 {
                    let a = g.b.build_int_sub(acc[2 * r + h], cv, "")?;
                    let af = g.b.build_signed_int_to_float(a, g.vf32(w), "")?;
                    let scale = if grouped {
                        let ws = g.load(g.vf32(w), g.gep(src, g.i64c(I8_SCALES_AT + h as u64 * 4 * w as u64))?, 32)?;
                        g.b.build_float_mul(sv, ws.into_vector_value(), "")?
                    } else {
                        sv
                    };
                    out.push(g.fma(af, scale, carried[2 * r + h].into_vector_value())?.into());
                }
            }
            Ok(out)
        })?;

        let n0 = self.mul(nt, 16)?;
        let valid = self.lanes_below(self.b.build_int_nsw_sub(self.i64c(plan.n()), n0, "")?)?;
        let bias16 = self.bias16(f, bias, n0, valid)?;
        let per_channel = if grouped {
            None
        } else {
            let s16 = self.scales16(plan, scales, self.i64c(0), n0, valid)?;
            Some(self.b.build_float_mul(s16, self.splat_f32(dec.inv_units, 16), "")?)
        };
        // Natural order: output n = lane_rows[f] + 8h comes from lane f of accumulator h.
        let nat: Vec<u32> = (0..16)
            .map(|n| {
                let (h, g) = (n / 8, n % 8);
                (h * w as usize + lane_rows.iter().position(|&r| r == g).expect("every row has a lane")) as u32
            })
            .collect();
        for r in 0..rows_u {
            let mut vals = self.shuf(yf[2 * r].into_vector_value(), yf[2 * r + 1].into_vector_value(), &nat)?;
            if let Some(s) = per_channel {
                vals = self.b.build_float_mul(vals, s, "")?;
            }
            let yrow = self.gep(y, self.i64c(r as u64 * 4 * plan.n()))?;
            let old =
                self.if_then(f, self.b.build_not(first, "")?, vec![bias16.into()], &mut |g| Ok(vec![g.load16(yrow, n0, ne)?.into()]))?;
            let vals = self.b.build_float_add(vals, old[0].into_vector_value(), "")?;
            self.store16(f, yrow, n0, ne, vals)?;
        }
        self.b.build_return(None)?;
        Ok(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose_orders_lanes_by_t() {
        for w in [8, 16] {
            let l = Lanes::new(w);
            let mut seen: Vec<usize> = l.order.iter().flatten().copied().collect();
            seen.sort_unstable();
            assert_eq!(seen, (0..32).collect::<Vec<_>>(), "w {w}");
            // Every (accumulator, lane) is a distinct (row, parity).
            let mut rows: Vec<(usize, usize)> =
                (0..l.nacc()).flat_map(|a| (0..w).map(move |f| (a, f))).map(|(a, f)| (l.acc_row(a, f), f % 2)).collect();
            rows.sort_unstable();
            rows.dedup();
            assert_eq!(rows.len(), 32, "w {w}");
        }
        let l = Lanes::new(8);
        assert_eq!(l.order[0], [0, 8, 16, 24, 4, 12, 20, 28]);
    }

    #[test]
    fn dequant_constants() {
        let dq = Dequant::of(Format::Fp6E3M2).unwrap();
        assert!(matches!(dq.kind, Kind::Float { d: 2, mask: 0x9f00 }));
        assert_eq!((dq.nib, dq.h), (10, 2));
        let dq = Dequant::of(Format::Fp6E2M3).unwrap();
        assert!(matches!(dq.kind, Kind::Float { d: 3, mask: 0x8f80 }));
        let dq = Dequant::of(Format::Fp4E2M1).unwrap();
        assert!(matches!(dq.kind, Kind::Float { d: 3, mask: 0x8e00 }));
        assert!(Format::ALL.iter().all(|&f| supports(f)));
        for f in [Format::Fp6E3M2, Format::Fp6E2M3, Format::Fp4E2M1, Format::Int4] {
            assert!(Dequant::of(f).unwrap().bytes.is_some(), "{f} should use the byte method");
        }
        let Some(Bytes::Table(t)) = Dequant::of(Format::Int4).unwrap().bytes else { panic!() };
        assert_eq!((t[1], t[7], t[9], t[15]), (0x3c, 0x47, 0xc7, 0xbc)); // 1, 7, -7, -1
        assert_eq!(f16_bits_exact(-2.0), Some(0xc000));
        assert_eq!(f16_bits_exact(1.0 / 3.0), None);
    }
}
