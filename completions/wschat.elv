
use builtin;
use str;

set edit:completion:arg-completer[wschat] = {|@words|
    fn spaces {|n|
        builtin:repeat $n ' ' | str:join ''
    }
    fn cand {|text desc|
        edit:complex-candidate $text &display=$text' '(spaces (- 14 (wcswidth $text)))$desc
    }
    var command = 'wschat'
    for word $words[1..-1] {
        if (str:has-prefix $word '-') {
            break
        }
        set command = $command';'$word
    }
    var completions = [
        &'wschat'= {
            cand --color 'When to colour output: auto colours a terminal unless NO_COLOR is set'
            cand -h 'Print help'
            cand --help 'Print help'
            cand -V 'Print version'
            cand --version 'Print version'
            cand serve 'Run a chat server (HTTP and WebSocket on one port)'
            cand join 'Join a room: print what arrives, send each line typed or piped in'
            cand send 'Send messages and exit once the server has acknowledged them'
            cand history 'Print a room''s history (from a running server) and exit'
            cand bench 'Measure a WebSocket broadcast server: deliveries/s, losses and latency; or hold idle connections'
            cand replay 'Send the chat messages a `join --record` kept, under their senders'' names, with the recorded gaps; exit once every one is acknowledged'
            cand doctor 'Check an endpoint step by step (DNS, TCP, TLS, upgrade, server, round trips, close) and say what to try when a step fails'
            cand completions 'Print a shell completion script (bash, zsh, fish, powershell, elvish)'
            cand help 'Print this message or the help of the given subcommand(s)'
        }
        &'wschat;serve'= {
            cand --host 'Address to listen on (0.0.0.0 for every interface)'
            cand -p 'Port to listen on; 0 picks a free one (the real URL is printed)'
            cand --port 'Port to listen on; 0 picks a free one (the real URL is printed)'
            cand --max-message-bytes 'Largest message accepted from a client (bytes, or with KiB/MiB); larger ones close it with 1009'
            cand --outbox 'Frames queued for one client before it counts as too slow and is closed with 4008'
            cand --outbox-bytes 'Bytes queued for one client before it counts as too slow and is closed with 4008 (at least twice --max-message-bytes); a history replay takes at most half of it'
            cand --grace 'How long shutdown waits for clients to answer the close frame (a further signal ends the wait)'
            cand --drain-delay 'On SIGINT/SIGTERM, keep serving this long with GET /healthz answering 503, so that a load balancer stops sending clients before they are closed; a second signal ends it'
            cand --history 'Messages of a room''s history sent to each member that joins it'
            cand --keep 'Messages kept in memory per room, for history and resume'
            cand --keep-bytes 'Bytes of history kept in memory across all rooms; past it, the least recently active rooms lose their oldest messages from memory first (with --db or --redis they stay there)'
            cand --db 'Keep history in this SQLite file, durable across restarts (created if missing)'
            cand --redis 'Run as one of several instances sharing rooms, history, names and presence through this Redis server (redis://HOST:PORT); see docs/scaling.md'
            cand --rate 'Messages per second one connection may send; past --burst it is read more slowly, and after --flood-timeout of that it is closed with 4029. 0: no limit'
            cand --burst 'Messages a connection may send at once before --rate applies'
            cand --flood-timeout 'How long a connection may stay over --rate before it is closed'
            cand --max-clients 'Open connections allowed; more are refused with HTTP 503. 0: no limit'
            cand --max-per-ip 'Open connections allowed from one address. 0 (the default): no limit, as every client behind a load balancer or NAT shares one address'
            cand --ping-interval 'Ping clients this often; one silent for two intervals is dropped. 0s: never'
            cand --handshake-timeout 'Longest time a client may take to send its request headers'
            cand --token 'Clients must present this token (CLI: --token; browsers: ?token=)'
            cand --token-file 'Read the token from this file (its first line)'
            cand --allow-origin 'Also accept WebSocket connections from pages of this origin (e.g. https://chat.example.com; * for any). Repeatable'
            cand --public-url 'The address people use to reach this server (e.g. https://chat.example.com): pages served under its name, or of its origin behind a proxy that rewrites Host, are this server''s own. Without it only an IP address or localhost counts as the server''s name (other names may be DNS rebinding). Repeatable, or a comma-separated list'
            cand --tls-cert 'Serve wss:// and https:// with this PEM certificate (chain)'
            cand --tls-key 'The PEM private key of --tls-cert'
            cand --log-format 'Log format on stderr'
            cand --chaos 'Misbehave on purpose, to test clients: comma-separated drop=P (cut each connection without a close frame with probability P per second), close=P (the same with close 1001), delay=MIN-MAX (hold each outgoing frame that long, order kept), fragment=N (send messages in N-byte fragments). Stored messages are never lost'
            cand --chaos-seed 'Seed for --chaos''s random choices, to repeat a run'
            cand --color 'When to colour output: auto colours a terminal unless NO_COLOR is set'
            cand --echo 'Send each message back to its sender too'
            cand --raw 'Plain relay: frames (text or binary) go out exactly as they came in; no JSON envelopes, no notices'
            cand -h 'Print help'
            cand --help 'Print help'
        }
        &'wschat;join'= {
            cand --url 'Server URL (ws://, wss://; http:// and host:port also work)'
            cand --room 'Room to join'
            cand --connect-timeout 'Give up connecting after this long'
            cand --token 'Token for a server started with --token (sent as Authorization: Bearer)'
            cand --ca 'Trust the CA in this PEM file for wss:// (instead of the system''s roots)'
            cand --count 'Exit 0 after receiving this many chat messages'
            cand --for 'Exit 0 after this long (e.g. 30s, 5m)'
            cand --until 'Exit 0 once a chat message received matches this regular expression (its text; with --json too). With --for, exit 7 when none did in time'
            cand --exec 'For each chat message from others, run CMD with `sh -c`: the text on its stdin and in WSCHAT_TEXT, with WSCHAT_FROM, WSCHAT_ROOM and WSCHAT_ID; each line it prints is sent to the room. One at a time, in order; a failure is reported on stderr'
            cand --jobs 'Commands --exec runs at once (their lines are still sent in the messages'' order)'
            cand --exec-timeout 'Kill an --exec command (and what it started) after this long'
            cand --record 'Append every received event to FILE as NDJSON with its arrival time (for `wschat replay`)'
            cand --color 'When to colour output: auto colours a terminal unless NO_COLOR is set'
            cand --json 'Print one JSON object per line instead of text'
            cand --no-reconnect 'Exit (code 5) when the connection is lost instead of reconnecting'
            cand -h 'Print help'
            cand --help 'Print help'
        }
        &'wschat;send'= {
            cand --url 'Server URL (ws://, wss://; http:// and host:port also work)'
            cand --connect-timeout 'Give up connecting after this long'
            cand --token 'Token for a server started with --token (sent as Authorization: Bearer)'
            cand --ca 'Trust the CA in this PEM file for wss:// (instead of the system''s roots)'
            cand --wait 'After delivery, print what arrives for this long'
            cand --min-recipients 'Fail (exit 6) when a message reached fewer than N other members (it was still delivered to those)'
            cand --timeout 'Fail (exit 7) when the server has not acknowledged within this long'
            cand --room 'Room to send to'
            cand --color 'When to colour output: auto colours a terminal unless NO_COLOR is set'
            cand --json 'Print one JSON object per line instead of text'
            cand -h 'Print help'
            cand --help 'Print help'
        }
        &'wschat;history'= {
            cand --url 'Server URL (ws://, wss://; http:// and host:port also work)'
            cand --connect-timeout 'Give up connecting after this long'
            cand --token 'Token for a server started with --token (sent as Authorization: Bearer)'
            cand --ca 'Trust the CA in this PEM file for wss:// (instead of the system''s roots)'
            cand --since 'Only messages after this id (what a client that saw ID missed)'
            cand --limit 'At most this many of the latest messages (without --since)'
            cand --room 'Room whose history to print'
            cand --color 'When to colour output: auto colours a terminal unless NO_COLOR is set'
            cand --json 'Print each message as one JSON object per line'
            cand -h 'Print help'
            cand --help 'Print help'
        }
        &'wschat;bench'= {
            cand --url 'Server URL (ws://; http:// and host:port also work)'
            cand --receivers 'Connections that receive and count every message'
            cand --publishers 'Connections that send'
            cand --rate 'Messages per second, all publishers together, or ''max'': as fast as the server delivers (each publisher keeps a bounded number of messages in flight)'
            cand --duration 'How long the publishers send (with --idle: how long connections are held)'
            cand --size 'Length of each message''s text in bytes (a token of about 30 bytes, padded)'
            cand --rooms 'Spread receivers and publishers over K rooms, round robin (a server that ignores rooms shows it as unexpected deliveries)'
            cand --drain 'After sending, wait at most this long for deliveries still on their way'
            cand --connect-timeout 'Give up when one connection''s handshake takes longer than this'
            cand --token 'Token for a server started with --token (sent as Authorization: Bearer)'
            cand --idle 'Instead of a load: open N connections that send nothing and hold them for --duration (or until Ctrl-C), printing how many are open'
            cand --members 'Instead of a load: N announced (named) members join one room and read everything; then one message must reach them all. Reports join time, the server''s CPU per join and memory per member, and the members the server closed'
            cand --join-rate 'With --members: joins per second, or ''max'' (as fast as the server welcomes them, 128 handshakes in flight)'
            cand --room 'With --members: the room they join'
            cand --name-prefix 'With --members: member i is named PREFIX<i> (bench processes sharing a room need different prefixes)'
            cand --server-pid 'With --members: the server process whose CPU and memory are read from /proc (by default the local process listening on the URL''s port, when it can be found)'
            cand --first-source 'Bind connections to a loopback server to source addresses from this one on (127.x.y.z), 10,000 per address; by default 127.0.0.1, .2, ... past 10,000 connections. Bench processes running side by side need their own: a bound port is unique per address'
            cand --color 'When to colour output: auto colours a terminal unless NO_COLOR is set'
            cand --quiet-receivers 'Receivers join quietly (`?quiet=1`): a wschat server announces each visible member to the whole room, which for thousands of receivers floods them before the run starts'
            cand --json 'Print one JSON object with every figure instead of the table'
            cand --await-message 'With --members: send nothing; wait up to --duration for a message starting with ''wsb-final:<unix nanos>'' from another client (e.g. wschat send), to time it'
            cand -h 'Print help'
            cand --help 'Print help'
        }
        &'wschat;replay'= {
            cand --url 'Server URL (ws://, wss://; http:// and host:port also work)'
            cand --room 'Send every message to this room (default: the room each was recorded in)'
            cand --speed 'Divide the recorded gaps by X (2: twice as fast); 0 sends each message as soon as the one before is acknowledged'
            cand --connect-timeout 'Give up connecting after this long'
            cand --token 'Token for a server started with --token (sent as Authorization: Bearer)'
            cand --ca 'Trust the CA in this PEM file for wss:// (instead of the system''s roots)'
            cand --timeout 'Fail (exit 7) when the server has not acknowledged a message within this long'
            cand --color 'When to colour output: auto colours a terminal unless NO_COLOR is set'
            cand -h 'Print help'
            cand --help 'Print help'
        }
        &'wschat;doctor'= {
            cand --timeout 'Longest wait of each step'
            cand --pings 'Round trips to time'
            cand --token 'Token for a server started with --token (sent as Authorization: Bearer)'
            cand --ca 'Trust the CA in this PEM file for wss:// (instead of the system''s roots)'
            cand --color 'When to colour output: auto colours a terminal unless NO_COLOR is set'
            cand --json 'Print one JSON object with every step instead of lines'
            cand -h 'Print help'
            cand --help 'Print help'
        }
        &'wschat;completions'= {
            cand --color 'When to colour output: auto colours a terminal unless NO_COLOR is set'
            cand -h 'Print help'
            cand --help 'Print help'
        }
        &'wschat;help'= {
            cand serve 'Run a chat server (HTTP and WebSocket on one port)'
            cand join 'Join a room: print what arrives, send each line typed or piped in'
            cand send 'Send messages and exit once the server has acknowledged them'
            cand history 'Print a room''s history (from a running server) and exit'
            cand bench 'Measure a WebSocket broadcast server: deliveries/s, losses and latency; or hold idle connections'
            cand replay 'Send the chat messages a `join --record` kept, under their senders'' names, with the recorded gaps; exit once every one is acknowledged'
            cand doctor 'Check an endpoint step by step (DNS, TCP, TLS, upgrade, server, round trips, close) and say what to try when a step fails'
            cand completions 'Print a shell completion script (bash, zsh, fish, powershell, elvish)'
            cand help 'Print this message or the help of the given subcommand(s)'
        }
        &'wschat;help;serve'= {
        }
        &'wschat;help;join'= {
        }
        &'wschat;help;send'= {
        }
        &'wschat;help;history'= {
        }
        &'wschat;help;bench'= {
        }
        &'wschat;help;replay'= {
        }
        &'wschat;help;doctor'= {
        }
        &'wschat;help;completions'= {
        }
        &'wschat;help;help'= {
        }
    ]
    $completions[$command]
}
