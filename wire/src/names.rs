//! Names a connection decodes call after call — the peer's own name, the few functions it
//! calls by name — kept once and shared by the calls that carry them, instead of each
//! call allocating (and dropping) copies of the same few strings.
//!
//! Invariants: the cache holds at most 8 names (`NAMES`), each at most 64 bytes
//! (`MAX_NAME`; a longer name is returned fresh and not kept), so a peer sending distinct
//! names only replaces entries and never grows it. A name returned is always equal to the one asked
//! for.

use std::sync::Arc;

/// Names kept.
const NAMES: usize = 8;

/// Longest name kept, in bytes.
const MAX_NAME: usize = 64;

/// The names decoded last, most recently added replacing the oldest.
#[derive(Default)]
pub struct NameCache {
    recent: [Option<Arc<str>>; NAMES],
    /// The slot the next name not found goes to.
    next: usize,
}

impl NameCache {
    /// `name` as a shared string: the kept one if it is there, else a new one (kept if it is
    /// short enough).
    pub fn get(&mut self, name: &str) -> Arc<str> {
        if let Some(kept) = self.recent.iter().flatten().find(|kept| ***kept == *name) {
            return kept.clone();
        }
        let fresh: Arc<str> = Arc::from(name);
        if name.len() <= MAX_NAME {
            self.recent[self.next] = Some(fresh.clone());
            self.next = (self.next + 1) % NAMES;
        }
        fresh
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_seen_again_is_shared() {
        let mut names = NameCache::default();
        let first = names.get("echo");
        let again = names.get("echo");
        assert!(Arc::ptr_eq(&first, &again));
        assert_eq!(&*names.get("other"), "other");
    }

    #[test]
    fn the_cache_stays_bounded_and_right() {
        let mut names = NameCache::default();
        for i in 0..100 {
            let name = format!("f{i}");
            assert_eq!(&*names.get(&name), name);
        }
        assert_eq!(names.recent.iter().flatten().count(), NAMES);
        // The oldest kept names were replaced; the newest are shared.
        let newest = names.get("f99");
        assert!(Arc::ptr_eq(&newest, &names.get("f99")));
        let long = "x".repeat(MAX_NAME + 1);
        let a = names.get(&long);
        assert_eq!(*a, *long);
        assert!(
            !Arc::ptr_eq(&a, &names.get(&long)),
            "a long name is not kept"
        );
    }
}
