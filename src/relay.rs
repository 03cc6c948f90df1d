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

    /// Visible members of `room` on the other instances, as last counted. Answered from
    /// memory (it is asked under the hub's lock); counted in notices and `rooms`.
    fn others(&self, _room: &str) -> usize {
        0
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    use tokio::sync::oneshot;
    use tokio_tungstenite::tungstenite::Message;

    use super::*;
    use crate::hub::{Hub, HubConfig, JoinRequest, Outbox, Post};
    use crate::outbox;
    use crate::protocol::Event;
    use crate::store::{MemoryStore, Store};

    /// A relay that records what it is given; "down" asks the hub to deliver locally.
    #[derive(Default)]
    struct Recorder {
        posts: Mutex<Vec<(ChatEvent, Origin)>>,
        down: AtomicBool,
    }

    impl Relay for Recorder {
        fn publish(&self, message: ChatEvent, mut origin: Origin) -> Handover {
            let down = self.down.load(Ordering::Relaxed);
            origin.delivered_locally = down;
            self.posts.lock().unwrap().push((message, origin));
            if down {
                Handover::QueuedDeliverLocally
            } else {
                Handover::Queued
            }
        }
    }

    fn join(hub: &Hub, name: &str) -> (MemberId, outbox::Receiver) {
        let (tx, mut rx) = outbox::channel(64);
        let (evict, _) = oneshot::channel();
        let request = JoinRequest {
            room: "lobby".into(),
            name: Some(name.into()),
            ..JoinRequest::default()
        };
        let (id, _) = hub.join(request, Outbox { frames: tx, evict }).unwrap();
        while rx.try_recv().is_ok() {}
        (id, rx)
    }

    fn events(rx: &mut outbox::Receiver) -> Vec<Event> {
        let mut out = Vec::new();
        while let Ok(Message::Text(t)) = rx.try_recv() {
            let event: Event = serde_json::from_str(&t).unwrap();
            if !matches!(event, Event::System(_) | Event::Presence(_)) {
                out.push(event);
            }
        }
        out
    }

    fn chat_ids(events: &[Event]) -> Vec<u64> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Chat(c) => Some(c.id),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn with_a_relay_messages_go_out_only_when_the_log_delivers_them() {
        let relay = Arc::new(Recorder::default());
        let store = Arc::new(MemoryStore::new(100));
        let hub =
            Hub::new(HubConfig::default(), store.clone(), Arc::default()).with_relay(relay.clone());
        let (alice, mut alice_rx) = join(&hub, "alice");
        let (_bob, mut bob_rx) = join(&hub, "bob");
        let post = |text: &str, reference| Post {
            content: text.into(),
            reference: Some(reference),
            ..Post::default()
        };
        hub.chat(alice, post("hi", 7)).unwrap();
        assert!(
            events(&mut bob_rx).is_empty(),
            "nothing before the log has it"
        );
        let (mut message, origin) = relay.posts.lock().unwrap().remove(0);
        assert_eq!(
            (message.id, origin.member, origin.reference),
            (0, alice, Some(7))
        );

        message.id = 1;
        hub.deliver(message.clone(), Some(origin));
        assert_eq!(chat_ids(&events(&mut bob_rx)), [1]);
        let to_alice = events(&mut alice_rx);
        assert!(
            matches!(&to_alice[..], [Event::Ack(a)] if a.reference == 7 && a.id == 1 && a.delivered == 1),
            "{to_alice:?}"
        );
        assert_eq!(store.last_id("lobby"), 1);
        // Delivered twice (loaded with the room, then from the log): once only.
        hub.deliver(message.clone(), None);
        assert!(events(&mut bob_rx).is_empty());

        // From another instance: everyone here gets it.
        message.id = 2;
        hub.deliver(message.clone(), None);
        assert_eq!(chat_ids(&events(&mut bob_rx)), [2]);
        assert_eq!(chat_ids(&events(&mut alice_rx)), [2]);

        // The log is away: local members get it at once without an id, and not again later.
        relay.down.store(true, Ordering::Relaxed);
        hub.chat(alice, post("while away", 8)).unwrap();
        assert_eq!(chat_ids(&events(&mut bob_rx)), [0]);
        let (mut message, origin) = relay.posts.lock().unwrap().remove(0);
        assert!(origin.delivered_locally);
        message.id = 3;
        hub.deliver(message, Some(origin));
        assert!(events(&mut bob_rx).is_empty());
        let to_alice = events(&mut alice_rx);
        assert!(
            matches!(&to_alice[..], [Event::Ack(a)] if a.reference == 8 && a.id == 3),
            "{to_alice:?}"
        );
        assert_eq!(store.last_id("lobby"), 3);
    }
}
