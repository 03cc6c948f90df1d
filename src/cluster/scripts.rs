//! The Lua scripts that make each change to Redis atomic, one file each (`scripts/*.lua`).

/// Prepended to every script that appends to the log: the id for the next entry. Normally
/// `*` (Redis picks the time, after the last entry). When the log is gone (Redis lost its data)
/// a new one starts one millisecond in the future: every entry of the lost log is older than
/// now, and an entry with an id at or below an instance's position would never be read by it.
///
/// Also prepended: posts sent together in one round trip are chained. A post after another
/// carries that one's dedupe key as one key more than its script takes; if that post was not
/// stored, neither is this one (error `WSCHATAFTER`), so the posts that failed are always the
/// tail of the round trip, and retrying them keeps the order.
pub(super) const LOG_ID: &str = include_str!("scripts/log-id.lua");

/// Increments the room's counter and appends the message to the room's stream and to the log,
/// all at once; returns the id. A retried post (same dedupe key) returns the id it already got.
/// ARGV[12] is the room's latest id as the posting instance knows it: if Redis restarted
/// without its data, the counter resumes from there, so ids never go backwards.
pub(super) const POST: &str = include_str!("scripts/post.lua");

/// Appends a private message to the log, once (KEYS[2] remembers a post already made), with
/// the instance that holds the target's name (KEYS[3]) now: only that one delivers it.
pub(super) const PRIVATE: &str = include_str!("scripts/private.lua");

/// Records the posting instance's count of a room's members, then appends a notice carrying
/// the count of every live instance (dead ones are dropped from the room's count), once.
/// An instance is live while its heartbeat key exists; the posting one always is.
pub(super) const NOTICE: &str = include_str!("scripts/notice.lua");

/// Announces that the members ARGV[5..] of a room left, if their instance ARGV[3] died (its
/// heartbeat expired) and they are still listed as its members: removes them from the room's
/// presence and the instance from its counts, and appends one leave notice each (carrying the
/// live instances' counts), all at once, so that of the live instances that notice the death,
/// only the first announces it.
pub(super) const REAP: &str = include_str!("scripts/reap.lua");

/// Takes a name for this instance, or extends its lease if this instance holds it already.
/// The value is `{instance} {ms}`: the instance, and when it gave the name to its member.
///
/// A new claim (ARGV[4] `0`) never takes a name another instance holds. A renewal (ARGV[4]
/// `1`) of a name this instance gave while it could not reach Redis may find another instance
/// holding it, given meanwhile: the member who had it first keeps it (ties: the holder), so the
/// two instances agree whichever renews first, and the other one tells its member.
pub(super) const CLAIM: &str = include_str!("scripts/claim.lua");

/// Deletes a name if this instance holds it.
pub(super) const RELEASE: &str = include_str!("scripts/release.lua");

/// Deletes a member's presence entry if this instance wrote it (after two instances gave one
/// name to two members, the other one's entry stays).
pub(super) const FORGET: &str = include_str!("scripts/forget.lua");
