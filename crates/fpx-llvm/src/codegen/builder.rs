//! The IR builder context [`Gen`] and its format-independent helpers: constants and splats,
//! vector bit operations, loads and stores (plain, masked, through a laundered pointer),
//! intrinsic calls, and the control flow the kernels are made of (counted loops carrying
//! values, conditionals, blocks of rows, function entry).

use inkwell::attributes::{Attribute, AttributeLoc};
use inkwell::basic_block::BasicBlock;
use inkwell::builder::Builder;
use inkwell::context::Context;
use inkwell::intrinsics::Intrinsic;
use inkwell::module::{Linkage, Module};
use inkwell::types::{BasicMetadataTypeEnum, BasicType, BasicTypeEnum, VectorType};
use inkwell::values::{BasicValue, BasicValueEnum, FunctionValue, IntValue, PointerValue, VectorValue};
use inkwell::{AddressSpace, IntPredicate};

use fpx_quant::layout::TILE_N;

use super::lanes::Lanes;
use super::R;
use crate::target::Isa;
use crate::LlvmError;

/// The code generator: the LLVM context and module, one IR builder, and the instruction-set
/// parameters and transpose bookkeeping the kernels are specialized to.
pub(super) struct Gen<'m, 'ctx> {
    /// The LLVM context.
    pub(super) ctx: &'ctx Context,
    /// The module every kernel goes into.
    pub(super) module: &'m Module<'ctx>,
    /// The IR builder.
    pub(super) b: Builder<'ctx>,
    /// Vector width and register-blocking parameters.
    pub(super) isa: Isa,
    /// The in-register transpose for `isa.w`.
    pub(super) lanes: Lanes,
}

/// Values carried through a loop or a conditional.
pub(super) type Values<'ctx> = Vec<BasicValueEnum<'ctx>>;

/// A loop body: gets the induction variable and the carried values, returns the new ones.
pub(super) type LoopBody<'s, 'm, 'ctx> = dyn FnMut(&Gen<'m, 'ctx>, IntValue<'ctx>, Values<'ctx>) -> R<Values<'ctx>> + 's;

/// The parameters of a function being built, by position.
#[derive(Clone, Copy)]
pub(super) struct Params<'ctx>(FunctionValue<'ctx>);

impl<'ctx> Params<'ctx> {
    /// Parameter `k`.
    pub(super) fn get(&self, k: u32) -> BasicValueEnum<'ctx> {
        self.0.get_nth_param(k).expect("param")
    }

    /// Parameter `k`, a pointer.
    pub(super) fn ptr(&self, k: u32) -> PointerValue<'ctx> {
        self.get(k).into_pointer_value()
    }

    /// Parameter `k`, an integer.
    pub(super) fn int(&self, k: u32) -> IntValue<'ctx> {
        self.get(k).into_int_value()
    }
}

impl<'m, 'ctx> Gen<'m, 'ctx> {
    // ---------------------------------------------------------------- types and constants

    /// `f32` lanes per vector register.
    pub(super) fn w(&self) -> u32 {
        self.isa.w
    }

