//! What comes back through the relay's log (messages, private messages, notices, counts,
//! refusals), handed to this instance's members.

use super::relay::{Delivery, NoticeEntry, Origin};
use super::room::presence;
use super::{Hub, State, COALESCE_ABOVE};
use crate::metrics::Metrics;
use crate::protocol::{close, AckEvent, ChatEvent, Event};

impl Hub {
    /// Hands what came back from the relay's log to this instance's members.
    pub fn deliver(&self, delivery: Delivery) {
        let mut guard = self.lock();
        let state = &mut *guard;
        match delivery {
            Delivery::Chat(event, origin) => self.deliver_chat(state, event, origin),
            Delivery::Private(event, origin, here) => {
                self.deliver_private(state, event, origin, here);
            }
            Delivery::Notice(entry) => self.deliver_notice(state, entry),
            Delivery::Census { room, others } => self.deliver_census(state, &room, others),
            Delivery::Refused(origin) => self.refused(state, origin),
            Delivery::Local(event, origin) => self.deliver_local(state, event, origin),
            Delivery::NameLost { key } => self.name_lost(state, &key),
        }
    }

    /// The member holding the name `key` lost it to a member of another instance who had it
    /// first (both were given it while the instances could not see each other): it is told
    /// with a `name_taken` error, leaves, and its connection is closed with 4009.
    fn name_lost(&self, state: &mut State, key: &str) {
        let Some(&id) = state.names.get(key) else {
            return;
        };
        let Some(member) = state
            .rooms_by_member
            .get(&id)
            .and_then(|room| state.rooms.get_mut(room))
            .and_then(|room| room.members.get_mut(&id))
        else {
            return;
        };
        let why = format!(
            "the name '{}' was given to someone else too while this server could not reach \
             the others, and they had it first; connect with another name",
            member.name
        );
        let _ = member
            .frames
            .try_send(Event::error("name_taken", why, None).to_frame());
        if let Some(evict) = member.evict.take() {
            let _ = evict.send(close::NAME_REJECTED);
        }
        if let Some((_, slow)) = self.take(state, id) {
            self.evict_all(state, slow);
        }
    }

    /// A room message of this instance while the log is away: to its room's members here now
    /// (skipping its sender unless `--echo`), without an id.
    fn deliver_local(&self, state: &mut State, event: ChatEvent, origin: Origin) {
        let Some(room) = state.rooms.get(event.room.as_str()) else {
            return;
        };
        let frame = Event::Chat(event).to_frame();
        let skip = (!self.config.echo).then_some(origin.member);
        let (_, slow) = self.counted(room.fan_out(&frame, skip, &mut state.through));
        self.evict_all(state, slow);
    }

    /// A room message with its id: fans it out to this instance's members of the room
    /// (skipping its sender unless `--echo`, and skipping everyone if they already got it),
    /// records it in the store, and acknowledges it to its sender when that sender is a member
    /// here. A message this instance already has (its id is not past the room's last) is only
    /// acknowledged. The ack's `delivered` adds the room's members on the other instances,
    /// which the same log entry reaches.
    fn deliver_chat(&self, state: &mut State, event: ChatEvent, origin: Option<Origin>) {
        let id = event.id;
        let sender = origin.and_then(|o| {
            let room = state.rooms_by_member.get(&o.member)?;
            let member = state.rooms.get(room)?.members.get(&o.member)?;
            Some((o, member.frames.clone()))
        });
        let mut delivered = 0;
        let mut fresh = true;
        if let Some(room) = state.rooms.get_mut(event.room.as_str()) {
            delivered = room.others;
            fresh = id > room.last_id;
            if fresh {
                room.last_id = id;
                if !origin.is_some_and(|o| o.delivered_locally) {
                    let frame = Event::Chat(event.clone()).to_frame();
                    let skip = origin.filter(|_| !self.config.echo).map(|o| o.member);
                    let (here, slow) = self.counted(room.fan_out(&frame, skip, &mut state.through));
                    delivered += here;
                    self.evict_all(state, slow);
                }
            }
        }
        let on_durable = sender.and_then(|(origin, frames)| {
            let reference = origin.reference?;
            Some(self.answer_when_stored(frames, reference, id, delivered))
        });
        if fresh {
            self.store.append(event, on_durable);
        } else if let Some(ack) = on_durable {
            ack(Ok(()));
        }
    }

    /// A post the log refused for good: its sender gets an error instead of an ack.
    fn refused(&self, state: &State, origin: Origin) {
        let (Some(reference), Some(sender)) = (origin.reference, state.member(origin.member))
        else {
            return;
        };
        let why = "not stored: the shared log refused it; try again";
        let error = Event::error("unavailable", why, Some(reference));
        let _ = sender.frames.try_send(error.to_frame());
    }

    /// A private message through the log: to its target if it is a member here, and the
    /// sender's acknowledgement if the sender is (the sender had its copy when it posted).
    fn deliver_private(
        &self,
        state: &mut State,
        event: ChatEvent,
        origin: Option<Origin>,
        here: bool,
    ) {
        let target = (event.to.as_deref())
            .filter(|_| here)
            .and_then(|to| state.member_named(to));
        let delivered = match target {
            Some(target) => {
                let frame = Event::Chat(event).to_frame();
                usize::from(target.frames.try_send(frame).is_ok())
            }
            // Someone else's: only the instance that has the target delivers it.
            None if origin.is_none() => return,
            // Posted here for a member of another instance, which delivers it.
            None => 1,
        };
        let Some(origin) = origin else { return };
        let Some(reference) = origin.reference else {
            return;
        };
        if let Some(sender) = state.member(origin.member) {
            let ack = Event::Ack(AckEvent {
                reference,
                id: 0,
                delivered,
            });
            if sender.frames.try_send(ack.to_frame()).is_ok() {
                Metrics::inc(&self.metrics.acks);
            }
        }
    }

    /// A join, leave or rename notice through the log: the count of the other instances is
    /// brought up to date, and this instance's members of the room hear it (unless they did
    /// already, while the log was away).
    fn deliver_notice(&self, state: &mut State, entry: NoticeEntry) {
        let Some(room) = state.rooms.get_mut(entry.announcement.room.as_str()) else {
            return;
        };
        room.others = entry.others;
        if entry.mine.is_some_and(|o| o.delivered_locally) {
            return;
        }
        let slow = room.announce_here(&entry.announcement, entry.mine.is_some());
        self.evict_all(state, slow);
    }

    /// A fresh count of the other instances' members: if it changed, the room hears the new
    /// total in a presence event.
    fn deliver_census(&self, state: &mut State, room_name: &str, others: usize) {
        let Some(room) = state.rooms.get_mut(room_name) else {
            return;
        };
        if room.others == others {
            return;
        }
        room.others = others;
        if room.members.is_empty() {
            return;
        }
        if room.count() > COALESCE_ABOVE {
            // A large room hears the new count in its next summary: while instances fill it,
            // the count changes with nearly every join, and a frame to every member each time
            // would cost N² frames.
            room.comings.recount = true;
            return;
        }
        let slow = room
            .fan_out(&presence(room_name, room.count()), None, &mut state.through)
            .slow;
        self.evict_all(state, slow);
    }
}
