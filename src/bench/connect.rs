//! Opening the bench's many connections: one resolved address, source addresses spread over
//! 127.0.0.x when one would run out of ports, and one-line errors that say what to do.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{header, HeaderValue};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::WebSocketStream;
use url::Url;

use crate::client::connect::ServerKind;
use crate::exit::{fail, Exit};
use crate::protocol;

pub type Socket = WebSocketStream<TcpStream>;

/// Connections per source address. Binding before connecting takes a port from the source
/// address's ephemeral range (about 28,000 by default on Linux) whatever the destination. Linux
/// hands out half of that range first (even ports to connect, odd ones to bind) and searches
/// the other half slowly: past about 14,000 connections from one address each new one costs a
/// long scan in the kernel (measured: joins fell from thousands to under 200 per second at
/// about 14,000 connections), so each source address takes at most 10,000.
const CONNECTIONS_PER_SOURCE: usize = 10_000;
/// File descriptors the bench needs besides its connections.
const SPARE_FILES: u64 = 64;

/// Who a connection claims to be. A wschat server reads these from the handshake's query
/// string; a relay ignores them.
pub struct Identity {
    pub name: String,
    pub room: Option<String>,
    pub quiet: bool,
}

/// Opens connections to one server.
pub struct Dialer {
    url: Url,
    address: SocketAddr,
    /// Empty: the kernel picks the source address.
    sources: Vec<Ipv4Addr>,
    config: WebSocketConfig,
    timeout: Duration,
    /// Sent with every handshake (`--token`).
    authorization: Option<HeaderValue>,
    /// The per-connection limits the server stated in a handshake (`x-wschat-limits`).
    limits: std::sync::OnceLock<protocol::Limits>,
}

