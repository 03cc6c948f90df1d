//! A browser client written for the common tutorial chat protocol works against `wschat serve`
//! unchanged: checked frame by frame with a plain WebSocket client (no subprotocol, no query).

mod common;

use common::*;
use serde_json::Value;
use tungstenite::Message;
use wschat::protocol::{Event, Notice};

fn assert_timestamp(event: &Value) {
    let ts = event["timestamp"]
        .as_str()
        .unwrap_or_else(|| panic!("no string timestamp in {event}"));
    assert!(
        humantime_like(ts),
        "timestamp is not RFC 3339 UTC: {ts:?} in {event}"
    );
}

/// `2026-01-02T03:04:05.678Z`: date, `T`, time, `Z`.
fn humantime_like(ts: &str) -> bool {
    let b = ts.as_bytes();
    b.len() >= 20
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && ts.ends_with('Z')
}

/// A tutorial client: connects to the bare URL, with no name and no subprotocol.
fn tutorial_client(url: &str) -> (Ws, Value) {
    let (mut ws, response) = ws_connect_with_response(url, "");
    assert!(
        response.headers().get("sec-websocket-protocol").is_none(),
        "the server answered a subprotocol nobody asked for"
    );
    let welcome = next_message(&mut ws);
    (ws, welcome)
}

#[test]
fn welcome_is_a_tutorial_system_message() {
    let server = Server::start(&[]);
    let (_ws, welcome) = tutorial_client(&server.url);
    assert_eq!(welcome["type"], "system", "{welcome}");
    assert!(
        welcome["message"].as_str().is_some_and(|m| !m.is_empty()),
        "welcome has no message: {welcome}"
    );
    assert_timestamp(&welcome);
    // The typed decoder agrees, with wschat's extra fields.
    let Ok(Event::System(system)) = serde_json::from_value::<Event>(welcome.clone()) else {
        panic!("welcome does not decode as a system event: {welcome}");
    };
    assert_eq!(system.event, Notice::Welcome);
    assert_eq!(system.count, Some(1));
}

