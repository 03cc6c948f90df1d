//! Posting to the log: one task takes what the hub queued, in order, and posts it in pipelined,
//! chained round trips, retrying what failed; while Redis is down it delivers the held posts
//! to this instance's members, in order.

use super::*;

/// What goes to the log.
pub(super) enum Outgoing {
    Chat(ChatEvent, Origin),
    Private(ChatEvent, Origin),
    Notice(Announcement),
}

/// A post waiting for Redis.
pub(super) struct Pending {
    pub(super) post: Outgoing,
    /// Unique per post: makes a retried post idempotent.
    pub(super) serial: u64,
}

/// How a round trip of posts went wrong.
#[derive(Default)]
pub(super) struct PostFailure {
    /// Posts stored, from the first: the rest were not.
    pub(super) stored: usize,
    /// What went wrong; `None` if nothing did.
    pub(super) error: Option<anyhow::Error>,
    /// Redis answered, and refused the first post not stored (an error in its script, which
    /// trying again is unlikely to change), rather than being away or busy.
    pub(super) refused: bool,
    /// Redis answered (whatever it said).
    pub(super) reachable: bool,
}

impl PostFailure {
    pub(super) fn unreachable(error: Option<redis::RedisError>) -> PostFailure {
        let error = match error {
            Some(e) => anyhow::Error::from(e),
            None => anyhow::anyhow!("no answer within {COMMAND_TIMEOUT:?}"),
        };
        PostFailure {
            error: Some(error),
            ..PostFailure::default()
        }
    }

    /// Reads a pipeline's error: the replies that are errors say which posts were not stored.
    pub(super) fn from_redis(error: redis::RedisError) -> PostFailure {
        let first = error
            .clone()
            .into_server_errors()
            .and_then(|errors| errors.iter().min_by_key(|(i, _)| *i).cloned());
        let Some((stored, first)) = first else {
            return PostFailure::unreachable(Some(error)); // the connection, not a reply
        };
        PostFailure {
            stored,
            refused: is_refusal(&first),
            reachable: true,
            error: Some(error.into()),
        }
    }
}

/// Whether a script's error is the script's own (a key of the wrong type, bad data), as
/// opposed to Redis not taking writes right now. Before Redis 7 every error inside a script
/// comes as `ERR Error running script ...`, with the real one in its text.
pub(super) fn is_refusal(error: &redis::ServerError) -> bool {
    const TRANSIENT: [&str; 7] = [
        "OOM",
        "READONLY",
        "MISCONF",
        "NOREPLICAS",
        "BUSY",
        "LOADING",
        "NOPERM",
    ];
    match error.code() {
        "WRONGTYPE" => true,
        "ERR" => {
            let detail = error.details().unwrap_or_default();
            !TRANSIENT.iter().any(|code| detail.contains(code))
        }
        _ => false,
    }
}