    /// The `i64` constant `v`.
    pub(super) fn i64c(&self, v: u64) -> IntValue<'ctx> {
        self.ctx.i64_type().const_int(v, false)
    }

    /// `<n x i32>`.
    pub(super) fn vi32(&self, n: u32) -> VectorType<'ctx> {
        self.ctx.i32_type().vec_type(n)
    }

    /// `<n x float>`.
    pub(super) fn vf32(&self, n: u32) -> VectorType<'ctx> {
        self.ctx.f32_type().vec_type(n)
    }

    /// The pointer type (a parameter type).
    pub(super) fn ptr_t(&self) -> BasicMetadataTypeEnum<'ctx> {
        self.ctx.ptr_type(AddressSpace::default()).into()
    }

    /// `i64` (a parameter type).
    pub(super) fn i64_t(&self) -> BasicMetadataTypeEnum<'ctx> {
        self.ctx.i64_type().into()
    }

    /// The constant `<n x i32>` vector `vals`.
    pub(super) fn consts_i32(&self, vals: &[u32]) -> VectorValue<'ctx> {
        let t = self.ctx.i32_type();
        let v: Vec<IntValue<'ctx>> = vals.iter().map(|&x| t.const_int(x as u64, false)).collect();
        VectorType::const_vector(&v)
    }

    /// `x` in all `n` lanes of an `i32` vector constant.
    pub(super) fn splat_i32(&self, x: u32, n: u32) -> VectorValue<'ctx> {
        self.consts_i32(&vec![x; n as usize])
    }

    /// `x` in all `n` lanes of an `i16` vector constant.
    pub(super) fn splat_i16(&self, x: u16, n: u32) -> VectorValue<'ctx> {
        let t = self.ctx.i16_type();
        let v: Vec<IntValue<'ctx>> = (0..n).map(|_| t.const_int(x as u64, false)).collect();
        VectorType::const_vector(&v)
    }

    /// `x` in all `n` lanes of an `i8` vector constant.
    pub(super) fn splat_i8(&self, x: u8, n: u32) -> VectorValue<'ctx> {
        let c = self.ctx.i8_type().const_int(x as u64, false);
        VectorType::const_vector(&vec![c; n as usize])
    }

    /// `x` in all `n` lanes of a `float` vector constant.
    pub(super) fn splat_f32(&self, x: f32, n: u32) -> VectorValue<'ctx> {
        let t = self.ctx.f32_type();
        let v: Vec<_> = (0..n).map(|_| t.const_float(x as f64)).collect();
        VectorType::const_vector(&v)
    }

    /// `<n x float>` zero.
    pub(super) fn fzero(&self, n: u32) -> VectorValue<'ctx> {
        self.vf32(n).const_zero()
    }

    /// The scalar `v` in every lane of a `ty` vector (insert, then broadcast shuffle).
    pub(super) fn splat_scalar(&self, v: BasicValueEnum<'ctx>, ty: VectorType<'ctx>) -> R<VectorValue<'ctx>> {
        let one = self.b.build_insert_element(ty.get_poison(), v, self.ctx.i32_type().const_zero(), "")?;
        self.shuf(one, ty.get_poison(), &vec![0; ty.get_size() as usize])
    }

    // ---------------------------------------------------------------- vector operations

    /// Two-source shuffle of `a` and `b` by the constant indices `idx`.
    pub(super) fn shuf(&self, a: VectorValue<'ctx>, b: VectorValue<'ctx>, idx: &[u32]) -> R<VectorValue<'ctx>> {
        Ok(self.b.build_shuffle_vector(a, b, self.consts_i32(idx), "")?)
    }

    /// `v << s` for `s > 0`, `v >> -s` (logical) for `s < 0`.
    pub(super) fn shift(&self, v: VectorValue<'ctx>, s: i32) -> R<VectorValue<'ctx>> {
        let n = v.get_type().get_size();
        Ok(match s {
            0 => v,
            s if s > 0 => self.b.build_left_shift(v, self.splat_i32(s as u32, n), "")?,
            s => self.b.build_right_shift(v, self.splat_i32((-s) as u32, n), false, "")?,
        })
    }

    /// Shift of each 16-bit half of `<W x i32>` (left for `s > 0`, logical right for `s < 0`).
    pub(super) fn shift16(&self, v: VectorValue<'ctx>, s: i32) -> R<VectorValue<'ctx>> {
        let w = self.w();
        let x = self.b.build_bit_cast(v, self.ctx.i16_type().vec_type(2 * w), "")?.into_vector_value();
        let amount = self.splat_i16(s.unsigned_abs() as u16, 2 * w);
        let r = if s > 0 { self.b.build_left_shift(x, amount, "")? } else { self.b.build_right_shift(x, amount, false, "")? };
        Ok(self.b.build_bit_cast(r, self.vi32(w), "")?.into_vector_value())
    }

    /// `v & mask` in every `i32` lane.
    pub(super) fn and(&self, v: VectorValue<'ctx>, mask: u32) -> R<VectorValue<'ctx>> {
        Ok(self.b.build_and(v, self.splat_i32(mask, v.get_type().get_size()), "")?)
    }

    /// `(a & !mask) | (b & mask)`.
    pub(super) fn select_bits(&self, a: VectorValue<'ctx>, b: VectorValue<'ctx>, mask: u32) -> R<VectorValue<'ctx>> {
        let a = self.and(a, !mask)?;
        let b = self.and(b, mask)?;
        Ok(self.b.build_or(a, b, "")?)
    }

    /// An integer vector seen as bytes.
    pub(super) fn as_bytes(&self, v: VectorValue<'ctx>) -> R<VectorValue<'ctx>> {
        let n = v.get_type().get_size() * v.get_type().get_element_type().into_int_type().get_bit_width() / 8;
        Ok(self.b.build_bit_cast(v, self.ctx.i8_type().vec_type(n), "")?.into_vector_value())
    }

    /// Even bytes of `a`, odd bytes of `b` (a `vpblendvb`), as bytes.
    pub(super) fn even_odd(&self, a: VectorValue<'ctx>, b: VectorValue<'ctx>) -> R<VectorValue<'ctx>> {
        let (ab, bb) = (self.as_bytes(a)?, self.as_bytes(b)?);
        let n = ab.get_type().get_size();
        let idx: Vec<u32> = (0..n).map(|i| if i % 2 == 0 { i } else { n + i }).collect();
        self.shuf(ab, bb, &idx)
    }

    /// `pshufb` of every 128-bit lane of `idx` (`<W x i32>` seen as bytes) in `table`.
    pub(super) fn pshufb(&self, table: &[u8; 16], idx: VectorValue<'ctx>) -> R<VectorValue<'ctx>> {
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

    /// `a * b + c` (`llvm.fma`).
    pub(super) fn fma(&self, a: VectorValue<'ctx>, b: VectorValue<'ctx>, c: VectorValue<'ctx>) -> R<VectorValue<'ctx>> {
        let f = self.intrinsic("llvm.fma", &[a.get_type().into()])?;
        Ok(self.call(f, &[a.into(), b.into(), c.into()])?.expect("fma returns").into_vector_value())
    }

    /// `<TILE_N x i1>`, a mask over an n-tile's columns: lane `i < bound` (bound an i64,
    /// compared as i32; lanes ≥ `TILE_N` irrelevant).
    pub(super) fn lanes_below(&self, bound: IntValue<'ctx>) -> R<VectorValue<'ctx>> {
        let n = TILE_N as u32;
        let b32 = self.b.build_int_truncate(bound, self.ctx.i32_type(), "")?;
        let splat = self.b.build_insert_element(self.vi32(n).get_poison(), b32, self.ctx.i32_type().const_zero(), "")?;
        let splat = self.shuf(splat, self.vi32(n).get_poison(), &[0; TILE_N])?;
        let iota = self.consts_i32(&(0..n).collect::<Vec<_>>());
        Ok(self.b.build_int_compare(IntPredicate::SLT, iota, splat, "")?)
    }

    // ---------------------------------------------------------------- addresses and memory

    /// `a + b` (no signed wrap).
    pub(super) fn add(&self, a: IntValue<'ctx>, b: IntValue<'ctx>) -> R<IntValue<'ctx>> {
        Ok(self.b.build_int_nsw_add(a, b, "")?)
    }

    /// `a * b` (no signed wrap).
    pub(super) fn mul(&self, a: IntValue<'ctx>, b: u64) -> R<IntValue<'ctx>> {
        Ok(self.b.build_int_nsw_mul(a, self.i64c(b), "")?)
    }

    /// `base + off` bytes (in bounds).
    pub(super) fn gep(&self, base: PointerValue<'ctx>, off: IntValue<'ctx>) -> R<PointerValue<'ctx>> {
        // SAFETY: offsets are within the buffers the ABI describes (checked by the tests).
        Ok(unsafe { self.b.build_in_bounds_gep(self.ctx.i8_type(), base, &[off], "")? })
    }

    /// A load of `ty` from `ptr` with alignment `align`.
    pub(super) fn load<T: BasicType<'ctx>>(&self, ty: T, ptr: PointerValue<'ctx>, align: u32) -> R<BasicValueEnum<'ctx>> {
        let v = self.b.build_load(ty, ptr, "")?;
        if let Some(i) = v.as_instruction_value() {
            i.set_alignment(align).map_err(|e| LlvmError::Llvm(e.to_string()))?;
        }
        Ok(v)
    }

    /// A store of `v` to `ptr` with alignment `align`.
    pub(super) fn store(&self, v: VectorValue<'ctx>, ptr: PointerValue<'ctx>, align: u32) -> R<()> {
        let i = self.b.build_store(ptr, v)?;
        i.set_alignment(align).map_err(|e| LlvmError::Llvm(e.to_string()))?;
        Ok(())
    }

    /// An n-tile's `<TILE_N x float>` from `ptr` where `mask` is set, 0 elsewhere.
    pub(super) fn masked_load(&self, ptr: PointerValue<'ctx>, mask: VectorValue<'ctx>) -> R<VectorValue<'ctx>> {
        let ty = self.vf32(TILE_N as u32);
        let f = self.intrinsic("llvm.masked.load", &[ty.into(), self.ctx.ptr_type(AddressSpace::default()).into()])?;
        let align = self.ctx.i32_type().const_int(4, false);
        Ok(self.call(f, &[ptr.into(), align.into(), mask.into(), ty.const_zero().into()])?.expect("returns").into_vector_value())
    }

    /// Stores the lanes of `v` where `mask` is set.
    pub(super) fn masked_store(&self, v: VectorValue<'ctx>, ptr: PointerValue<'ctx>, mask: VectorValue<'ctx>) -> R<()> {
        let f = self.intrinsic("llvm.masked.store", &[v.get_type().into(), self.ctx.ptr_type(AddressSpace::default()).into()])?;
        let align = self.ctx.i32_type().const_int(4, false);
        self.call(f, &[v.into(), ptr.into(), align.into(), mask.into()])?;
        Ok(())
    }

    /// A 64-byte aligned stack buffer of type `ty` in the current function.
    pub(super) fn aligned_alloca<T: BasicType<'ctx>>(&self, ty: T, name: &str) -> R<PointerValue<'ctx>> {
        let p = self.b.build_alloca(ty, name)?;
        p.as_instruction_value().expect("alloca").set_alignment(64).map_err(|e| LlvmError::Llvm(e.to_string()))?;
        Ok(p)
    }

    /// `p` passed through an empty inline asm: the same address, but LLVM cannot prove it, so
    /// loads through it are not merged with loads through `p` (or another laundered copy).
    pub(super) fn launder(&self, p: PointerValue<'ctx>) -> R<PointerValue<'ctx>> {
        let ptr = self.ctx.ptr_type(AddressSpace::default());
        let fty = ptr.fn_type(&[ptr.into()], false);
        let asm = self.ctx.create_inline_asm(fty, String::new(), "=r,0".to_string(), false, false, None, false);
        Ok(self.b.build_indirect_call(fty, asm, &[p.into()], "")?.try_as_basic_value().basic().expect("asm returns").into_pointer_value())
    }

    /// `v` passed through an empty inline asm that also takes `after`: the same value, but
    /// LLVM must have computed `after` first. Keeps a streamed decode in program order (else
    /// the scheduler hoists every T-vector's decode above the products and spills it).
    pub(super) fn tie(&self, v: VectorValue<'ctx>, after: VectorValue<'ctx>) -> R<VectorValue<'ctx>> {
        let fty = v.get_type().fn_type(&[v.get_type().into(), after.get_type().into()], false);
        let asm = self.ctx.create_inline_asm(fty, String::new(), "=x,0,x".to_string(), false, false, None, false);
        let out = self.b.build_indirect_call(fty, asm, &[v.into(), after.into()], "")?;
        Ok(out.try_as_basic_value().basic().expect("asm returns").into_vector_value())
    }

    // ---------------------------------------------------------------- calls

    /// The declaration of intrinsic `name`, overloaded on `types`.
    pub(super) fn intrinsic(&self, name: &str, types: &[BasicTypeEnum<'ctx>]) -> R<FunctionValue<'ctx>> {
        Intrinsic::find(name)
            .and_then(|i| i.get_declaration(self.module, types))
            .ok_or_else(|| LlvmError::Llvm(format!("intrinsic {name} not available")))
    }

    /// Calls `f`; its result, if it returns one.
    pub(super) fn call(&self, f: FunctionValue<'ctx>, args: &[BasicValueEnum<'ctx>]) -> R<Option<BasicValueEnum<'ctx>>> {
        let args: Vec<_> = args.iter().map(|&a| a.into()).collect();
        Ok(self.b.build_call(f, &args, "")?.try_as_basic_value().basic())
    }

    /// Prefetches the cache line `off` bytes from `base` for reading with `locality` (0:
    /// non-temporal, 3: keep in every level). The address need not lie in `base`'s buffer (a
    /// plain, not in-bounds, offset): a prefetch never faults.
    pub(super) fn prefetch(&self, base: PointerValue<'ctx>, off: IntValue<'ctx>, locality: u64) -> R<()> {
        // SAFETY: the pointer is only prefetched, never dereferenced.
        let ptr = unsafe { self.b.build_gep(self.ctx.i8_type(), base, &[off], "")? };
        let f = self.intrinsic("llvm.prefetch", &[self.ctx.ptr_type(inkwell::AddressSpace::default()).into()])?;
        let i32t = self.ctx.i32_type();
        self.call(
            f,
            &[ptr.into(), i32t.const_int(0, false).into(), i32t.const_int(locality, false).into(), i32t.const_int(1, false).into()],
        )?;
        Ok(())
    }

    /// Calls the intrinsic `name` (not overloaded) and returns its vector result.
    pub(super) fn call_vec(&self, name: &str, args: &[BasicValueEnum<'ctx>]) -> R<VectorValue<'ctx>> {
        let f = self.intrinsic(name, &[])?;
        Ok(self.call(f, args)?.expect("intrinsic returns").into_vector_value())
    }

    // ---------------------------------------------------------------- control flow

    /// A new block at the end of `f`.
    pub(super) fn block(&self, f: FunctionValue<'ctx>, name: &str) -> BasicBlock<'ctx> {
        self.ctx.append_basic_block(f, name)
    }

    /// The block the builder is positioned in.
    pub(super) fn current(&self) -> BasicBlock<'ctx> {
        self.b.get_insert_block().expect("builder positioned")
    }

    /// One phi per carried value at the builder's position: `init` from `pre`, `out` from `from`.
    fn merge(
        &self,
        init: &[BasicValueEnum<'ctx>],
        pre: BasicBlock<'ctx>,
        out: &[BasicValueEnum<'ctx>],
        from: BasicBlock<'ctx>,
    ) -> R<Values<'ctx>> {
        let mut results = Vec::with_capacity(init.len());
        for (i, o) in init.iter().zip(out) {
            let phi = self.b.build_phi(i.get_type(), "")?;
            phi.add_incoming(&[(i as &dyn BasicValue, pre), (o as &dyn BasicValue, from)]);
            results.push(phi.as_basic_value());
        }
        Ok(results)
    }

    /// `for iv in start..end` (signed; skipped when empty) carrying `init` through phis;
    /// returns the carried values after the loop.
    pub(super) fn for_loop(
        &self,
        f: FunctionValue<'ctx>,
        start: IntValue<'ctx>,
        end: IntValue<'ctx>,
        init: Values<'ctx>,
        body: &mut LoopBody<'_, 'm, 'ctx>,
    ) -> R<Values<'ctx>> {
        let pre = self.current();
        let header = self.block(f, "loop");
        let exit = self.block(f, "loop.end");
        let enter = self.b.build_int_compare(IntPredicate::SLT, start, end, "")?;
        self.b.build_conditional_branch(enter, header, exit)?;
        self.b.position_at_end(header);
        let iv = self.b.build_phi(self.ctx.i64_type(), "iv")?;
        let phis: Vec<_> = init.iter().map(|v| self.b.build_phi(v.get_type(), "")).collect::<Result<_, _>>()?;
        let carried: Values<'ctx> = phis.iter().map(|p| p.as_basic_value()).collect();
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
        self.merge(&init, pre, &out, latch)
    }

    /// `if cond { then() }` carrying `init` (the values when `cond` is false).
    pub(super) fn if_then(
        &self,
        f: FunctionValue<'ctx>,
        cond: IntValue<'ctx>,
        init: Values<'ctx>,
        then: &mut dyn FnMut(&Self) -> R<Values<'ctx>>,
    ) -> R<Values<'ctx>> {
        let pre = self.current();
        let tb = self.block(f, "then");
        let done = self.block(f, "endif");
        self.b.build_conditional_branch(cond, tb, done)?;
        self.b.position_at_end(tb);
        let out = then(self)?;
        let tend = self.current();
        self.b.build_unconditional_branch(done)?;
        self.b.position_at_end(done);
        self.merge(&init, pre, &out, tend)
    }

    /// Calls `call(b, r0)` for blocks of `b` rows starting at row `r0`: full blocks of `rows`
    /// in a loop, then the remainder (a switch over `1..rows`).
    pub(super) fn row_blocks_at(
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

    /// The tiles in K block `kb` of `per` tiles, out of `total`: `min(per, total - kb · per)`.
    pub(super) fn tiles_in_block(&self, kb: IntValue<'ctx>, per: u64, total: u64) -> R<IntValue<'ctx>> {
        let left = self.b.build_int_nsw_sub(self.i64c(total), self.mul(kb, per)?, "")?;
        let small = self.b.build_int_compare(IntPredicate::SLT, left, self.i64c(per), "")?;
        Ok(self.b.build_select(small, left, self.i64c(per), "")?.into_int_value())
    }

    // ---------------------------------------------------------------- functions

    /// Declares a `void` function `name` (internal linkage if `internal`): `nounwind`, every
    /// pointer parameter `noalias`.
    pub(super) fn function(&self, name: &str, params: &[BasicMetadataTypeEnum<'ctx>], internal: bool) -> FunctionValue<'ctx> {
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

    /// Returns from the function being built (`ret void`) and hands it back.
    pub(super) fn end_function(&self, f: FunctionValue<'ctx>) -> R<FunctionValue<'ctx>> {
        self.b.build_return(None)?;
        Ok(f)
    }

    /// [`Gen::function`], with the builder positioned in its new `entry` block.
    pub(super) fn begin_function(
        &self,
        name: &str,
        params: &[BasicMetadataTypeEnum<'ctx>],
        internal: bool,
    ) -> (FunctionValue<'ctx>, Params<'ctx>) {
        let f = self.function(name, params, internal);
        self.b.position_at_end(self.block(f, "entry"));
        (f, Params(f))
    }
}