#[test]
fn set_username_announces_the_rename_to_everyone() {
    let server = Server::start(&[]);
    let (mut a, _) = tutorial_client(&server.url);
    let (mut b, welcome) = tutorial_client(&server.url);
    let old = welcome["name"]
        .as_str()
        .unwrap_or_else(|| panic!("the welcome names the member: {welcome}"))
        .to_owned();
    let joined = expect_notice(&mut a, &format!("{old} joined the chat"));
    assert_timestamp(&joined);

    send_text(&mut b, r#"{"type":"setUsername","username":"xavier"}"#);
    let expected = format!("{old} is now known as xavier");
    for ws in [&mut a, &mut b] {
        let notice = next_message(ws);
        assert_eq!(notice["type"], "system", "{notice}");
        assert_eq!(notice["message"], expected.as_str(), "{notice}");
        assert_timestamp(&notice);
    }

    // The new name is the one others see on chat.
    send_text(&mut b, r#"{"type":"chat","content":"renamed"}"#);
    let chat = next_message(&mut a);
    assert_eq!(chat["username"], "xavier", "{chat}");
}

#[test]
fn json_chat_and_plain_text_both_arrive_as_tutorial_chat_events() {
    let server = Server::start(&[]);
    let (mut a, _) = tutorial_client(&server.url);
    let (mut b, welcome) = tutorial_client(&server.url);
    let guest = welcome["name"].as_str().unwrap().to_owned();
    send_text(&mut b, r#"{"type":"setUsername","username":"bea"}"#);
    expect_notice(&mut a, &format!("{guest} joined the chat"));
    expect_notice(&mut a, &format!("{guest} is now known as bea"));
    expect_notice(&mut b, &format!("{guest} is now known as bea"));

    send_text(&mut b, r#"{"type":"chat","content":"hi"}"#);
    send_text(&mut b, "hi as plain text");
    let mut ids = Vec::new();
    for expected in ["hi", "hi as plain text"] {
        let chat = next_message(&mut a);
        assert_eq!(chat["type"], "chat", "{chat}");
        assert_eq!(chat["username"], "bea", "{chat}");
        assert_eq!(chat["message"], expected, "{chat}");
        assert_timestamp(&chat);
        ids.push(
            chat["id"]
                .as_u64()
                .unwrap_or_else(|| panic!("no numeric id: {chat}")),
        );
    }
    assert!(ids[1] > ids[0], "ids must increase: {ids:?}");

    // The sender got neither back: the next thing it receives is the answer to its next frame.
    send_text(&mut b, "{oops");
    let error = next_message(&mut b);
    assert_eq!(error["type"], "error", "sender received {error} instead");
}

#[test]
fn join_and_leave_notices_reach_the_others() {
    let server = Server::start(&[]);
    let mut a = ws_member(&server.url, "anna");
    let mut b = ws_member(&server.url, "ben");
    let joined = expect_notice(&mut a, "ben joined the chat");
    assert_eq!(joined["event"], "join");
    assert_eq!(joined["count"], 2, "{joined}");
    b.close(None).unwrap();
    while b.read().is_ok() {}
    let left = expect_notice(&mut a, "ben left the chat");
    assert_eq!(left["event"], "leave");
    assert_eq!(left["count"], 1, "{left}");
    assert_timestamp(&left);
}

#[test]
fn invalid_json_gets_an_error_event_and_the_connection_stays_usable() {
    let server = Server::start(&[]);
    let mut a = ws_member(&server.url, "anna");
    let mut b = ws_member(&server.url, "ben");
    expect_notice(&mut a, "ben joined the chat");

    send_text(&mut b, "{oops");
    let error = next_message(&mut b);
    assert_eq!(error["type"], "error", "{error}");
    assert_eq!(error["code"], "invalid_json", "{error}");
    assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));

    send_text(&mut b, r#"{"type":"chat","content":"still here"}"#);
    let chat = next_message(&mut a);
    assert_eq!(
        chat["type"], "chat",
        "nothing from the bad frame may reach others: {chat}"
    );
    assert_eq!(chat["message"], "still here");
}

#[test]
fn an_unknown_type_gets_an_error_event() {
    let server = Server::start(&[]);
    let mut a = ws_member(&server.url, "anna");
    let mut b = ws_member(&server.url, "ben");
    expect_notice(&mut a, "ben joined the chat");

    send_text(&mut b, r#"{"type":"dance","content":"x"}"#);
    let error = next_message(&mut b);
    assert_eq!(error["type"], "error", "{error}");
    assert_eq!(error["code"], "unknown_type", "{error}");

    send_text(&mut b, r#"{"type":"chat"}"#);
    let error = next_message(&mut b);
    assert_eq!(error["code"], "missing_field", "{error}");

    // Neither reached anyone: a's next event is b's next real message.
    send_text(&mut b, "after the errors");
    let chat = next_message(&mut a);
    assert_eq!(chat["message"], "after the errors", "{chat}");
}

#[test]
fn a_binary_frame_in_json_mode_gets_an_error_event() {
    let server = Server::start(&[]);
    let mut a = ws_member(&server.url, "anna");
    a.send(Message::binary(vec![1, 2, 3])).unwrap();
    let error = next_message(&mut a);
    assert_eq!(error["type"], "error", "{error}");
    send_text(&mut a, "{oops");
    assert_eq!(next_message(&mut a)["code"], "invalid_json");
}

#[test]
fn the_wschat_subprotocol_is_answered_when_asked_for() {
    let server = Server::start(&[]);
    let addr = server.addr();
    let stream = std::net::TcpStream::connect(&addr).unwrap();
    stream.set_read_timeout(Some(GUARD)).unwrap();
    let mut request =
        tungstenite::client::IntoClientRequest::into_client_request(server.url.as_str()).unwrap();
    request
        .headers_mut()
        .insert("sec-websocket-protocol", "wschat.v1".parse().unwrap());
    let (_ws, response) = tungstenite::client(request, stream).expect("handshake");
    assert_eq!(
        response
            .headers()
            .get("sec-websocket-protocol")
            .map(|v| v.to_str().unwrap()),
        Some("wschat.v1")
    );
    assert!(response.headers().get("x-wschat-protocol").is_some());
}

#[test]
fn a_frame_over_max_message_bytes_is_closed_with_1009_and_others_are_unaffected() {
    let server = Server::start(&["--max-message-bytes", "64"]);
    let mut a = ws_member(&server.url, "anna");
    let mut b = ws_member(&server.url, "ben");
    expect_notice(&mut a, "ben joined the chat");
    send_text(&mut b, &"x".repeat(200));
    let frame = expect_close(&mut b).expect("a close code");
    assert_eq!(u16::from(frame.code), 1009, "{frame:?}");
    // ben is gone; anna is still served and got nothing of the oversize frame.
    let left = next_message(&mut a);
    assert_eq!(left["message"], "ben left the chat", "{left}");
    let mut c = ws_member(&server.url, "cleo");
    send_text(&mut c, "fits");
    let chat = next_non_system(&mut a);
    assert_eq!(chat["message"], "fits", "{chat}");
}