impl Cluster {
    /// Posts what is queued, in order, whatever has queued up (at most [`MAX_PIPELINE`]) in
    /// one round trip, retrying what failed until it is stored (or refused for good).
    ///
    /// While Redis is down, every post waiting for it is delivered to this instance's members
    /// at once: first those held when it was declared down (the round trip in flight, then the
    /// rest), in the order they were made, then each new one as it comes. So a post never
    /// overtakes an earlier one of the same instance, however long Redis took to be declared
    /// down (a stalled Redis only is, after [`COMMAND_TIMEOUT`]). Each is still posted, in the
    /// same order, once Redis is back; the log's copy is then only acknowledged here.
    pub(super) async fn publish_loop(
        self: Arc<Self>,
        mut queue: mpsc::Receiver<Pending>,
        stop: CancellationToken,
    ) {
        let mut ready = self.ready.subscribe();
        let mut up = self.up_changed.subscribe();
        // The round trip being posted (or to retry), then the posts behind it; and how many of
        // each were delivered here already.
        let mut flight: Vec<Pending> = Vec::new();
        let mut queued: VecDeque<Pending> = VecDeque::new();
        let (mut flight_here, mut queued_here) = (0, 0);
        let mut retry: Option<tokio::time::Instant> = None;
        let mut backoff = BACKOFF_MIN;
        let mut refusals = 0;
        let mut open = true;
        loop {
            self.deliver_held_here(&flight, &mut flight_here, &queued, &mut queued_here);
            let due = retry.is_none_or(|at| at <= tokio::time::Instant::now());
            if flight.is_empty() && due && *ready.borrow() {
                while queued.len() < MAX_PIPELINE {
                    match queue.try_recv() {
                        Ok(pending) => queued.push_back(pending),
                        Err(_) => break,
                    }
                }
                let n = queued.len().min(MAX_PIPELINE);
                flight.extend(queued.drain(..n));
                flight_here = queued_here.min(n);
                queued_here -= flight_here;
            }
            if !flight.is_empty() && due {
                let result = {
                    let post = self.publish_batch(&flight);
                    tokio::pin!(post);
                    // New posts are taken meanwhile: delivered here at once if Redis is down.
                    loop {
                        tokio::select! {
                            result = &mut post => break result,
                            next = queue.recv(), if open => match next {
                                Some(pending) => queued.push_back(pending),
                                None => open = false,
                            },
                            Ok(()) = up.changed() => {}
                            () = stop.cancelled() => return,
                        }
                        self.deliver_held_here(
                            &flight,
                            &mut flight_here,
                            &queued,
                            &mut queued_here,
                        );
                    }
                };
                let failure = match result {
                    Ok(()) => PostFailure {
                        stored: flight.len(),
                        ..PostFailure::default()
                    },
                    Err(failure) => failure,
                };
                self.posts_left(failure.stored, &self.counters.published);
                flight.drain(..failure.stored);
                flight_here = flight_here.saturating_sub(failure.stored);
                if failure.stored > 0 {
                    (backoff, refusals) = (BACKOFF_MIN, 0);
                }
                let Some(error) = failure.error else {
                    self.set_up(true, None);
                    retry = None;
                    continue;
                };
                if failure.refused {
                    // Redis is there, and refuses this post.
                    refusals += 1;
                    if refusals >= MAX_REFUSALS {
                        tracing::error!(
                            "redis refuses a post {refusals} times: dropped: {error:#}"
                        );
                        self.posts_left(1, &self.counters.refused);
                        let dropped = flight.remove(0);
                        flight_here = flight_here.saturating_sub(1);
                        lock(&self.local).delivered.remove(&dropped.serial);
                        if let Outgoing::Chat(_, origin) | Outgoing::Private(_, origin) =
                            &dropped.post
                        {
                            self.deliver(Delivery::Refused(*origin));
                        }
                        (refusals, backoff, retry) = (0, BACKOFF_MIN, None);
                        continue;
                    }
                } else if !failure.reachable {
                    // Only a Redis that does not answer is down (local delivery goes on without
                    // it); one that answers but cannot write now (busy, full, loading, a replica)
                    // holds the posts back until it can.
                    self.set_up(false, Some(&error));
                }
                tracing::debug!("posts not stored yet: {error:#}");
                retry = Some(tokio::time::Instant::now() + backoff);
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
            if !open && flight.is_empty() && queued.is_empty() {
                return;
            }
            // Nothing to post now: wait for a post, the time to retry, the log's end being
            // known, or Redis being declared down.
            let wake = retry.unwrap_or_else(tokio::time::Instant::now);
            tokio::select! {
                next = queue.recv(), if open => match next {
                    Some(pending) => queued.push_back(pending),
                    None => open = false,
                },
                () = tokio::time::sleep_until(wake), if retry.is_some() => {}
                Ok(()) = ready.changed() => {}
                Ok(()) = up.changed() => {}
                () = stop.cancelled() => return,
            }
        }
    }

    /// While Redis is down: delivers to this instance's members the posts waiting for it that
    /// they do not have yet, in order (the round trip in flight first).
    pub(super) fn deliver_held_here(
        &self,
        flight: &[Pending],
        flight_here: &mut usize,
        queued: &VecDeque<Pending>,
        queued_here: &mut usize,
    ) {
        if self.is_up() {
            return;
        }
        for pending in flight
            .iter()
            .skip(*flight_here)
            .chain(queued.range(*queued_here..))
        {
            self.deliver_here(pending);
        }
        (*flight_here, *queued_here) = (flight.len(), queued.len());
    }

    /// Delivers one post of this instance to its own members, without waiting for the log (a
    /// room message without an id). A private message is for a member of another instance,
    /// which only the log reaches.
    pub(super) fn deliver_here(&self, pending: &Pending) {
        let delivery = match &pending.post {
            Outgoing::Chat(message, origin) => Delivery::Local(message.clone(), *origin),
            Outgoing::Notice(announcement) => Delivery::Notice(NoticeEntry {
                others: self.others(&announcement.room),
                mine: Some(announcement.origin),
                announcement: announcement.clone(),
            }),
            Outgoing::Private(..) => return,
        };
        let mut local = lock(&self.local);
        if pending.serial <= local.logged {
            return; // the log had it, and the tail delivered it
        }
        local.delivered.insert(pending.serial);
        // Still holding `local`: the tail cannot deliver a later post of this instance first.
        if let Some(deliver) = self.sink.get() {
            deliver(delivery);
        }
    }

    /// Counts `n` posts as gone from the queue, into `outcome`.
    pub(super) fn posts_left(&self, n: usize, outcome: &AtomicU64) {
        self.counters.queued.fetch_sub(n as u64, Ordering::Relaxed);
        outcome.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Posts `batch` in one pipeline, chained (see [`LOG_ID`]): on failure, the posts stored
    /// are a prefix of the batch. Retrying is safe: each post carries a dedupe key, so one
    /// stored before a failure (even one whose answer was lost) is not stored twice.
    pub(super) async fn publish_batch(&self, batch: &[Pending]) -> Result<(), PostFailure> {
        let keys: Vec<String> = batch.iter().map(|p| self.dedupe_key(p)).collect();
        let invocations: Vec<redis::ScriptInvocation<'_>> = batch
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let mut invocation = self.invocation(p, keys[i].clone());
                if let Some(before) = i.checked_sub(1) {
                    invocation.key(&keys[before]);
                }
                invocation
            })
            .collect();
        let mut pipe = redis::pipe();
        for invocation in &invocations {
            pipe.invoke_script(invocation).ignore();
        }
        let mut connection = self.commands.clone();
        let mut result = timed(pipe.query_async::<()>(&mut connection)).await;
        if matches!(&result, Err(Some(e)) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript))
        {
            // A pipeline does not load scripts by itself: after Redis restarted, load them
            // and try again at once.
            for script in [&self.post, &self.private, &self.notice] {
                if let Err(e) = timed(script.load_async::<_>(&mut connection)).await {
                    return Err(PostFailure::unreachable(e));
                }
            }
            result = timed(pipe.query_async::<()>(&mut connection)).await;
        }
        match result {
            Ok(()) => Ok(()),
            Err(Some(e)) => Err(PostFailure::from_redis(e)),
            Err(None) => Err(PostFailure::unreachable(None)),
        }
    }

    pub(super) fn dedupe_key(&self, pending: &Pending) -> String {
        format!("wschat:post:{}:{}", self.id, pending.serial)
    }

    /// The script call for one post; its last argument is the post's serial (the log entry
    /// carries it, so that this instance knows it again when it comes back).
    pub(super) fn invocation(
        &self,
        pending: &Pending,
        dedupe: String,
    ) -> redis::ScriptInvocation<'_> {
        let here = lock(&self.local).delivered.contains(&pending.serial);
        let mut invocation = match &pending.post {
            Outgoing::Chat(m, o) => {
                let o = Origin {
                    delivered_locally: here,
                    ..*o
                };
                self.post_chat(m, &o, dedupe)
            }
            Outgoing::Private(m, o) => self.post_private(m, o, dedupe),
            Outgoing::Notice(a) => {
                let mut a = a.clone();
                a.origin.delivered_locally = here;
                self.post_notice(&a, dedupe)
            }
        };
        invocation.arg(pending.serial);
        invocation
    }

    pub(super) fn post_chat(
        &self,
        m: &ChatEvent,
        o: &Origin,
        dedupe: String,
    ) -> redis::ScriptInvocation<'_> {
        use crate::store::Store;
        let mut invocation = self.post.prepare_invoke();
        invocation
            .key(room_seq(&m.room))
            .key(room_stream(&m.room))
            .key(LOG_KEY)
            .key(dedupe)
            .arg(&m.room)
            .arg(&m.username)
            .arg(&*m.message)
            .arg(&m.timestamp)
            .arg(flag(m.action))
            .arg(&self.id)
            .arg(o.member.raw())
            .arg(o.reference.map(|r| r.to_string()).unwrap_or_default())
            .arg(flag(o.delivered_locally))
            .arg(self.config.keep)
            .arg(self.config.log_max)
            .arg(self.store.last_id(&m.room));
        invocation
    }

    pub(super) fn post_private(
        &self,
        m: &ChatEvent,
        o: &Origin,
        dedupe: String,
    ) -> redis::ScriptInvocation<'_> {
        let mut invocation = self.private.prepare_invoke();
        let to = m.to.as_deref().unwrap_or_default();
        invocation
            .key(LOG_KEY)
            .key(dedupe)
            .key(name_key(&crate::protocol::name_key(to)))
            .arg(self.config.log_max)
            .arg(&m.room)
            .arg(&m.username)
            .arg(&*m.message)
            .arg(&m.timestamp)
            .arg(flag(m.action))
            .arg(m.to.as_deref().unwrap_or_default())
            .arg(&self.id)
            .arg(o.member.raw())
            .arg(o.reference.map(|r| r.to_string()).unwrap_or_default());
        invocation
    }

    pub(super) fn post_notice(
        &self,
        a: &Announcement,
        dedupe: String,
    ) -> redis::ScriptInvocation<'_> {
        let event = match a.notice {
            Notice::Join => "join",
            Notice::Leave => "leave",
            _ => "rename",
        };
        let mut invocation = self.notice.prepare_invoke();
        invocation
            .key(count_key(&a.room))
            .key(ROOMS_KEY)
            .key(LOG_KEY)
            .key(dedupe)
            .arg(self.config.log_max)
            .arg(&a.room)
            .arg(event)
            .arg(&a.name)
            .arg(&a.message)
            .arg(&a.timestamp)
            .arg(&self.id)
            .arg(a.origin.member.raw())
            .arg(a.local)
            .arg(flag(a.origin.delivered_locally));
        invocation
    }
}
