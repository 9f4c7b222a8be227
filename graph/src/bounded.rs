//! Decoding with bounds on nesting depth and on the number of elements.
//!
//! postcard decodes with plain recursion and trusts the lengths it reads: a few kilobytes of
//! nested enum variants overflow the decoding thread's stack (an abort no `catch_unwind`
//! can stop), and a sequence of zero-sized elements announced as 2⁶⁴ long keeps a thread
//! busy forever. [`decode`] wraps postcard's deserializer in an adapter that counts the
//! nesting of containers (sequences, maps, tuples, structs, enum variants, options and
//! newtypes) and the elements of every sequence and map, and fails the decoding once either
//! is over its [`Limits`]. Everything decoded from outside the process goes through it.

use std::cell::Cell;
use std::fmt;

use serde::de::{
    self, DeserializeOwned, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess,
    VariantAccess, Visitor,
};

/// Bounds on one decoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Most containers nested in one another.
    pub depth: u32,
    /// Most elements of sequences and maps, in all.
    pub elements: u64,
}

impl Limits {
    /// Nesting allowed by default: far more than any message or usual value needs, and
    /// little enough stack (a few kilobytes a level) for any thread.
    pub const DEPTH: u32 = 128;

    /// Bounds for a message of `len` bytes of a protocol whose elements all take at least
    /// one byte: [`Limits::DEPTH`], and at most about one element per byte.
    pub fn for_message(len: usize) -> Limits {
        Limits {
            depth: Limits::DEPTH,
            elements: (len as u64).saturating_add(1024),
        }
    }

    /// Bounds for a value of `len` bytes of any type: [`Limits::DEPTH`], and one element per
    /// byte plus 16 million (room for sequences of zero-sized elements, which take no bytes,
    /// while a hostile length still ends in well under a second).
    pub fn for_value(len: usize) -> Limits {
        Limits {
            depth: Limits::DEPTH,
            elements: (len as u64).saturating_add(1 << 24),
        }
    }
}

/// Why a bounded decoding failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Containers nested deeper than the limit.
    #[error("nested more than {0} levels deep")]
    TooDeep(u32),
    /// More elements than the limit.
    #[error("more than {0} elements")]
    TooManyElements(u64),
    /// Bytes left after the value: they were written for another type.
    #[error("{0} bytes left over")]
    Trailing(usize),
    /// The codec's own error.
    #[error("{0}")]
    Codec(#[from] postcard::Error),
}

/// Decodes a `T` from all of `bytes` within `limits`.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], limits: Limits) -> Result<T, DecodeError> {
    match take(bytes, limits)? {
        (value, []) => Ok(value),
        (_, rest) => Err(DecodeError::Trailing(rest.len())),
    }
}

/// Decodes a `T` from the start of `bytes` within `limits`; returns it and the bytes after
/// it.
pub fn take<T: DeserializeOwned>(bytes: &[u8], limits: Limits) -> Result<(T, &[u8]), DecodeError> {
    let budget = Budget {
        limits,
        elements: Cell::new(limits.elements),
        exceeded: Cell::new(None),
    };
    let mut de = postcard::Deserializer::from_bytes(bytes);
    let ctx = Ctx {
        depth: limits.depth,
        budget: &budget,
    };
    let result = T::deserialize(Bounded {
        inner: &mut de,
        ctx,
        counted: false,
    });
    // The adapter's own errors reach postcard as custom errors, whose text it drops: the
    // budget remembers which bound was hit.
    match budget.exceeded.get() {
        Some(Exceeded::Depth) => return Err(DecodeError::TooDeep(limits.depth)),
        Some(Exceeded::Elements) => return Err(DecodeError::TooManyElements(limits.elements)),
        None => {}
    }
    let value = result?;
    Ok((value, de.finalize()?))
}

struct Budget {
    limits: Limits,
    /// Elements still allowed.
    elements: Cell<u64>,
    /// The bound that was hit, if any.
    exceeded: Cell<Option<Exceeded>>,
}

#[derive(Clone, Copy)]
enum Exceeded {
    Depth,
    Elements,
}

#[derive(Clone, Copy)]
struct Ctx<'b> {
    /// Levels still allowed below this one.
    depth: u32,
    budget: &'b Budget,
}

impl<'b> Ctx<'b> {
    fn fail<E: de::Error>(self, what: Exceeded) -> E {
        self.budget.exceeded.set(Some(what));
        let limits = self.budget.limits;
        E::custom(match what {
            Exceeded::Depth => DecodeError::TooDeep(limits.depth),
            Exceeded::Elements => DecodeError::TooManyElements(limits.elements),
        })
    }

    fn enter<E: de::Error>(self) -> Result<Ctx<'b>, E> {
        match self.depth.checked_sub(1) {
            Some(depth) => Ok(Ctx { depth, ..self }),
            None => Err(self.fail(Exceeded::Depth)),
        }
    }

    fn element<E: de::Error>(self) -> Result<(), E> {
        match self.budget.elements.get().checked_sub(1) {
            Some(left) => {
                self.budget.elements.set(left);
                Ok(())
            }
            None => Err(self.fail(Exceeded::Elements)),
        }
    }
}

