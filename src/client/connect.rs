//! Opening a client connection: URL handling, the handshake, and telling wschat from a relay.

use std::io::ErrorKind;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::error::{ProtocolError, SubProtocolError};
use tokio_tungstenite::tungstenite::handshake::client::Response;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};
use url::Url;

use crate::exit::{fail, Exit};
use crate::protocol;

pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What answered the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerKind {
    /// A wschat server in JSON mode: envelopes, notices, acknowledgements.
    Wschat,
    /// Anything else that relays frames (a `--raw` wschat, a tutorial relay): text in, text out.
    Relay,
}

/// Where and as whom to connect.
#[derive(Debug, Clone)]
pub struct Target {
    pub url: Url,
    pub name: String,
    pub room: Option<String>,
    /// A quiet connection is not announced to the room and holds no name.
    pub quiet: bool,
    pub connect_timeout: Duration,
    /// Resume: ask for every message after this id.
    pub since: Option<u64>,
    /// The server history `since` is a position in (from its welcome or `synced`).
    pub epoch: Option<String>,
    /// Ask for this many messages of history on join.
    pub history: Option<usize>,
    /// Sent as `Authorization: Bearer`.
    pub token: Option<String>,
    /// TLS settings for `wss://` with a private CA; `None`: the system's roots.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

pub struct Connection {
    pub socket: Socket,
    pub kind: ServerKind,
    /// What the server allows this connection, when it says (a wschat server, raw or not).
    pub limits: Option<protocol::Limits>,
}

/// Accepts `ws://` and `wss://` URLs, `http(s)://` as their WebSocket twins, and a bare
/// `host:port` as `ws://host:port/`.
pub fn parse_url(text: &str) -> Result<Url, String> {
    let with_scheme = if text.contains("://") {
        text.to_owned()
    } else {
        format!("ws://{text}")
    };
    let mut url = Url::parse(&with_scheme).map_err(|e| {
        let host = with_scheme
            .split_once("://")
            .map_or("", |(_, rest)| rest)
            .split(['/', '?', '#'])
            .next()
            .unwrap_or_default();
        let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
        let why = match e {
            url::ParseError::IdnaError | url::ParseError::InvalidDomainCharacter => {
                format!("'{host}' is not a host name")
            }
            url::ParseError::EmptyHost => "no host".to_owned(),
            url::ParseError::InvalidPort => "the port is not a number from 0 to 65535".to_owned(),
            url::ParseError::InvalidIpv4Address | url::ParseError::InvalidIpv6Address => {
                format!("'{host}' is not an IP address")
            }
            other => other.to_string(),
        };
        format!("invalid URL '{text}': {why}; expected ws://HOST:PORT/ (or wss://, http://, https://, or HOST:PORT)")
    })?;
    let scheme = match url.scheme() {
        "ws" | "http" => "ws",
        "wss" | "https" => "wss",
        other => {
            return Err(format!(
                "invalid URL '{text}': scheme '{other}' is not ws://, wss://, http:// or https://"
            ))
        }
    };
    if url.scheme() != scheme {
        // Switching between these special schemes is always accepted by `url`.
        let _ = url.set_scheme(scheme);
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("invalid URL '{text}': no host"));
    }
    Ok(url)
}

impl Target {
    /// The handshake URL: the server URL with `name`, `room` and `quiet` added to its query.
    pub fn handshake_url(&self) -> Url {
        let mut url = self.url.clone();
        {
            let mut query = url.query_pairs_mut();
            query.append_pair("name", &self.name);
            if let Some(room) = &self.room {
                query.append_pair("room", room);
            }
            if self.quiet {
                query.append_pair("quiet", "1");
            }
            if let Some(since) = self.since {
                query.append_pair("since", &since.to_string());
                if let Some(epoch) = &self.epoch {
                    query.append_pair("epoch", epoch);
                }
            }
            if let Some(history) = self.history {
                query.append_pair("history", &history.to_string());
            }
        }
        url
    }
}

fn client_config() -> WebSocketConfig {
    // A relay may send anything; 16 MiB bounds what one frame can make this client hold.
    WebSocketConfig::default()
        .max_message_size(Some(16 << 20))
        .max_frame_size(Some(16 << 20))
}

/// The `Authorization` header that presents `token`.
pub fn bearer(
    token: &str,
) -> Result<HeaderValue, tokio_tungstenite::tungstenite::http::header::InvalidHeaderValue> {
    HeaderValue::from_str(&format!("Bearer {token}"))
}

async fn handshake(
    url: &Url,
    target: &Target,
    subprotocol: bool,
) -> Result<(Socket, Response), WsError> {
    let mut request = url.as_str().into_client_request()?;
    if let Some(token) = target.token.as_deref() {
        let value = bearer(token).map_err(|e| WsError::HttpFormat(e.into()))?;
        request.headers_mut().insert("authorization", value);
    }
    if subprotocol {
        request.headers_mut().insert(
            "sec-websocket-protocol",
            HeaderValue::from_static(protocol::SUBPROTOCOL),
        );
    }
    let connector = target.tls.clone().map(Connector::Rustls);
    tokio_tungstenite::connect_async_tls_with_config(
        request,
        Some(client_config()),
        true,
        connector,
    )
    .await
}

