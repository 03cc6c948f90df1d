//! The Redis keys wschat uses (the module above describes each).

pub(super) fn room_seq(room: &str) -> String {
    format!("wschat:room:{room}:seq")
}

pub(super) fn room_stream(room: &str) -> String {
    format!("wschat:room:{room}")
}

/// The Redis key of a name, by the name's key ([`crate::protocol::name_key`]): names that
/// look alike are one name.
pub(super) fn name_key(key: &str) -> String {
    format!("wschat:name:{key}")
}

pub(super) fn presence_key(room: &str) -> String {
    format!("wschat:presence:{room}")
}

pub(super) fn instance_key(id: &str) -> String {
    format!("wschat:instance:{id}")
}

pub(super) fn count_key(room: &str) -> String {
    format!("wschat:count:{room}")
}

/// The set of rooms with members on some instance.
pub(super) const ROOMS_KEY: &str = "wschat:rooms";
