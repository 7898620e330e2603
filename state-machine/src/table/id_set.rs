//! [`IdSet`]: the ids placed on one provider, without a B-tree's slack.

use std::collections::BTreeSet;
use std::fmt;
use std::ops::{Bound, RangeBounds};

use uuid::Uuid;

/// Above this many ids a set is a B-tree: inserting into a sorted slice
/// moves half of it, 2 KiB on average here, against a B-tree's one node.
pub(crate) const ID_SET_SLICE_LEN_MAX: usize = 256;
/// A B-tree set shrunk below this many ids becomes a slice again (half of
/// [`ID_SET_SLICE_LEN_MAX`], so that a set near the bound does not switch
/// back and forth with every insert and remove).
const ID_SET_BACK_TO_SLICE_LEN: usize = ID_SET_SLICE_LEN_MAX / 2;

/// A set of ids, ordered, answering as a `BTreeSet<Uuid>` does; what the
/// table's by-provider index holds for each provider. Most providers hold
/// tens to a few hundred allocations, and a B-tree set filled by inserts
/// at random places leaves its nodes about a third empty: at a million
/// allocations on 10,000 providers the index took 29.1 MiB in a table
/// built by commands against 18.8 MiB in one decoded from a snapshot
/// (whose sets are built whole), and the replicas that took the load held
/// the difference (BENCHMARKS.md, "Session 15"). Up to
/// [`ID_SET_SLICE_LEN_MAX`] ids are a sorted boxed slice of exactly their
/// number, 16 bytes an id however they came; more are a B-tree.
///
/// Which of the two a set is depends on its history (a set shrinking from a
/// B-tree stays one down to [`ID_SET_BACK_TO_SLICE_LEN`]), so sets compare
/// by their ids, never by their form.
#[derive(Clone)]
pub(crate) struct IdSet(Form);

#[derive(Clone)]
enum Form {
    Slice(Box<[Uuid]>),
    Tree(BTreeSet<Uuid>),
}

impl Default for IdSet {
    fn default() -> IdSet {
        IdSet(Form::Slice(Box::default()))
    }
}

impl IdSet {
    pub(crate) fn len(&self) -> usize {
        match &self.0 {
            Form::Slice(ids) => ids.len(),
            Form::Tree(ids) => ids.len(),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// As `BTreeSet::insert`: whether `id` was not in the set.
    pub(crate) fn insert(&mut self, id: Uuid) -> bool {
        let ids = match &mut self.0 {
            Form::Tree(ids) => return ids.insert(id),
            Form::Slice(ids) => ids,
        };
        let Err(at) = ids.binary_search(&id) else {
            return false;
        };
        if ids.len() >= ID_SET_SLICE_LEN_MAX {
            let mut tree: BTreeSet<Uuid> = ids.iter().copied().collect();
            tree.insert(id);
            self.0 = Form::Tree(tree);
            return true;
        }
        // Grown by exactly one: the allocator often grows the block in
        // place, and the slice never holds spare room.
        let mut grown = std::mem::take(ids).into_vec();
        grown.reserve_exact(1);
        grown.insert(at, id);
        *ids = grown.into_boxed_slice();
        true
    }

    /// As `BTreeSet::remove`: whether `id` was in the set.
    pub(crate) fn remove(&mut self, id: &Uuid) -> bool {
        match &mut self.0 {
            Form::Tree(ids) => {
                let removed = ids.remove(id);
                if ids.len() < ID_SET_BACK_TO_SLICE_LEN {
                    self.0 = Form::Slice(ids.iter().copied().collect());
                }
                removed
            }
            Form::Slice(ids) => {
                let Ok(at) = ids.binary_search(id) else {
                    return false;
                };
                let mut shrunk = std::mem::take(ids).into_vec();
                shrunk.remove(at);
                *ids = shrunk.into_boxed_slice();
                true
            }
        }
    }

    /// The ids in order.
    pub(crate) fn iter(&self) -> impl DoubleEndedIterator<Item = &Uuid> + '_ {
        let (slice, tree) = match &self.0 {
            Form::Slice(ids) => (Some(ids.iter()), None),
            Form::Tree(ids) => (None, Some(ids.iter())),
        };
        slice.into_iter().flatten().chain(tree.into_iter().flatten())
    }

    /// The ids within `bounds`, in order.
    pub(crate) fn range<R: RangeBounds<Uuid>>(&self, bounds: R) -> impl DoubleEndedIterator<Item = &Uuid> + '_ {
        let (slice, tree) = match &self.0 {
            Form::Slice(ids) => {
                let start = match bounds.start_bound() {
                    Bound::Included(id) => ids.partition_point(|held| held < id),
                    Bound::Excluded(id) => ids.partition_point(|held| held <= id),
                    Bound::Unbounded => 0,
                };
                let end = match bounds.end_bound() {
                    Bound::Included(id) => ids.partition_point(|held| held <= id),
                    Bound::Excluded(id) => ids.partition_point(|held| held < id),
                    Bound::Unbounded => ids.len(),
                };
                (Some(ids[start..end.max(start)].iter()), None)
            }
            Form::Tree(ids) => (None, Some(ids.range(bounds))),
        };
        slice.into_iter().flatten().chain(tree.into_iter().flatten())
    }
}

