//! `fpx:KvAppend(past, new)`: `Concat(past, new)` along the cache's sequence axis, appending in
//! place when the executor hands `past` over by value and its buffer has room.
//!
//! A cache tensor written here is a row-major buffer of its shape with the sequence axis at a
//! *capacity* ≥ its length: element `(outer, position, inner)` lives at
//! `(outer * capacity + position) * inner_size`, and the tensor is a strided view of the first
//! `length` positions. Appending writes the new positions after the live ones and widens the view;
//! nothing moves. When the capacity is exceeded the buffer grows (at least doubling), so a long
//! generation reallocates a logarithmic number of times. Every other kernel reads such a tensor
//! through its strides (those that need a contiguous input copy it, as for any strided input).

use super::{alloc, arg, axis, KernelError, KernelRegistry};
use fpx_ir::ndarray::{ArrayD, IxDyn, ShapeBuilder};
use fpx_ir::ops::{kv_append, FPX_DOMAIN};
use fpx_ir::{dispatch, DType, Elem, Node, Tensor};

type Res = Result<Vec<Tensor>, KernelError>;

/// Smallest capacity a growing cache gets.
const MIN_CAPACITY: usize = 16;

pub(super) fn register(r: &mut KernelRegistry) {
    r.add_in(FPX_DOMAIN, kv_append::OP_TYPE, kv_append_by_ref);
    r.add_owned_in(FPX_DOMAIN, kv_append::OP_TYPE, Some(0), kv_append_owned);
}

/// `(outer, inner)` sizes around axis `ax` of `shape`.
fn split_sizes(shape: &[usize], ax: usize) -> (usize, usize) {
    (shape[..ax].iter().product(), shape[ax + 1..].iter().product())
}

/// The strides of a cache tensor of `shape` with `capacity` positions on axis `ax`.
fn cache_strides(shape: &[usize], ax: usize, capacity: usize) -> Vec<usize> {
    let mut strides = vec![0; shape.len()];
    let mut step = 1;
    for j in (0..shape.len()).rev() {
        strides[j] = step;
        step *= if j == ax { capacity } else { shape[j] };
    }
    strides
}

/// The capacity along `ax` that strides of a tensor of `shape` describe, if they are those of a
/// cache tensor (standard strides describe a capacity equal to the length). Along axis 0 the
/// strides cannot tell (the buffer's length does): `usize::MAX` then.
fn layout_capacity(shape: &[usize], strides: &[isize], ax: usize) -> Option<usize> {
    let (outer, inner) = split_sizes(shape, ax);
    if inner == 0 || outer == 0 {
        return None;
    }
    let capacity = if ax == 0 { usize::MAX } else { usize::try_from(strides[ax - 1]).ok()? / inner };
    let same =
        cache_strides(shape, ax, if ax == 0 { shape[0] } else { capacity }).iter().zip(strides).all(|(&e, &s)| isize::try_from(e) == Ok(s));
    (same && capacity >= shape[ax]).then_some(capacity)
}

/// Checks that `new` can follow `past` along `ax`; returns the appended shape.
fn appended_shape(past: &[usize], new: &[usize], ax: usize) -> Result<Vec<usize>, KernelError> {
    let same_rest = past.len() == new.len() && past.iter().zip(new).enumerate().all(|(j, (p, n))| j == ax || p == n);
    if !same_rest {
        return Err(KernelError(format!("cannot append a tensor of shape {new:?} to the cache of shape {past:?} along axis {ax}")));
    }
    let mut shape = past.to_vec();
    shape[ax] = past[ax].checked_add(new[ax]).ok_or_else(|| KernelError(format!("axis {ax} overflows")))?;
    Ok(shape)
}

/// Writes `part` (any layout) into a cache buffer with `capacity` positions on `ax`, starting
/// at position `at`.
fn write_positions<T: Elem>(buffer: &mut [T], part: &ArrayD<T>, ax: usize, capacity: usize, at: usize) {
    let (outer, inner) = split_sizes(part.shape(), ax);
    let part = part.as_standard_layout();
    let src = part.as_slice().expect("standard layout");
    let rows = part.shape()[ax] * inner;
    for o in 0..outer {
        let start = (o * capacity + at) * inner;
        buffer[start..start + rows].copy_from_slice(&src[o * rows..(o + 1) * rows]);
    }
}

/// The cache tensor of `shape` over `buffer`, which has `capacity` positions on `ax`.
fn cache_view<T: Elem>(shape: &[usize], ax: usize, capacity: usize, buffer: Vec<T>) -> Result<ArrayD<T>, KernelError> {
    ArrayD::from_shape_vec(IxDyn(shape).strides(IxDyn(&cache_strides(shape, ax, capacity))), buffer)
        .map_err(|e| KernelError(format!("cache layout: {e}")))
}

