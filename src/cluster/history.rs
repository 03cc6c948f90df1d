//! A room's history from Redis, loaded into this instance's window the first time the room is
//! used here, and what a resuming client needs beyond it.

use super::*;

impl Cluster {
    /// Makes `room`'s history ready in the store before a member joins it: loads the room the
    /// first time it is used here, and for a member resuming from `since`, what it missed that
    /// is older than the window (at most `limit` messages). Redis errors are logged; the member
    /// then gets what this instance has (and a gap event for the rest).
    pub async fn prepare_room(&self, room: &str, since: Option<u64>, limit: usize) {
        if let Err(e) = self.load_room(room, since, limit).await {
            self.set_up(false, Some(&e));
            tracing::warn!(room, "history not loaded from redis: {e:#}");
        }
    }

    pub(super) async fn load_room(
        &self,
        room: &str,
        since: Option<u64>,
        limit: usize,
    ) -> anyhow::Result<()> {
        let mut connection = self.commands.clone();
        if !self.store.is_loaded(room) {
            let window = self.config.keep.min(WINDOW_MAX);
            let (last, newest): (Option<u64>, StreamRangeReply) = bounded(
                redis::pipe()
                    .atomic()
                    .get(room_seq(room))
                    .xrevrange_count(room_stream(room), "+", "-", window)
                    .query_async(&mut connection),
            )
            .await?;
            let mut messages: Vec<ChatEvent> = newest
                .ids
                .iter()
                .filter_map(|e| room_entry(room, e))
                .collect();
            messages.reverse();
            self.store.load(room, last.unwrap_or(0), messages);
        }
        let Some(since) = since else {
            return Ok(());
        };
        let Some(oldest) = self.store.oldest(room).filter(|&o| o > since + 1) else {
            return Ok(());
        };
        let older: StreamRangeReply = bounded(connection.xrange_count(
            room_stream(room),
            since + 1,
            oldest - 1,
            limit.max(1),
        ))
        .await?;
        let messages = older
            .ids
            .iter()
            .filter_map(|e| room_entry(room, e))
            .collect();
        self.store.add_older(room, messages);
        Ok(())
    }
}
