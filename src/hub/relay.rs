//! Cross-instance relay: how the hub shares what happens in its rooms through a shared,
//! ordered log when several `wschat serve` instances act as one chat (`--redis`).
//!
//! Without a relay (the default) the hub assigns ids and fans out itself. With one, the hub
//! hands each room message, each private message to a member of another instance, and each
//! join, leave and rename notice to the relay; every instance (this one included) gets them
//! back through [`crate::hub::Hub::deliver`], in the log's order. Handing over only queues: it
//! never blocks, so it is done under the hub's lock.

use crate::hub::MemberId;
use crate::protocol::{ChatEvent, Notice};

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

/// A join, leave or rename in a room, for every instance's members of that room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announcement {
    pub room: String,
    /// [`Notice::Join`], [`Notice::Leave`] or [`Notice::Rename`].
    pub notice: Notice,
    /// The member it is about (the new name, for a rename).
    pub name: String,
    /// The line shown, e.g. `alice joined the chat`.
    pub message: String,
    pub timestamp: String,
    /// Visible members of the room on the announcing instance after the change: the log keeps
    /// each instance's latest figure, and every notice carries the others' total.
    pub local: usize,
    /// Who it is about on the announcing instance: a join notice skips the member who joined.
    pub origin: Origin,
}

/// A notice as the log delivers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoticeEntry {
    pub announcement: Announcement,
    /// Visible members of the room on the other live instances, at this point of the log.
    pub others: usize,
    /// Announced by this instance: the member it is about, and whether the local members got it
    /// already (the log was away).
    pub mine: Option<Origin>,
}

/// What the log hands back to the hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// A room message with its id; `Origin` when it was posted on this instance.
    Chat(ChatEvent, Option<Origin>),
    /// A private message (`to` is set); `Origin` when it was posted on this instance; and
    /// whether its target may be here (false when the log says another instance held the name
    /// when the message was sent: only that one delivers it, even if two instances gave the
    /// name to a member each while they could not see each other).
    Private(ChatEvent, Option<Origin>, bool),
    Notice(NoticeEntry),
    /// A fresh count of a room's visible members on the other live instances (taken every
    /// heartbeat, and before a member joins here): an instance that died without a word stops
    /// counting this way.
    Census {
        room: String,
        others: usize,
    },
    /// A post of this instance that the log refused for good: its sender is told.
    Refused(Origin),
    /// A room message posted on this instance while the log is unreachable: this instance's
    /// members of the room get it now, without an id, in the order the posts were made (the
    /// log's copy, with its id, is later only acknowledged here).
    Local(ChatEvent, Origin),
    /// A name ([`crate::protocol::name_key`]) this instance gave to a member while the log was
    /// unreachable, and another instance to a member who had it first: the one here is told
    /// and closed.
    NameLost {
        key: String,
    },
}

/// What the hub should do after handing something over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handover {
    /// The log will deliver it, to local members too.
    Queued,
    /// The log is unreachable: deliver it to local members now (a message without an id). It
    /// is still queued and reaches the other instances once the log is back.
    QueuedDeliverLocally,
    /// Not accepted (the queue is full): the sender gets no acknowledgement.
    Refused,
}

