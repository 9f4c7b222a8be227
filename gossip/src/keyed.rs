//! A keyed table of registers (the ownership table, the dataset table) that anti-entropy
//! compares bucket by bucket.
//!
//! Each entry hashes (key and marker) to 64 bits; entries are split by a hash of their key
//! into `2^FINE_BITS` fine buckets, and the table keeps the XOR of the entry hashes of each
//! (updated on every change, so a digest costs nothing to compute). A digest at `bits`
//! folds them into `2^bits` buckets; two nodes then compare only the buckets whose hashes
//! differ, entry by entry. The lowest bit of an entry hash says whether the entry is a
//! tombstone. A node never asks for a tombstone it lacks, and sends one to a peer that
//! lacks it only while it is young here (less than half its lifetime): tombstones reach
//! every node within a few rounds, each node drops them a lifetime after it got them, and a
//! node that has dropped one is not handed it again by a peer that got it a little later.
//! A tombstone always goes to a peer that holds the entry it removes.

use std::collections::BTreeMap;
use std::ops::Bound;

use crdts::LWWReg;
use serde::{Deserialize, Serialize};

/// Bits of the finest bucket split.
pub(crate) const FINE_BITS: u8 = 12;
/// Entries per bucket a digest aims at.
const BUCKET_TARGET: usize = 64;

/// A stable 64-bit hash (the same on every node and every build).
pub(crate) trait StableHash {
    fn stable_hash(&self) -> u64;
}

/// splitmix64's finaliser.
pub(crate) fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// FNV-1a over bytes.
pub(crate) fn fnv(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

impl StableHash for u128 {
    fn stable_hash(&self) -> u64 {
        mix(*self as u64) ^ mix(((*self >> 64) as u64) ^ 0x5151_5151)
    }
}

impl StableHash for String {
    fn stable_hash(&self) -> u64 {
        fnv(self.as_bytes())
    }
}

/// What the table needs of a register: whether it is a tombstone.
pub(crate) trait Tombstone {
    fn is_tombstone(&self) -> bool;
}

/// The entries of one bucket as a node holds them: (key, entry hash). Sent so that the
/// peer can tell which of its entries differ.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketList<K> {
    /// The split the bucket belongs to.
    pub bits: u8,
    /// The bucket.
    pub index: u32,
    /// Keys and entry hashes (lowest bit set: a tombstone).
    pub entries: Vec<(K, u64)>,
}

/// The bucket hashes of a keyed table at one split.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Buckets {
    /// `2^bits` buckets.
    pub bits: u8,
    /// One hash per bucket.
    pub hashes: Vec<u64>,
}

/// The outcome of [`Keyed::compare`]: entries to send, keys to ask for.
pub(crate) type Compared<'a, K, V, M> = (Vec<(K, &'a LWWReg<V, M>)>, Vec<K>);

/// One entry: the register, its hash, and this node's clocks for it.
#[derive(Clone, Debug)]
pub(crate) struct Slot<V, M> {
    pub reg: LWWReg<V, M>,
    pub hash: u64,
    /// When (this node's clock) the entry last changed here.
    pub at: u64,
    /// Since when what the entry refers to has been missing (0: it is not), for the
    /// collectors of the cluster state.
    pub orphan: u64,
}

/// A keyed table of registers, ordered by a hash of the key (so that a bucket is a range).
#[derive(Clone, Debug)]
pub(crate) struct Keyed<K, V, M> {
    map: BTreeMap<(u64, K), Slot<V, M>>,
    /// XOR of the entry hashes by fine bucket (empty until the first entry).
    fine: Vec<u64>,
    total: u64,
}

impl<K, V, M> Default for Keyed<K, V, M> {
    fn default() -> Self {
        Keyed {
            map: BTreeMap::new(),
            fine: Vec::new(),
            total: 0,
        }
    }
}

pub(crate) fn key_hash<K: StableHash>(k: &K) -> u64 {
    mix(k.stable_hash())
}

fn fine_index(kh: u64) -> usize {
    (kh >> (64 - u32::from(FINE_BITS))) as usize
}

/// The range of key hashes of bucket `index` at `bits`.
fn bucket_bounds(bits: u8, index: u32) -> (u64, Option<u64>) {
    if bits == 0 {
        return (0, None);
    }
    let shift = 64 - u32::from(bits);
    let lo = u64::from(index) << shift;
    let hi = (u64::from(index) + 1)
        .checked_shl(shift)
        .filter(|_| index + 1 < (1 << bits));
    (lo, hi)
}

