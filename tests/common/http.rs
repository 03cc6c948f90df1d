//! Plain HTTP requests, and the server's state as an operator reads it (`/metrics`, VmRSS).

use std::io::{Read, Write};
use std::net::TcpStream;

use super::{Server, GUARD};

/// A parsed HTTP/1.1 response.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == &name.to_ascii_lowercase())
            .map(|(_, v)| v.as_str())
    }
}

/// Sends one `METHOD PATH` request over a fresh TCP connection and reads the whole response
/// (`Connection: close`, so the server ends it).
pub fn http_request(addr: &str, method: &str, path: &str) -> HttpResponse {
    http_request_with(addr, method, path, "")
}

/// [`http_request`] with extra header lines (each ending in `\r\n`).
pub fn http_request_with(addr: &str, method: &str, path: &str, headers: &str) -> HttpResponse {
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream.set_read_timeout(Some(GUARD)).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: wschat-tests\r\n{headers}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .unwrap_or_else(|e| panic!("read HTTP response: {e}"));
    let text = String::from_utf8(raw).expect("HTTP response is UTF-8");
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of headers in {text:?}"));
    let mut head_lines = head.split("\r\n");
    let status_line = head_lines.next().unwrap();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = head_lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    HttpResponse {
        status,
        headers,
        body,
    }
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    loop {
        let Some((size, after)) = rest.split_once("\r\n") else {
            return out;
        };
        let size = usize::from_str_radix(size.split(';').next().unwrap().trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.push_str(&after[..size]);
        rest = &after[size + 2..];
    }
}

/// Asserts that nothing in `text` looks like a panic or a debug dump.
pub fn assert_no_panic(text: &str) {
    for bad in [
        "panicked",
        "RUST_BACKTRACE",
        "stack backtrace",
        "Os {",
        "Error {",
        "kind:",
    ] {
        assert!(!text.contains(bad), "{bad:?} in output: {text}");
    }
}

/// The server's resident memory in KiB, from /proc.
pub fn rss_kib(server: &Server) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.proc.pid()))
        .expect("read /proc/PID/status of the server");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// One counter or gauge from the server's `/metrics`.
pub fn metric(server: &Server, name: &str) -> u64 {
    let auth = server
        .token
        .as_ref()
        .map(|token| format!("Authorization: Bearer {token}\r\n"))
        .unwrap_or_default();
    let response = http_request_with(&server.addr(), "GET", "/metrics", &auth);
    assert_eq!(response.status, 200);
    response
        .body
        .lines()
        .find_map(|l| l.strip_prefix(&format!("wschat_{name} ")))
        .unwrap_or_else(|| panic!("no metric {name} in {}", response.body))
        .parse()
        .unwrap()
}
