//! `wschat doctor URL`: checks an endpoint step by step (name resolution, TCP, TLS, the
//! WebSocket upgrade, what answered, round trips, the close) and prints one line per step:
//! what it found, and on failure what to try. Exits with the code of the first failing step.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::{SinkExt, StreamExt};
use rustls_pki_types::ServerName;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::error::{ProtocolError, SubProtocolError};
use tokio_tungstenite::tungstenite::handshake::client::Response;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::MaybeTlsStream;
use url::Url;

use super::connect::{bearer, Socket};
use crate::exit::{fail, Exit};
use crate::protocol;

#[derive(Debug, Clone)]
pub struct DoctorConfig {
    pub url: Url,
    pub json: bool,
    /// Bound on each step that waits for the network.
    pub timeout: Duration,
    pub token: Option<String>,
    /// `--ca`; `None`: the system's roots.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Round trips timed.
    pub pings: usize,
}

/// One checked step.
struct Step {
    name: &'static str,
    ok: bool,
    detail: String,
    hint: Option<String>,
    data: Value,
}

/// The steps so far; printed as they come (text), or at the end (`--json`).
struct Report {
    json: bool,
    steps: Vec<Step>,
}

impl Report {
    fn pass(&mut self, name: &'static str, detail: String, data: Value) {
        self.add(Step {
            name,
            ok: true,
            detail,
            hint: None,
            data,
        });
    }

    /// Records a failed step; returns the error that ends the check.
    fn fail(
        &mut self,
        name: &'static str,
        exit: Exit,
        detail: String,
        hint: &str,
    ) -> anyhow::Error {
        let error = fail(exit, format!("{name}: {detail}"));
        self.add(Step {
            name,
            ok: false,
            detail,
            hint: Some(hint.to_owned()),
            data: json!({}),
        });
        error
    }

    fn add(&mut self, step: Step) {
        if !self.json {
            let status = if step.ok { "ok  " } else { "FAIL" };
            let mut line = format!("{status}  {:<8} {}", step.name, step.detail);
            if let Some(hint) = &step.hint {
                line.push_str(" — try: ");
                line.push_str(hint);
            }
            super::print_line(&super::render::escape_control(&line));
        }
        self.steps.push(step);
    }
}

fn ms(elapsed: Duration) -> f64 {
    (elapsed.as_secs_f64() * 10_000.0).round() / 10.0
}

pub async fn run(config: DoctorConfig) -> anyhow::Result<Exit> {
    let mut report = Report {
        json: config.json,
        steps: Vec::new(),
    };
    let result = check(&config, &mut report).await;
    if config.json {
        let steps: Vec<Value> = report
            .steps
            .iter()
            .map(|s| {
                let mut step = json!({"step": s.name, "ok": s.ok, "detail": s.detail});
                if let Some(hint) = &s.hint {
                    step["hint"] = json!(hint);
                }
                if let (Some(step), Some(data)) = (step.as_object_mut(), s.data.as_object()) {
                    step.extend(data.clone());
                }
                step
            })
            .collect();
        let exit = match &result {
            Ok(()) => Exit::Success,
            Err(e) => crate::exit::exit_for(e),
        };
        let summary = json!({
            "url": config.url.as_str(),
            "ok": result.is_ok(),
            "exit": exit.code(),
            "steps": steps,
        });
        super::print_line(&super::render::json_line(&summary));
    }
    result.map(|()| Exit::Success)
}