impl<K, V, M> Keyed<K, V, M>
where
    K: Ord + Clone + Default + StableHash,
    V: Clone,
    M: Ord + Clone + StableHash,
    LWWReg<V, M>: Tombstone,
{
    fn entry_hash(kh: u64, reg: &LWWReg<V, M>) -> u64 {
        let h = mix(kh.rotate_left(29) ^ mix(reg.marker.stable_hash()));
        (h & !1) | u64::from(reg.is_tombstone())
    }

    fn toggle(&mut self, kh: u64, h: u64) {
        if self.fine.is_empty() {
            self.fine = vec![0; 1 << FINE_BITS];
        }
        self.fine[fine_index(kh)] ^= h;
        self.total ^= h;
    }

    /// Number of entries (tombstones included).
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// The XOR of every entry hash: equal tables hash equal.
    pub(crate) fn hash(&self) -> u64 {
        self.total
    }

    pub(crate) fn get(&self, k: &K) -> Option<&Slot<V, M>> {
        self.map.get(&(key_hash(k), k.clone()))
    }

    pub(crate) fn get_mut(&mut self, k: &K) -> Option<&mut Slot<V, M>> {
        self.map.get_mut(&(key_hash(k), k.clone()))
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&K, &Slot<V, M>)> {
        self.map.iter().map(|((_, k), s)| (k, s))
    }

    /// Takes `reg` for `k` if its marker is higher than the one held (or none is held).
    pub(crate) fn put(&mut self, k: K, reg: LWWReg<V, M>, now_ms: u64) -> bool {
        let kh = key_hash(&k);
        let h = Self::entry_hash(kh, &reg);
        let old = match self.map.get_mut(&(kh, k.clone())) {
            Some(s) if s.reg.marker >= reg.marker => return false,
            Some(s) => {
                let old = s.hash;
                *s = Slot {
                    reg,
                    hash: h,
                    at: now_ms,
                    orphan: 0,
                };
                Some(old)
            }
            None => {
                self.map.insert(
                    (kh, k),
                    Slot {
                        reg,
                        hash: h,
                        at: now_ms,
                        orphan: 0,
                    },
                );
                None
            }
        };
        if let Some(old) = old {
            self.toggle(kh, old);
        }
        self.toggle(kh, h);
        true
    }

    /// Drops the entries `drop` says so of (expired tombstones); returns how many went.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&K, &Slot<V, M>) -> bool) -> usize {
        let gone: Vec<(u64, K)> = self
            .map
            .iter()
            .filter(|((_, k), s)| !keep(k, s))
            .map(|(k, _)| k.clone())
            .collect();
        for key in &gone {
            if let Some(s) = self.map.remove(key) {
                self.toggle(key.0, s.hash);
            }
        }
        gone.len()
    }

    /// The split a digest of this table uses: about [`BUCKET_TARGET`] entries a bucket.
    pub(crate) fn bits(&self) -> u8 {
        let mut bits = 0;
        while bits < FINE_BITS && (self.map.len() >> bits) > BUCKET_TARGET {
            bits += 1;
        }
        bits
    }

    /// The bucket hashes at `bits` (at most [`FINE_BITS`]).
    pub(crate) fn buckets(&self, bits: u8) -> Vec<u64> {
        let bits = bits.min(FINE_BITS);
        let mut out = vec![0u64; 1 << bits];
        if bits == 0 {
            out[0] = self.total;
            return out;
        }
        let shift = FINE_BITS - bits;
        for (i, h) in self.fine.iter().enumerate() {
            out[i >> shift] ^= h;
        }
        out
    }

    /// The digest of this table.
    pub(crate) fn digest(&self) -> Buckets {
        let bits = self.bits();
        Buckets {
            bits,
            hashes: self.buckets(bits),
        }
    }

    fn range(&self, bits: u8, index: u32) -> impl Iterator<Item = (&(u64, K), &Slot<V, M>)> {
        let (lo, hi) = bucket_bounds(bits, index);
        let upper = match hi {
            Some(h) => Bound::Excluded((h, K::default())),
            None => Bound::Unbounded,
        };
        self.map.range((Bound::Included((lo, K::default())), upper))
    }

    /// This node's entries of bucket `index` at `bits`.
    pub(crate) fn list(&self, bits: u8, index: u32) -> BucketList<K> {
        BucketList {
            bits,
            index,
            entries: self
                .range(bits, index)
                .map(|((_, k), s)| (k.clone(), s.hash))
                .collect(),
        }
    }

    /// The buckets of a peer's digest whose hashes differ from this node's.
    pub(crate) fn differing(&self, theirs: &Buckets) -> Vec<u32> {
        if theirs.bits > FINE_BITS || theirs.hashes.len() != 1 << theirs.bits {
            return Vec::new();
        }
        let mine = self.buckets(theirs.bits);
        (0..mine.len())
            .filter(|&i| mine[i] != theirs.hashes[i])
            .map(|i| i as u32)
            .collect()
    }

    /// Compares a peer's bucket with this node's: the entries it lacks or holds otherwise
    /// (to send it), and the keys it holds that this node lacks or holds otherwise (to ask
    /// it for). A tombstone the peer lacks goes only if `young` says so of it; one this
    /// node lacks is not asked for.
    pub(crate) fn compare(
        &self,
        theirs: &BucketList<K>,
        young: impl Fn(&Slot<V, M>) -> bool,
    ) -> Compared<'_, K, V, M> {
        if theirs.bits > FINE_BITS || theirs.index >= 1 << theirs.bits {
            return (Vec::new(), Vec::new());
        }
        let their: BTreeMap<&K, u64> = theirs.entries.iter().map(|(k, h)| (k, *h)).collect();
        let mut send = Vec::new();
        let mut mine: BTreeMap<&K, u64> = BTreeMap::new();
        for ((_, k), s) in self.range(theirs.bits, theirs.index) {
            mine.insert(k, s.hash);
            match their.get(k) {
                Some(&h) if h == s.hash => {}
                None if s.hash & 1 == 1 && !young(s) => {}
                _ => send.push((k.clone(), &s.reg)),
            }
        }
        let want = their
            .iter()
            .filter(|(k, h)| match mine.get(*k) {
                Some(m) => *m != **h,
                None => **h & 1 == 0,
            })
            .map(|(k, _)| (*k).clone())
            .collect();
        (send, want)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Tombstone for LWWReg<u32, u64> {
        fn is_tombstone(&self) -> bool {
            self.val == 0
        }
    }
    impl StableHash for u64 {
        fn stable_hash(&self) -> u64 {
            mix(*self)
        }
    }

    fn reg(val: u32, marker: u64) -> LWWReg<u32, u64> {
        LWWReg { val, marker }
    }

    #[test]
    fn bucket_hashes_fold_and_follow_every_change() {
        let mut a: Keyed<u128, u32, u64> = Keyed::default();
        let mut b: Keyed<u128, u32, u64> = Keyed::default();
        for i in 0..1000u128 {
            a.put(i << 64, reg(1, 1), 0);
            b.put(i << 64, reg(1, 1), 0);
        }
        assert_eq!(a.hash(), b.hash());
        assert_eq!(a.bits(), 4);
        b.put(7 << 64, reg(1, 2), 0);
        let diff = a.differing(&b.digest());
        assert_eq!(diff.len(), 1);
        let list = b.list(b.bits(), diff[0]);
        assert!(list.entries.iter().any(|(k, _)| *k == 7 << 64));
        let (send, want) = a.compare(&list, |_| true);
        assert_eq!(
            send.len(),
            1,
            "a's older entry goes too (the merge keeps the newer)"
        );
        assert_eq!(want, vec![7u128 << 64]);
        // Every split sums to the same total.
        for bits in 0..=FINE_BITS {
            assert_eq!(a.buckets(bits).iter().fold(0, |x, h| x ^ h), a.hash());
        }
        a.put(7 << 64, reg(1, 2), 0);
        assert_eq!(a.hash(), b.hash());
        // Dropping an entry takes its hash out.
        a.retain(|k, _| *k != 7 << 64);
        b.retain(|k, _| *k != 7 << 64);
        assert_eq!(a.hash(), b.hash());
        assert_eq!(a.len(), 999);
    }

    #[test]
    fn a_tombstone_goes_where_it_is_missing_only_while_young_and_is_never_asked_for() {
        let mut a: Keyed<u128, u32, u64> = Keyed::default();
        let mut b: Keyed<u128, u32, u64> = Keyed::default();
        a.put(5, reg(0, 3), 0); // a tombstone
        let (send, want) = a.compare(&b.list(0, 0), |_| true);
        assert_eq!((send.len(), want.len()), (1, 0));
        let (send, want) = a.compare(&b.list(0, 0), |_| false);
        assert!(send.is_empty() && want.is_empty());
        let (send, want) = b.compare(&a.list(0, 0), |_| true);
        assert!(send.is_empty() && want.is_empty());
        // Where the entry it removes is, it goes whatever its age.
        b.put(5, reg(1, 2), 0);
        let (send, want) = a.compare(&b.list(0, 0), |_| false);
        assert_eq!((send.len(), want.len()), (1, 1));
    }
}
