//! What the server asks of the instances it shares rooms with (`serve --redis`), beyond what
//! the hub hands its [`Relay`](super::relay::Relay): names and presence across instances, and
//! each room's history made ready before a member enters it. The hub owns the trait; the
//! cluster implements it, so the server never names the cluster.
//!
//! Every call may wait on the network: none is made under the hub's lock. Each is bounded in
//! time by the implementation and fails soft (a `None` or `false` says the answer is this
//! instance's alone, or the claim was not granted).

use std::collections::HashMap;

use futures_util::future::BoxFuture;

pub trait Directory: Send + Sync + 'static {
    /// Claims `name` across instances; false if another member holds it (or one that looks
    /// like it).
    fn claim_name<'a>(&'a self, name: &'a str) -> BoxFuture<'a, bool>;
    /// Gives a name back.
    fn release_name<'a>(&'a self, name: &'a str) -> BoxFuture<'a, ()>;
    /// Lists `name` as a member of `room`, here.
    fn enter<'a>(&'a self, room: &'a str, name: &'a str) -> BoxFuture<'a, ()>;
    /// Takes `name` off `room`'s members.
    fn exit<'a>(&'a self, room: &'a str, name: &'a str) -> BoxFuture<'a, ()>;
    /// Counts `room`'s members on the other instances again (the hub hears a change).
    fn census<'a>(&'a self, room: &'a str) -> BoxFuture<'a, ()>;
    /// Announces the departure of `room`'s members whose instance died without a word.
    fn reap_room<'a>(&'a self, room: &'a str) -> BoxFuture<'a, ()>;
    /// Makes `room`'s history ready for a member about to enter it (`since`: a resume).
    fn prepare_room<'a>(
        &'a self,
        room: &'a str,
        since: Option<u64>,
        limit: usize,
    ) -> BoxFuture<'a, ()>;
    /// The names in `room` on every instance; `None` when only this instance's are known.
    fn who<'a>(&'a self, room: &'a str) -> BoxFuture<'a, Option<Vec<String>>>;
    /// The rooms with members on the other instances, with their counts; `None` likewise.
    fn rooms(&self) -> BoxFuture<'_, Option<HashMap<String, usize>>>;
    /// Whether a member of some instance holds `name`.
    fn is_held<'a>(&'a self, name: &'a str) -> BoxFuture<'a, anyhow::Result<bool>>;
    /// One line for `/healthz`, e.g. `redis: up` (answering 200 either way: this instance
    /// serves its members while the others are away).
    fn health(&self) -> String;
    /// Its own lines for `/metrics` (Prometheus text).
    fn render_metrics(&self) -> String;
}
