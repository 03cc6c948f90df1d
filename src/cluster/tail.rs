//! Tailing the log: every instance reads it from where it was and hands each entry to its hub.

use super::*;

impl Cluster {
    pub(super) async fn tail_loop(self: Arc<Self>, stop: CancellationToken) {
        let mut last: Option<String> = None;
        let mut backoff = BACKOFF_MIN;
        let mut connection = self.tail.clone();
        loop {
            let step = async {
                let Some(from) = last.clone() else {
                    // Start at the end of the log: what was said before is history, loaded
                    // per room when a member joins one.
                    let _: () =
                        bounded(connection.set_ex(instance_key(&self.id), "1", LEASE.as_secs()))
                            .await?;
                    let newest: StreamRangeReply =
                        bounded(connection.xrevrange_count(LOG_KEY, "+", "-", 1)).await?;
                    let end = newest
                        .ids
                        .first()
                        .map_or("0-0".to_owned(), |e| e.id.clone());
                    last = Some(end);
                    self.set_up(true, None);
                    self.ready.send_replace(true);
                    return anyhow::Ok(());
                };
                let options = StreamReadOptions::default()
                    .block(BLOCK.as_millis() as usize)
                    .count(READ_COUNT);
                let reply: Option<StreamReadReply> = connection
                    .xread_options(&[LOG_KEY], &[from.as_str()], &options)
                    .await?;
                for key in reply.map(|r| r.keys).unwrap_or_default() {
                    for entry in &key.ids {
                        // Held while the entry is delivered (see `Cluster::local`).
                        let mut local = lock(&self.local);
                        // Asked of this instance's own posts: was it delivered here already?
                        let here = |serial: Option<u64>| {
                            let Some(serial) = serial else { return false };
                            local.logged = local.logged.max(serial);
                            local.delivered.remove(&serial)
                        };
                        match log_entry(&self.id, entry, here) {
                            Some(delivery) => self.deliver(delivery),
                            None => {
                                tracing::warn!(entry = entry.id, "unreadable log entry skipped")
                            }
                        }
                        drop(local);
                        last = Some(entry.id.clone());
                    }
                }
                Ok(())
            };
            let result = tokio::select! {
                result = step => result,
                () = stop.cancelled() => return,
            };
            match result {
                Ok(()) => {
                    self.set_up(true, None);
                    backoff = BACKOFF_MIN;
                }
                Err(e) => {
                    self.set_up(false, Some(&e));
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = stop.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }
}
