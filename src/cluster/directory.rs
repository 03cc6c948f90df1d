//! The cluster as the hub's [`Directory`]: names, presence and history across instances.

use std::collections::HashMap;

use futures_util::future::BoxFuture;

use super::Cluster;
use crate::hub::directory::Directory;

impl Directory for Cluster {
    fn claim_name<'a>(&'a self, name: &'a str) -> BoxFuture<'a, bool> {
        Box::pin(Cluster::claim_name(self, name))
    }

    fn release_name<'a>(&'a self, name: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(Cluster::release_name(self, name))
    }

    fn enter<'a>(&'a self, room: &'a str, name: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(Cluster::enter(self, room, name))
    }

    fn exit<'a>(&'a self, room: &'a str, name: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(Cluster::exit(self, room, name))
    }

    fn census<'a>(&'a self, room: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(Cluster::census(self, room))
    }

    fn reap_room<'a>(&'a self, room: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(Cluster::reap_room(self, room))
    }

    fn prepare_room<'a>(
        &'a self,
        room: &'a str,
        since: Option<u64>,
        limit: usize,
    ) -> BoxFuture<'a, ()> {
        Box::pin(Cluster::prepare_room(self, room, since, limit))
    }

    fn who<'a>(&'a self, room: &'a str) -> BoxFuture<'a, Option<Vec<String>>> {
        Box::pin(Cluster::who(self, room))
    }

    fn rooms(&self) -> BoxFuture<'_, Option<HashMap<String, usize>>> {
        Box::pin(Cluster::rooms(self))
    }

    fn is_held<'a>(&'a self, name: &'a str) -> BoxFuture<'a, anyhow::Result<bool>> {
        Box::pin(Cluster::is_held(self, name))
    }

    fn health(&self) -> String {
        format!("redis: {}", if self.is_up() { "up" } else { "down" })
    }

    fn render_metrics(&self) -> String {
        Cluster::render_metrics(self)
    }
}