/// A cache tensor of `shape` with room for `capacity` positions on `ax`, its live part copied
/// from `past` (which may be any layout) and then `new`.
fn grown<T: Elem>(past: &ArrayD<T>, new: &ArrayD<T>, ax: usize, capacity: usize) -> Result<ArrayD<T>, KernelError> {
    let shape = appended_shape(past.shape(), new.shape(), ax)?;
    let mut room = shape.clone();
    room[ax] = capacity;
    let mut buffer = alloc::filled::<T>(&room, T::default())?;
    write_positions(&mut buffer, past, ax, capacity, 0);
    write_positions(&mut buffer, new, ax, capacity, past.shape()[ax]);
    cache_view(&shape, ax, capacity, buffer)
}

/// Appends `new` to the owned `past` in place when its buffer has room, else grows it.
fn append_owned_t<T: Elem>(past: ArrayD<T>, new: &ArrayD<T>, ax: usize) -> Result<ArrayD<T>, KernelError> {
    let shape = appended_shape(past.shape(), new.shape(), ax)?;
    let live = past.shape()[ax];
    let (outer, inner) = split_sizes(&shape, ax);
    let Some(capacity) = layout_capacity(past.shape(), past.strides(), ax) else {
        return grown(&past, new, ax, shape[ax].max(live.saturating_mul(2)).max(MIN_CAPACITY));
    };
    // An empty view reports no offset; a cache tensor's view always starts at its buffer's start.
    let (mut buffer, offset) = past.into_raw_vec_and_offset();
    let offset = offset.unwrap_or(0);
    let capacity = if ax == 0 { buffer.len().saturating_sub(offset) / inner } else { capacity };
    let room = outer.checked_mul(capacity).and_then(|n| n.checked_mul(inner));
    if capacity >= shape[ax] && offset == 0 && room.is_some_and(|n| n <= buffer.len()) {
        write_positions(&mut buffer, new, ax, capacity, live);
        return cache_view(&shape, ax, capacity, buffer);
    }
    // No room: the live positions, read from the buffer by its layout, move to a larger one.
    let larger_capacity = shape[ax].max(capacity.saturating_mul(2)).max(MIN_CAPACITY);
    let mut room_shape = shape.clone();
    room_shape[ax] = larger_capacity;
    let mut larger = alloc::filled::<T>(&room_shape, T::default())?;
    for o in 0..outer {
        let (from, to) = (offset + o * capacity * inner, o * larger_capacity * inner);
        larger[to..to + live * inner].copy_from_slice(&buffer[from..from + live * inner]);
    }
    drop(buffer);
    write_positions(&mut larger, new, ax, larger_capacity, live);
    cache_view(&shape, ax, larger_capacity, larger)
}

fn kv_append_by_ref(n: &Node, i: &[Option<&Tensor>]) -> Res {
    super::shape::concat(n, &[Some(arg(i, 0)?), Some(arg(i, 1)?)])
}

fn kv_append_owned(n: &Node, i: &[Option<&Tensor>], slot: usize, owned: Tensor) -> Res {
    if slot != 0 {
        return kv_append_by_ref(n, &super::with_owned(i, slot, &owned));
    }
    let new = arg(i, 1)?;
    if new.dtype() != owned.dtype() {
        return Err(KernelError(format!("the cache is {} but the appended tensor is {}", owned.dtype(), new.dtype())));
    }
    let ax = axis(n.attr_i("axis", 0), owned.rank())?;
    Ok(vec![dispatch!(owned, past => {
        let new = Elem::view(new).expect("same element type, checked");
        Tensor::from(append_owned_t(past, new, ax)?)
    })])
}

