//! One room: its members, the fan-out of a frame to them, presence (a notice each, or a
//! summary per interval in a large room) and `who`, a page at a time.

use std::borrow::Borrow;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;

use super::relay::Announcement;
use super::MemberId;
use crate::outbox;
use crate::protocol::{self, Event, Notice, PresenceEvent, SystemEvent, WhoEvent};

/// Rooms counting more than this hear of joins and leaves in one summary per presence
/// interval ([`Hub::flush_presence`]) instead of a notice each: N people joining would
/// otherwise cost N²/2 frames.
pub const COALESCE_ABOVE: usize = 100;

/// Names a presence summary shows of those who came or went.
const NAMES_SHOWN: usize = 3;

#[derive(Default)]
pub(super) struct Room {
    pub(super) members: HashMap<MemberId, Member>,
    /// Names of the members that are not quiet, sorted (for `who`, a page at a time).
    pub(super) names: BTreeSet<Arc<str>>,
    /// Quiet members: counted and listed, never announced.
    pub(super) quiet: usize,
    /// Visible members on other instances (with a relay), as counted at the last join here.
    pub(super) others: usize,
    /// Id of the last chat message in this room.
    pub(super) last_id: u64,
    /// Joins and leaves not yet told, in a large room.
    pub(super) comings: Comings,
}

/// Who came and went in a large room since its last presence summary.
#[derive(Default)]
pub(super) struct Comings {
    joined: Vec<String>,
    joins: usize,
    left: Vec<String>,
    leaves: usize,
    /// The count changed without a join or leave told here (another instance's members were
    /// counted again).
    pub(super) recount: bool,
}

impl Comings {
    fn add(&mut self, notice: Notice, name: &str) {
        let (names, count) = match notice {
            Notice::Join => (&mut self.joined, &mut self.joins),
            Notice::Leave => (&mut self.left, &mut self.leaves),
            _ => return,
        };
        *count += 1;
        if names.len() < NAMES_SHOWN {
            names.push(name.to_owned());
        }
    }

    fn is_empty(&self) -> bool {
        self.joins == 0 && self.leaves == 0 && !self.recount
    }
}

/// The names after `after` (at most [`protocol::LIST_MAX`]), and the one to ask after for
/// the next page, if there is one.
pub fn names_page<T: Borrow<str> + Ord>(
    names: &BTreeSet<T>,
    after: Option<&str>,
) -> (Vec<String>, Option<String>) {
    use std::ops::Bound;
    let from = after.map_or(Bound::Unbounded, Bound::Excluded);
    let mut page: Vec<String> = names
        .range::<str, _>((from, Bound::Unbounded))
        .take(protocol::LIST_MAX + 1)
        .map(|name| name.borrow().to_owned())
        .collect();
    let next = (page.len() > protocol::LIST_MAX).then(|| {
        page.truncate(protocol::LIST_MAX);
        page.last().cloned().unwrap_or_default()
    });
    (page, next)
}

/// "alice, bob and 998 others joined": a few names and how many more.
fn in_brief(names: &[String], count: usize, verb: &str) -> Option<String> {
    let (last, first) = names.split_last()?;
    let more = count.saturating_sub(names.len());
    Some(match (first, more) {
        ([], 0) => format!("{last} {verb}"),
        (_, 0) => format!("{} and {last} {verb}", first.join(", ")),
        _ => format!(
            "{}, {last} and {more} other{} {verb}",
            first.join(", "),
            if more == 1 { "" } else { "s" }
        )
        .trim_start_matches(", ")
        .to_owned(),
    })
}

/// Whom a frame reached.
#[derive(Debug, Default)]
pub(super) struct Reach {
    /// Members who got it (written, or queued for their connection).
    pub(super) delivered: usize,
    /// Of those, how many had it written straight to their socket.
    pub(super) written: usize,
    /// Members whose outbox was full: they are not keeping up.
    pub(super) slow: Vec<MemberId>,
}

pub(super) struct Member {
    /// Shared with the room's sorted names.
    pub(super) name: Arc<str>,
    pub(super) quiet: bool,
    pub(super) frames: outbox::Sender,
    pub(super) evict: Option<oneshot::Sender<u16>>,
}

impl Room {
    /// Visible members here.
    pub(super) fn visible(&self) -> usize {
        self.names.len()
    }

    /// Everyone who reads the room: visible members on every instance, quiet ones here.
    pub(super) fn count(&self) -> usize {
        self.names.len() + self.quiet + self.others
    }