async fn check(config: &DoctorConfig, report: &mut Report) -> anyhow::Result<()> {
    let url = &config.url;
    let host = url
        .host_str()
        .unwrap_or_default()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = url.port_or_known_default().unwrap_or(80);

    // Name resolution.
    let started = Instant::now();
    let addresses: Vec<SocketAddr> = match tokio::time::timeout(
        config.timeout,
        tokio::net::lookup_host((host.as_str(), port)),
    )
    .await
    {
        Ok(Ok(found)) => found.collect(),
        Ok(Err(e)) => {
            return Err(report.fail(
                "resolve",
                Exit::CannotConnect,
                format!("{host}: {e}"),
                "check the host name (a typo? a name only some DNS servers know?)",
            ))
        }
        Err(_) => {
            return Err(report.fail(
                "resolve",
                Exit::Timeout,
                format!(
                    "{host}: no answer within {}",
                    humantime::format_duration(config.timeout)
                ),
                "check the DNS settings (/etc/resolv.conf)",
            ))
        }
    };
    let shown: Vec<String> = addresses.iter().map(|a| a.ip().to_string()).collect();
    report.pass(
        "resolve",
        format!(
            "{host} → {} ({} ms)",
            shown.join(", "),
            ms(started.elapsed())
        ),
        json!({"addresses": shown, "ms": ms(started.elapsed())}),
    );

    // TCP, then TLS, then the upgrade; a server that ignores the subprotocol is asked again
    // without it, on a new connection.
    let (stream, address) = tcp(config, report, &addresses, true).await?;
    let stream = tls(config, report, &host, stream, true).await?;
    let (socket, response) = match upgrade(config, report, stream, true).await? {
        Some(done) => done,
        None => {
            let (stream, _) = tcp(config, report, &[address], false).await?;
            let stream = tls(config, report, &host, stream, false).await?;
            upgrade(config, report, stream, false)
                .await?
                .ok_or_else(|| fail(Exit::HandshakeRejected, "upgrade: refused twice"))?
        }
    };

    // What answered.
    match response.headers().get(protocol::SERVER_HEADER) {
        Some(version) => {
            let version = version.to_str().unwrap_or("?").to_owned();
            report.pass(
                "server",
                format!("a wschat server, protocol version {version} ({} header)", protocol::SERVER_HEADER),
                json!({"kind": "wschat", "protocol": version}),
            );
        }
        None => report.pass(
            "server",
            format!(
                "a plain relay (no {} header): text in, text out; no rooms, names or acknowledgements",
                protocol::SERVER_HEADER
            ),
            json!({"kind": "relay"}),
        ),
    }

    let (mut sink, mut stream) = socket.split();
    // Round trips.
    let mut times = Vec::with_capacity(config.pings);
    for n in 0..config.pings {
        let payload = format!("wschat-doctor-{n}");
        let started = Instant::now();
        let answered = async {
            sink.send(Message::Ping(payload.clone().into_bytes().into()))
                .await
                .map_err(|e| e.to_string())?;
            loop {
                match stream.next().await {
                    Some(Ok(Message::Pong(p))) if p.as_ref() == payload.as_bytes() => return Ok(()),
                    Some(Ok(Message::Close(frame))) => {
                        return Err(match frame {
                            Some(f) => format!(
                                "the server closed the connection (code {}: {})",
                                u16::from(f.code),
                                f.reason
                            ),
                            None => "the server closed the connection".to_owned(),
                        })
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Err(e.to_string()),
                    None => return Err("the connection was closed".to_owned()),
                }
            }
        };
        match tokio::time::timeout(config.timeout, answered).await {
            Ok(Ok(())) => times.push(started.elapsed()),
            Ok(Err(why)) => {
                return Err(report.fail(
                    "ping",
                    Exit::ServerGone,
                    why,
                    "see the server's log for why it closed the connection",
                ))
            }
            Err(_) => {
                return Err(report.fail(
                    "ping",
                    Exit::Timeout,
                    format!(
                        "no pong within {}",
                        humantime::format_duration(config.timeout)
                    ),
                    "a proxy in between may swallow pings; check its WebSocket settings",
                ))
            }
        }
    }
    times.sort();
    if let (Some(min), Some(max)) = (times.first(), times.last()) {
        let median = times[times.len() / 2];
        report.pass(
            "ping",
            format!(
                "{} round trips: min {} ms, median {} ms, max {} ms",
                times.len(),
                ms(*min),
                ms(median),
                ms(*max)
            ),
            json!({"pings": times.len(), "min_ms": ms(*min), "median_ms": ms(median), "max_ms": ms(*max)}),
        );
    }

    // A clean close.
    let frame = CloseFrame {
        code: CloseCode::Normal,
        reason: "doctor done".into(),
    };
    let started = Instant::now();
    let closed = async {
        sink.send(Message::Close(Some(frame))).await.ok()?;
        while let Some(next) = stream.next().await {
            match next {
                Ok(Message::Close(frame)) => {
                    return Some(frame.map_or(1005, |f| u16::from(f.code)))
                }
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
        None
    };
    match tokio::time::timeout(config.timeout, closed).await {
        Ok(Some(code)) => report.pass(
            "close",
            format!(
                "the server answered the close frame (code {code}) in {} ms",
                ms(started.elapsed())
            ),
            json!({"code": code, "ms": ms(started.elapsed())}),
        ),
        Ok(None) => {
            return Err(report.fail(
                "close",
                Exit::ServerGone,
                "the connection ended without the server's close frame".to_owned(),
                "a proxy in between may cut WebSocket connections; check its settings",
            ))
        }
        Err(_) => {
            return Err(report.fail(
                "close",
                Exit::Timeout,
                format!(
                    "no answer to the close frame within {}",
                    humantime::format_duration(config.timeout)
                ),
                "the server may be overloaded; see its log",
            ))
        }
    }
    Ok(())
}

/// Connects to the first address that answers.
async fn tcp(
    config: &DoctorConfig,
    report: &mut Report,
    addresses: &[SocketAddr],
    show: bool,
) -> anyhow::Result<(TcpStream, SocketAddr)> {
    let mut last = None;
    for &address in addresses {
        let started = Instant::now();
        match tokio::time::timeout(config.timeout, TcpStream::connect(address)).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                if show {
                    report.pass(
                        "tcp",
                        format!("connected to {address} in {} ms", ms(started.elapsed())),
                        json!({"address": address.to_string(), "ms": ms(started.elapsed())}),
                    );
                }
                return Ok((stream, address));
            }
            Ok(Err(e)) => last = Some((address, Some(e))),
            Err(_) => last = Some((address, None)),
        }
    }
    Err(match last {
        Some((address, Some(e))) if e.kind() == std::io::ErrorKind::ConnectionRefused => report
            .fail(
                "tcp",
                Exit::CannotConnect,
                format!("{address}: connection refused"),
                "is 'wschat serve' running, on that port? (a firewall may refuse too)",
            ),
        Some((address, Some(e))) => report.fail(
            "tcp",
            Exit::CannotConnect,
            format!("{address}: {e}"),
            "check the address and the network in between",
        ),
        Some((address, None)) => report.fail(
            "tcp",
            Exit::Timeout,
            format!(
                "{address}: no answer within {}",
                humantime::format_duration(config.timeout)
            ),
            "a firewall may drop the packets; check the port and the address",
        ),
        None => report.fail(
            "tcp",
            Exit::CannotConnect,
            "the name resolved to no address".to_owned(),
            "check the host name",
        ),
    })
}

fn system_roots() -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

/// For `wss://`: the TLS handshake, and what the certificate says.
async fn tls(
    config: &DoctorConfig,
    report: &mut Report,
    host: &str,
    stream: TcpStream,
    show: bool,
) -> anyhow::Result<MaybeTlsStream<TcpStream>> {
    if config.url.scheme() != "wss" {
        return Ok(MaybeTlsStream::Plain(stream));
    }
    let client = match config.tls.clone().map_or_else(system_roots, Ok) {
        Ok(client) => client,
        Err(e) => {
            return Err(report.fail(
                "tls",
                Exit::Failure,
                format!("cannot set up TLS: {e}"),
                "pass --ca FILE",
            ))
        }
    };
    let Ok(name) = ServerName::try_from(host.to_owned()) else {
        return Err(report.fail(
            "tls",
            Exit::Usage,
            format!("'{host}' cannot be a TLS server name"),
            "use the name the certificate was issued for",
        ));
    };
    let started = Instant::now();
    let stream = match tokio::time::timeout(
        config.timeout,
        TlsConnector::from(client).connect(name, stream),
    )
    .await
    {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            let why = e.to_string();
            let hint = if why.contains("UnknownIssuer") {
                "a private CA? pass it with --ca FILE"
            } else if why.contains("NotValidForName") {
                "the certificate does not name this host: connect by a name it was issued for"
            } else if why.contains("Expired") {
                "the certificate expired: renew it"
            } else if why.contains("InvalidContentType") || why.contains("corrupt message") {
                "is it a TLS server? try ws:// instead of wss://"
            } else {
                "check the server's certificate and TLS settings"
            };
            return Err(report.fail("tls", Exit::CannotConnect, why, hint));
        }
        Err(_) => {
            return Err(report.fail(
                "tls",
                Exit::Timeout,
                format!(
                    "no TLS handshake within {}",
                    humantime::format_duration(config.timeout)
                ),
                "is it a TLS server? try ws:// instead of wss://",
            ))
        }
    };
    if show {
        let elapsed = started.elapsed();
        let (_, connection) = stream.get_ref();
        let version = connection
            .protocol_version()
            .map_or_else(|| "?".to_owned(), |v| format!("{v:?}").replace('_', "."));
        let chain = connection.peer_certificates().unwrap_or_default();
        let mut detail = format!(
            "{version} in {} ms, a chain of {} certificate(s)",
            ms(elapsed),
            chain.len()
        );
        let mut data = json!({"version": version, "chain": chain.len(), "ms": ms(elapsed)});
        if let Some(leaf) = chain.first() {
            if let Ok((_, cert)) = x509_parser::parse_x509_certificate(leaf.as_ref()) {
                let names: Vec<String> = cert
                    .subject_alternative_name()
                    .ok()
                    .flatten()
                    .map(|san| {
                        san.value
                            .general_names
                            .iter()
                            .map(|n| match n {
                                x509_parser::extensions::GeneralName::DNSName(d) => (*d).to_owned(),
                                x509_parser::extensions::GeneralName::IPAddress(ip) => {
                                    match ip.len() {
                                        4 => <[u8; 4]>::try_from(*ip)
                                            .map(|b| std::net::IpAddr::from(b).to_string())
                                            .unwrap_or_default(),
                                        16 => <[u8; 16]>::try_from(*ip)
                                            .map(|b| std::net::IpAddr::from(b).to_string())
                                            .unwrap_or_default(),
                                        _ => String::new(),
                                    }
                                }
                                other => other.to_string(),
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let expires = cert.validity().not_after.timestamp();
                let expiry = u64::try_from(expires)
                    .ok()
                    .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s));
                let days = expiry.map(|at| match at.duration_since(SystemTime::now()) {
                    Ok(left) => (left.as_secs() / 86_400) as i64,
                    Err(past) => -((past.duration().as_secs() / 86_400) as i64),
                });
                let issuer = cert.issuer().to_string();
                detail.push_str(&format!("; for {}; issued by {issuer}", names.join(", ")));
                if let (Some(at), Some(days)) = (expiry, days) {
                    let at = humantime::format_rfc3339_seconds(at);
                    detail.push_str(&format!("; expires {at} (in {days} days)"));
                    data["not_after"] = json!(at.to_string());
                    data["days_left"] = json!(days);
                }
                data["names"] = json!(names);
                data["issuer"] = json!(issuer);
            }
        }
        report.pass("tls", detail, data);
    }
    Ok(MaybeTlsStream::Rustls(stream))
}

/// The WebSocket upgrade. `Ok(None)`: the server ignored the subprotocol asked for (ask again
/// without it).
async fn upgrade(
    config: &DoctorConfig,
    report: &mut Report,
    stream: MaybeTlsStream<TcpStream>,
    subprotocol: bool,
) -> anyhow::Result<Option<(Socket, Response)>> {
    let mut url = config.url.clone();
    url.query_pairs_mut()
        .append_pair("name", "doctor")
        .append_pair("quiet", "1")
        .append_pair("history", "0");
    let mut request = match url.as_str().into_client_request() {
        Ok(request) => request,
        Err(e) => {
            return Err(report.fail(
                "upgrade",
                Exit::Usage,
                format!("cannot make a request for {url}: {e}"),
                "check the URL",
            ))
        }
    };
    if let Some(token) = config.token.as_deref() {
        match bearer(token) {
            Ok(value) => {
                request.headers_mut().insert("authorization", value);
            }
            Err(_) => {
                return Err(report.fail(
                    "upgrade",
                    Exit::Usage,
                    "--token may hold only visible ASCII characters".to_owned(),
                    "check the token",
                ))
            }
        }
    }
    if subprotocol {
        request.headers_mut().insert(
            "sec-websocket-protocol",
            HeaderValue::from_static(protocol::SUBPROTOCOL),
        );
    }
    let started = Instant::now();
    let attempt = tokio_tungstenite::client_async_with_config(request, stream, None);
    let (socket, response) = match tokio::time::timeout(config.timeout, attempt).await {
        Ok(Ok(done)) => done,
        Ok(Err(WsError::Protocol(ProtocolError::SecWebSocketSubProtocolError(
            SubProtocolError::NoSubProtocol,
        )))) if subprotocol => return Ok(None),
        Ok(Err(WsError::Http(response))) => {
            let status = response.status();
            let body = super::connect::first_body_line(&response).unwrap_or_default();
            let hint = match status.as_u16() {
                401 => "the server wants a token: pass --token",
                403 => "refused by its origin or access rules: see the server's log",
                404 | 426 => "the WebSocket may be at another path: check the URL's path",
                429 | 503 => "the server is full or draining: try again later, or another instance",
                _ => "see the server's (or proxy's) log",
            };
            let detail = format!(
                "HTTP {} {}{}",
                status.as_u16(),
                status.canonical_reason().unwrap_or(""),
                if body.is_empty() {
                    String::new()
                } else {
                    format!(": {body}")
                }
            );
            return Err(report.fail(
                "upgrade",
                Exit::HandshakeRejected,
                detail.trim_end().to_owned(),
                hint,
            ));
        }
        Ok(Err(WsError::Protocol(ProtocolError::HttparseError(e)))) => {
            return Err(report.fail(
                "upgrade",
                Exit::CannotConnect,
                format!("the answer is not HTTP ({e})"),
                "is it a TLS server? try wss://",
            ))
        }
        Ok(Err(e)) => {
            return Err(report.fail(
                "upgrade",
                Exit::HandshakeRejected,
                e.to_string(),
                "is it a WebSocket endpoint? check the URL",
            ))
        }
        Err(_) => {
            return Err(report.fail(
                "upgrade",
                Exit::Timeout,
                format!(
                    "no answer to the upgrade within {}",
                    humantime::format_duration(config.timeout)
                ),
                "is it a TLS server? try wss://; or the server is overloaded",
            ))
        }
    };
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let chosen = header("sec-websocket-protocol");
    let mut detail = format!(
        "HTTP {} in {} ms; subprotocol {}",
        response.status().as_u16(),
        ms(started.elapsed()),
        chosen.as_deref().unwrap_or("none")
    );
    let mut headers = serde_json::Map::new();
    for name in [
        protocol::SERVER_HEADER,
        "server",
        "sec-websocket-extensions",
    ] {
        if let Some(value) = header(name) {
            detail.push_str(&format!("; {name}: {value}"));
            headers.insert(name.to_owned(), json!(value));
        }
    }
    report.pass(
        "upgrade",
        detail,
        json!({"status": response.status().as_u16(), "subprotocol": chosen, "headers": headers, "ms": ms(started.elapsed())}),
    );
    Ok(Some((socket, response)))
}
