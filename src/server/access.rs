//! Who may open a WebSocket: the shared token and the Origin check.

use hyper::header::{self, HeaderMap};
use subtle::ConstantTimeEq;

/// Access rules fixed at start.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// Clients must present this token (Authorization: Bearer, or `?token=` for browsers).
    pub token: Option<String>,
    /// Origins allowed besides the server's own (`*` allows any).
    pub allowed_origins: Vec<String>,
    /// The server listens on loopback only: a page can be "its own" only when it was loaded
    /// under a loopback name. Without this, a page whose DNS name was rebound to 127.0.0.1
    /// would pass as same-origin (its Origin and Host agree).
    pub loopback_only: bool,
}

/// Whether a Host header value names this machine's loopback interface.
fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost"
        || name.ends_with(".localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// How a request stands with the token.
#[derive(Debug, PartialEq, Eq)]
pub enum TokenCheck {
    /// No token needed, or the right one presented.
    Accepted,
    /// A header with the wrong token, or no token from a client that is not a browser (no
    /// `Origin`): refuse with 401 before upgrading.
    RefuseHttp,
    /// A browser (it sends `Origin`, and cannot send a header) with no or a wrong `?token=`:
    /// upgrade, then close with 4001, as a page cannot read an HTTP status from a failed
    /// WebSocket handshake.
    CloseAfterUpgrade,
}

fn same(a: &str, b: &str) -> bool {
    // Constant time for equal lengths; the length of the expected token is not a secret
    // worth the complexity.
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

impl Access {
    pub fn check_token(&self, headers: &HeaderMap, query_token: Option<&str>) -> TokenCheck {
        let Some(expected) = &self.token else {
            return TokenCheck::Accepted;
        };
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.strip_prefix("Bearer ").unwrap_or(v).trim());
        match (bearer, query_token) {
            (Some(given), _) if same(given, expected) => TokenCheck::Accepted,
            (Some(_), _) => TokenCheck::RefuseHttp,
            (None, Some(given)) if same(given, expected) => TokenCheck::Accepted,
            (None, _) if headers.contains_key(header::ORIGIN) => TokenCheck::CloseAfterUpgrade,
            (None, _) => TokenCheck::RefuseHttp,
        }
    }

    /// Cross-site WebSocket hijacking guard: a browser always sends Origin, so a page from
    /// another site is refused unless allowed. Clients that send no Origin (CLIs) pass.
    pub fn origin_allowed(&self, headers: &HeaderMap) -> bool {
        let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
            return true;
        };
        if self
            .allowed_origins
            .iter()
            .any(|o| o == "*" || o.trim_end_matches('/').eq_ignore_ascii_case(origin))
        {
            return true;
        }
        // The server's own page: the Origin's host:port is the Host the request was sent to.
        let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
        let origin_host = origin
            .split_once("://")
            .map(|(_, rest)| rest.trim_end_matches('/'));
        matches!((host, origin_host), (Some(h), Some(o))
            if h.eq_ignore_ascii_case(o) && (!self.loopback_only || is_loopback_host(h)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(k.clone(), HeaderValue::from_str(v).unwrap());
        }
        map
    }

    #[test]
    fn tokens() {
        let open = Access::default();
        assert_eq!(
            open.check_token(&HeaderMap::new(), None),
            TokenCheck::Accepted
        );
        let locked = Access {
            token: Some("s3cret".into()),
            ..Access::default()
        };
        let bearer = |t: &str| headers(&[(header::AUTHORIZATION, &format!("Bearer {t}"))]);
        assert_eq!(
            locked.check_token(&bearer("s3cret"), None),
            TokenCheck::Accepted
        );
        assert_eq!(
            locked.check_token(&bearer("nope"), None),
            TokenCheck::RefuseHttp
        );
        assert_eq!(
            locked.check_token(&HeaderMap::new(), Some("s3cret")),
            TokenCheck::Accepted
        );
        // A client that is not a browser hears it in HTTP.
        assert_eq!(
            locked.check_token(&HeaderMap::new(), Some("s3cre")),
            TokenCheck::RefuseHttp
        );
        assert_eq!(
            locked.check_token(&HeaderMap::new(), None),
            TokenCheck::RefuseHttp
        );
        // A page cannot read an HTTP status: it is told after the upgrade.
        let page = headers(&[(header::ORIGIN, "http://127.0.0.1:8080")]);
        assert_eq!(
            locked.check_token(&page, Some("s3cre")),
            TokenCheck::CloseAfterUpgrade
        );
        assert_eq!(
            locked.check_token(&page, None),
            TokenCheck::CloseAfterUpgrade
        );
        assert_eq!(
            locked.check_token(&page, Some("s3cret")),
            TokenCheck::Accepted
        );
    }

    #[test]
    fn origins() {
        let access = Access {
            allowed_origins: vec!["https://chat.example".into()],
            ..Access::default()
        };
        let req =
            |origin: &str| headers(&[(header::HOST, "127.0.0.1:8080"), (header::ORIGIN, origin)]);
        assert!(access.origin_allowed(&headers(&[(header::HOST, "127.0.0.1:8080")])));
        assert!(access.origin_allowed(&req("http://127.0.0.1:8080")));
        assert!(access.origin_allowed(&req("https://chat.example")));
        assert!(!access.origin_allowed(&req("https://evil.example")));
        assert!(!access.origin_allowed(&req("http://127.0.0.1:9999")));
        assert!(!access.origin_allowed(&req("null")));
        // Listening on loopback, a rebound name is not the server's own page.
        let local = Access {
            loopback_only: true,
            ..Access::default()
        };
        let rebound = headers(&[
            (header::HOST, "attacker.example:8080"),
            (header::ORIGIN, "http://attacker.example:8080"),
        ]);
        assert!(!local.origin_allowed(&rebound));
        assert!(Access::default().origin_allowed(&rebound));
        for host in [
            "127.0.0.1:8080",
            "localhost:8080",
            "[::1]:8080",
            "app.localhost",
        ] {
            let own = headers(&[
                (header::HOST, host),
                (header::ORIGIN, &format!("http://{host}")),
            ]);
            assert!(local.origin_allowed(&own), "{host}");
        }
        let any = Access {
            allowed_origins: vec!["*".into()],
            ..Access::default()
        };
        assert!(any.origin_allowed(&req("https://evil.example")));
    }
}