impl<'a> IntoIterator for &'a IdSet {
    type Item = &'a Uuid;
    type IntoIter = Box<dyn DoubleEndedIterator<Item = &'a Uuid> + 'a>;

    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}

/// Sorts and dedupes, then takes the form the count calls for.
impl FromIterator<Uuid> for IdSet {
    fn from_iter<I: IntoIterator<Item = Uuid>>(ids: I) -> IdSet {
        let mut ids: Vec<Uuid> = ids.into_iter().collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.len() > ID_SET_SLICE_LEN_MAX {
            IdSet(Form::Tree(ids.into_iter().collect()))
        } else {
            IdSet(Form::Slice(ids.into_boxed_slice()))
        }
    }
}

impl PartialEq for IdSet {
    fn eq(&self, other: &IdSet) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for IdSet {}

/// As the `BTreeSet` it stands for.
impl fmt::Debug for IdSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u64) -> Uuid {
        Uuid::from_u128(u128::from(n).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835))
    }

    /// Every step of a set grown past the slice's bound and shrunk back,
    /// against a `BTreeSet` of the same ids.
    #[test]
    fn answers_as_a_btree_set_through_both_forms() {
        let mut set = IdSet::default();
        let mut model = BTreeSet::new();
        let check = |set: &IdSet, model: &BTreeSet<Uuid>| {
            assert_eq!(model.len(), set.len());
            assert_eq!(model.is_empty(), set.is_empty());
            assert!(model.iter().eq(set.iter()));
            assert!(model.iter().rev().eq(set.iter().rev()));
            let (low, high) = (id(7), id(300));
            let (low, high) = (low.min(high), low.max(high));
            assert!(model.range(low..high).eq(set.range(low..high)));
            assert!(model.range(low..=high).eq(set.range(low..=high)));
            assert!(model
                .range((Bound::Excluded(low), Bound::Unbounded))
                .eq(set.range((Bound::Excluded(low), Bound::Unbounded))));
            assert!(model.range(..high).eq(set.range(..high)));
            assert_eq!(
                *set,
                model.iter().copied().collect::<IdSet>(),
                "equal ids compare equal, whatever the form"
            );
        };
        let mut went_tree = false;
        for n in 0..(ID_SET_SLICE_LEN_MAX as u64 + 40) {
            assert_eq!(model.insert(id(n)), set.insert(id(n)));
            assert_eq!(model.insert(id(n / 2)), set.insert(id(n / 2)), "an id already held");
            went_tree |= matches!(set.0, Form::Tree(_));
            check(&set, &model);
        }
        assert!(went_tree, "past the bound, a B-tree");
        for n in (0..(ID_SET_SLICE_LEN_MAX as u64 + 40)).rev() {
            let gone = id((n * 7) % (ID_SET_SLICE_LEN_MAX as u64 + 40));
            assert_eq!(model.remove(&gone), set.remove(&gone));
            assert_eq!(model.remove(&id(100_000)), set.remove(&id(100_000)), "an id never held");
            check(&set, &model);
        }
        assert!(matches!(set.0, Form::Slice(_)), "shrunk, a slice again");
    }

    #[test]
    fn a_set_within_the_bound_holds_exactly_its_ids() {
        let set: IdSet = (0..100).map(id).chain((0..50).map(id)).collect();
        let Form::Slice(ids) = &set.0 else { panic!("100 ids are a slice") };
        assert_eq!(100, ids.len());
    }
}
