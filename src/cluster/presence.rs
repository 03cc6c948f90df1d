//! Names and presence across instances: claims and leases, who is in which room, counts,
//! heartbeats, and the members of instances that died.

use super::*;

/// A name given to a member of this instance.
pub(super) struct HeldName {
    /// Members here holding it (two for a moment, while one renames itself to another form).
    pub(super) count: usize,
    /// When it was given (ms since 1970): after an outage, the earlier holder keeps it.
    pub(super) granted: u64,
}

/// What this instance holds in Redis and must keep alive: names and presence entries.
#[derive(Default)]
pub(super) struct Held {
    /// By the name's key ([`crate::protocol::name_key`]).
    pub(super) names: HashMap<String, HeldName>,
    pub(super) presence: HashMap<(String, String), usize>,
    /// Presence entries whose removal failed (Redis was away): retried by the heartbeat.
    pub(super) gone: HashSet<(String, String)>,
}

/// The instance in a name key's value (`{instance} {ms}`).
pub(super) fn holder_instance(value: &str) -> &str {
    value.split(' ').next().unwrap_or_default()
}

/// Now, in milliseconds since 1970 (when a name was given: the earlier holder keeps it).
pub(super) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Cluster {
    /// Every [`HEARTBEAT`]: renews this instance's heartbeat, its names and presence entries
    /// (re-creating them if Redis lost them).
    /// Also at once when Redis is back, so that a name given to two members meanwhile is
    /// settled then.
    pub(super) async fn heartbeat_loop(self: Arc<Self>, stop: CancellationToken) {
        let mut every = tokio::time::interval(HEARTBEAT);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut up = self.up_changed.subscribe();
        loop {
            tokio::select! {
                _ = every.tick() => {}
                Ok(()) = up.changed() => {
                    if !*up.borrow_and_update() {
                        continue;
                    }
                }
                () = stop.cancelled() => return,
            }
            if let Err(e) = self.heartbeat().await {
                self.set_up(false, Some(&e));
            }
        }
    }

    pub(super) async fn heartbeat(&self) -> anyhow::Result<()> {
        let (names, presence, gone) = {
            let mut held = lock(&self.held);
            let names: Vec<(String, u64)> = held
                .names
                .iter()
                .map(|(key, name)| (key.clone(), name.granted))
                .collect();
            let presence: Vec<(String, String)> = held.presence.keys().cloned().collect();
            let gone: Vec<(String, String)> = std::mem::take(&mut held.gone)
                .into_iter()
                .filter(|entry| !held.presence.contains_key(entry))
                .collect();
            (names, presence, gone)
        };
        let mut connection = self.commands.clone();
        let (previous,): (Option<String>,) = bounded(
            redis::pipe()
                .atomic()
                .getset(instance_key(&self.id), "1")
                .expire(instance_key(&self.id), LEASE.as_secs() as i64)
                .ignore()
                .query_async(&mut connection),
        )
        .await?;
        let mut rooms: HashMap<String, usize> = HashMap::new();
        for (room, _) in &presence {
            *rooms.entry(room.clone()).or_default() += 1;
        }
        let mut taken_for_dead = false;
        if previous.is_none() {
            // Redis lost its data (or this heartbeat had expired): count this instance again.
            let mut pipe = redis::pipe();
            for (room, n) in &rooms {
                pipe.hset(count_key(room), &self.id, n).ignore();
                pipe.sadd(ROOMS_KEY, room).ignore();
            }
            let reaped_key = format!("wschat:reaped:{}", self.id);
            pipe.get(&reaped_key);
            let (reaped,): (Option<String>,) = bounded(pipe.query_async(&mut connection)).await?;
            taken_for_dead = reaped.is_some();
        }
        let mut lost = HashSet::new();
        for (key, granted) in names {
            // Still held here: a name given back meanwhile must not be renewed (the renewal
            // of an older grant could take it from a member who took it since).
            if !lock(&self.held).names.contains_key(&key) {
                continue;
            }
            if !self.claim_raw(&key, granted, true).await? {
                // Given to a member here while Redis was away, and to one of another instance
                // who had it first: this one is told, and closed.
                tracing::warn!(
                    name = key,
                    "this name was given to two members while redis was unreachable; the one \
                     of another instance had it first and keeps it: closing the one here"
                );
                self.deliver(Delivery::NameLost { key: key.clone() });
                lost.insert(key);
            }
        }
        let presence: Vec<(String, String)> = presence
            .into_iter()
            .filter(|(_, name)| !lost.contains(&crate::protocol::name_key(name)))
            .collect();
        if !presence.is_empty() {
            let mut pipe = redis::pipe();
            for (room, name) in &presence {
                pipe.hset(presence_key(room), name, &self.id).ignore();
            }
            if let Err(e) = bounded(pipe.query_async::<()>(&mut connection)).await {
                lock(&self.held).gone.extend(gone);
                return Err(e);
            }
        }
        if taken_for_dead {
            // Once they are listed again: whoever hears a member is back finds it in `who`.
            // The mark goes only then, so that a heartbeat that fails before this one tries
            // again.
            self.back(&presence, &rooms);
            let reaped_key = format!("wschat:reaped:{}", self.id);
            bounded(connection.del::<_, ()>(reaped_key)).await?;
        }
        for (i, (room, name)) in gone.iter().enumerate() {
            if let Err(e) = self.forget(room, name).await {
                lock(&self.held).gone.extend(gone.into_iter().skip(i));
                return Err(e);
            }
        }
        let rooms: Vec<String> = rooms.into_keys().collect();
        if let Err(e) = self.reap(&rooms).await {
            tracing::debug!("members of dead instances not looked for: {e:#}");
        }
        self.recount(rooms).await
    }

    /// This instance was taken for dead (it could not renew its heartbeat for longer than the
    /// lease) and its members were announced as gone: they are announced as joining again.
    pub(super) fn back(&self, presence: &[(String, String)], rooms: &HashMap<String, usize>) {
        tracing::warn!(
            "this instance was taken for dead while it could not reach redis; its members are \
             announced again"
        );
        for (room, name) in presence {
            let announcement = Announcement {
                room: room.clone(),
                notice: Notice::Join,
                name: name.clone(),
                message: format!("{name} joined the chat"),
                timestamp: crate::protocol::timestamp(),
                local: rooms.get(room).copied().unwrap_or(1),
                // No member of this instance has id 0: nobody here is skipped.
                origin: Origin {
                    member: MemberId::from_raw(0),
                    reference: None,
                    delivered_locally: false,
                },
            };
            self.enqueue(Outgoing::Notice(announcement));
        }
    }

    /// Announces the departure of the members of `rooms` whose instance died without a word
    /// (its heartbeat expired): once, by whichever live instance gets there first. Done every
    /// heartbeat for the rooms this instance has members in, and before a `who`.
    pub(super) async fn reap(&self, rooms: &[String]) -> anyhow::Result<()> {
        if rooms.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for room in rooms {
            pipe.hgetall(presence_key(room));
        }
        let mut connection = self.commands.clone();
        let presence: Vec<HashMap<String, String>> =
            bounded(pipe.query_async(&mut connection)).await?;
        let instances = presence.iter().flat_map(|p| p.values().cloned()).collect();
        let alive = self.alive(instances).await?;
        for (room, members) in rooms.iter().zip(presence) {
            let mut dead: HashMap<String, Vec<String>> = HashMap::new();
            for (name, instance) in members {
                if !alive.contains(&instance) {
                    dead.entry(instance).or_default().push(name);
                }
            }
            for (instance, names) in dead {
                let mut invocation = self.reap.prepare_invoke();
                invocation
                    .key(presence_key(room))
                    .key(count_key(room))
                    .key(ROOMS_KEY)
                    .key(LOG_KEY)
                    .arg(self.config.log_max)
                    .arg(room)
                    .arg(&instance)
                    .arg(crate::protocol::timestamp());
                for name in &names {
                    invocation.arg(name);
                }
                let gone: i64 = bounded(invocation.invoke_async(&mut connection)).await?;
                if gone > 0 {
                    tracing::info!(
                        room,
                        instance,
                        members = gone,
                        "an instance stopped answering: its members' leave announced"
                    );
                }
            }
        }
        Ok(())
    }

    /// Announces the departure of `room`'s members whose instance died (see [`Cluster::reap`]),
    /// without waiting for the next heartbeat: someone who asks `who` may have noticed.
    pub async fn reap_room(&self, room: &str) {
        if let Err(e) = self.reap(&[room.to_owned()]).await {
            tracing::debug!(room, "members of dead instances not looked for: {e:#}");
        }
    }

    /// Claims the name whose key ([`crate::protocol::name_key`]) is `key`.
    /// Claims the name whose key is `key`, given to its member at `granted` (see [`CLAIM`]);
    /// `renewal` for one this instance holds already.
    pub(super) async fn claim_raw(
        &self,
        key: &str,
        granted: u64,
        renewal: bool,
    ) -> anyhow::Result<bool> {
        let mut invocation = self.claim.prepare_invoke();
        invocation
            .key(name_key(key))
            .arg(&self.id)
            .arg(LEASE.as_secs())
            .arg(granted)
            .arg(flag(renewal));
        let mut connection = self.commands.clone();
        Ok(bounded(invocation.invoke_async::<i64>(&mut connection)).await? == 1)
    }

    /// Deletes `name`'s presence entry in `room` if this instance wrote it.
    pub(super) async fn forget(&self, room: &str, name: &str) -> anyhow::Result<()> {
        let mut invocation = self.forget.prepare_invoke();
        invocation.key(presence_key(room)).arg(name).arg(&self.id);
        let mut connection = self.commands.clone();
        bounded(invocation.invoke_async::<i64>(&mut connection)).await?;
        Ok(())
    }

    /// Takes `name` across instances. `Ok(false)`: another instance holds it. When Redis does
    /// not answer, the name is taken locally only (`Ok(true)`, logged), and the heartbeat claims
    /// it once Redis is back.
    pub async fn claim_name(&self, name: &str) -> bool {
        let key = crate::protocol::name_key(name);
        // A name this instance holds already (its member renames itself to another form of
        // it) keeps the time it was first given.
        let granted = lock(&self.held)
            .names
            .get(&key)
            .map_or_else(now_ms, |held| held.granted);
        match self.claim_raw(&key, granted, false).await {
            Ok(true) => {}
            Ok(false) => return false,
            Err(e) => {
                self.set_up(false, Some(&e));
                tracing::warn!(name, "name checked on this instance only: {e:#}");
            }
        }
        lock(&self.held)
            .names
            .entry(key)
            .or_insert(HeldName { count: 0, granted })
            .count += 1;
        true
    }

    /// Gives back a name taken with [`Cluster::claim_name`].
    pub async fn release_name(&self, name: &str) {
        let key = crate::protocol::name_key(name);
        {
            let mut held = lock(&self.held);
            let Some(name) = held.names.get_mut(&key) else {
                return;
            };
            name.count -= 1;
            if name.count > 0 {
                return;
            }
            held.names.remove(&key);
        }
        let mut invocation = self.release.prepare_invoke();
        invocation.key(name_key(&key)).arg(&self.id);
        let mut connection = self.commands.clone();
        if let Err(e) = bounded(invocation.invoke_async::<i64>(&mut connection)).await {
            tracing::debug!(name, "name not released (its claim expires): {e:#}");
        }
    }

    /// Records that `name` is in `room` on this instance (for `who` on every instance).
    pub async fn enter(&self, room: &str, name: &str) {
        *lock(&self.held)
            .presence
            .entry((room.to_owned(), name.to_owned()))
            .or_default() += 1;
        let mut connection = self.commands.clone();
        if let Err(e) =
            bounded(connection.hset::<_, _, _, ()>(presence_key(room), name, &self.id)).await
        {
            tracing::debug!(room, name, "presence not recorded yet: {e:#}");
        }
    }

    /// Undoes [`Cluster::enter`].
    pub async fn exit(&self, room: &str, name: &str) {
        {
            let mut held = lock(&self.held);
            let key = (room.to_owned(), name.to_owned());
            let Some(count) = held.presence.get_mut(&key) else {
                return;
            };
            *count -= 1;
            if *count > 0 {
                return;
            }
            held.presence.remove(&key);
        }
        if let Err(e) = self.forget(room, name).await {
            tracing::debug!(room, name, "presence not removed yet: {e:#}");
            lock(&self.held)
                .gone
                .insert((room.to_owned(), name.to_owned()));
        }
    }

    /// The members of `room` on every live instance, with their instance.
    pub(super) async fn members(&self, room: &str) -> anyhow::Result<Vec<(String, String)>> {
        let mut connection = self.commands.clone();
        let members: HashMap<String, String> =
            bounded(connection.hgetall(presence_key(room))).await?;
        let alive = self.alive(members.values().cloned().collect()).await?;
        Ok(members
            .into_iter()
            .filter(|(_, instance)| alive.contains(instance))
            .collect())
    }

    /// Which of `instances` have a live heartbeat (this one always has).
    pub(super) async fn alive(
        &self,
        instances: HashSet<String>,
    ) -> anyhow::Result<HashSet<String>> {
        let others: Vec<String> = instances.into_iter().filter(|i| *i != self.id).collect();
        let mut alive: HashSet<String> = HashSet::from([self.id.clone()]);
        if others.is_empty() {
            return Ok(alive);
        }
        let keys: Vec<String> = others.iter().map(|i| instance_key(i)).collect();
        let mut connection = self.commands.clone();
        let beats: Vec<Option<String>> = bounded(connection.mget(&keys)).await?;
        alive.extend(
            others
                .into_iter()
                .zip(beats)
                .filter(|(_, beat)| beat.is_some())
                .map(|(i, _)| i),
        );
        Ok(alive)
    }

    /// The visible members of each of `rooms` on the other live instances.
    pub(super) async fn count_others(&self, rooms: &[String]) -> anyhow::Result<Vec<usize>> {
        if rooms.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for room in rooms {
            pipe.hgetall(count_key(room));
        }
        let mut connection = self.commands.clone();
        let counts: Vec<HashMap<String, usize>> =
            bounded(pipe.query_async(&mut connection)).await?;
        let instances = counts.iter().flat_map(|c| c.keys().cloned()).collect();
        let alive = self.alive(instances).await?;
        Ok(counts
            .into_iter()
            .map(|c| {
                c.into_iter()
                    .filter(|(i, _)| *i != self.id && alive.contains(i))
                    .map(|(_, n)| n)
                    .sum()
            })
            .collect())
    }

    /// Counts the other instances' members of `rooms` again, and hands each count to the hub
    /// (which tells a room whose total changed).
    pub(super) async fn recount(&self, rooms: Vec<String>) -> anyhow::Result<()> {
        let others = self.count_others(&rooms).await?;
        for (room, others) in rooms.into_iter().zip(others) {
            // A room nobody elsewhere is in counts 0 without an entry: the map stays as small
            // as the rooms shared right now.
            let mut census = lock(&self.census);
            if others == 0 {
                census.remove(&room);
            } else {
                census.insert(room.clone(), others);
            }
            drop(census);
            self.deliver(Delivery::Census { room, others });
        }
        Ok(())
    }

    /// Every room with members on some live instance, with its members on the other instances
    /// (this instance's own are the hub's to count); `None` if Redis did not answer.
    pub async fn rooms(&self) -> Option<HashMap<String, usize>> {
        let listed = async {
            let mut connection = self.commands.clone();
            let rooms: Vec<String> = bounded(connection.smembers(ROOMS_KEY)).await?;
            let others = self.count_others(&rooms).await?;
            anyhow::Ok(rooms.into_iter().zip(others).collect())
        };
        match listed.await {
            Ok(rooms) => Some(rooms),
            Err(e) => {
                self.set_up(false, Some(&e));
                None
            }
        }
    }

    /// Whether a live instance holds `name`; an error if Redis did not answer.
    pub async fn is_held(&self, name: &str) -> anyhow::Result<bool> {
        let mut connection = self.commands.clone();
        let key = crate::protocol::name_key(name);
        let holder: Option<String> = bounded(connection.get(name_key(&key))).await?;
        let Some(holder) = holder.map(|h| holder_instance(&h).to_owned()) else {
            return Ok(false);
        };
        Ok(self
            .alive(HashSet::from([holder.clone()]))
            .await?
            .contains(&holder))
    }

    /// The members of `room` on every live instance, sorted; `None` if Redis did not answer.
    pub async fn who(&self, room: &str) -> Option<Vec<String>> {
        match self.members(room).await {
            Ok(members) => {
                let mut names: Vec<String> = members.into_iter().map(|(name, _)| name).collect();
                names.sort();
                Some(names)
            }
            Err(e) => {
                self.set_up(false, Some(&e));
                None
            }
        }
    }

    /// Counts `room`'s members on the other instances again (before a member joins it here,
    /// so that its welcome counts everyone; and after a `who`, which may have found an instance
    /// gone).
    pub async fn census(&self, room: &str) {
        if let Err(e) = self.recount(vec![room.to_owned()]).await {
            tracing::debug!(room, "members of other instances not counted: {e:#}");
        }
    }
}