/// The adapter: wraps a deserializer, a visitor, a seed or an access, carrying the bounds.
struct Bounded<'b, T> {
    inner: T,
    ctx: Ctx<'b>,
    /// For a visitor or an access: whether it is a sequence's or a map's, whose elements
    /// count against the budget (the fields of tuples, structs and variants do not: their
    /// number is fixed by the type).
    counted: bool,
}

impl<'b, T> Bounded<'b, T> {
    fn wrap<U>(&self, inner: U) -> Bounded<'b, U> {
        Bounded {
            inner,
            ctx: self.ctx,
            counted: false,
        }
    }

    fn wrap_counted<U>(&self, inner: U) -> Bounded<'b, U> {
        Bounded {
            inner,
            ctx: self.ctx,
            counted: true,
        }
    }
}

macro_rules! forward_deserialize {
    ($($method:ident),* $(,)?) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
            let v = self.wrap(visitor);
            self.inner.$method(v)
        }
    )*};
}

impl<'de, 'b, D: Deserializer<'de>> Deserializer<'de> for Bounded<'b, D> {
    type Error = D::Error;

    forward_deserialize!(
        deserialize_any,
        deserialize_bool,
        deserialize_i8,
        deserialize_i16,
        deserialize_i32,
        deserialize_i64,
        deserialize_i128,
        deserialize_u8,
        deserialize_u16,
        deserialize_u32,
        deserialize_u64,
        deserialize_u128,
        deserialize_f32,
        deserialize_f64,
        deserialize_char,
        deserialize_str,
        deserialize_string,
        deserialize_bytes,
        deserialize_byte_buf,
        deserialize_option,
        deserialize_unit,
        deserialize_identifier,
        deserialize_ignored_any,
    );

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        let v = self.wrap_counted(visitor);
        self.inner.deserialize_seq(v)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        let v = self.wrap_counted(visitor);
        self.inner.deserialize_map(v)
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        let v = self.wrap(visitor);
        self.inner.deserialize_unit_struct(name, v)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        let v = self.wrap(visitor);
        self.inner.deserialize_newtype_struct(name, v)
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        let v = self.wrap(visitor);
        self.inner.deserialize_tuple(len, v)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        let v = self.wrap(visitor);
        self.inner.deserialize_tuple_struct(name, len, v)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        let v = self.wrap(visitor);
        self.inner.deserialize_struct(name, fields, v)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        let v = self.wrap(visitor);
        self.inner.deserialize_enum(name, variants, v)
    }

    fn is_human_readable(&self) -> bool {
        self.inner.is_human_readable()
    }
}

macro_rules! forward_visit {
    ($($method:ident($ty:ty)),* $(,)?) => {$(
        fn $method<E: de::Error>(self, v: $ty) -> Result<Self::Value, E> {
            self.inner.$method(v)
        }
    )*};
}

impl<'de, 'b, V: Visitor<'de>> Visitor<'de> for Bounded<'b, V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.expecting(f)
    }

    forward_visit!(
        visit_bool(bool),
        visit_i8(i8),
        visit_i16(i16),
        visit_i32(i32),
        visit_i64(i64),
        visit_i128(i128),
        visit_u8(u8),
        visit_u16(u16),
        visit_u32(u32),
        visit_u64(u64),
        visit_u128(u128),
        visit_f32(f32),
        visit_f64(f64),
        visit_char(char),
        visit_str(&str),
        visit_borrowed_str(&'de str),
        visit_string(String),
        visit_bytes(&[u8]),
        visit_borrowed_bytes(&'de [u8]),
        visit_byte_buf(Vec<u8>),
    );

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        self.inner.visit_none()
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        self.inner.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        let ctx = self.ctx.enter()?;
        self.inner.visit_some(Bounded {
            inner: d,
            ctx,
            counted: false,
        })
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        let ctx = self.ctx.enter()?;
        self.inner.visit_newtype_struct(Bounded {
            inner: d,
            ctx,
            counted: false,
        })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        let ctx = self.ctx.enter()?;
        self.inner.visit_seq(Bounded {
            inner: seq,
            ctx,
            counted: self.counted,
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        let ctx = self.ctx.enter()?;
        self.inner.visit_map(Bounded {
            inner: map,
            ctx,
            counted: true,
        })
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Self::Value, A::Error> {
        let ctx = self.ctx.enter()?;
        self.inner.visit_enum(Bounded {
            inner: data,
            ctx,
            counted: false,
        })
    }
}

impl<'de, 'b, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Bounded<'b, S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        let d = self.wrap(d);
        self.inner.deserialize(d)
    }
}

impl<'de, 'b, A: SeqAccess<'de>> SeqAccess<'de> for Bounded<'b, A> {
    type Error = A::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Self::Error> {
        let seed = self.wrap(seed);
        let element = self.inner.next_element_seed(seed)?;
        if self.counted && element.is_some() {
            self.ctx.element()?;
        }
        Ok(element)
    }

    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

impl<'de, 'b, A: MapAccess<'de>> MapAccess<'de> for Bounded<'b, A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Self::Error> {
        let seed = self.wrap(seed);
        let key = self.inner.next_key_seed(seed)?;
        if key.is_some() {
            self.ctx.element()?;
        }
        Ok(key)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, Self::Error> {
        let seed = self.wrap(seed);
        self.inner.next_value_seed(seed)
    }

    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

impl<'de, 'b, A: EnumAccess<'de>> EnumAccess<'de> for Bounded<'b, A> {
    type Error = A::Error;
    type Variant = Bounded<'b, A::Variant>;

    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, Self::Variant), Self::Error> {
        let ctx = self.ctx;
        let (value, variant) = self.inner.variant_seed(Bounded {
            inner: seed,
            ctx,
            counted: false,
        })?;
        Ok((
            value,
            Bounded {
                inner: variant,
                ctx,
                counted: false,
            },
        ))
    }
}

