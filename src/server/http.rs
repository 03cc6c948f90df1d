//! The HTTP side of the port: WebSocket upgrades, the web page at `/`, `/healthz`, and `426`
//! for everything else.
//!
//! tungstenite alone rejects any request that is not an upgrade before user code runs, so hyper
//! parses every request and hands upgrades to tokio-tungstenite as an already-open socket.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

use super::access::TokenCheck;
use super::conn::{self, Params, ReadSide, Socket};
use super::Shared;
use crate::metrics::{Metrics, Snapshot};
use crate::protocol;

type Body = Full<Bytes>;

/// Largest HTTP request head accepted (hyper answers 431 past it).
const MAX_REQUEST_BYTES: usize = 16 * 1024;
/// The browser client: one self-contained page (HTML, CSS and script inline), served at `/`.
const PAGE: &str = include_str!("page.html");
/// The page loads nothing from anywhere: only its own inline script and style, and WebSockets.
const PAGE_CSP: &str = "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self' ws: wss:";

/// Serves one TCP connection: HTTP requests until one upgrades or the server stops.
pub(super) async fn serve<I: Socket>(shared: Arc<Shared>, stream: I, peer: SocketAddr) {
    let service = {
        let shared = shared.clone();
        service_fn(move |req| {
            let shared = shared.clone();
            async move { Ok::<_, Infallible>(route::<I>(shared, req, peer).await) }
        })
    };
    let connection = http1::Builder::new()
        // Bounded requests: at most 16 KiB of headers, 100 of them, sent within the timeout.
        .max_buf_size(MAX_REQUEST_BYTES)
        .max_headers(100)
        .timer(TokioTimer::new())
        .header_read_timeout(shared.config.header_timeout)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = shared.stopping.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = result {
        // Malformed requests and peers that hang up are the client's problem, not the server's.
        tracing::debug!(%peer, "http connection ended: {e}");
    }
}

/// The socket under an upgraded connection, as the side tungstenite reads (after what hyper
/// read ahead) and the side the connection writes (see `conn::socket`).
fn split_upgraded<I: Socket>(
    upgraded: hyper::upgrade::Upgraded,
) -> Result<(ReadSide<I::Read>, I::Write), String> {
    // hyper hands back the type it was given: an error here would be a bug, logged as one.
    let parts = upgraded.downcast::<TokioIo<I>>().map_err(|_| {
        let why = "the upgraded connection is not the socket it was accepted as";
        tracing::error!("{why}");
        why.to_owned()
    })?;
    let (read, write) = parts.io.into_inner().split();
    Ok((ReadSide::new(parts.read_buf, read), write))
}

