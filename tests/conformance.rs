//! The most important RFC 6455 cases against `wschat serve --raw --echo`, always run (the full
//! Autobahn suite is `scripts/autobahn.sh`). Frames are built byte by byte over a plain
//! `TcpStream` after a hand-written handshake, so the test controls masking, RSV bits, opcodes
//! and lengths, which a WebSocket library would not let it get wrong.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;

use common::{Server, GUARD};

const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CONTINUATION: u8 = 0x0;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// One frame's bytes: FIN, RSV bits (0..=7), opcode, an optional masking key, the payload.
/// Lengths take the shortest encoding (7 bits, then 16, then 64).
fn frame(fin: bool, rsv: u8, opcode: u8, mask: Option<[u8; 4]>, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![(u8::from(fin) << 7) | (rsv << 4) | opcode];
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n @ 0..=125 => out.push(mask_bit | n as u8),
        n @ 126..=0xffff => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(key) => {
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// A well-formed (masked, no RSV bits) client frame.
fn client(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    frame(fin, 0, opcode, Some(MASK), payload)
}

fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(reason);
    payload
}

/// A frame the server sent.
#[derive(Debug)]
struct Received {
    fin: bool,
    rsv: u8,
    opcode: u8,
    payload: Vec<u8>,
}

impl Received {
    fn close_code(&self) -> Option<u16> {
        (self.opcode == CLOSE && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
}

/// A client speaking WebSocket by hand over a plain TCP socket.
struct RawClient {
    stream: TcpStream,
    /// Frames the server sent before the client's first message was echoed.
    preamble: Vec<Received>,
}

impl RawClient {
    /// Connects and completes the opening handshake; panics unless the server answers 101.
    fn connect(server: &Server) -> RawClient {
        let mut stream = TcpStream::connect(server.addr()).expect("connect");
        stream.set_read_timeout(Some(GUARD)).unwrap();
        stream.set_write_timeout(Some(GUARD)).unwrap();
        stream.set_nodelay(true).unwrap();
        write!(
            stream,
            "GET / HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            server.addr()
        )
        .unwrap();
        // Byte by byte, so no frame bytes after the head are swallowed.
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            stream.read_exact(&mut byte).expect("read the handshake");
            head.push(byte[0]);
            assert!(head.len() < 4096, "handshake response too long");
        }
        let head = String::from_utf8_lossy(&head);
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
            "{head}"
        );
        let mut client = RawClient {
            stream,
            preamble: Vec::new(),
        };
        client.sync();
        client
    }

    /// Waits until the server reads this connection's frames: a ping (answered by the
    /// WebSocket layer) and a text message (echoed through the room, after anything the
    /// server queued for this client at join). Data frames that came first go to `preamble`.
    fn sync(&mut self) {
        let mut bytes = client(true, PING, b"sync");
        bytes.extend(client(true, TEXT, b"sync"));
        self.send(&bytes);
        let (mut pong, mut echo) = (false, false);
        while !(pong && echo) {
            let frame = self.read_frame();
            match (frame.opcode, frame.payload.as_slice()) {
                (PONG, b"sync") if !pong => pong = true,
                (TEXT, b"sync") if !echo => echo = true,
                _ => self.preamble.push(frame),
            }
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write a frame");
    }

    /// Reads one frame from the server; server frames are never masked.
    fn read_frame(&mut self) -> Received {
        let mut head = [0u8; 2];
        self.stream
            .read_exact(&mut head)
            .expect("a frame from the server");
        assert_eq!(head[1] & 0x80, 0, "the server masked a frame");
        let len = match head[1] & 0x7f {
            126 => {
                let mut b = [0u8; 2];
                self.stream.read_exact(&mut b).unwrap();
                u64::from(u16::from_be_bytes(b))
            }
            127 => {
                let mut b = [0u8; 8];
                self.stream.read_exact(&mut b).unwrap();
                u64::from_be_bytes(b)
            }
            n => u64::from(n),
        };
        assert!(len < 1 << 24, "absurd frame length {len}");
        let mut payload = vec![0u8; len as usize];
        self.stream.read_exact(&mut payload).unwrap();
        Received {
            fin: head[0] & 0x80 != 0,
            rsv: (head[0] >> 4) & 0x7,
            opcode: head[0] & 0x0f,
            payload,
        }
    }

    /// Reads frames until the server's close frame; returns its code. Then the server must end
    /// the TCP connection too (EOF or reset), within the guard.
    fn expect_close(&mut self) -> u16 {
        let code = loop {
            let frame = self.read_frame();
            if frame.opcode == CLOSE {
                break frame
                    .close_code()
                    .expect("a close frame with a status code");
            }
        };
        let mut rest = Vec::new();
        match self.stream.read_to_end(&mut rest) {
            Ok(_) => assert!(rest.is_empty(), "bytes after the close frame: {rest:?}"),
            Err(e) => assert!(
                matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe),
                "the server did not end the connection after its close frame: {e}"
            ),
        }
        code
    }

    /// Sends `bytes` and expects the server to close with `code`.
    fn expect_refused(server: &Server, bytes: &[u8], code: u16, what: &str) {
        let mut client = RawClient::connect(server);
        // The server may close before it has read everything; a failed write is fine.
        let _ = client.stream.write_all(bytes);
        assert_eq!(client.expect_close(), code, "{what}");
    }
}

fn echo_server(extra: &[&str]) -> Server {
    let mut args = vec!["--raw", "--echo", "--rate", "0"];
    args.extend_from_slice(extra);
    Server::start(&args)
}

#[test]
fn a_raw_relay_sends_no_frames_of_its_own() {
    // `--raw` is a plain relay: no envelopes, no notices, nothing but the echo. An echo server
    // that greets its client first fails most of the Autobahn suite.
    let server = echo_server(&[]);
    let client = RawClient::connect(&server);
    let preamble: Vec<String> = client
        .preamble
        .iter()
        .map(|f| format!("{:#x} {}", f.opcode, String::from_utf8_lossy(&f.payload)))
        .collect();
    assert!(
        preamble.is_empty(),
        "the raw relay sent frames before echoing anything: {preamble:?}"
    );
}

#[test]
fn text_and_binary_messages_are_echoed_unchanged() {
    let server = echo_server(&[]);
    let mut c = RawClient::connect(&server);
    c.send(&client(true, TEXT, "héllo".as_bytes()));
    let echo = c.read_frame();
    assert_eq!((echo.fin, echo.rsv, echo.opcode), (true, 0, TEXT));
    assert_eq!(echo.payload, "héllo".as_bytes());
    let bytes: Vec<u8> = (0..=255).collect();
    c.send(&client(true, BINARY, &bytes));
    let echo = c.read_frame();
    assert_eq!((echo.opcode, echo.payload), (BINARY, bytes));
    // An empty text message is a message too.
    c.send(&client(true, TEXT, b""));
    let echo = c.read_frame();
    assert_eq!((echo.opcode, echo.payload.len()), (TEXT, 0));
}

#[test]
fn a_fragmented_text_message_is_echoed_reassembled_with_a_ping_in_between() {
    let server = echo_server(&[]);
    let mut c = RawClient::connect(&server);
    // "é" (0xc3 0xa9) split across two fragments is valid, and a control frame may come
    // between the fragments of a message (RFC 6455 §5.4).
    let mut bytes = client(false, TEXT, b"Hel");
    bytes.extend(client(false, CONTINUATION, b"lo w\xc3"));
    bytes.extend(client(true, PING, b"in between"));
    bytes.extend(client(false, CONTINUATION, b"\xa9rld"));
    bytes.extend(client(true, CONTINUATION, b"!"));
    c.send(&bytes);
    let (mut pong, mut text) = (None, None);
    while pong.is_none() || text.is_none() {
        let frame = c.read_frame();
        match frame.opcode {
            PONG => pong = Some(frame.payload),
            TEXT => {
                assert!(frame.fin, "the echo is one unfragmented frame");
                text = Some(frame.payload);
            }
            other => panic!("unexpected frame opcode {other:#x}: {frame:?}"),
        }
    }
    assert_eq!(pong.unwrap(), b"in between");
    assert_eq!(String::from_utf8(text.unwrap()).unwrap(), "Hello wérld!");
}

#[test]
fn a_ping_is_answered_with_a_pong_carrying_the_same_payload() {
    let server = echo_server(&[]);
    let mut c = RawClient::connect(&server);
    for payload in [
        Vec::new(),
        b"ping".to_vec(),
        (0..125u8).collect::<Vec<u8>>(),
    ] {
        c.send(&client(true, PING, &payload));
        let pong = c.read_frame();
        assert_eq!((pong.fin, pong.opcode), (true, PONG));
        assert_eq!(pong.payload, payload);
    }
    // An unsolicited pong is ignored: the connection goes on.
    c.send(&client(true, PONG, b"unsolicited"));
    c.send(&client(true, TEXT, b"after"));
    assert_eq!(c.read_frame().payload, b"after");
}

#[test]
fn the_close_handshake_is_answered_and_the_connection_ends() {
    let server = echo_server(&[]);
    let mut c = RawClient::connect(&server);
    c.send(&client(true, CLOSE, &close_payload(1000, b"bye")));
    assert_eq!(c.expect_close(), 1000);
    // A close frame without a status code is answered too (with an empty close or 1000).
    let mut c = RawClient::connect(&server);
    c.send(&client(true, CLOSE, b""));
    let reply = c.read_frame();
    assert_eq!(reply.opcode, CLOSE);
    assert!(
        reply.payload.is_empty() || reply.close_code() == Some(1000),
        "{reply:?}"
    );
    // Application codes (3000-4999) are valid and echoed.
    let mut c = RawClient::connect(&server);
    c.send(&client(true, CLOSE, &close_payload(4321, b"")));
    assert_eq!(c.expect_close(), 4321);
}

#[test]
fn the_close_handshake_is_answered_while_echoes_are_still_queued() {
    // RFC 6455 §5.5.1: an endpoint that receives a close frame must answer it. Here the close
    // arrives right behind messages whose echoes are still waiting to be written.
    let server = echo_server(&[]);
    for attempt in 0..5 {
        let mut c = RawClient::connect(&server);
        let mut bytes = Vec::new();
        for i in 0..50 {
            bytes.extend(client(true, TEXT, format!("m{i}").as_bytes()));
        }
        bytes.extend(client(true, CLOSE, &close_payload(1000, b"bye")));
        c.send(&bytes);
        let mut echoes = 0;
        let reply = loop {
            let mut head = [0u8; 1];
            match c.stream.peek(&mut head) {
                Ok(1) => {}
                other => panic!(
                    "attempt {attempt}: the connection ended after {echoes} echo(es) without \
                     a close frame answering ours ({other:?})"
                ),
            }
            let frame = c.read_frame();
            match frame.opcode {
                TEXT => {
                    assert_eq!(frame.payload, format!("m{echoes}").as_bytes(), "in order");
                    echoes += 1;
                }
                CLOSE => break frame,
                other => panic!("unexpected opcode {other:#x}"),
            }
        };
        assert_eq!(reply.close_code(), Some(1000), "attempt {attempt}");
    }
}

#[test]
fn invalid_utf8_closes_with_1007_whole_or_split_across_fragments() {
    let server = echo_server(&[]);
    RawClient::expect_refused(
        &server,
        &client(true, TEXT, b"h\xff\xfe"),
        1007,
        "invalid UTF-8 in one frame",
    );
    // 0xc3 starts a two-byte sequence; 0x28 cannot continue it.
    let mut split = client(false, TEXT, b"a\xc3");
    split.extend(client(true, CONTINUATION, b"\x28"));
    RawClient::expect_refused(&server, &split, 1007, "invalid UTF-8 across fragments");
    // A message that ends in the middle of a sequence is invalid too.
    let mut truncated = client(false, TEXT, b"ok");
    truncated.extend(client(true, CONTINUATION, b"\xe2\x82"));
    RawClient::expect_refused(&server, &truncated, 1007, "a truncated sequence");
    // An encoded surrogate (U+D800) is not UTF-8.
    RawClient::expect_refused(
        &server,
        &client(true, TEXT, b"\xed\xa0\x80"),
        1007,
        "a surrogate",
    );
    // Invalid UTF-8 in a close frame's reason.
    RawClient::expect_refused(
        &server,
        &client(true, CLOSE, &close_payload(1000, b"\xff")),
        1007,
        "invalid UTF-8 in a close reason",
    );
}

#[test]
fn reserved_opcodes_close_with_1002() {
    let server = echo_server(&[]);
    for opcode in [0x3, 0x4, 0x5, 0x6, 0x7, 0xB, 0xC, 0xD, 0xE, 0xF] {
        RawClient::expect_refused(
            &server,
            &client(true, opcode, b"x"),
            1002,
            &format!("opcode {opcode:#x}"),
        );
    }
}

#[test]
fn bad_control_frames_close_with_1002() {
    let server = echo_server(&[]);
    RawClient::expect_refused(
        &server,
        &client(true, PING, &[b'p'; 126]),
        1002,
        "a ping with 126 bytes of payload",
    );
    RawClient::expect_refused(
        &server,
        &client(false, PING, b"frag"),
        1002,
        "a fragmented ping",
    );
    RawClient::expect_refused(
        &server,
        &client(true, CLOSE, b"\x03"),
        1002,
        "a close frame with a one-byte payload",
    );
    for code in [0u16, 999, 1004, 1005, 1006, 1015, 1100, 2999, 5000, 65535] {
        RawClient::expect_refused(
            &server,
            &client(true, CLOSE, &close_payload(code, b"")),
            1002,
            &format!("close code {code}"),
        );
    }
}

#[test]
fn framing_violations_close_with_1002() {
    let server = echo_server(&[]);
    RawClient::expect_refused(
        &server,
        &frame(true, 0, TEXT, None, b"unmasked"),
        1002,
        "an unmasked client frame",
    );
    for rsv in 1..=7 {
        RawClient::expect_refused(
            &server,
            &frame(true, rsv, TEXT, Some(MASK), b"rsv"),
            1002,
            &format!("RSV bits {rsv:#05b} with no extension"),
        );
    }
    RawClient::expect_refused(
        &server,
        &client(true, CONTINUATION, b"orphan"),
        1002,
        "a continuation with no message started",
    );
    let mut interleaved = client(false, TEXT, b"first");
    interleaved.extend(client(true, TEXT, b"second"));
    RawClient::expect_refused(
        &server,
        &interleaved,
        1002,
        "a new message before the last one ended",
    );
}

#[test]
fn an_oversize_message_closes_with_1009_whole_or_fragmented() {
    let server = echo_server(&["--max-message-bytes", "1024"]);
    // At the limit: echoed.
    let mut c = RawClient::connect(&server);
    c.send(&client(true, BINARY, &[7u8; 1024]));
    assert_eq!(c.read_frame().payload.len(), 1024);
    RawClient::expect_refused(
        &server,
        &client(true, TEXT, &[b'x'; 1025]),
        1009,
        "one frame over the limit",
    );
    // Fragments each under the limit, but together over it.
    let mut fragments = client(false, BINARY, &[1u8; 600]);
    fragments.extend(client(true, CONTINUATION, &[2u8; 600]));
    RawClient::expect_refused(&server, &fragments, 1009, "fragments over the limit");
    // A declared 64-bit length far beyond the limit is refused from the header alone.
    let mut huge = vec![0x82, 0x80 | 127];
    huge.extend_from_slice(&(1u64 << 40).to_be_bytes());
    huge.extend_from_slice(&MASK);
    RawClient::expect_refused(&server, &huge, 1009, "a 1 TiB length header");
    // The server is still serving.
    let mut c = RawClient::connect(&server);
    c.send(&client(true, TEXT, b"still here"));
    assert_eq!(c.read_frame().payload, b"still here");
}

/// Frames a client sends in the same write as its handshake arrive with the request: the
/// server reads them from what it read ahead, before anything from the socket.
#[test]
fn frames_sent_with_the_handshake_are_read_first() {
    let server = echo_server(&[]);
    let mut stream = TcpStream::connect(server.addr()).expect("connect");
    stream.set_read_timeout(Some(GUARD)).unwrap();
    let mut bytes = format!(
        "GET / HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        server.addr()
    )
    .into_bytes();
    bytes.extend(client(true, TEXT, b"early"));
    bytes.extend(client(true, PING, b"early ping"));
    stream.write_all(&bytes).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).expect("read the handshake");
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"));
    let mut client = RawClient {
        stream,
        preamble: Vec::new(),
    };
    let echo = client.read_frame();
    assert_eq!(
        (echo.opcode, echo.payload.as_slice()),
        (TEXT, &b"early"[..])
    );
    let pong = client.read_frame();
    assert_eq!(
        (pong.opcode, pong.payload.as_slice()),
        (PONG, &b"early ping"[..])
    );
    // And the socket after them.
    client.sync();
}