impl<'de, 'b, A: VariantAccess<'de>> VariantAccess<'de> for Bounded<'b, A> {
    type Error = A::Error;

    fn unit_variant(self) -> Result<(), Self::Error> {
        self.inner.unit_variant()
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> Result<T::Value, Self::Error> {
        let seed = self.wrap(seed);
        self.inner.newtype_variant_seed(seed)
    }

    fn tuple_variant<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        let v = self.wrap(visitor);
        self.inner.tuple_variant(len, v)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        let v = self.wrap(visitor);
        self.inner.struct_variant(fields, v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum Tree {
        Leaf(u8),
        Node(Box<Tree>, Box<Tree>),
        Chain(Box<Tree>),
    }

    fn chain(depth: usize) -> Vec<u8> {
        // Chain(Chain(... Leaf(7))): variant 2 per level, then Leaf(7).
        let mut bytes = vec![2u8; depth];
        bytes.extend_from_slice(&[0, 7]);
        bytes
    }

    #[test]
    fn values_decode_as_postcard_does() {
        let t = Tree::Node(
            Box::new(Tree::Leaf(1)),
            Box::new(Tree::Chain(Box::new(Tree::Leaf(2)))),
        );
        let bytes = postcard::to_allocvec(&t).unwrap();
        assert_eq!(
            decode::<Tree>(&bytes, Limits::for_value(bytes.len())).unwrap(),
            t
        );
        let v: Vec<(String, Option<u32>)> = vec![("a".into(), Some(1)), ("b".into(), None)];
        let bytes = postcard::to_allocvec(&v).unwrap();
        assert_eq!(
            decode::<Vec<(String, Option<u32>)>>(&bytes, Limits::for_message(bytes.len())).unwrap(),
            v
        );
        assert_eq!(
            decode::<u8>(&[1, 2], Limits::for_value(2)).unwrap_err(),
            DecodeError::Trailing(1)
        );
        // Nesting up to the limit decodes.
        let bytes = chain(Limits::DEPTH as usize - 1);
        assert!(decode::<Tree>(&bytes, Limits::for_value(bytes.len())).is_ok());
    }

    /// A million levels of nesting (2 MB) on a thread with a small stack: an error, not an
    /// overflow that aborts the process.
    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let bytes = chain(1_000_000);
        let err = std::thread::Builder::new()
            .stack_size(256 << 10)
            .spawn(move || decode::<Tree>(&bytes, Limits::for_value(bytes.len())).unwrap_err())
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(err, DecodeError::TooDeep(Limits::DEPTH));
        assert_eq!(err.to_string(), "nested more than 128 levels deep");
    }

    /// 2⁶⁴−1 zero-sized elements announced in 10 bytes: refused after the budget, at once.
    #[test]
    fn a_huge_sequence_of_zero_sized_elements_is_refused() {
        let bytes = postcard::to_allocvec(&u64::MAX).unwrap();
        let started = std::time::Instant::now();
        let err = decode::<Vec<()>>(&bytes, Limits::for_value(bytes.len())).unwrap_err();
        assert!(matches!(err, DecodeError::TooManyElements(_)), "{err}");
        assert!(started.elapsed() < std::time::Duration::from_secs(30));
        // Within the budget, such a sequence decodes.
        let bytes = postcard::to_allocvec(&vec![(); 1000]).unwrap();
        assert_eq!(
            decode::<Vec<()>>(&bytes, Limits::for_value(bytes.len()))
                .unwrap()
                .len(),
            1000
        );
        // Maps count their entries.
        let m: std::collections::BTreeMap<u8, ()> = (0..=255).map(|k| (k, ())).collect();
        let bytes = postcard::to_allocvec(&m).unwrap();
        let tight = Limits {
            depth: 8,
            elements: 100,
        };
        assert!(matches!(
            decode::<std::collections::BTreeMap<u8, ()>>(&bytes, tight),
            Err(DecodeError::TooManyElements(100))
        ));
    }
}