/// Connects and finds out what kind of server answered. Asks for the `wschat.v1`
/// subprotocol; a server that ignores it (tungstenite then refuses the handshake) is asked
/// once more without it, and is a relay.
pub async fn connect(target: &Target) -> anyhow::Result<Connection> {
    let url = target.handshake_url();
    let attempt = async {
        match handshake(&url, target, true).await {
            Err(WsError::Protocol(ProtocolError::SecWebSocketSubProtocolError(
                SubProtocolError::NoSubProtocol,
            ))) => handshake(&url, target, false).await,
            other => other,
        }
    };
    let (socket, response) = tokio::time::timeout(target.connect_timeout, attempt)
        .await
        .map_err(|_| {
            fail(
                Exit::Timeout,
                format!(
                    "cannot connect to {}: no answer within {}",
                    target.url,
                    humantime::format_duration(target.connect_timeout)
                ),
            )
        })?
        .map_err(|e| describe(&target.url, e))?;
    let kind = if response.headers().get(protocol::SERVER_HEADER).is_some() {
        ServerKind::Wschat
    } else {
        ServerKind::Relay
    };
    let limits = response
        .headers()
        .get(protocol::LIMITS_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(protocol::Limits::parse_header);
    Ok(Connection {
        socket,
        kind,
        limits,
    })
}

/// One line saying what went wrong and what to do, with the exit code it calls for.
fn describe(url: &Url, error: WsError) -> anyhow::Error {
    match error {
        WsError::Io(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => fail(
            Exit::CannotConnect,
            format!("cannot connect to {url}: connection refused — is 'wschat serve' running?"),
        ),
        // Connected, then dropped before the handshake was done: the server went away.
        WsError::Io(e)
            if matches!(
                e.kind(),
                ErrorKind::ConnectionReset
                    | ErrorKind::ConnectionAborted
                    | ErrorKind::UnexpectedEof
                    | ErrorKind::BrokenPipe
            ) =>
        {
            fail(
                Exit::ServerGone,
                format!("{url} closed the connection during the WebSocket handshake: {e}"),
            )
        }
        WsError::Protocol(ProtocolError::HandshakeIncomplete)
        | WsError::ConnectionClosed
        | WsError::AlreadyClosed => fail(
            Exit::ServerGone,
            format!("{url} closed the connection during the WebSocket handshake"),
        ),
        WsError::Io(e) => fail(Exit::CannotConnect, format!("cannot connect to {url}: {e}")),
        WsError::Tls(e) => fail(
            Exit::CannotConnect,
            format!("cannot connect to {url}: TLS failed: {e}"),
        ),
        WsError::Url(e) => fail(Exit::Usage, format!("invalid URL {url}: {e}")),
        // Not HTTP at all: most often a TLS server answering a plain connection.
        WsError::Protocol(ProtocolError::HttparseError(e)) => {
            let hint = if url.scheme() == "ws" {
                " — is it a TLS server? try wss://"
            } else {
                ""
            };
            fail(
                Exit::CannotConnect,
                format!("cannot connect to {url}: the answer is not HTTP ({e}){hint}"),
            )
        }
        WsError::Http(response) => {
            let status = response.status();
            let body = first_body_line(&response);
            let mut message = format!(
                "{url} refused the WebSocket handshake: HTTP {} {}",
                status.as_u16(),
                status.canonical_reason().unwrap_or("")
            );
            if let Some(body) = body {
                message.push_str(": ");
                message.push_str(&crate::client::render::escape_control(&body));
            }
            fail(Exit::HandshakeRejected, message.trim_end().to_owned())
        }
        // An answer that is HTTP but not a WebSocket handshake: not a server to talk to. A
        // refusal (exit 4) is only an HTTP error status or a refused name or token.
        WsError::Protocol(e) => fail(
            Exit::CannotConnect,
            format!("cannot connect to {url}: the answer is not a WebSocket handshake ({e})"),
        ),
        other => fail(
            Exit::CannotConnect,
            format!("cannot connect to {url}: the WebSocket handshake failed: {other}"),
        ),
    }
}

/// The first line of an HTTP refusal's body (what the server says about it), if any.
pub fn first_body_line(
    response: &tokio_tungstenite::tungstenite::http::Response<Option<Vec<u8>>>,
) -> Option<String> {
    response
        .body()
        .as_deref()
        .map(String::from_utf8_lossy)
        .and_then(|b| b.lines().next().map(str::to_owned))
        .filter(|l| !l.trim().is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_normalised() {
        assert_eq!(
            parse_url("localhost:8080").unwrap().as_str(),
            "ws://localhost:8080/"
        );
        assert_eq!(parse_url("http://h:1/x").unwrap().as_str(), "ws://h:1/x");
        assert_eq!(parse_url("https://h/").unwrap().as_str(), "wss://h/");
        assert_eq!(parse_url("wss://h:9/").unwrap().as_str(), "wss://h:9/");
        assert!(parse_url("ftp://h/").is_err());
        assert!(parse_url("ws://").is_err());
        // What is wrong, and what is expected.
        let bad = parse_url("not a url").unwrap_err();
        assert!(bad.contains("'not a url' is not a host name"), "{bad}");
        assert!(bad.contains("expected ws://HOST:PORT/"), "{bad}");
        let bad = parse_url("localhost:99999").unwrap_err();
        assert!(bad.contains("the port is not a number"), "{bad}");
    }

    #[test]
    fn handshake_url_carries_identity() {
        let target = Target {
            url: parse_url("ws://h:1/?x=1").unwrap(),
            name: "bob".into(),
            room: Some("dev ops".into()),
            quiet: true,
            connect_timeout: Duration::from_secs(1),
            since: Some(4),
            epoch: Some("00ff".into()),
            history: None,
            token: None,
            tls: None,
        };
        assert_eq!(
            target.handshake_url().as_str(),
            "ws://h:1/?x=1&name=bob&room=dev+ops&quiet=1&since=4&epoch=00ff"
        );
    }
}
