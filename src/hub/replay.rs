//! The history a member gets on entering a room: recent messages, or what it missed since a
//! position (in this history, or another: a restart), within its outbox, with a gap for the
//! rest, never silence.

use tokio_tungstenite::tungstenite::Message;

use super::Hub;
use crate::outbox;
use crate::protocol::{ChatEvent, Event, GapEvent, SyncedEvent};

/// What history a member gets on entering a room.
#[derive(Debug, Clone)]
pub(super) struct Replay {
    pub(super) since: Option<u64>,
    /// The history `since` is a position in.
    pub(super) epoch: Option<String>,
    pub(super) history: Option<usize>,
}

/// The replay frames of the latest `messages` whose frames fit in `budget` bytes (at least
/// one), oldest first.
fn latest_within(messages: &[ChatEvent], budget: usize) -> Vec<Message> {
    let mut frames = Vec::new();
    let mut bytes = 0;
    for message in messages.iter().rev() {
        let frame = message.replay_frame();
        bytes += frame.len();
        if bytes > budget && !frames.is_empty() {
            break;
        }
        frames.push(frame);
    }
    frames.reverse();
    frames
}

impl Hub {
    /// Queues history for a member that just entered a room. What does not fit in the
    /// outbox is announced as a gap, never dropped silently.
    pub(super) fn replay(
        &self,
        frames: &outbox::Sender,
        room: &str,
        last_id: u64,
        replay: Replay,
    ) -> bool {
        // Leave room in the outbox for the live messages that follow: a few frames, and half
        // its bytes.
        let fits = frames.capacity().saturating_sub(8).max(1);
        let budget = frames.max_bytes() / 2;
        let epoch = self.store.epoch(room);
        // A position in another history (the server restarted without its own, or the
        // client's is from elsewhere): this one is sent from its start, and the client told.
        let restarted = replay.since.is_some_and(|since| {
            since > last_id || replay.epoch.as_deref().is_some_and(|e| e != epoch)
        });
        let since = if restarted { Some(0) } else { replay.since };
        let mut messages = match (since, replay.history) {
            (Some(since), _) => {
                // More than fits: the latest, skipping older ones.
                if last_id - since > fits as u64 {
                    self.store.recent(room, fits)
                } else {
                    let mut messages = self.store.since(room, since, fits).messages;
                    messages.retain(|m| m.id > since);
                    messages
                }
            }
            (None, Some(n)) if n > 0 => self.store.recent(room, n.min(fits)),
            (None, Some(_)) => Vec::new(),
            (None, None) => return true,
        };
        // A store may have loaded messages the log's tail has not delivered here yet: those
        // arrive live, not twice.
        messages.retain(|m| m.id <= last_id);
        let replayed = latest_within(&messages, budget);
        drop(messages);
        // Every id after `since` is either replayed or missing (skipped for want of room,
        // lost to a failed write, or no longer kept), wherever the holes are.
        let missed = since.map_or(0, |since| {
            (last_id - since).saturating_sub(replayed.len() as u64)
        });
        let gap = if restarted {
            let message = if missed == 0 {
                "the server's history restarted; it follows from its start".to_owned()
            } else {
                format!(
                    "the server's history restarted; its {missed} oldest message(s) are no longer kept"
                )
            };
            Some((missed, message))
        } else {
            (missed > 0).then(|| {
                let message = format!("missed {missed} message(s) that are no longer kept");
                (missed, message)
            })
        };
        // Every frame must go in: a replay with a hole would be a silent loss.
        let mut complete = true;
        let mut push = |frame: Message| complete &= frames.try_send(frame).is_ok();
        if let Some((missed, message)) = gap {
            push(
                Event::Gap(GapEvent {
                    room: room.to_owned(),
                    missed,
                    message,
                    restarted,
                })
                .to_frame(),
            );
        }
        for frame in replayed {
            push(frame);
        }
        push(
            Event::Synced(SyncedEvent {
                room: room.to_owned(),
                id: last_id,
                epoch: epoch.to_owned(),
            })
            .to_frame(),
        );
        complete
    }
}
