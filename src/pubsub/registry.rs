//! Topics and their subscribers, one registry per shard: knows connection ids, not sockets.
//! Subscribe, unsubscribe and a connection's departure are O(1) per topic involved (a slab
//! slot per subscription, remembered by the connection). It notes each topic that gains its
//! first or loses its last subscriber on the shard, for the broker. Must not do I/O.

use std::collections::HashMap;
use std::sync::Arc;

use slab::Slab;

use crate::common::ConnId;

use super::validate_topic;

/// A connection's subscriptions: (topic id, slot in that topic). Empty costs no heap.
#[derive(Debug, Default)]
pub struct Subscriptions(Vec<(u32, u32)>);

impl Subscriptions {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscribeError {
    TooManyTopics,
    BadName(&'static str),
}

impl std::fmt::Display for SubscribeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SubscribeError::TooManyTopics => f.write_str("too many topics on this connection"),
            SubscribeError::BadName(r) => f.write_str(r),
        }
    }
}

struct Topic {
    name: Arc<str>,
    subs: Slab<ConnId>,
}

/// One shard's topics.
#[derive(Default)]
pub struct Registry {
    by_name: HashMap<Arc<str>, u32>,
    topics: Slab<Topic>,
    /// Topics that gained their first subscriber (true) or lost their last (false), in order,
    /// since `take_changes`.
    changes: Vec<(Arc<str>, bool)>,
}

impl Clone for Registry {
    /// A registry belongs to one shard: a clone (for another shard) starts empty.
    fn clone(&self) -> Self {
        Registry::default()
    }
}

impl Registry {
    /// Subscribes `id` to `name`. `Ok(false)` if it already was.
    pub fn subscribe(
        &mut self,
        subs: &mut Subscriptions,
        name: &str,
        id: ConnId,
        max_per_conn: usize,
    ) -> Result<bool, SubscribeError> {
        validate_topic(name).map_err(SubscribeError::BadName)?;
        let existing = self.by_name.get(name).copied();
        if let Some(t) = existing {
            if subs.0.iter().any(|&(st, _)| st == t) {
                return Ok(false);
            }
        }
        if subs.0.len() >= max_per_conn {
            return Err(SubscribeError::TooManyTopics);
        }
        let topic_id = match existing {
            Some(t) => t,
            None => {
                let name: Arc<str> = Arc::from(name);
                let t = self.topics.insert(Topic {
                    name: name.clone(),
                    subs: Slab::new(),
                }) as u32;
                self.by_name.insert(name.clone(), t);
                self.changes.push((name, true));
                t
            }
        };
        let slot = self.topics[topic_id as usize].subs.insert(id) as u32;
        subs.0.push((topic_id, slot));
        Ok(true)
    }

    /// Unsubscribes from `name`; false if not subscribed.
    pub fn unsubscribe(&mut self, subs: &mut Subscriptions, name: &str) -> bool {
        let Some(&t) = self.by_name.get(name) else {
            return false;
        };
        let Some(i) = subs.0.iter().position(|&(st, _)| st == t) else {
            return false;
        };
        let (t, slot) = subs.0.swap_remove(i);
        self.topics[t as usize].subs.remove(slot as usize);
        self.drop_if_empty(t);
        if subs.0.is_empty() {
            subs.0 = Vec::new();
        }
        true
    }

    /// Removes every subscription of a departing connection.
    pub fn remove_all(&mut self, subs: &mut Subscriptions) {
        for (t, slot) in std::mem::take(&mut subs.0) {
            if let Some(topic) = self.topics.get_mut(t as usize) {
                topic.subs.try_remove(slot as usize);
                self.drop_if_empty(t);
            }
        }
    }

    fn drop_if_empty(&mut self, t: u32) {
        if self
            .topics
            .get(t as usize)
            .is_some_and(|x| x.subs.is_empty())
        {
            let topic = self.topics.remove(t as usize);
            self.by_name.remove(&topic.name);
            self.changes.push((topic.name, false));
        }
    }

    /// The topics that appeared on or left this shard since the last call, in order (a topic
    /// may appear and leave within one batch).
    pub fn take_changes(&mut self) -> Vec<(Arc<str>, bool)> {
        std::mem::take(&mut self.changes)
    }

    /// The subscribers of `name` on this shard.
    pub fn subscribers<'a>(&'a self, name: &str) -> impl Iterator<Item = ConnId> + 'a {
        self.by_name
            .get(name)
            .and_then(|&t| self.topics.get(t as usize))
            .into_iter()
            .flat_map(|t| t.subs.iter().map(|(_, id)| *id))
    }

    pub fn count(&self, name: &str) -> usize {
        self.by_name
            .get(name)
            .and_then(|&t| self.topics.get(t as usize))
            .map_or(0, |t| t.subs.len())
    }

    /// Topics with at least one subscriber on this shard.
    pub fn topics(&self) -> usize {
        self.topics.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(key: u32) -> ConnId {
        ConnId {
            shard: 0,
            key,
            gen: 1,
        }
    }

    #[test]
    fn subscribe_unsubscribe_and_leave() {
        let mut r = Registry::default();
        let (mut a, mut b) = (Subscriptions::default(), Subscriptions::default());
        assert_eq!(r.subscribe(&mut a, "news", id(1), 8), Ok(true));
        assert_eq!(r.subscribe(&mut a, "news", id(1), 8), Ok(false));
        assert_eq!(r.subscribe(&mut b, "news", id(2), 8), Ok(true));
        assert_eq!(r.subscribe(&mut b, "sport", id(2), 8), Ok(true));
        assert_eq!(r.count("news"), 2);
        let mut got: Vec<u32> = r.subscribers("news").map(|c| c.key).collect();
        got.sort();
        assert_eq!(got, vec![1, 2]);
        assert!(r.unsubscribe(&mut a, "news"));
        assert!(!r.unsubscribe(&mut a, "news"));
        assert_eq!(r.count("news"), 1);
        r.remove_all(&mut b);
        assert_eq!(r.count("news"), 0);
        assert_eq!(r.topics(), 0, "empty topics are dropped");
        assert!(b.is_empty());
        let changes: Vec<(String, bool)> = r
            .take_changes()
            .into_iter()
            .map(|(t, on)| (t.to_string(), on))
            .collect();
        assert_eq!(
            changes,
            vec![
                ("news".into(), true),
                ("sport".into(), true),
                ("news".into(), false),
                ("sport".into(), false)
            ]
        );
        assert!(r.take_changes().is_empty());
    }

    #[test]
    fn limits_and_names() {
        let mut r = Registry::default();
        let mut a = Subscriptions::default();
        assert_eq!(r.subscribe(&mut a, "a", id(1), 1), Ok(true));
        assert_eq!(
            r.subscribe(&mut a, "b", id(1), 1),
            Err(SubscribeError::TooManyTopics)
        );
        assert_eq!(r.topics(), 1, "the refused topic is not left behind");
        assert_eq!(
            r.take_changes().len(),
            1,
            "only `a` appeared: the refused `b` never did"
        );
        assert!(matches!(
            r.subscribe(&mut a, "bad topic", id(1), 9),
            Err(SubscribeError::BadName(_))
        ));
    }
}