/// An empty-or-partly-filled cache tensor for [`fpx:KvAppend`]: `shape` with room for `capacity`
/// positions on axis `ax` (the live part zero), allocated within the tensor budget. Generation
/// passes one per cache input so that every step appends in place.
pub fn cache_with_capacity(dtype: DType, shape: &[usize], ax: usize, capacity: usize) -> Result<Tensor, KernelError> {
    fn make<T: Elem>(shape: &[usize], ax: usize, capacity: usize) -> Result<Tensor, KernelError> {
        let mut room = shape.to_vec();
        room[ax] = capacity.max(shape[ax]);
        if room.contains(&0) {
            return Ok(Tensor::zeros(T::DTYPE, shape));
        }
        let buffer = alloc::filled::<T>(&room, T::default())?;
        Ok(Tensor::from(cache_view(shape, ax, room[ax], buffer)?))
    }
    if ax >= shape.len() {
        return Err(KernelError(format!("axis {ax} is out of range for a cache of shape {shape:?}")));
    }
    match dtype {
        DType::F32 => make::<f32>(shape, ax, capacity),
        DType::F16 => make::<fpx_ir::half::f16>(shape, ax, capacity),
        DType::BF16 => make::<fpx_ir::half::bf16>(shape, ax, capacity),
        DType::F64 => make::<f64>(shape, ax, capacity),
        other => Err(KernelError(format!("a KV cache holds floating-point values, not {other}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fpx_ir::ndarray::{concatenate, Axis};
    use fpx_test_support::Rng;

    fn node(axis: i64) -> Node {
        let mut n = Node::new("append", kv_append::OP_TYPE, 1, vec![], vec![]);
        n.domain = FPX_DOMAIN.into();
        n.attrs.insert("axis".into(), fpx_ir::Attribute::Int(axis));
        n
    }

    fn random(shape: &[usize], rng: &mut Rng) -> ArrayD<f32> {
        ArrayD::from_shape_vec(IxDyn(shape), rng.normals(shape.iter().product())).unwrap()
    }

    fn data_ptr(t: &Tensor) -> *const f32 {
        t.as_f32().unwrap().as_ptr()
    }

    #[test]
    fn appends_in_place_while_there_is_room_then_grows_and_always_equals_concat() {
        let mut rng = Rng::new(5);
        for (shape, ax) in [(vec![1, 2, 0, 4], 2usize), (vec![2, 3, 0, 5], 2), (vec![0, 3], 0), (vec![2, 0], 1), (vec![3, 0, 2], 1)] {
            let mut cache = cache_with_capacity(DType::F32, &shape, ax, 5).unwrap();
            let mut want = ArrayD::<f32>::zeros(IxDyn(&shape));
            let start = data_ptr(&cache);
            for (step, len) in [3usize, 1, 1, 1, 4, 1].into_iter().enumerate() {
                let mut new_shape = shape.clone();
                new_shape[ax] = len;
                let new = random(&new_shape, &mut rng);
                want = concatenate(Axis(ax), &[want.view(), new.view()]).unwrap();
                let before = data_ptr(&cache);
                let out = kv_append_owned(&node(ax as i64 - shape.len() as i64), &[None, Some(&Tensor::from(new))], 0, cache).unwrap();
                cache = out.into_iter().next().unwrap();
                assert_eq!(cache.as_f32().unwrap(), &want, "{shape:?} axis {ax} step {step}");
                // Lengths 3, 4, 5 fit the 5 positions; 6 does not (the buffer grows to 16 at
                // least); 10 and 11 then fit again.
                if step == 3 {
                    assert_ne!(data_ptr(&cache), before, "{shape:?}: past the capacity the buffer grows");
                } else {
                    assert_eq!(data_ptr(&cache), before, "{shape:?} step {step}: appended in place");
                }
                if step < 3 {
                    assert_eq!(data_ptr(&cache), start);
                }
            }
            // After growing, the capacity doubled at least: the next step is in place again.
            let mut new_shape = shape.clone();
            new_shape[ax] = 1;
            let before = data_ptr(&cache);
            let out = kv_append_owned(&node(ax as i64), &[None, Some(&Tensor::from(random(&new_shape, &mut rng)))], 0, cache).unwrap();
            assert_eq!(data_ptr(&out[0]), before, "{shape:?}: in place after growing");
        }
    }

    #[test]
    fn a_plain_past_grows_once_and_the_by_reference_kernel_is_concat() {
        let mut rng = Rng::new(6);
        let past = random(&[1, 2, 3, 4], &mut rng);
        let new = random(&[1, 2, 1, 4], &mut rng);
        let want = concatenate(Axis(2), &[past.view(), new.view()]).unwrap();
        let by_ref = kv_append_by_ref(&node(2), &[Some(&Tensor::from(past.clone())), Some(&Tensor::from(new.clone()))]).unwrap();
        assert_eq!(by_ref[0].as_f32().unwrap(), &want);
        assert!(by_ref[0].as_f32().unwrap().is_standard_layout(), "ONNX semantics, no hidden room");
        let owned = kv_append_owned(&node(2), &[None, Some(&Tensor::from(new.clone()))], 0, Tensor::from(past)).unwrap();
        assert_eq!(owned[0].as_f32().unwrap(), &want);
        // Handing over the new part instead is the by-reference path.
        let other = kv_append_owned(&node(2), &[Some(&owned[0]), None], 1, Tensor::from(new)).unwrap();
        assert_eq!(other[0].shape(), &[1, 2, 5, 4]);
    }

    #[test]
    fn mismatched_parts_are_errors() {
        let cache = cache_with_capacity(DType::F32, &[1, 2, 0, 4], 2, 8).unwrap();
        let wrong = Tensor::from(ArrayD::<f32>::zeros(IxDyn(&[1, 3, 1, 4])));
        let e = kv_append_owned(&node(2), &[None, Some(&wrong)], 0, cache.clone()).unwrap_err().0;
        assert!(e.contains("cannot append a tensor of shape [1, 3, 1, 4]"), "{e}");
        let half = Tensor::from(ArrayD::<f64>::zeros(IxDyn(&[1, 2, 1, 4])));
        let e = kv_append_owned(&node(2), &[None, Some(&half)], 0, cache).unwrap_err().0;
        assert!(e.contains("the appended tensor is"), "{e}");
        assert!(cache_with_capacity(DType::I64, &[1, 0], 1, 4).is_err());
    }
}
