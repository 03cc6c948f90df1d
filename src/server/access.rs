//! Who may open a WebSocket: the shared token and the Origin check.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use hyper::header::{self, HeaderMap};
use subtle::ConstantTimeEq;

/// Access rules fixed at start.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// Clients must present this token (Authorization: Bearer, or `?token=` for browsers).
    pub token: Option<String>,
    /// Origins allowed besides the server's own (`*` allows any; `null` allows pages opened
    /// from a file).
    pub allowed_origins: Vec<String>,
    /// The addresses people use to reach this server (`--public-url`): their origins are
    /// allowed (a proxy in front may rewrite Host), and their host names count as the
    /// server's own names.
    pub public: Vec<PublicUrl>,
    /// Whether each kind of refusal was logged at WARN already (later ones go to INFO).
    pub warned: Warned,
}

/// An address the operator gave with `--public-url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicUrl {
    /// `scheme://host[:port]`, as a browser writes it in `Origin` (no default port).
    pub origin: String,
    /// The host name, lower case, without port or brackets.
    pub host: String,
}

impl PublicUrl {
    /// Reads `http(s)://host[:port][/...]` (`ws(s)://` is taken as `http(s)://`).
    pub fn parse(text: &str) -> Result<PublicUrl, String> {
        let mut url = url::Url::parse(text.trim())
            .map_err(|e| format!("'{text}' is not a URL ({e}); e.g. https://chat.example.com"))?;
        let scheme = match url.scheme() {
            "http" | "ws" => "http",
            "https" | "wss" => "https",
            other => {
                return Err(format!(
                    "'{text}': the scheme must be http or https, not '{other}'"
                ))
            }
        };
        // `set_scheme` refuses only changes between special and other schemes; these are
        // all special.
        let _ = url.set_scheme(scheme);
        let Some(host) = url.host_str().filter(|h| !h.is_empty()) else {
            return Err(format!("'{text}' has no host name"));
        };
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .trim_end_matches('.')
            .to_ascii_lowercase();
        Ok(PublicUrl {
            origin: url.origin().ascii_serialization(),
            host,
        })
    }
}

/// Which refusals were logged at WARN: the first of each kind is, so that an operator sees
/// what to change; the rest are logged at INFO, so that a hostile page cannot flood the log.
#[derive(Debug, Clone, Default)]
pub struct Warned {
    unknown_host: Arc<AtomicBool>,
    file_page: Arc<AtomicBool>,
}

impl Warned {
    /// True the first time only, for `refusal`'s kind.
    pub fn first(&self, refusal: &OriginRefusal) -> bool {
        let flag = match refusal {
            OriginRefusal::Foreign => return false,
            OriginRefusal::UnknownHost(_) => &self.unknown_host,
            OriginRefusal::File => &self.file_page,
        };
        !flag.swap(true, Ordering::Relaxed)
    }
}

/// Why a page may not open a WebSocket here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginRefusal {
    /// A page of another site.
    Foreign,
    /// A page whose Origin is its Host, but under a name that is not known to be this
    /// server's (DNS rebinding: the attacker's name, made to resolve to this server).
    UnknownHost(String),
    /// A page opened from a file (`Origin: null`).
    File,
}

impl OriginRefusal {
    /// The one-line body of the 403.
    pub fn body(&self) -> String {
        match self {
            OriginRefusal::Foreign => {
                "this origin may not open a WebSocket here (see 'wschat serve --allow-origin')\n"
                    .to_owned()
            }
            OriginRefusal::UnknownHost(host) => format!(
                "'{host}' is not a name of this server: reach it by its IP address or localhost, \
                 or start it with 'wschat serve --public-url http://{host}/'\n"
            ),
            OriginRefusal::File => "pages opened from a file may not open a WebSocket here \
                 (see 'wschat serve --allow-origin null')\n"
                .to_owned(),
        }
    }

