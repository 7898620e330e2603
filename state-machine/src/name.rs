//! [`Name`]: an identifier many records repeat, held once.

use std::borrow::Borrow;
use std::cell::RefCell;
use std::collections::HashSet;
use std::fmt;
use std::ops::Deref;

use arcstr::ArcStr;
use serde::de::{Error, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An immutable string shared by reference count: a provider id, a unit's
/// id and kind, a requester, a namespace. A million allocations repeat a
/// few thousand of these; as `String`s each record paid for its own copies
/// (about 140 bytes per allocation, BENCHMARKS.md, "Where a million
/// allocations' bytes go"). The table hands out the copy it already holds
/// (a grant takes its unit's, a placement its provider's, a record its
/// owner's from the owner index), so a clone is a count, not a copy.
///
/// Compares, orders, hashes, prints and encodes exactly as the `String` it
/// replaced (a string in serde), so the log and the snapshot are unchanged
/// and which copy is shared never shows.
///
/// One pointer wide (an [`ArcStr`] keeps the length beside the count, on
/// the heap): a million allocations hold about nine names each, with their
/// units and index keys, and `Arc<str>`'s second word was 8 of their bytes.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Name(ArcStr);

impl Name {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether both are the same copy (for the tests of the sharing).
    pub fn shares_with(&self, other: &Name) -> bool {
        ArcStr::ptr_eq(&self.0, &other.0)
    }
}

impl Default for Name {
    fn default() -> Name {
        Name::from("")
    }
}

impl Deref for Name {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Ordered and hashed as `str` is, so a map keyed by names is searched by `&str`.
impl Borrow<str> for Name {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Name {
    fn from(text: &str) -> Name {
        Name(ArcStr::from(text))
    }
}

impl From<String> for Name {
    fn from(text: String) -> Name {
        Name(ArcStr::from(text.as_str()))
    }
}

impl From<&String> for Name {
    fn from(text: &String) -> Name {
        Name::from(text.as_str())
    }
}

impl From<Name> for String {
    fn from(name: Name) -> String {
        name.0.as_str().to_owned()
    }
}

impl From<&Name> for String {
    fn from(name: &Name) -> String {
        name.0.as_str().to_owned()
    }
}

impl PartialEq<str> for Name {
    fn eq(&self, other: &str) -> bool {
        *self.0 == *other
    }
}

impl PartialEq<&str> for Name {
    fn eq(&self, other: &&str) -> bool {
        *self.0 == **other
    }
}

impl PartialEq<String> for Name {
    fn eq(&self, other: &String) -> bool {
        *self.0 == **other
    }
}

impl PartialEq<Name> for String {
    fn eq(&self, other: &Name) -> bool {
        **self == *other.0
    }
}

impl PartialEq<Name> for str {
    fn eq(&self, other: &Name) -> bool {
        *self == *other.0
    }
}

impl PartialEq<Name> for &str {
    fn eq(&self, other: &Name) -> bool {
        **self == *other.0
    }
}

/// As the string (quoted), as a `String` prints.
impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&*self.0, f)
    }
}

impl Serialize for Name {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

thread_local! {
    /// The names decoded so far by [`decode_sharing`] on this thread, while
    /// it runs; `None` otherwise.
    static DECODED_NAMES: RefCell<Option<HashSet<Name>>> = const { RefCell::new(None) };
}

/// Runs `decode` with every [`Name`] it decodes made the one copy of that
/// name decoded so far, as commands build a table: a unit's id and every
/// grant of it, a provider's id and every placement on it, a requester and
/// its records. A snapshot of a million allocations repeats a few thousand
/// names millions of times; decoding a copy of each and sharing them
/// afterwards (a pass over every record, looking up its owner, provider and
/// units) took half of a restart's decode (3.0 of 5.8 s, BENCHMARKS.md).
/// The set is bounded by the input's distinct names and dropped at the end.
pub(crate) fn decode_sharing<T>(decode: impl FnOnce() -> T) -> T {
    /// Puts back what was there before, also when `decode` unwinds.
    struct Restore(Option<HashSet<Name>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            DECODED_NAMES.with(|names| *names.borrow_mut() = self.0.take());
        }
    }
    let _restore = Restore(DECODED_NAMES.with(|names| names.borrow_mut().replace(HashSet::new())));
    decode()
}

