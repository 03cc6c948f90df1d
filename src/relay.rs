//! Cross-instance relay: how the hub hands a room's chat messages to a shared, ordered log
//! when several `wschat serve` instances act as one chat (`--redis`).
//!
//! Without a relay (the default) the hub assigns ids and fans out itself. With one, the hub
//! only hands each room message to [`Relay::publish`]; the log assigns its id, and every
//! instance (this one included) gets it back through [`crate::hub::Hub::deliver`], in the
//! log's order. `publish` only queues: it never blocks, so it can be called under the hub lock.

use crate::hub::MemberId;
use crate::protocol::ChatEvent;

/// Who posted a message, as far as the posting instance is concerned: used to skip the sender
/// in the fan-out (unless `--echo`) and to send its acknowledgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    pub member: MemberId,
    /// The sender's `ref`, acknowledged once the message is in the log.
    pub reference: Option<u64>,
    /// The local members already got the message (without an id) because the log was
    /// unreachable when it was posted; the log's copy then only goes to other instances.
    pub delivered_locally: bool,
}

/// What the hub should do after handing over a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handover {
    /// The log will deliver it, to local members too.
    Queued,
    /// The log is unreachable: deliver it to local members now, without an id. It is still
    /// queued and reaches the other instances (with its id) once the log is back.
    QueuedDeliverLocally,
    /// Not accepted (the queue is full): the sender gets no acknowledgement.
    Refused,
}

pub trait Relay: Send + Sync + 'static {
    /// Queues a room message (its `id` is 0: the log assigns it). Never blocks.
    fn publish(&self, message: ChatEvent, origin: Origin) -> Handover;
}