    /// The log line: what happened and what the operator can do about it.
    pub fn log(&self) -> String {
        match self {
            OriginRefusal::Foreign => {
                "refused: a page of another origin (allow it with --allow-origin)".to_owned()
            }
            OriginRefusal::UnknownHost(host) => format!(
                "refused: a page served under the name '{host}', which is not known to be this \
                 server's (a DNS rebinding attack looks like this); if it is, start with \
                 --public-url http://{host}/ (or https://)"
            ),
            OriginRefusal::File => "refused: a page opened from a file (Origin: null); \
                 --allow-origin null allows such pages (any local file could then connect)"
                .to_owned(),
        }
    }
}

/// The host name of a Host header value (or of an origin's authority): lower case, without
/// port, brackets or a trailing dot.
fn host_name(authority: &str) -> String {
    let name = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => authority
            .rsplit_once(':')
            .map_or(authority, |(name, _)| name),
    };
    // A DNS name has at most 253 characters: a longer Host is cut (it is only shown).
    let name: String = name.trim_end_matches('.').chars().take(253).collect();
    name.to_ascii_lowercase()
}

/// Whether a host name cannot have been rebound: an IP address, or a loopback name (which
/// browsers resolve to loopback themselves).
fn is_fixed_host(name: &str) -> bool {
    name == "localhost" || name.ends_with(".localhost") || name.parse::<std::net::IpAddr>().is_ok()
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

/// The credentials of an `Authorization` header: what follows the `Bearer` scheme, whose name
/// is case-insensitive (RFC 7235 §2.1), or the whole value when it names no scheme.
fn bearer_token(value: &str) -> &str {
    let value = value.trim();
    match value.split_once([' ', '\t']) {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
        _ => value,
    }
}

impl Access {
    pub fn check_token(&self, headers: &HeaderMap, query_token: Option<&str>) -> TokenCheck {
        let Some(expected) = &self.token else {
            return TokenCheck::Accepted;
        };
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(bearer_token);
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
    ///
    /// The server's own page is one whose Origin is the Host it was sent to, under a name
    /// that cannot have been rebound to this server by someone else's DNS: an IP address, a
    /// loopback name, or a `--public-url` host. Otherwise any site could make its own name
    /// resolve to this server's address (DNS rebinding) and pass as same-origin.
    pub fn check_origin(&self, headers: &HeaderMap) -> Result<(), OriginRefusal> {
        let Some(origin) = headers.get(header::ORIGIN) else {
            return Ok(());
        };
        let Ok(origin) = origin.to_str() else {
            return Err(OriginRefusal::Foreign);
        };
        let origin = origin.trim().trim_end_matches('/');
        let listed = |o: &str| o == "*" || o.trim_end_matches('/').eq_ignore_ascii_case(origin);
        if self.allowed_origins.iter().any(|o| listed(o))
            || self.public.iter().any(|p| listed(&p.origin))
        {
            return Ok(());
        }
        if origin.eq_ignore_ascii_case("null") {
            return Err(OriginRefusal::File);
        }
        // The server's own page: the Origin's host:port is the Host the request was sent to.
        let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
        let origin_host = origin.split_once("://").map(|(_, rest)| rest);
        match (host, origin_host) {
            (Some(h), Some(o)) if h.trim().eq_ignore_ascii_case(o) => {
                let name = host_name(h.trim());
                if is_fixed_host(&name) || self.public.iter().any(|p| p.host == name) {
                    Ok(())
                } else {
                    Err(OriginRefusal::UnknownHost(name))
                }
            }
            _ => Err(OriginRefusal::Foreign),
        }
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
    fn bearer_scheme_is_case_insensitive() {
        let locked = Access {
            token: Some("s3cret".into()),
            ..Access::default()
        };
        for value in [
            "Bearer s3cret",
            "bearer s3cret",
            "BEARER s3cret",
            "bEaReR   s3cret ",
            "s3cret",
        ] {
            let given = headers(&[(header::AUTHORIZATION, value)]);
            assert_eq!(
                locked.check_token(&given, None),
                TokenCheck::Accepted,
                "{value}"
            );
        }
        for value in ["Basic s3cret", "bearer", "bearers3cret", "bearer nope"] {
            let given = headers(&[(header::AUTHORIZATION, value)]);
            assert_eq!(
                locked.check_token(&given, None),
                TokenCheck::RefuseHttp,
                "{value}"
            );
        }
    }

    #[test]
    fn origins() {
        let access = Access {
            allowed_origins: vec!["https://chat.example".into()],
            ..Access::default()
        };
        let req =
            |origin: &str| headers(&[(header::HOST, "127.0.0.1:8080"), (header::ORIGIN, origin)]);
        assert!(access
            .check_origin(&headers(&[(header::HOST, "127.0.0.1:8080")]))
            .is_ok());
        assert!(access.check_origin(&req("http://127.0.0.1:8080")).is_ok());
        assert!(access.check_origin(&req("https://chat.example")).is_ok());
        assert_eq!(
            access.check_origin(&req("https://evil.example")),
            Err(OriginRefusal::Foreign)
        );
        assert_eq!(
            access.check_origin(&req("http://127.0.0.1:9999")),
            Err(OriginRefusal::Foreign)
        );
        assert_eq!(access.check_origin(&req("null")), Err(OriginRefusal::File));
        let files = Access {
            allowed_origins: vec!["null".into()],
            ..Access::default()
        };
        assert!(files.check_origin(&req("null")).is_ok());

        // A rebound name is never the server's own page, wherever it listens.
        let rebound = headers(&[
            (header::HOST, "attacker.example:8080"),
            (header::ORIGIN, "http://attacker.example:8080"),
        ]);
        assert_eq!(
            Access::default().check_origin(&rebound),
            Err(OriginRefusal::UnknownHost("attacker.example".into()))
        );
        for host in [
            "127.0.0.1:8080",
            "192.168.1.20:8080",
            "localhost:8080",
            "[::1]:8080",
            "[fe80::1]",
            "app.localhost",
            "LOCALHOST.:8080",
        ] {
            let own = headers(&[
                (header::HOST, host),
                (header::ORIGIN, &format!("http://{host}")),
            ]);
            assert!(Access::default().check_origin(&own).is_ok(), "{host}");
        }

        // Names the operator gave are the server's own, and so are their origins behind a
        // proxy that rewrites Host.
        let public = Access {
            public: vec![
                PublicUrl::parse("https://chat.example.com").unwrap(),
                PublicUrl::parse("http://Intranet.Example:8080/chat").unwrap(),
            ],
            ..Access::default()
        };
        let own = headers(&[
            (header::HOST, "intranet.example:8080"),
            (header::ORIGIN, "http://intranet.example:8080"),
        ]);
        assert!(public.check_origin(&own).is_ok());
        let proxied = headers(&[
            (header::HOST, "10.0.0.11:8080"),
            (header::ORIGIN, "https://chat.example.com"),
        ]);
        assert!(public.check_origin(&proxied).is_ok());
        assert!(public.check_origin(&rebound).is_err());

        let any = Access {
            allowed_origins: vec!["*".into()],
            ..Access::default()
        };
        assert!(any.check_origin(&req("https://evil.example")).is_ok());
    }

    #[test]
    fn public_urls() {
        let url = PublicUrl::parse("https://Chat.Example.com/").unwrap();
        assert_eq!(url.origin, "https://chat.example.com");
        assert_eq!(url.host, "chat.example.com");
        let url = PublicUrl::parse("wss://chat.example.com:8443/ws").unwrap();
        assert_eq!(url.origin, "https://chat.example.com:8443");
        assert_eq!(
            PublicUrl::parse("http://[::1]:80").unwrap().origin,
            "http://[::1]"
        );
        assert_eq!(PublicUrl::parse("http://[::1]:80").unwrap().host, "::1");
        assert!(PublicUrl::parse("chat.example.com").is_err());
        assert!(PublicUrl::parse("ftp://chat.example.com").is_err());
    }
}