    /// Sends `frame` to every member but `skip`: written straight to the sockets of idle
    /// members when `through` says so, queued for their connections otherwise.
    pub(super) fn fan_out(
        &self,
        frame: &Message,
        skip: Option<MemberId>,
        through: &mut outbox::WriteThrough,
    ) -> Reach {
        let start = Instant::now();
        let straight = through.plan(self.members.len(), start);
        let reach = self.send_all(frame, skip, straight);
        if straight {
            through.measured(reach.written, start.elapsed());
        }
        reach
    }

    /// Sends `frame` to every member but `skip`, straight through to idle sockets or queued.
    fn send_all(&self, frame: &Message, skip: Option<MemberId>, straight: bool) -> Reach {
        let mut reach = Reach::default();
        for (&id, member) in &self.members {
            if Some(id) == skip {
                continue;
            }
            match member.frames.send(frame.clone(), straight) {
                Ok(sent) => {
                    reach.delivered += 1;
                    reach.written += usize::from(sent == outbox::Sent::Written);
                }
                Err(outbox::TrySendError::Full(_)) => reach.slow.push(id),
                // The connection is already ending; it removes itself.
                Err(outbox::TrySendError::Closed(_)) => {}
            }
        }
        reach
    }

    /// Tells this instance's members of the room that someone joined, left or was renamed,
    /// with the room's count (and a presence event for a join or leave). A join notice skips
    /// the member who joined, when it is a member here (`mine`). Returns the members found slow.
    pub(super) fn announce_here(&mut self, a: &Announcement, mine: bool) -> Vec<MemberId> {
        if a.notice != Notice::Rename && self.count() > COALESCE_ABOVE {
            self.comings.add(a.notice, &a.name);
            return Vec::new();
        }
        let count = self.count();
        let skip = (mine && a.notice == Notice::Join).then_some(a.origin.member);
        let notice = system(
            a.notice,
            &a.room,
            &a.name,
            a.message.clone(),
            a.timestamp.clone(),
            count,
        );
        // A small room (see COALESCE_ABOVE), and a rare event: written straight through.
        let mut slow = self.send_all(&notice, skip, true).slow;
        if a.notice != Notice::Rename {
            slow.extend(self.send_all(&presence(&a.room, count), skip, true).slow);
        }
        slow
    }

    /// The summary of who came and went since the last one, if anyone did.
    pub(super) fn summary(&mut self, room: &str) -> Option<Message> {
        if self.comings.is_empty() {
            return None;
        }
        let comings = std::mem::take(&mut self.comings);
        let count = self.count();
        let mut parts: Vec<String> = [
            in_brief(&comings.joined, comings.joins, "joined"),
            in_brief(&comings.left, comings.leaves, "left"),
        ]
        .into_iter()
        .flatten()
        .collect();
        parts.push(format!("{count} here"));
        Some(
            Event::Presence(PresenceEvent {
                room: room.to_owned(),
                count,
                message: Some(parts.join(" · ")),
                joined: comings.joined,
                joins: comings.joins,
                left: comings.left,
                leaves: comings.leaves,
            })
            .to_frame(),
        )
    }

    /// A page of `who`: visible names after `after`, and the quiet members.
    pub(super) fn who(&self, room: &str, after: Option<&str>) -> WhoEvent {
        let (members, next) = names_page(&self.names, after);
        let mut quiet: Vec<String> = self
            .members
            .values()
            .filter(|m| m.quiet)
            .take(protocol::LIST_MAX)
            .map(|m| m.name.to_string())
            .collect();
        quiet.sort();
        WhoEvent {
            room: room.to_owned(),
            members,
            total: self.count(),
            quiet: if after.is_none() { quiet } else { Vec::new() },
            next,
        }
    }
}

pub(super) fn system(
    event: Notice,
    room: &str,
    name: &str,
    message: String,
    timestamp: String,
    count: usize,
) -> Message {
    Event::System(SystemEvent {
        message,
        timestamp,
        event,
        room: room.to_owned(),
        name: Some(name.to_owned()),
        count: Some(count),
        epoch: None,
        limits: None,
    })
    .to_frame()
}

pub(super) fn presence(room: &str, count: usize) -> Message {
    Event::Presence(PresenceEvent {
        room: room.to_owned(),
        count,
        ..PresenceEvent::default()
    })
    .to_frame()
}