pub trait Relay: Send + Sync + 'static {
    /// Queues a room message (its `id` is 0: the log assigns it) or a private message (`to`
    /// set, for a member of another instance). Never blocks.
    fn publish(&self, message: ChatEvent, origin: Origin) -> Handover;

    /// Queues a join, leave or rename notice. Never blocks.
    fn announce(&self, announcement: Announcement) -> Handover;

    /// Visible members of `room` on the other instances, as last counted. Answered from
    /// memory (it is asked under the hub's lock); counted in a newcomer's welcome.
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
    use crate::hub::{Hub, HubConfig, JoinRequest, Link, Post};
    use crate::outbox;
    use crate::protocol::{Event, Notice};
    use crate::store::{Keep, MemoryStore, Store};

    /// A relay that records what it is given; "down" asks the hub to deliver locally.
    #[derive(Default)]
    struct Recorder {
        posts: Mutex<Vec<(ChatEvent, Origin)>>,
        notices: Mutex<Vec<Announcement>>,
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

        fn announce(&self, mut announcement: Announcement) -> Handover {
            let down = self.down.load(Ordering::Relaxed);
            announcement.origin.delivered_locally = down;
            self.notices.lock().unwrap().push(announcement);
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
        let (id, _) = hub.join(request, Link { frames: tx, evict }).unwrap();
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
        let store = Arc::new(MemoryStore::new(Keep::messages(100)));
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
        hub.deliver(Delivery::Chat(message.clone(), Some(origin)));
        assert_eq!(chat_ids(&events(&mut bob_rx)), [1]);
        let to_alice = events(&mut alice_rx);
        assert!(
            matches!(&to_alice[..], [Event::Ack(a)] if a.reference == 7 && a.id == 1 && a.delivered == 1),
            "{to_alice:?}"
        );
        assert_eq!(store.last_id("lobby"), 1);
        // Delivered twice (loaded with the room, then from the log): once only.
        hub.deliver(Delivery::Chat(message.clone(), None));
        assert!(events(&mut bob_rx).is_empty());

        // From another instance: everyone here gets it.
        message.id = 2;
        hub.deliver(Delivery::Chat(message.clone(), None));
        assert_eq!(chat_ids(&events(&mut bob_rx)), [2]);
        assert_eq!(chat_ids(&events(&mut alice_rx)), [2]);

        // The log is away: local members get it at once without an id, and not again later.
        relay.down.store(true, Ordering::Relaxed);
        hub.chat(alice, post("while away", 8)).unwrap();
        assert_eq!(chat_ids(&events(&mut bob_rx)), [0]);
        let (mut message, origin) = relay.posts.lock().unwrap().remove(0);
        assert!(origin.delivered_locally);
        message.id = 3;
        hub.deliver(Delivery::Chat(message, Some(origin)));
        assert!(events(&mut bob_rx).is_empty());
        let to_alice = events(&mut alice_rx);
        assert!(
            matches!(&to_alice[..], [Event::Ack(a)] if a.reference == 8 && a.id == 3),
            "{to_alice:?}"
        );
        assert_eq!(store.last_id("lobby"), 3);
    }

    fn all_events(rx: &mut outbox::Receiver) -> Vec<Event> {
        let mut out = Vec::new();
        while let Ok(Message::Text(t)) = rx.try_recv() {
            out.push(serde_json::from_str(&t).unwrap());
        }
        out
    }

    fn notices(events: &[Event]) -> Vec<(String, Option<usize>)> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::System(s) => Some((s.message.clone(), s.count)),
                Event::Presence(p) => Some(("presence".to_owned(), Some(p.count))),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn with_a_relay_notices_and_private_messages_go_through_the_log() {
        let relay = Arc::new(Recorder::default());
        let store = Arc::new(MemoryStore::new(Keep::messages(100)));
        let hub = Hub::new(HubConfig::default(), store, Arc::default()).with_relay(relay.clone());
        let (alice, mut alice_rx) = join(&hub, "alice");
        let (_bob, mut bob_rx) = join(&hub, "bob");
        assert!(
            notices(&all_events(&mut alice_rx)).is_empty(),
            "only from the log"
        );
        let announced = relay.notices.lock().unwrap().clone();
        assert_eq!(
            announced
                .iter()
                .map(|a| (a.notice, a.name.as_str(), a.local))
                .collect::<Vec<_>>(),
            [(Notice::Join, "alice", 1), (Notice::Join, "bob", 2)]
        );

        // Bob's own join back from the log, with 3 members on other instances.
        let bobs = announced[1].clone();
        hub.deliver(Delivery::Notice(NoticeEntry {
            mine: Some(bobs.origin),
            announcement: bobs,
            others: 3,
        }));
        let expected = vec![
            ("bob joined the chat".to_owned(), Some(5)),
            ("presence".to_owned(), Some(5)),
        ];
        assert_eq!(notices(&all_events(&mut alice_rx)), expected);
        assert!(
            all_events(&mut bob_rx).is_empty(),
            "a joiner is not told of itself"
        );

        // Carol joins elsewhere; her id there may equal alice's here, and skips nobody.
        let mut carols = announced[0].clone();
        carols.name = "carol".into();
        carols.message = "carol joined the chat".into();
        hub.deliver(Delivery::Notice(NoticeEntry {
            announcement: carols,
            others: 4,
            mine: None,
        }));
        for rx in [&mut alice_rx, &mut bob_rx] {
            assert_eq!(
                notices(&all_events(rx))[0],
                ("carol joined the chat".into(), Some(6))
            );
        }

        // A recount finds an instance gone: the room hears the new total once.
        hub.deliver(Delivery::Census {
            room: "lobby".into(),
            others: 1,
        });
        hub.deliver(Delivery::Census {
            room: "lobby".into(),
            others: 1,
        });
        for rx in [&mut alice_rx, &mut bob_rx] {
            assert_eq!(notices(&all_events(rx)), [("presence".into(), Some(3))]);
        }

        // A private message for a member of another instance goes to the log; the sender has
        // its copy at once and its ack when the log has the message.
        let psst = Post {
            content: "psst".into(),
            to: Some("zed".into()),
            reference: Some(3),
            ..Post::default()
        };
        hub.chat(alice, psst).unwrap();
        let (message, origin) = relay.posts.lock().unwrap().remove(0);
        assert_eq!(
            (message.to.as_deref(), message.private),
            (Some("zed"), true)
        );
        let copy = all_events(&mut alice_rx);
        assert!(
            matches!(&copy[..], [Event::Chat(c)] if c.private),
            "{copy:?}"
        );
        hub.deliver(Delivery::Private(message.clone(), Some(origin), false));
        let ack = all_events(&mut alice_rx);
        assert!(
            matches!(&ack[..], [Event::Ack(a)] if a.reference == 3 && a.delivered == 1),
            "{ack:?}"
        );
        assert!(all_events(&mut bob_rx).is_empty());

        // From another instance, for bob: only bob gets it.
        let mut for_bob = message;
        for_bob.to = Some("bob".into());
        hub.deliver(Delivery::Private(for_bob.clone(), None, true));
        assert!(matches!(&all_events(&mut bob_rx)[..], [Event::Chat(c)] if c.message == "psst"));
        // Held by another instance when it was sent: that one delivers it, not this one.
        hub.deliver(Delivery::Private(for_bob, None, false));
        assert!(all_events(&mut bob_rx).is_empty());
        assert!(all_events(&mut alice_rx).is_empty());
    }
}
