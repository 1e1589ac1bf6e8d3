//! Shape math on concrete dims, shared by the CPU kernels (fpx-runtime) and the GPU planners
//! (fpx-cuda): ONNX (numpy) broadcasting, row-major and broadcast strides, merging of adjacent
//! dims, and row-major multi-indices. Shapes are row-major, outermost dim first.

use crate::ops::broadcast_dims;
use crate::Dim;

/// ONNX (numpy) multidirectional broadcasting of concrete shapes: right-aligned, each dim pair
/// equal or one of them 1 (a 1 gives way, also to 0). `None` when they do not broadcast; no
/// shapes give `[]`. The rule is [`broadcast_dims`]' (shape inference), on fixed dims.
pub fn broadcast_shape(shapes: &[&[usize]]) -> Option<Vec<usize>> {
    let mut out: Vec<Dim> = Vec::new();
    for s in shapes {
        let d: Vec<Dim> = s.iter().map(|&n| Dim::Fixed(n)).collect();
        out = broadcast_dims(&out, &d)?;
    }
    // Fixed dims broadcast to fixed dims.
    out.iter().map(Dim::fixed).collect()
}

/// The product of `dims`, or `None` if it overflows `usize` (dimensions read from a model or a
/// file can be anything).
pub fn checked_product(dims: impl IntoIterator<Item = usize>) -> Option<usize> {
    dims.into_iter().try_fold(1usize, |acc, d| acc.checked_mul(d))
}

/// Row-major element strides of `shape` (the innermost is 1).
pub fn row_major_strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        s[d] = s[d + 1] * shape[d + 1];
    }
    s
}

/// The element strides of a row-major operand of `shape` read as an operand of a broadcast
/// output of `rank` dims (`rank >= shape.len()`): right-aligned, 0 along the dims it lacks or
/// has size 1, so output multi-index `idx` reads element `Σ idx[d] · strides[d]`.
pub fn broadcast_strides(shape: &[usize], rank: usize) -> Vec<usize> {
    let cs = row_major_strides(shape);
    (0..rank)
        .map(|d| match (d + shape.len()).checked_sub(rank) {
            Some(i) if shape[i] != 1 => cs[i],
            _ => 0,
        })
        .collect()
}

/// Merges dims given innermost first as `(size, [stride of each of K operands])`: drops size-1
/// dims and folds a dim into the (merged) one inside it when every operand's stride continues
/// it (`outer stride == inner stride · inner size`). The result is innermost first; walking
/// it visits the same offsets in the same order as the dims given.
pub fn merge_dims<const K: usize>(dims: impl IntoIterator<Item = (usize, [usize; K])>) -> Vec<(usize, [usize; K])> {
    let mut out: Vec<(usize, [usize; K])> = Vec::new();
    for (size, st) in dims {
        if size == 1 {
            continue;
        }
        if let Some((gs, gst)) = out.last_mut() {
            if (0..K).all(|k| st[k] == gst[k] * *gs) {
                *gs *= size;
                continue;
            }
        }
        out.push((size, st));
    }
    out
}

/// The row-major multi-index of flat element `i` of `shape`.
pub fn unravel_index(mut i: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for d in (0..shape.len()).rev() {
        idx[d] = i % shape[d];
        i /= shape[d];
    }
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcasting_follows_numpy() {
        assert_eq!(broadcast_shape(&[&[2, 1, 4], &[3, 1]]), Some(vec![2, 3, 4]));
        assert_eq!(broadcast_shape(&[&[2, 3], &[4, 3]]), None);
        assert_eq!(broadcast_shape(&[&[1, 0], &[5, 1]]), Some(vec![5, 0]));
        assert_eq!(broadcast_shape(&[&[0], &[5]]), None);
        assert_eq!(broadcast_shape(&[&[3, 1], &[], &[1, 1, 7]]), Some(vec![1, 3, 7]));
        assert_eq!(broadcast_shape(&[]), Some(vec![]));
    }

    #[test]
    fn strides_and_indices() {
        assert_eq!(row_major_strides(&[2, 3, 4]), [12, 4, 1]);
        assert_eq!(row_major_strides(&[]), Vec::<usize>::new());
        assert_eq!(broadcast_strides(&[3, 1, 4], 5), [0, 0, 4, 0, 1]);
        assert_eq!(broadcast_strides(&[], 2), [0, 0]);
        assert_eq!(unravel_index(23, &[2, 3, 4]), [1, 2, 3]);
        assert_eq!(unravel_index(0, &[]), Vec::<usize>::new());
    }

    #[test]
    fn merging_keeps_contiguous_runs_together() {
        // [2, 3, 4] + [4]: the two outer dims merge (both operands continue), the inner stays.
        let (a, b) = (broadcast_strides(&[2, 3, 4], 3), broadcast_strides(&[4], 3));
        let shape = [2, 3, 4];
        let merged = merge_dims((0..3).rev().map(|d| (shape[d], [a[d], b[d]])));
        assert_eq!(merged, [(4, [1, 1]), (6, [4, 0])]);
        assert_eq!(merge_dims([(1, [0]), (5, [1]), (1, [9])]), [(5, [1])]);
        assert_eq!(merge_dims::<1>([]), []);
    }
}
