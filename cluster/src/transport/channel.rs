//! The client's side of the client protocol on one long-lived stream:
//! many requests in flight on one bidirectional stream, told apart by
//! request id (design §7: "many small requests should share streams and be
//! batched").
//!
//! A writer task drains the queue of requests and sends everything queued
//! in one write; a reader task decodes response frames as they come and
//! hands each to the caller waiting on its id. Responses may come back in
//! any order. Invariants: at most `in_flight_max` requests wait for an
//! answer (a caller waits for a permit first); when the stream or the
//! connection fails, every waiting caller gets an error — none waits forever;
//! a response is read with the frame limit, so a misbehaving node cannot make
//! the client allocate without bound.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use crate::protocol::{
    self, ClientRequest, ClientResponse, FRAME_CLIENT_REQUEST, FRAME_CLIENT_RESPONSE,
};
use crate::transport::call::CallError;
use crate::transport::{describe, frame};

type Waiter = (
    oneshot::Sender<Result<ClientResponse, CallError>>,
    OwnedSemaphorePermit,
);

struct Shared {
    waiting: Mutex<HashMap<u64, Waiter>>,
    /// Set once the stream failed: new calls fail at once.
    failure: Mutex<Option<String>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section is a single insert, remove or drain.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    fn fail_all(&self, reason: &str) {
        *lock(&self.failure) = Some(reason.to_string());
        let waiting: Vec<Waiter> = lock(&self.waiting).drain().map(|(_, w)| w).collect();
        for (waiter, _permit) in waiting {
            let _ = waiter.send(Err(CallError::Connection(reason.to_string())));
        }
    }
}

/// Requests multiplexed on one stream of a connection. Cheap to clone.
#[derive(Clone)]
pub struct Channel {
    queue: mpsc::Sender<Bytes>,
    shared: Arc<Shared>,
    permits: Arc<Semaphore>,
    next_id: Arc<AtomicU64>,
    frame_size_max_bytes: u32,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Channel")
            .field("in_flight", &lock(&self.shared.waiting).len())
            .finish()
    }
}

impl Channel {
    /// Opens a stream on `connection` and starts its reader and writer.
    pub async fn open(
        connection: &quinn::Connection,
        in_flight_max: usize,
        frame_size_max_bytes: u32,
    ) -> Result<Channel, CallError> {
        let (send, receive) = connection
            .open_bi()
            .await
            .map_err(|error| CallError::NotSent(error.to_string()))?;
        let shared = Arc::new(Shared {
            waiting: Mutex::new(HashMap::new()),
            failure: Mutex::new(None),
        });
        let (queue, requests) = mpsc::channel(in_flight_max.max(1));
        tokio::spawn(write_requests(send, requests, shared.clone()));
        tokio::spawn(read_responses(
            receive,
            shared.clone(),
            frame_size_max_bytes,
        ));
        Ok(Channel {
            queue,
            shared,
            permits: Arc::new(Semaphore::new(in_flight_max.max(1))),
            next_id: Arc::new(AtomicU64::new(1)),
            frame_size_max_bytes,
        })
    }

    /// Whether the stream has failed (open a new channel then).
    pub fn is_failed(&self) -> bool {
        lock(&self.shared.failure).is_some()
    }

    /// Sends `request` and waits for its response.
    pub async fn call(&self, request: &ClientRequest) -> Result<ClientResponse, CallError> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| CallError::NotSent("channel closed".into()))?;
        if let Some(reason) = lock(&self.shared.failure).clone() {
            return Err(CallError::NotSent(reason));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut out = BytesMut::new();
        protocol::encode_frame(
            FRAME_CLIENT_REQUEST,
            id,
            request,
            self.frame_size_max_bytes,
            &mut out,
        )
        .map_err(|error| CallError::Protocol(error.to_string()))?;
        let (waiter, answer) = oneshot::channel();
        lock(&self.shared.waiting).insert(id, (waiter, permit));
        if self.queue.send(out.freeze()).await.is_err() {
            lock(&self.shared.waiting).remove(&id);
            return Err(CallError::NotSent("the stream's writer stopped".into()));
        }
        answer
            .await
            .unwrap_or_else(|_| Err(CallError::Connection("the stream closed".into())))
    }
}

/// Bytes gathered into one stream write.
const WRITE_BATCH_MAX_BYTES: usize = 256 << 10;

async fn write_requests(
    mut send: quinn::SendStream,
    mut requests: mpsc::Receiver<Bytes>,
    shared: Arc<Shared>,
) {
    let mut batch = BytesMut::new();
    while let Some(first) = requests.recv().await {
        batch.extend_from_slice(&first);
        while batch.len() < WRITE_BATCH_MAX_BYTES {
            match requests.try_recv() {
                Ok(next) => batch.extend_from_slice(&next),
                Err(_) => break,
            }
        }
        if let Err(error) = send.write_all(&batch).await {
            shared.fail_all(&describe(&error));
            return;
        }
        batch.clear();
    }
    let _ = send.finish();
}

async fn read_responses(mut receive: quinn::RecvStream, shared: Arc<Shared>, maximum: u32) {
    let mut buffer = BytesMut::new();
    loop {
        loop {
            match frame::decode(&mut buffer, maximum) {
                Ok(Some(frame)) => {
                    let response =
                        protocol::decode_frame::<ClientResponse>(&frame, FRAME_CLIENT_RESPONSE)
                            .map_err(|error| CallError::Protocol(error.to_string()));
                    let waiter = lock(&shared.waiting).remove(&frame.request_id);
                    if let Some((waiter, _permit)) = waiter {
                        let _ = waiter.send(response);
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    shared.fail_all(&format!("bad response frame: {error}"));
                    return;
                }
            }
        }
        match receive.read_chunk(64 << 10, true).await {
            Ok(Some(chunk)) => buffer.extend_from_slice(&chunk.bytes),
            Ok(None) => {
                shared.fail_all("the node closed the stream");
                return;
            }
            Err(error) => {
                shared.fail_all(&describe(&error));
                return;
            }
        }
    }
}
