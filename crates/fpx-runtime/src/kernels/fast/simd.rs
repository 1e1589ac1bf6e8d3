//! The multiply-add flavours and the `multiversion!` macro: one body compiled for the baseline
//! target and for AVX2 / AVX-512 with FMA, picked at run time.

/// Multiply-add: fused (one rounding) where the CPU has FMA, else a product and a sum.
pub(crate) trait MulAdd {
    /// `a * b + c`.
    fn fma(a: f32, b: f32, c: f32) -> f32;
}

/// `a * b + c` with two roundings (the baseline target has no FMA).
pub(crate) struct Plain;

impl MulAdd for Plain {
    #[inline(always)]
    fn fma(a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }
}

/// `a * b + c` fused (only used in code compiled with the `fma` target feature).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) struct Fused;

impl MulAdd for Fused {
    #[inline(always)]
    fn fma(a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }
}

/// Defines `fn $name` that runs `$body` compiled for AVX-512 (F/BW/DQ/VL) or else AVX2, with FMA
/// (`$m` = [`Fused`]), when the CPU has them, and for the baseline target (with `$m` =
/// [`Plain`]) otherwise. The fused versions compute the same operations in the same order, so
/// they give the same results; only the vector width differs. Helpers the
/// body calls must be `#[inline(always)]` so they are compiled into both versions.
macro_rules! multiversion {
    ($(#[$attr:meta])* $vis:vis fn $name:ident<$m:ident>($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$attr])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn portable<$m: $crate::kernels::fast::simd::MulAdd>($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
                unsafe fn avx512($($arg: $ty),*) $(-> $ret)? {
                    portable::<$crate::kernels::fast::simd::Fused>($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    portable::<$crate::kernels::fast::simd::Fused>($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512dq")
                    && std::arch::is_x86_feature_detected!("avx512vl")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: this CPU supports AVX-512 F/BW/DQ/VL and FMA.
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                    // SAFETY: this CPU supports AVX2 and FMA.
                    return unsafe { avx2($($arg),*) };
                }
            }
            portable::<$crate::kernels::fast::simd::Plain>($($arg),*)
        }
    };
}

pub(crate) use multiversion;