/// Answers one request on a connection over `I`.
async fn route<I: Socket>(
    shared: Arc<Shared>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Body> {
    if wants_upgrade(&req) {
        return upgrade::<I>(shared, req, peer).await;
    }
    match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/metrics") => {
            if shared.config.access.check_token(req.headers(), None) != TokenCheck::Accepted {
                Metrics::inc(&shared.metrics.auth_failures);
                tracing::info!(%peer, "metrics refused: no or wrong token");
                return unauthorized("token required\n");
            }
            let (members, rooms) = shared.hub.counts();
            let snapshot = Snapshot {
                rooms,
                members,
                history: shared.store.kept(),
                draining: shared.is_draining(),
                storage_failing: shared.store.health().is_err(),
            };
            let mut body = shared.metrics.render(&snapshot);
            if let Some(directory) = &shared.directory {
                body.push_str(&directory.render_metrics());
            }
            let mut response = Response::new(Full::new(Bytes::from(body)));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        (&Method::GET | &Method::HEAD, "/") => page(),
        (&Method::GET | &Method::HEAD, "/healthz") => {
            if shared.is_draining() {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            } else if let Err(why) = shared.store.health() {
                // Messages are refused until it can store them again: send clients elsewhere.
                let body = format!("history cannot be stored: {why}\n");
                text(StatusCode::SERVICE_UNAVAILABLE, body)
            } else if let Some(directory) = &shared.directory {
                // Still 200: this instance serves its clients while the others are away.
                text(StatusCode::OK, format!("ok\n{}\n", directory.health()))
            } else {
                text(StatusCode::OK, "ok\n")
            }
        }
        _ => {
            let mut response = text(
                StatusCode::UPGRADE_REQUIRED,
                "this is a WebSocket endpoint: connect with a WebSocket client, e.g. 'wschat join NAME'\n",
            );
            response
                .headers_mut()
                .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
            response
        }
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// 401, asking for a bearer token.
fn unauthorized(body: &'static str) -> Response<Body> {
    let mut response = text(StatusCode::UNAUTHORIZED, body);
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

fn page() -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from_static(PAGE.as_bytes())));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(PAGE_CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

fn header_has_token(req: &Request<Incoming>, name: header::HeaderName, token: &str) -> bool {
    req.headers()
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// A request that asks to become a WebSocket (RFC 6455 §4.2.1), even if it does so badly.
fn wants_upgrade(req: &Request<Incoming>) -> bool {
    header_has_token(req, header::UPGRADE, "websocket")
}

async fn upgrade<I: Socket>(
    shared: Arc<Shared>,
    mut req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Body> {
    let key = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned();
    let version_ok = req
        .headers()
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_some_and(|v| v == "13");
    let Some(key) = key.filter(|_| {
        req.method() == Method::GET
            && req.version() >= Version::HTTP_11
            && version_ok
            && header_has_token(&req, header::CONNECTION, "upgrade")
    }) else {
        let mut response = text(
            StatusCode::BAD_REQUEST,
            "bad WebSocket handshake: expected GET with Connection: Upgrade, Sec-WebSocket-Key and Sec-WebSocket-Version: 13\n",
        );
        response.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return response;
    };
    let metrics = &shared.metrics;
    if let Err(refusal) = shared.config.access.check_origin(req.headers()) {
        Metrics::inc(&metrics.origin_rejections);
        let origin = req.headers().get(header::ORIGIN);
        if shared.config.access.warned.first(&refusal) {
            tracing::warn!(%peer, ?origin, "{}", refusal.log());
        } else {
            tracing::info!(%peer, ?origin, "{}", refusal.log());
        }
        return text(StatusCode::FORBIDDEN, refusal.body());
    }
    let query = req.uri().query().unwrap_or("");
    let query_token = url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned());
    let authorized = match shared
        .config
        .access
        .check_token(req.headers(), query_token.as_deref())
    {
        TokenCheck::Accepted => true,
        TokenCheck::CloseAfterUpgrade => false,
        TokenCheck::RefuseHttp => {
            Metrics::inc(&metrics.auth_failures);
            tracing::info!(%peer, "refused: no or wrong token");
            return unauthorized("missing or wrong token\n");
        }
    };
    let slot = match shared.capacity.acquire(peer.ip()) {
        Ok(slot) => slot,
        Err(why) => {
            Metrics::inc(&metrics.capacity_rejections);
            tracing::warn!(%peer, "refused: {why}");
            let mut response = text(StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n"));
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            return response;
        }
    };
    let wants_subprotocol =
        header_has_token(&req, header::SEC_WEBSOCKET_PROTOCOL, protocol::SUBPROTOCOL);
    let params = Params::from_query(query);

    let ws_config = WebSocketConfig::default()
        .max_message_size(Some(shared.config.max_message_bytes))
        .max_frame_size(Some(shared.config.max_message_bytes))
        // Sized for chat lines, not for the library's 128 KiB default: an idle client costs
        // this much per connection (allocated and zero-filled up front), an eighth of what it
        // costs in all. 512 bytes hold a few chat frames per read; a larger frame grows the
        // buffer to its length when it comes (read 512 bytes at a time).
        .read_buffer_size(512)
        // tungstenite only reads: the connection writes every frame itself, and what
        // tungstenite would write on its own goes nowhere (see `conn::socket`), unbuffered.
        .write_buffer_size(0);
    let raw = shared.config.raw;
    let limits = shared.config.limits().header_value();
    // With --redis, the room's history and the name are made ready in Redis first.
    let mut registration = conn::register(&shared, &params, authorized, peer).await;
    let tasks = shared.tasks.clone();
    // Only the upgrade goes into the connection's task, not the request: its headers share
    // hyper's 8 KiB read buffer, which would stay allocated for as long as the client is.
    let on_upgrade = hyper::upgrade::on(&mut req);
    tasks.spawn(async move {
        // Taken apart before anything else is awaited, so the task keeps none of the pieces.
        let sides = match on_upgrade.await {
            Ok(upgraded) => split_upgraded::<I>(upgraded),
            Err(e) => Err(e.to_string()),
        };
        match sides {
            Ok((read, write)) => {
                let mut ws =
                    WebSocketStream::from_raw_socket(read, Role::Server, Some(ws_config)).await;
                conn::run(&shared, &mut ws, write, &mut registration, peer).await;
            }
            Err(e) => {
                tracing::debug!(%peer, "upgrade failed: {e}");
                registration.abandon(&shared);
            }
        }
        drop(slot);
    });

    let mut response = Response::new(Body::default());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    // The accept key is base64, always a valid header value.
    if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    // Every client may read what it is allowed, quiet ones (which get no welcome) and those
    // of a raw relay alike; `send` paces itself by it.
    if let Ok(limits) = HeaderValue::from_str(&limits) {
        headers.insert(protocol::LIMITS_HEADER, limits);
    }
    // A raw relay does not speak the wschat protocol, so it does not claim to.
    if !raw {
        if wants_subprotocol {
            headers.insert(
                header::SEC_WEBSOCKET_PROTOCOL,
                HeaderValue::from_static(protocol::SUBPROTOCOL),
            );
        }
        headers.insert(
            protocol::SERVER_HEADER,
            HeaderValue::from_static(protocol::PROTOCOL_VERSION),
        );
    }
    response
}