impl Dialer {
    /// Resolves the URL's host once and plans source addresses for `connections`.
    /// `read_buffer` is each connection's read buffer: small for idle ones.
    pub async fn new(
        url: &Url,
        connections: usize,
        read_buffer: usize,
        timeout: Duration,
        authorization: Option<HeaderValue>,
        first_source: Option<Ipv4Addr>,
    ) -> anyhow::Result<Dialer> {
        if url.scheme() != "ws" {
            return Err(fail(
                Exit::Usage,
                format!("wschat bench speaks ws:// only, not {}", url.scheme()),
            ));
        }
        check_open_files(connections)?;
        let host = url.host_str().unwrap_or_default();
        let port = url.port_or_known_default().unwrap_or(80);
        let addresses: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| fail(Exit::CannotConnect, format!("cannot resolve {host}: {e}")))?
            .collect();
        let address = addresses
            .iter()
            .find(|a| a.is_ipv4())
            .or(addresses.first())
            .copied()
            .ok_or_else(|| fail(Exit::CannotConnect, format!("{host} has no address")))?;
        let sources = plan_sources(address.ip(), connections, first_source);
        let config = WebSocketConfig::default()
            .read_buffer_size(read_buffer)
            .max_message_size(Some(16 << 20))
            .max_frame_size(Some(16 << 20));
        Ok(Dialer {
            url: url.clone(),
            address,
            sources,
            config,
            timeout,
            authorization,
            limits: std::sync::OnceLock::new(),
        })
    }

    /// What the server said it allows each connection, once a handshake said so.
    pub fn limits(&self) -> Option<protocol::Limits> {
        self.limits.get().copied()
    }

    /// The server's address, as resolved.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// How many source addresses connections are spread over (1: the kernel's choice).
    pub fn source_count(&self) -> usize {
        self.sources.len().max(1)
    }

    /// Opens connection number `index` and tells what kind of server answered.
    pub async fn connect(
        &self,
        index: usize,
        identity: &Identity,
    ) -> anyhow::Result<(Socket, ServerKind)> {
        let attempt = async {
            let stream = self.tcp(index).await.map_err(|e| self.io_error(e))?;
            // Chat frames are small: send each at once.
            let _ = stream.set_nodelay(true);
            let mut request = self
                .handshake_url(identity)
                .as_str()
                .into_client_request()
                .map_err(|e| fail(Exit::Usage, format!("invalid URL {}: {e}", self.url)))?;
            if let Some(authorization) = &self.authorization {
                request
                    .headers_mut()
                    .insert(header::AUTHORIZATION, authorization.clone());
            }
            tokio_tungstenite::client_async_with_config(request, stream, Some(self.config))
                .await
                .map_err(|e| self.handshake_error(e))
        };
        let (socket, response) =
            tokio::time::timeout(self.timeout, attempt)
                .await
                .map_err(|_| {
                    fail(
                        Exit::Timeout,
                        format!(
                            "cannot connect to {}: no answer within {}",
                            self.url,
                            humantime::format_duration(self.timeout)
                        ),
                    )
                })??;
        if let Some(limits) = response
            .headers()
            .get(protocol::LIMITS_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(protocol::Limits::parse_header)
        {
            let _ = self.limits.set(limits);
        }
        let kind = if response.headers().contains_key(protocol::SERVER_HEADER) {
            ServerKind::Wschat
        } else {
            ServerKind::Relay
        };
        Ok((socket, kind))
    }

    async fn tcp(&self, index: usize) -> io::Result<TcpStream> {
        if self.sources.is_empty() {
            return TcpStream::connect(self.address).await;
        }
        let socket = TcpSocket::new_v4()?;
        let source = self.sources[index % self.sources.len()];
        socket.bind(SocketAddr::new(IpAddr::V4(source), 0))?;
        socket.connect(self.address).await
    }

    fn handshake_url(&self, identity: &Identity) -> Url {
        let mut url = self.url.clone();
        {
            let mut query = url.query_pairs_mut();
            query.append_pair("name", &identity.name);
            if let Some(room) = &identity.room {
                query.append_pair("room", room);
            }
            if identity.quiet {
                query.append_pair("quiet", "1");
            }
        }
        url
    }

    fn io_error(&self, error: io::Error) -> anyhow::Error {
        let url = &self.url;
        match error.raw_os_error() {
            // EMFILE, ENFILE
            Some(24 | 23) => fail(
                Exit::Failure,
                format!(
                    "cannot open another connection to {url}: too many open files \
                     (raise the limit with 'ulimit -n')"
                ),
            ),
            // EADDRNOTAVAIL, EADDRINUSE: the source address has no free port.
            Some(99 | 98) => fail(
                Exit::Failure,
                format!("cannot open another connection to {url}: no free local port ({error})"),
            ),
            _ if error.kind() == io::ErrorKind::ConnectionRefused => fail(
                Exit::CannotConnect,
                format!("cannot connect to {url}: connection refused — is the server running?"),
            ),
            _ => fail(
                Exit::CannotConnect,
                format!("cannot connect to {url}: {error}"),
            ),
        }
    }

    fn handshake_error(&self, error: WsError) -> anyhow::Error {
        let url = &self.url;
        match error {
            WsError::Io(e) => self.io_error(e),
            WsError::Http(response) => {
                let status = response.status();
                fail(
                    Exit::HandshakeRejected,
                    format!(
                        "{url} refused the WebSocket handshake: HTTP {} {}",
                        status.as_u16(),
                        status.canonical_reason().unwrap_or("")
                    )
                    .trim_end()
                    .to_owned(),
                )
            }
            other => fail(
                Exit::HandshakeRejected,
                format!("WebSocket handshake with {url} failed: {other}"),
            ),
        }
    }
}

