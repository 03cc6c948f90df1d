//! `wschat history`: print a room's history and exit, for scripts.

use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

use super::connect::{self, ServerKind, Target};
use super::render::{escape_control, json_line};
use super::{close, connection_lost, decode_event, print_line, server_closed};
use crate::exit::{fail, Exit};
use crate::protocol::Event;

#[derive(Debug, Clone)]
pub struct HistoryConfig {
    /// Room, `since` and `history` (the limit) are in the target.
    pub target: Target,
    pub json: bool,
}

pub async fn run(config: HistoryConfig) -> anyhow::Result<Exit> {
    let connection = connect::connect(&config.target).await?;
    let url = config.target.url.to_string();
    if connection.kind == ServerKind::Relay {
        return Err(fail(
            Exit::Failure,
            format!("{url} is a plain relay, which keeps no history"),
        ));
    }
    let (mut sink, mut stream) = connection.socket.split();
    loop {
        let text = match stream.next().await {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(frame))) => return Err(server_closed(&url, frame.as_ref())),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(connection_lost(&url, Some(e))),
            None => return Err(connection_lost(&url, None::<String>)),
        };
        let Some((event, value)) = decode_event(&text) else {
            continue;
        };
        match event {
            Event::Chat(chat) if chat.history => print_line(&if config.json {
                json_line(&value)
            } else {
                let said = if chat.action { "" } else { " says:" };
                format!(
                    "#{} {} {}{said} {}",
                    chat.id,
                    escape_control(&chat.timestamp),
                    escape_control(&chat.username),
                    escape_control(&chat.message)
                )
            }),
            Event::Gap(gap) => print_line(&if config.json {
                json_line(&value)
            } else {
                format!("# {}", escape_control(&gap.message))
            }),
            Event::Synced(_) => break,
            Event::Error(error) => {
                let exit = super::exit_for_refusal(&error.code);
                let message = escape_control(&error.message);
                return Err(fail(exit, format!("server: {message}")));
            }
            _ => {}
        }
    }
    close(&mut sink, &mut stream).await;
    Ok(Exit::Success)
}
