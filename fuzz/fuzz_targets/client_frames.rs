//! Arbitrary bytes as a client's side of a WebSocket connection, read by the server's decoder:
//! tungstenite in the server role with the settings `wschat serve` uses (64 KiB messages and
//! frames, 4 KiB read buffer), then every text message through `wschat::protocol::decode`,
//! exactly as a connection's reader does. Any panic, hang or runaway allocation is a bug.
//!
//! cargo +nightly fuzz run client_frames -- -max_total_time=60
//!
//! tests/random_frames.rs runs the same path over a million seeded random frames in the normal
//! test suite.

#![no_main]

use std::io::{self, Cursor, Read, Write};

use libfuzzer_sys::fuzz_target;
use tungstenite::protocol::{Role, WebSocketConfig};
use tungstenite::{Message, WebSocket};

/// `wschat serve`'s default `--max-message-bytes`.
const MAX_MESSAGE: usize = 64 * 1024;

/// The client's bytes to read; what the server writes back (pongs, close replies) is dropped.
struct Memory<'a> {
    input: Cursor<&'a [u8]>,
}

impl Read for Memory<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.input.read(buf)
    }
}

impl Write for Memory<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE))
        .read_buffer_size(4 * 1024)
        .write_buffer_size(16 * 1024)
        .max_write_buffer_size(16 * 1024 + 2 * MAX_MESSAGE);
    let memory = Memory {
        input: Cursor::new(data),
    };
    let mut ws = WebSocket::from_raw_socket(memory, Role::Server, Some(config));
    // Every message takes at least a two-byte frame header, so this many reads end the input;
    // more would mean the decoder loops without consuming anything.
    for _ in 0..data.len() / 2 + 2 {
        match ws.read() {
            Ok(Message::Text(text)) => {
                if let Err(e) = wschat::protocol::decode(text.as_str()) {
                    // What the server turns into an error event must be printable.
                    assert!(!e.code().is_empty());
                    let _ = e.to_string();
                }
            }
            Ok(_) => {}
            Err(_) => return,
        }
    }
    panic!("the decoder returned more messages than the input holds frames");
});