/// Source addresses for `connections` to a loopback address: as many as it takes to stay
/// within [`CONNECTIONS_PER_SOURCE`] each, from 127.0.0.1 or from `first` on (bench processes
/// running side by side each take their own, as a bound port is unique per source address).
/// Empty (the kernel's choice) when one is enough and no `first` is given, or the server is
/// not on 127.0.0.0/8.
fn plan_sources(server: IpAddr, connections: usize, first: Option<Ipv4Addr>) -> Vec<Ipv4Addr> {
    match server {
        IpAddr::V4(ip)
            if ip.is_loopback() && (connections > CONNECTIONS_PER_SOURCE || first.is_some()) =>
        {
            let count = connections.div_ceil(CONNECTIONS_PER_SOURCE).clamp(1, 254);
            let start = u32::from(first.unwrap_or(Ipv4Addr::new(127, 0, 0, 1)));
            (0..count)
                .map_while(|i| {
                    let address = Ipv4Addr::from(start.checked_add(u32::try_from(i).ok()?)?);
                    // 127.255.255.255 is loopback's broadcast address.
                    (address.is_loopback() && address.octets()[1..] != [255, 255, 255])
                        .then_some(address)
                })
                .collect()
        }
        _ => Vec::new(),
    }
}

/// Fails early, with the fix, when the open-file limit cannot hold the connections asked for.
fn check_open_files(connections: usize) -> anyhow::Result<()> {
    let Some(limit) = open_files_limit() else {
        return Ok(());
    };
    let needed = u64::try_from(connections)
        .unwrap_or(u64::MAX)
        .saturating_add(SPARE_FILES);
    if needed > limit {
        return Err(fail(
            Exit::Failure,
            format!(
                "{connections} connections need about {needed} open files but the limit is \
                 {limit}: raise it (e.g. 'ulimit -n {}') or open fewer",
                needed.next_multiple_of(1024)
            ),
        ));
    }
    Ok(())
}

/// The soft limit on open files, where the system tells it (Linux).
fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    parse_open_files_limit(&limits)
}

fn parse_open_files_limit(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_open_files_limit_is_read() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max processes             95383                95383                processes \n\
                      Max open files            20000                40000                files     \n";
        assert_eq!(parse_open_files_limit(limits), Some(20000));
        assert_eq!(
            parse_open_files_limit("Max open files unlimited unlimited files"),
            None
        );
    }

    #[test]
    fn many_loopback_connections_spread_over_source_addresses() {
        let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
        assert!(plan_sources(loopback, 10, None).is_empty());
        assert!(plan_sources(loopback, CONNECTIONS_PER_SOURCE, None).is_empty());
        assert_eq!(
            plan_sources(loopback, 10, Some(Ipv4Addr::new(127, 0, 0, 9))),
            vec![Ipv4Addr::new(127, 0, 0, 9)]
        );
        assert_eq!(
            plan_sources(loopback, 15_000, Some(Ipv4Addr::new(127, 0, 0, 255))),
            vec![Ipv4Addr::new(127, 0, 0, 255), Ipv4Addr::new(127, 0, 1, 0)]
        );
        assert_eq!(
            plan_sources(loopback, 15_000, Some(Ipv4Addr::new(127, 255, 255, 254))),
            vec![Ipv4Addr::new(127, 255, 255, 254)]
        );
        assert_eq!(
            plan_sources(loopback, 25_000, None),
            vec![
                Ipv4Addr::new(127, 0, 0, 1),
                Ipv4Addr::new(127, 0, 0, 2),
                Ipv4Addr::new(127, 0, 0, 3)
            ]
        );
        assert_eq!(plan_sources(loopback, usize::MAX, None).len(), 254);
        assert!(plan_sources(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 50_000, None).is_empty());
        assert!(plan_sources("::1".parse().unwrap(), 50_000, None).is_empty());
    }

    #[tokio::test]
    async fn only_ws_urls_are_accepted() {
        let url = Url::parse("wss://127.0.0.1:9/").unwrap();
        let err = Dialer::new(&url, 1, 1024, Duration::from_secs(1), None, None)
            .await
            .err()
            .unwrap();
        assert!(err.to_string().contains("ws:// only"), "{err}");
    }
}