impl Name {
    /// The copy decoded earlier in this [`decode_sharing`], or a new one
    /// (remembered there).
    fn decoded(text: &str) -> Name {
        DECODED_NAMES.with(|names| match names.borrow_mut().as_mut() {
            None => Name::from(text),
            Some(names) => match names.get(text) {
                Some(name) => name.clone(),
                None => {
                    let name = Name::from(text);
                    names.insert(name.clone());
                    name
                }
            },
        })
    }
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Name, D::Error> {
        /// Takes the string where the format lends it (a snapshot decoded
        /// from a slice), so a name seen before costs no allocation.
        struct NameVisitor;
        impl Visitor<'_> for NameVisitor {
            type Value = Name;

            fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
                formatter.write_str("a string")
            }

            fn visit_str<E: Error>(self, text: &str) -> Result<Name, E> {
                Ok(Name::decoded(text))
            }
        }
        deserializer.deserialize_str(NameVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_compares_and_prints_as_a_string() {
        let config = bincode::config::standard();
        for text in ["", "node_1", "qm-bench-0123456789abcdef", "ünïcödé"] {
            let name = Name::from(text);
            let owned = text.to_owned();
            let bytes = bincode::serde::encode_to_vec(&name, config).unwrap();
            assert_eq!(bincode::serde::encode_to_vec(&owned, config).unwrap(), bytes);
            let (decoded, _): (Name, usize) = bincode::serde::decode_from_slice(&bytes, config).unwrap();
            assert_eq!(name, decoded);
            assert_eq!(serde_json::to_string(&owned).unwrap(), serde_json::to_string(&name).unwrap());
            assert_eq!(format!("{owned:?} {owned}"), format!("{name:?} {name}"));
            // Each side of each comparison, as call sites write them.
            assert!(name == owned, "{name} == String");
            assert!(owned == name, "String == {name}");
            assert!(name == text, "{name} == &str");
            assert!(text == name, "&str == {name}");
            for other in ["", "node_1", "node_10", "z"] {
                assert_eq!(owned.cmp(&other.to_owned()), name.cmp(&Name::from(other)), "{text} against {other}");
            }
        }
        // One pointer, also when optional.
        assert_eq!(size_of::<Name>(), size_of::<usize>());
        assert_eq!(size_of::<Option<Name>>(), size_of::<usize>());
        let name = Name::from("gpu");
        assert!(name.shares_with(&name.clone()));
        assert!(!name.shares_with(&Name::from("gpu")));
    }

    #[test]
    fn names_decoded_while_sharing_are_one_copy_and_only_then() {
        let config = bincode::config::standard();
        let bytes = bincode::serde::encode_to_vec(["gpu", "node_1", "gpu"], config).unwrap();
        let decode = || bincode::serde::borrow_decode_from_slice::<[Name; 3], _>(&bytes, config).unwrap().0;
        let [first, _, second] = decode_sharing(decode);
        assert!(first.shares_with(&second));
        assert_eq!((first.as_str(), second.as_str()), ("gpu", "gpu"));
        // The scope ended: a later decode makes copies, also after a decode
        // that panicked inside the scope.
        let [first, _, second] = decode();
        assert!(!first.shares_with(&second));
        assert!(std::panic::catch_unwind(|| decode_sharing(|| panic!("a decode that fails"))).is_err());
        let [first, _, second] = decode();
        assert!(!first.shares_with(&second));
        // An owned decode (no borrowing) decodes the same names.
        let (owned, _): ([Name; 3], usize) = bincode::serde::decode_from_slice(&bytes, config).unwrap();
        assert_eq!(owned, decode());
    }
}
