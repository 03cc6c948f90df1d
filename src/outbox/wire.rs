//! How a queued frame goes on the wire from the server: a header of 2 to 10 bytes made on
//! the spot, then the payload the frame already holds, shared with every other outbox it was
//! queued in. Server frames are never masked (RFC 6455, section 5.1), so the payload is
//! written as it is: a broadcast is encoded once, and each recipient costs one header.

use std::collections::VecDeque;
use std::io::IoSlice;

use tokio::net::TcpStream;

use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;

/// The longest header of an unmasked frame: 2 bytes, then a 64-bit length.
pub const MAX_HEADER: usize = 10;

/// Frames gathered into one vectored write at most (two slices each, under any IOV_MAX).
pub const MAX_FRAMES_PER_WRITE: usize = 64;

/// A frame's header, and how many of its bytes are used.
#[derive(Clone, Copy)]
pub struct Header {
    bytes: [u8; MAX_HEADER],
    len: u8,
}

impl Header {
    /// A placeholder, overwritten before use.
    pub const EMPTY: Header = Header {
        bytes: [0; MAX_HEADER],
        len: 0,
    };

    /// The header of a frame with `first` as its first byte (FIN and opcode) and `len` bytes
    /// of unmasked payload.
    pub fn new(first: u8, len: usize) -> Header {
        let mut bytes = [0; MAX_HEADER];
        bytes[0] = first;
        let used = if len < 126 {
            bytes[1] = len as u8;
            2
        } else if let Ok(short) = u16::try_from(len) {
            bytes[1] = 126;
            bytes[2..4].copy_from_slice(&short.to_be_bytes());
            4
        } else {
            bytes[1] = 127;
            bytes[2..10].copy_from_slice(&(len as u64).to_be_bytes());
            10
        };
        Header { bytes, len: used }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

const FIN: u8 = 0x80;

/// A frame's header and payload as they go on the wire.
pub fn parts(frame: &Message) -> (Header, &[u8]) {
    let (first, payload): (u8, &[u8]) = match frame {
        Message::Text(text) => (FIN | 0x1, text.as_bytes()),
        Message::Binary(data) => (FIN | 0x2, data),
        Message::Ping(data) => (FIN | 0x9, data),
        Message::Pong(data) => (FIN | 0xA, data),
        // A close with a code is queued only by `Receiver::finish`, where [`prepare`] makes it
        // a frame with its payload. Were one written, it would still be a valid close, without
        // the code.
        Message::Close(_) => (FIN | 0x8, &[]),
        Message::Frame(frame) => {
            let header = frame.header();
            let fin = if header.is_final { FIN } else { 0 };
            (fin | u8::from(header.opcode), frame.payload())
        }
    };
    (Header::new(first, payload.len()), payload)
}

/// What a frame needs before it can be queued: a close frame with a code gets its payload
/// (the code and the reason) encoded once here, so writing it never allocates.
pub fn prepare(frame: Message) -> Message {
    match frame {
        Message::Close(Some(close)) => Message::Frame(Frame::close(Some(close))),
        other => other,
    }
}

/// How many bytes `frame` takes on the wire.
pub fn wire_len(frame: &Message) -> usize {
    let (header, payload) = parts(frame);
    header.as_bytes().len() + payload.len()
}

/// Writes as much of `frame` as `socket` takes now, without waiting; returns how many bytes
/// that was. An error writes nothing: whoever writes the rest meets it again and ends the
/// connection.
pub fn write_now(socket: &TcpStream, frame: &Message) -> usize {
    let (header, payload) = parts(frame);
    let slices = [IoSlice::new(header.as_bytes()), IoSlice::new(payload)];
    socket.try_write_vectored(&slices).unwrap_or(0)
}

/// Up to [`MAX_FRAMES_PER_WRITE`] frames of `frames` as slices for one vectored write, the
/// first `written` bytes of the first frame left out (they went earlier). `headers` holds the
/// headers the slices point into. Returns how many slices it filled.
pub fn gather<'a>(
    frames: &'a VecDeque<Message>,
    written: usize,
    headers: &'a mut [Header; MAX_FRAMES_PER_WRITE],
    slices: &mut [IoSlice<'a>; 2 * MAX_FRAMES_PER_WRITE],
) -> usize {
    let count = frames.len().min(MAX_FRAMES_PER_WRITE);
    let mut payloads: [&[u8]; MAX_FRAMES_PER_WRITE] = [&[]; MAX_FRAMES_PER_WRITE];
    for (i, frame) in frames.iter().take(count).enumerate() {
        let (header, payload) = parts(frame);
        headers[i] = header;
        payloads[i] = payload;
    }
    let headers: &'a [Header; MAX_FRAMES_PER_WRITE] = headers;
    let mut filled = 0;
    let mut skip = written;
    for (header, payload) in headers.iter().zip(payloads).take(count) {
        for part in [header.as_bytes(), payload] {
            if skip >= part.len() {
                skip -= part.len();
                continue;
            }
            slices[filled] = IoSlice::new(&part[skip..]);
            filled += 1;
            skip = 0;
        }
    }
    filled
}

/// After `n` more bytes went out from the front of `frames`, of which the first `written`
/// bytes had gone before: how many frames are now written whole, and how much of the next.
pub fn advance(frames: &VecDeque<Message>, written: usize, n: usize) -> (usize, usize) {
    let mut left = written + n;
    let mut done = 0;
    for frame in frames {
        let len = wire_len(frame);
        if left < len {
            return (done, left);
        }
        left -= len;
        done += 1;
    }
    (done, 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;

    /// What tungstenite itself writes for `frame` as a server.
    fn tungstenite_bytes(frame: Message) -> Vec<u8> {
        let frame = match frame {
            Message::Text(t) => Frame::message(t, OpCode::Data(Data::Text), true),
            Message::Binary(b) => Frame::message(b, OpCode::Data(Data::Binary), true),
            Message::Ping(b) => Frame::ping(b),
            Message::Pong(b) => Frame::pong(b),
            Message::Close(c) => Frame::close(c),
            Message::Frame(f) => f,
        };
        let mut out = Vec::new();
        frame.format(&mut out).unwrap();
        out
    }

    fn ours(frame: &Message) -> Vec<u8> {
        let (header, payload) = parts(frame);
        [header.as_bytes(), payload].concat()
    }

    #[test]
    fn frames_match_what_tungstenite_writes_at_every_length_boundary() {
        for len in [0, 1, 125, 126, 127, 65_535, 65_536, 70_000] {
            let text = "x".repeat(len);
            for frame in [
                Message::text(text.clone()),
                Message::binary(text.clone().into_bytes()),
            ] {
                assert_eq!(ours(&frame), tungstenite_bytes(frame.clone()), "{len}");
                assert_eq!(wire_len(&frame), ours(&frame).len());
            }
        }
        for frame in [
            Message::Ping(Default::default()),
            Message::Pong(b"abc".to_vec().into()),
            Message::Close(None),
        ] {
            assert_eq!(ours(&frame), tungstenite_bytes(frame.clone()));
        }
        let close = Some(CloseFrame {
            code: CloseCode::from(4008),
            reason: "too slow".into(),
        });
        assert_eq!(
            ours(&prepare(Message::Close(close.clone()))),
            tungstenite_bytes(Message::Close(close))
        );
    }

    #[test]
    fn a_partly_written_batch_resumes_where_it_stopped() {
        let frames: VecDeque<Message> = ["ab", "cdef", &"g".repeat(200)].map(Message::text).into();
        let whole: Vec<u8> = frames.iter().flat_map(ours).collect();
        // Every split point: what is gathered after it is exactly the rest.
        for cut in 0..whole.len() {
            let (done, written) = advance(&frames, 0, cut);
            let rest: VecDeque<Message> = frames.iter().skip(done).cloned().collect();
            let mut headers = [Header::EMPTY; MAX_FRAMES_PER_WRITE];
            let mut slices = [IoSlice::new(&[]); 2 * MAX_FRAMES_PER_WRITE];
            let filled = gather(&rest, written, &mut headers, &mut slices);
            let gathered: Vec<u8> = slices[..filled].iter().flat_map(|s| s.to_vec()).collect();
            assert_eq!(gathered, whole[cut..], "cut at {cut}");
        }
        assert_eq!(advance(&frames, 0, whole.len()), (3, 0));
        assert_eq!(advance(&frames, 1, 3), (1, 0));
    }
}
