//! Objects of one kind kept from a watch, that say what really changed with each event.
//!
//! Unlike a reflector store, a re-list (after a restart of the watch or `410 Gone`) is applied as
//! it arrives and ends by removing what was not listed again: objects deleted while the watch was
//! down are reported as deleted, so everything that hangs off them (triggers, metric series,
//! waits) can be dropped. An event that changes nothing gpupool keeps (a node heartbeat) is no
//! change at all.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use kube::runtime::watcher::Event;

/// A kept object's identity within its kind.
pub trait Keyed {
    fn key(&self) -> Cow<'_, str>;
}

/// What an event changed.
#[derive(Clone, Debug, PartialEq)]
pub enum Change<T> {
    /// Added (`old` is None) or changed.
    Applied {
        old: Option<Arc<T>>,
        new: Arc<T>,
    },
    Deleted(Arc<T>),
}

impl<T> Change<T> {
    /// The object before and after the change (None where it did not exist).
    pub fn states(&self) -> (Option<&T>, Option<&T>) {
        match self {
            Change::Applied { old, new } => (old.as_deref(), Some(new)),
            Change::Deleted(old) => (Some(old), None),
        }
    }
}

/// The same watch event over another object type.
pub fn map_event<A, B>(event: Event<A>, f: impl FnOnce(A) -> B) -> Event<B> {
    match event {
        Event::Apply(a) => Event::Apply(f(a)),
        Event::Delete(a) => Event::Delete(f(a)),
        Event::Init => Event::Init,
        Event::InitApply(a) => Event::InitApply(f(a)),
        Event::InitDone => Event::InitDone,
    }
}

#[derive(Debug)]
pub struct Tracked<T> {
    objects: HashMap<String, Arc<T>>,
    /// Keys listed since the current re-list began.
    relisted: Option<HashSet<String>>,
    synced: bool,
}

impl<T> Default for Tracked<T> {
    fn default() -> Self {
        Tracked {
            objects: HashMap::new(),
            relisted: None,
            synced: false,
        }
    }
}

impl<T: Keyed + PartialEq> Tracked<T> {
    /// Applies one watch event and returns what changed.
    pub fn apply(&mut self, event: Event<T>) -> Vec<Change<T>> {
        match event {
            Event::Apply(obj) => self.upsert(obj).into_iter().collect(),
            Event::Delete(obj) => {
                let old = self
                    .objects
                    .remove(obj.key().as_ref())
                    .unwrap_or_else(|| Arc::new(obj));
                vec![Change::Deleted(old)]
            }
            Event::Init => {
                self.relisted = Some(HashSet::new());
                Vec::new()
            }
            Event::InitApply(obj) => {
                if let Some(seen) = self.relisted.as_mut() {
                    seen.insert(obj.key().into_owned());
                }
                self.upsert(obj).into_iter().collect()
            }
            Event::InitDone => {
                self.synced = true;
                let seen = self.relisted.take().unwrap_or_default();
                let gone: Vec<String> = self
                    .objects
                    .keys()
                    .filter(|k| !seen.contains(*k))
                    .cloned()
                    .collect();
                gone.iter()
                    .filter_map(|k| self.objects.remove(k))
                    .map(Change::Deleted)
                    .collect()
            }
        }
    }

    fn upsert(&mut self, obj: T) -> Option<Change<T>> {
        match self.objects.get(obj.key().as_ref()) {
            Some(old) if **old == obj => None,
            _ => {
                let new = Arc::new(obj);
                let old = self.objects.insert(new.key().into_owned(), new.clone());
                Some(Change::Applied { old, new })
            }
        }
    }

    pub fn get(&self, key: &str) -> Option<&Arc<T>> {
        self.objects.get(key)
    }

    pub fn values(&self) -> impl Iterator<Item = &Arc<T>> {
        self.objects.values()
    }

    pub fn len(&self) -> usize {
        self.objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    /// Whether a re-list is being applied (objects not listed yet are not known to be gone).
    pub fn is_relisting(&self) -> bool {
        self.relisted.is_some()
    }

    /// Whether a complete list has been applied at least once.
    pub fn is_synced(&self) -> bool {
        self.synced
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq)]
    struct Obj(&'static str, u32);

    impl Keyed for Obj {
        fn key(&self) -> Cow<'_, str> {
            Cow::Borrowed(self.0)
        }
    }

    fn keys<T>(changes: &[Change<T>]) -> Vec<(bool, &T)> {
        changes
            .iter()
            .map(|c| match c {
                Change::Applied { new, .. } => (true, new.as_ref()),
                Change::Deleted(old) => (false, old.as_ref()),
            })
            .collect()
    }

    #[test]
    fn unchanged_objects_are_no_change() {
        let mut t = Tracked::default();
        assert_eq!(t.apply(Event::Apply(Obj("a", 1))).len(), 1);
        assert!(t.apply(Event::Apply(Obj("a", 1))).is_empty(), "a heartbeat");
        let changed = t.apply(Event::Apply(Obj("a", 2)));
        assert!(matches!(&changed[0], Change::Applied { old: Some(old), .. } if old.1 == 1));
    }

    #[test]
    fn a_relist_reports_what_vanished_meanwhile() {
        let mut t = Tracked::default();
        for obj in [Obj("a", 1), Obj("b", 1), Obj("c", 1)] {
            t.apply(Event::Apply(obj));
        }
        assert!(!t.is_synced());
        assert!(t.apply(Event::Init).is_empty());
        assert!(
            t.apply(Event::InitApply(Obj("a", 1))).is_empty(),
            "unchanged"
        );
        assert_eq!(
            keys(&t.apply(Event::InitApply(Obj("b", 2)))),
            vec![(true, &Obj("b", 2))]
        );
        // Mid-list, what is kept is the freshest knowledge (nothing is swapped in at the end).
        assert_eq!(t.get("b").map(|b| b.1), Some(2));
        assert_eq!(t.get("c").map(|c| c.1), Some(1));
        let done = t.apply(Event::InitDone);
        assert_eq!(
            keys(&done),
            vec![(false, &Obj("c", 1))],
            "c was deleted while the watch was down"
        );
        assert!(t.is_synced());
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn deletes_report_the_kept_state() {
        let mut t = Tracked::default();
        t.apply(Event::Apply(Obj("a", 1)));
        let gone = t.apply(Event::Delete(Obj("a", 9)));
        assert_eq!(keys(&gone), vec![(false, &Obj("a", 1))]);
        assert!(t.is_empty());
        let unknown = t.apply(Event::Delete(Obj("z", 1)));
        assert_eq!(keys(&unknown), vec![(false, &Obj("z", 1))]);
    }
}
