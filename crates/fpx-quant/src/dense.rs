//! Dense bit packing of `b`-bit codes (1..=8 bits): code `i` occupies bits `b·i .. b·(i+1)` of a
//! little-endian bit stream, no padding between codes, the last byte zero-filled. For small
//! tensors whose codes need no GPU fragment order (LoRC factors), where the 4+2 tile layout
//! ([`crate::layout`]) would pad them to 16 × 32 tiles.

/// Bytes that `count` codes of `bits` bits take: `ceil(count · bits / 8)`.
pub fn packed_len(count: usize, bits: u32) -> usize {
    (count * bits as usize).div_ceil(8)
}

/// Packs the low `bits` bits of each code (higher bits ignored). Panics unless `1 <= bits <= 8`.
pub fn pack(codes: &[u8], bits: u32) -> Vec<u8> {
    assert!((1..=8).contains(&bits), "dense packing takes 1..=8 bits, not {bits}");
    let mask = ((1u16 << bits) - 1) as u8;
    let mut out = vec![0u8; packed_len(codes.len(), bits)];
    for (i, &c) in codes.iter().enumerate() {
        let bit = i * bits as usize;
        let v = ((c & mask) as u16) << (bit % 8);
        out[bit / 8] |= v as u8;
        if v > 0xff {
            out[bit / 8 + 1] |= (v >> 8) as u8;
        }
    }
    out
}

/// The first `count` codes of `bits` bits from `bytes`; `None` when `bytes` is not exactly
/// [`packed_len`]`(count, bits)` long. Panics unless `1 <= bits <= 8`.
pub fn unpack(bytes: &[u8], bits: u32, count: usize) -> Option<Vec<u8>> {
    assert!((1..=8).contains(&bits), "dense packing takes 1..=8 bits, not {bits}");
    if bytes.len() != packed_len(count, bits) {
        return None;
    }
    let mask = (1u16 << bits) - 1;
    Some(
        (0..count)
            .map(|i| {
                let bit = i * bits as usize;
                let lo = bytes[bit / 8] as u16;
                let hi = bytes.get(bit / 8 + 1).copied().unwrap_or(0) as u16;
                (((lo | (hi << 8)) >> (bit % 8)) & mask) as u8
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_width_and_length() {
        for bits in 1..=8u32 {
            for count in [0, 1, 2, 3, 7, 8, 9, 31, 100] {
                let codes: Vec<u8> = (0..count).map(|i| (i as u8).wrapping_mul(37).wrapping_add(11)).collect();
                let packed = pack(&codes, bits);
                assert_eq!(packed.len(), packed_len(count, bits));
                let mask = ((1u16 << bits) - 1) as u8;
                let want: Vec<u8> = codes.iter().map(|c| c & mask).collect();
                assert_eq!(unpack(&packed, bits, count).unwrap(), want, "{bits} bits, {count} codes");
                assert!(unpack(&packed, bits, count + 8).is_none());
            }
        }
    }

    #[test]
    fn six_bit_codes_sit_where_the_definition_says() {
        // Codes 0b000001, 0b000010, 0b000011, 0b111111: bits 0..6, 6..12, 12..18, 18..24.
        let packed = pack(&[1, 2, 3, 63], 6);
        let stream = packed[0] as u32 | (packed[1] as u32) << 8 | (packed[2] as u32) << 16;
        assert_eq!(stream, 1 | 2 << 6 | 3 << 12 | 63 << 18);
    }
}
