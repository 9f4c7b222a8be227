//! Collections of results as one argument: a `Vec`, a tuple or a map whose elements are
//! results of other tasks (Dask resolves futures inside lists and dicts the same way).
//!
//! A value's encoding is postcard, which writes a sequence or a map as its length (a
//! varint) then its elements, and a tuple as its elements: so the encoding of a
//! `Vec<T>` is a header followed by the encodings of its `T`s, as stored. The built-in
//! [`PACK`] concatenates its arguments (a header, then the parts in order) into that
//! encoding on the node, without decoding anything.

use bytes::Bytes;

use crate::registry::{TaskFailure, max_value_bytes};

/// The name of the built-in function that packs results into one collection value.
pub const PACK: &str = "rdask::pack";

/// The function behind [`PACK`]: its arguments, concatenated.
pub fn run_pack(args: &[Bytes]) -> Result<Vec<u8>, TaskFailure> {
    let limit = max_value_bytes();
    let mut total: u64 = 0;
    for a in args {
        total = total
            .checked_add(a.len() as u64)
            .filter(|&t| t <= limit)
            .ok_or_else(|| {
                TaskFailure::Failed(format!(
                    "{PACK}: the packed value would be over the value limit of {limit} bytes \
                     (--max-value-bytes)"
                ))
            })?;
    }
    let mut out = Vec::new();
    out.try_reserve_exact(total as usize).map_err(|_| {
        TaskFailure::Failed(format!(
            "{PACK}: cannot hold a packed value of {total} bytes"
        ))
    })?;
    for a in args {
        out.extend_from_slice(a);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value;
    use std::collections::BTreeMap;

    #[test]
    fn packed_parts_decode_as_the_collection_of_their_values() {
        let parts: Vec<Bytes> = [3i64, -4, 500]
            .iter()
            .map(|v| value::encode(v).unwrap())
            .collect();
        let mut args = vec![value::encode(&3usize).unwrap()];
        args.extend(parts.iter().cloned());
        let v: Vec<i64> = value::decode(&run_pack(&args).unwrap()).unwrap();
        assert_eq!(v, vec![3, -4, 500]);
        // A tuple has no header.
        let t: (i64, i64) = value::decode(&run_pack(&parts[..2]).unwrap()).unwrap();
        assert_eq!(t, (3, -4));
        // A map: length, then key and value of each entry.
        let args = vec![
            value::encode(&2usize).unwrap(),
            value::encode("a").unwrap(),
            parts[0].clone(),
            value::encode("b").unwrap(),
            parts[2].clone(),
        ];
        let m: BTreeMap<String, i64> = value::decode(&run_pack(&args).unwrap()).unwrap();
        assert_eq!(m, BTreeMap::from([("a".into(), 3), ("b".into(), 500)]));
    }
}
