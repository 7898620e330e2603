//! [`Consistency`]: where a read is answered, and what it is sure to see.

/// Where a read is answered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Consistency {
    /// Through the leader's read index: sees every write acknowledged before it.
    #[default]
    Linearizable,
    /// From whichever replica answers, possibly behind; works without a leader.
    Stale,
}

impl Consistency {
    pub(crate) fn is_stale(self) -> bool {
        self == Consistency::Stale
    }
}
