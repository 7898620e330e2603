//! [`IdKey`]: a uuid as the key of the table's larger maps and sets.

use std::fmt;

use uuid::Uuid;

/// A uuid as one big-endian `u128`. `Uuid`'s `Ord` compares 16 bytes, which
/// compiles to a call to `memcmp` per comparison; this compares two integers.
/// Big-endian means the first byte is the most significant, so a tree keyed
/// by `IdKey` walks its ids in exactly the order a tree keyed by `Uuid` does,
/// and whatever is encoded in that order (the snapshot) keeps its bytes.
///
/// The key of the trees that hold as many ids as the table remembers
/// requests and are searched by id on every command (the request map's
/// shards, the owner sets); the time- and priority-ordered sets keep `Uuid`, where it measured no
/// worse (BENCHMARKS.md, "The table's indexes").
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct IdKey(u128);

impl IdKey {
    pub(crate) fn uuid(self) -> Uuid {
        Uuid::from_u128(self.0)
    }

    /// The first `bits` bits of the id, as a number below `2^bits`.
    pub(crate) fn leading_bits(self, bits: u32) -> usize {
        (self.0 >> (128 - bits)) as usize
    }
}

impl From<Uuid> for IdKey {
    fn from(id: Uuid) -> IdKey {
        IdKey(id.as_u128())
    }
}

/// As the uuid it is, so that indexes that differ print as ids.
impl fmt::Debug for IdKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.uuid(), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_as_the_uuid_does() {
        let ids = [
            Uuid::nil(),
            Uuid::from_bytes([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]),
            Uuid::from_bytes([0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]),
            Uuid::from_bytes([0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]),
            Uuid::from_bytes([1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            Uuid::from_u128(u128::MAX >> 1),
            Uuid::from_bytes([0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            Uuid::from_bytes([0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff]),
            Uuid::max(),
        ];
        for a in ids {
            for b in ids {
                assert_eq!(a.cmp(&b), IdKey::from(a).cmp(&IdKey::from(b)), "{a} against {b}");
            }
            assert_eq!(a, IdKey::from(a).uuid());
        }
    }

    #[test]
    fn leading_bits_are_the_first_bytes() {
        let id = Uuid::from_bytes([0xab, 0xcd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01]);
        assert_eq!(0xab, IdKey::from(id).leading_bits(8));
        assert_eq!(0xabc, IdKey::from(id).leading_bits(12));
        assert_eq!(0, IdKey::from(Uuid::nil()).leading_bits(10));
        assert_eq!(1023, IdKey::from(Uuid::max()).leading_bits(10));
    }
}
