//! What a client asks for in the handshake URL's query string.

use crate::protocol;

/// What a client asked for in the handshake URL's query string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Params {
    pub name: Option<String>,
    pub room: String,
    pub quiet: bool,
    /// Resume after this message id.
    pub since: Option<u64>,
    /// Replay this many recent messages instead of the server's default.
    pub history: Option<usize>,
    /// The history `since` is a position in.
    pub epoch: Option<String>,
}

impl Params {
    pub fn from_query(query: &str) -> Params {
        let mut params = Params {
            name: None,
            room: protocol::DEFAULT_ROOM.to_owned(),
            quiet: false,
            since: None,
            history: None,
            epoch: None,
        };
        for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
            match &*key {
                "name" | "username" if !value.is_empty() => params.name = Some(value.into_owned()),
                "room" if !value.is_empty() => params.room = value.into_owned(),
                "quiet" => params.quiet = matches!(&*value, "" | "1" | "true" | "yes"),
                // An unreadable number is ignored: the client gets the default history.
                // Ids fit in SQLite's signed 64 bits; a larger one is nonsense, and clamping it
                // keeps `since + 1` from overflowing anywhere.
                "since" => params.since = value.parse::<u64>().ok().map(|v| v.min(i64::MAX as u64)),
                "history" => params.history = value.parse().ok(),
                // Epochs are short; anything longer is from no wschat server.
                "epoch" if value.len() <= 64 => params.epoch = Some(value.into_owned()),
                _ => {}
            }
        }
        params
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters() {
        assert_eq!(
            Params::from_query("name=alice&room=dev&quiet=1"),
            Params {
                name: Some("alice".into()),
                room: "dev".into(),
                quiet: true,
                since: None,
                history: None,
                epoch: None,
            }
        );
        let p = Params::from_query("username=b%C3%A9a&room=");
        assert_eq!(p.name.as_deref(), Some("béa"));
        assert_eq!(p.room, "lobby");
        assert!(!p.quiet);
        let p = Params::from_query("since=41&history=0&epoch=0123abcd");
        assert_eq!((p.since, p.history), (Some(41), Some(0)));
        assert_eq!(p.epoch.as_deref(), Some("0123abcd"));
    }
}
