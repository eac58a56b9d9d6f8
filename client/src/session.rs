//! Session guarantees (design §5): read-your-writes and monotonic reads,
//! across coordinators and even at `r = one`.
//!
//! A [`Session`] remembers, per key, the context of everything it wrote and
//! read. A read whose answer does not descend from that context is retried
//! at `r = all` (so every primary is asked and their states merged); if even
//! that is older, the read fails with [`Error::StaleSession`] rather than
//! go back in time. Memory is bounded: the session keeps the contexts of at
//! most `keys_max` keys and forgets the least recently used beyond that (a
//! forgotten key loses its guarantee, not its data).

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use shoal_cluster::message::Quorum;

use crate::{Client, Context, Error, ReadOptions, Value, WriteOptions};

/// Keys whose contexts a session remembers by default.
pub const SESSION_KEYS_MAX: usize = 10_000;

/// A causal session over a [`Client`]; see the module docs.
#[derive(Debug)]
pub struct Session<'a> {
    client: &'a Client,
    contexts: HashMap<Bytes, (Context, u64)>,
    recency: BTreeMap<u64, Bytes>,
    clock: u64,
    keys_max: usize,
}

impl<'a> Session<'a> {
    pub(crate) fn new(client: &'a Client) -> Session<'a> {
        Session {
            client,
            contexts: HashMap::new(),
            recency: BTreeMap::new(),
            clock: 0,
            keys_max: SESSION_KEYS_MAX,
        }
    }

    /// Bounds the number of keys remembered.
    pub fn with_keys_max(mut self, keys_max: usize) -> Session<'a> {
        self.keys_max = keys_max.max(1);
        self
    }

    /// Reads `key`, never returning a state older than this session has seen.
    pub async fn get(&mut self, key: &[u8], options: &ReadOptions) -> Result<Value, Error> {
        let seen = self.seen(key);
        let value = self.client.get(key, options).await?;
        if value.context.0.descends(&seen.0) {
            self.remember(key, &value.context);
            return Ok(value);
        }
        let everyone = ReadOptions {
            r: Some(Quorum::All),
            ..*options
        };
        let value = self.client.get(key, &everyone).await?;
        if value.context.0.descends(&seen.0) {
            self.remember(key, &value.context);
            Ok(value)
        } else {
            Err(Error::StaleSession)
        }
    }

    /// Writes `value` with `context`; the session remembers the result.
    pub async fn put(
        &mut self,
        key: &[u8],
        value: &[u8],
        context: &Context,
        options: &WriteOptions,
    ) -> Result<Context, Error> {
        let written = self.client.put(key, value, context, options).await?;
        self.remember(key, &written);
        Ok(written)
    }

    /// Deletes with `context`; the session remembers the result.
    pub async fn delete(
        &mut self,
        key: &[u8],
        context: &Context,
        options: &WriteOptions,
    ) -> Result<Context, Error> {
        let written = self.client.delete(key, context, options).await?;
        self.remember(key, &written);
        Ok(written)
    }

    /// The context this session holds for `key` (empty if none).
    pub fn seen(&self, key: &[u8]) -> Context {
        self.contexts
            .get(key)
            .map(|(context, _)| context.clone())
            .unwrap_or_default()
    }

    fn remember(&mut self, key: &[u8], context: &Context) {
        self.clock += 1;
        let key = Bytes::copy_from_slice(key);
        let mut merged = context.0.clone();
        if let Some((previous, stamp)) = self.contexts.remove(&key) {
            merged.join(&previous.0);
            self.recency.remove(&stamp);
        }
        self.recency.insert(self.clock, key.clone());
        self.contexts.insert(key, (Context(merged), self.clock));
        while self.contexts.len() > self.keys_max {
            let Some((_, oldest)) = self.recency.pop_first() else {
                break;
            };
            self.contexts.remove(&oldest);
        }
    }
}
