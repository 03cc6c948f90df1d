
using namespace System.Management.Automation
using namespace System.Management.Automation.Language

Register-ArgumentCompleter -Native -CommandName 'wschat' -ScriptBlock {
    param($wordToComplete, $commandAst, $cursorPosition)

    $commandElements = $commandAst.CommandElements
    $command = @(
        'wschat'
        for ($i = 1; $i -lt $commandElements.Count; $i++) {
            $element = $commandElements[$i]
            if ($element -isnot [StringConstantExpressionAst] -or
                $element.StringConstantType -ne [StringConstantType]::BareWord -or
                $element.Value.StartsWith('-') -or
                $element.Value -eq $wordToComplete) {
                break
        }
        $element.Value
    }) -join ';'

    $completions = @(switch ($command) {
        'wschat' {
            [CompletionResult]::new('--color', '--color', [CompletionResultType]::ParameterName, 'When to colour output: auto colours a terminal unless NO_COLOR is set')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('serve', 'serve', [CompletionResultType]::ParameterValue, 'Run a chat server (HTTP and WebSocket on one port)')
            [CompletionResult]::new('join', 'join', [CompletionResultType]::ParameterValue, 'Join a room: print what arrives, send each line typed or piped in')
            [CompletionResult]::new('send', 'send', [CompletionResultType]::ParameterValue, 'Send messages and exit once the server has acknowledged them')
            [CompletionResult]::new('history', 'history', [CompletionResultType]::ParameterValue, 'Print a room''s history (from a running server) and exit')
            [CompletionResult]::new('bench', 'bench', [CompletionResultType]::ParameterValue, 'Measure a WebSocket broadcast server: deliveries/s, losses and latency; or hold idle connections')
            [CompletionResult]::new('replay', 'replay', [CompletionResultType]::ParameterValue, 'Send the chat messages a `join --record` kept, under their senders'' names, with the recorded gaps; exit once every one is acknowledged')
            [CompletionResult]::new('doctor', 'doctor', [CompletionResultType]::ParameterValue, 'Check an endpoint step by step (DNS, TCP, TLS, upgrade, server, round trips, close) and say what to try when a step fails')
            [CompletionResult]::new('completions', 'completions', [CompletionResultType]::ParameterValue, 'Print a shell completion script (bash, zsh, fish, powershell, elvish)')
            [CompletionResult]::new('help', 'help', [CompletionResultType]::ParameterValue, 'Print this message or the help of the given subcommand(s)')
            break
        }
        'wschat;serve' {
            [CompletionResult]::new('--host', '--host', [CompletionResultType]::ParameterName, 'Address to listen on (0.0.0.0 for every interface)')
            [CompletionResult]::new('-p', '-p', [CompletionResultType]::ParameterName, 'Port to listen on; 0 picks a free one (the real URL is printed)')
            [CompletionResult]::new('--port', '--port', [CompletionResultType]::ParameterName, 'Port to listen on; 0 picks a free one (the real URL is printed)')
            [CompletionResult]::new('--max-message-bytes', '--max-message-bytes', [CompletionResultType]::ParameterName, 'Largest message accepted from a client (bytes, or with KiB/MiB); larger ones close it with 1009')
            [CompletionResult]::new('--outbox', '--outbox', [CompletionResultType]::ParameterName, 'Frames queued for one client before it counts as too slow and is closed with 4008')
            [CompletionResult]::new('--outbox-bytes', '--outbox-bytes', [CompletionResultType]::ParameterName, 'Bytes queued for one client before it counts as too slow and is closed with 4008 (at least twice --max-message-bytes); a history replay takes at most half of it')
            [CompletionResult]::new('--grace', '--grace', [CompletionResultType]::ParameterName, 'How long shutdown waits for clients to answer the close frame (a further signal ends the wait)')
            [CompletionResult]::new('--drain-delay', '--drain-delay', [CompletionResultType]::ParameterName, 'On SIGINT/SIGTERM, keep serving this long with GET /healthz answering 503, so that a load balancer stops sending clients before they are closed; a second signal ends it')
            [CompletionResult]::new('--history', '--history', [CompletionResultType]::ParameterName, 'Messages of a room''s history sent to each member that joins it')
            [CompletionResult]::new('--keep', '--keep', [CompletionResultType]::ParameterName, 'Messages kept in memory per room, for history and resume')
            [CompletionResult]::new('--keep-bytes', '--keep-bytes', [CompletionResultType]::ParameterName, 'Bytes of history kept in memory across all rooms; past it, the least recently active rooms lose their oldest messages from memory first (with --db or --redis they stay there)')
            [CompletionResult]::new('--db', '--db', [CompletionResultType]::ParameterName, 'Keep history in this SQLite file, durable across restarts (created if missing)')
            [CompletionResult]::new('--redis', '--redis', [CompletionResultType]::ParameterName, 'Run as one of several instances sharing rooms, history, names and presence through this Redis server (redis://HOST:PORT); see docs/scaling.md')
            [CompletionResult]::new('--rate', '--rate', [CompletionResultType]::ParameterName, 'Messages per second one connection may send; past --burst it is read more slowly, and after --flood-timeout of that it is closed with 4029. 0: no limit')
            [CompletionResult]::new('--burst', '--burst', [CompletionResultType]::ParameterName, 'Messages a connection may send at once before --rate applies')
            [CompletionResult]::new('--flood-timeout', '--flood-timeout', [CompletionResultType]::ParameterName, 'How long a connection may stay over --rate before it is closed')
            [CompletionResult]::new('--max-clients', '--max-clients', [CompletionResultType]::ParameterName, 'Open connections allowed; more are refused with HTTP 503. 0: no limit')
            [CompletionResult]::new('--max-per-ip', '--max-per-ip', [CompletionResultType]::ParameterName, 'Open connections allowed from one address. 0 (the default): no limit, as every client behind a load balancer or NAT shares one address')
            [CompletionResult]::new('--ping-interval', '--ping-interval', [CompletionResultType]::ParameterName, 'Ping clients this often; one silent for two intervals is dropped. 0s: never')
            [CompletionResult]::new('--handshake-timeout', '--handshake-timeout', [CompletionResultType]::ParameterName, 'Longest time a client may take to send its request headers')
            [CompletionResult]::new('--token', '--token', [CompletionResultType]::ParameterName, 'Clients must present this token (CLI: --token; browsers: ?token=)')
            [CompletionResult]::new('--token-file', '--token-file', [CompletionResultType]::ParameterName, 'Read the token from this file (its first line)')
            [CompletionResult]::new('--allow-origin', '--allow-origin', [CompletionResultType]::ParameterName, 'Also accept WebSocket connections from pages of this origin (e.g. https://chat.example.com; * for any). Repeatable')
            [CompletionResult]::new('--public-url', '--public-url', [CompletionResultType]::ParameterName, 'The address people use to reach this server (e.g. https://chat.example.com): pages served under its name, or of its origin behind a proxy that rewrites Host, are this server''s own. Without it only an IP address or localhost counts as the server''s name (other names may be DNS rebinding). Repeatable, or a comma-separated list')
            [CompletionResult]::new('--tls-cert', '--tls-cert', [CompletionResultType]::ParameterName, 'Serve wss:// and https:// with this PEM certificate (chain)')
            [CompletionResult]::new('--tls-key', '--tls-key', [CompletionResultType]::ParameterName, 'The PEM private key of --tls-cert')
            [CompletionResult]::new('--log-format', '--log-format', [CompletionResultType]::ParameterName, 'Log format on stderr')
            [CompletionResult]::new('--chaos', '--chaos', [CompletionResultType]::ParameterName, 'Misbehave on purpose, to test clients: comma-separated drop=P (cut each connection without a close frame with probability P per second), close=P (the same with close 1001), delay=MIN-MAX (hold each outgoing frame that long, order kept), fragment=N (send messages in N-byte fragments). Stored messages are never lost')
            [CompletionResult]::new('--chaos-seed', '--chaos-seed', [CompletionResultType]::ParameterName, 'Seed for --chaos''s random choices, to repeat a run')
            [CompletionResult]::new('--color', '--color', [CompletionResultType]::ParameterName, 'When to colour output: auto colours a terminal unless NO_COLOR is set')
            [CompletionResult]::new('--echo', '--echo', [CompletionResultType]::ParameterName, 'Send each message back to its sender too')
            [CompletionResult]::new('--raw', '--raw', [CompletionResultType]::ParameterName, 'Plain relay: frames (text or binary) go out exactly as they came in; no JSON envelopes, no notices')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            break
        }
        'wschat;join' {
            [CompletionResult]::new('--url', '--url', [CompletionResultType]::ParameterName, 'Server URL (ws://, wss://; http:// and host:port also work)')
            [CompletionResult]::new('--room', '--room', [CompletionResultType]::ParameterName, 'Room to join')
            [CompletionResult]::new('--connect-timeout', '--connect-timeout', [CompletionResultType]::ParameterName, 'Give up connecting after this long')
            [CompletionResult]::new('--token', '--token', [CompletionResultType]::ParameterName, 'Token for a server started with --token (sent as Authorization: Bearer)')
            [CompletionResult]::new('--ca', '--ca', [CompletionResultType]::ParameterName, 'Trust the CA in this PEM file for wss:// (instead of the system''s roots)')
            [CompletionResult]::new('--count', '--count', [CompletionResultType]::ParameterName, 'Exit 0 after receiving this many chat messages')
            [CompletionResult]::new('--for', '--for', [CompletionResultType]::ParameterName, 'Exit 0 after this long (e.g. 30s, 5m)')
            [CompletionResult]::new('--until', '--until', [CompletionResultType]::ParameterName, 'Exit 0 once a chat message received matches this regular expression (its text; with --json too). With --for, exit 7 when none did in time')
            [CompletionResult]::new('--exec', '--exec', [CompletionResultType]::ParameterName, 'For each chat message from others, run CMD with `sh -c`: the text on its stdin and in WSCHAT_TEXT, with WSCHAT_FROM, WSCHAT_ROOM and WSCHAT_ID; each line it prints is sent to the room. One at a time, in order; a failure is reported on stderr')
            [CompletionResult]::new('--jobs', '--jobs', [CompletionResultType]::ParameterName, 'Commands --exec runs at once (their lines are still sent in the messages'' order)')
            [CompletionResult]::new('--exec-timeout', '--exec-timeout', [CompletionResultType]::ParameterName, 'Kill an --exec command (and what it started) after this long')
            [CompletionResult]::new('--record', '--record', [CompletionResultType]::ParameterName, 'Append every received event to FILE as NDJSON with its arrival time (for `wschat replay`)')
            [CompletionResult]::new('--color', '--color', [CompletionResultType]::ParameterName, 'When to colour output: auto colours a terminal unless NO_COLOR is set')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print one JSON object per line instead of text')
            [CompletionResult]::new('--no-reconnect', '--no-reconnect', [CompletionResultType]::ParameterName, 'Exit (code 5) when the connection is lost instead of reconnecting')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            break
        }
        'wschat;send' {
            [CompletionResult]::new('--url', '--url', [CompletionResultType]::ParameterName, 'Server URL (ws://, wss://; http:// and host:port also work)')
            [CompletionResult]::new('--connect-timeout', '--connect-timeout', [CompletionResultType]::ParameterName, 'Give up connecting after this long')
            [CompletionResult]::new('--token', '--token', [CompletionResultType]::ParameterName, 'Token for a server started with --token (sent as Authorization: Bearer)')
            [CompletionResult]::new('--ca', '--ca', [CompletionResultType]::ParameterName, 'Trust the CA in this PEM file for wss:// (instead of the system''s roots)')
            [CompletionResult]::new('--wait', '--wait', [CompletionResultType]::ParameterName, 'After delivery, print what arrives for this long')
            [CompletionResult]::new('--min-recipients', '--min-recipients', [CompletionResultType]::ParameterName, 'Fail (exit 6) when a message reached fewer than N other members (it was still delivered to those)')
            [CompletionResult]::new('--timeout', '--timeout', [CompletionResultType]::ParameterName, 'Fail (exit 7) when the server has not acknowledged within this long')
            [CompletionResult]::new('--room', '--room', [CompletionResultType]::ParameterName, 'Room to send to')
            [CompletionResult]::new('--color', '--color', [CompletionResultType]::ParameterName, 'When to colour output: auto colours a terminal unless NO_COLOR is set')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print one JSON object per line instead of text')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            break
        }
        'wschat;history' {
            [CompletionResult]::new('--url', '--url', [CompletionResultType]::ParameterName, 'Server URL (ws://, wss://; http:// and host:port also work)')
            [CompletionResult]::new('--connect-timeout', '--connect-timeout', [CompletionResultType]::ParameterName, 'Give up connecting after this long')
            [CompletionResult]::new('--token', '--token', [CompletionResultType]::ParameterName, 'Token for a server started with --token (sent as Authorization: Bearer)')
            [CompletionResult]::new('--ca', '--ca', [CompletionResultType]::ParameterName, 'Trust the CA in this PEM file for wss:// (instead of the system''s roots)')
            [CompletionResult]::new('--since', '--since', [CompletionResultType]::ParameterName, 'Only messages after this id (what a client that saw ID missed)')
            [CompletionResult]::new('--limit', '--limit', [CompletionResultType]::ParameterName, 'At most this many of the latest messages (without --since)')
            [CompletionResult]::new('--room', '--room', [CompletionResultType]::ParameterName, 'Room whose history to print')
            [CompletionResult]::new('--color', '--color', [CompletionResultType]::ParameterName, 'When to colour output: auto colours a terminal unless NO_COLOR is set')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print each message as one JSON object per line')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            break
        }
        'wschat;bench' {
            [CompletionResult]::new('--url', '--url', [CompletionResultType]::ParameterName, 'Server URL (ws://; http:// and host:port also work)')
            [CompletionResult]::new('--receivers', '--receivers', [CompletionResultType]::ParameterName, 'Connections that receive and count every message')
            [CompletionResult]::new('--publishers', '--publishers', [CompletionResultType]::ParameterName, 'Connections that send')
            [CompletionResult]::new('--rate', '--rate', [CompletionResultType]::ParameterName, 'Messages per second, all publishers together, or ''max'': as fast as the server delivers (each publisher keeps a bounded number of messages in flight)')
            [CompletionResult]::new('--duration', '--duration', [CompletionResultType]::ParameterName, 'How long the publishers send (with --idle: how long connections are held)')
            [CompletionResult]::new('--size', '--size', [CompletionResultType]::ParameterName, 'Length of each message''s text in bytes (a token of about 30 bytes, padded)')
            [CompletionResult]::new('--rooms', '--rooms', [CompletionResultType]::ParameterName, 'Spread receivers and publishers over K rooms, round robin (a server that ignores rooms shows it as unexpected deliveries)')
            [CompletionResult]::new('--drain', '--drain', [CompletionResultType]::ParameterName, 'After sending, wait at most this long for deliveries still on their way')
            [CompletionResult]::new('--connect-timeout', '--connect-timeout', [CompletionResultType]::ParameterName, 'Give up when one connection''s handshake takes longer than this')
            [CompletionResult]::new('--token', '--token', [CompletionResultType]::ParameterName, 'Token for a server started with --token (sent as Authorization: Bearer)')
            [CompletionResult]::new('--idle', '--idle', [CompletionResultType]::ParameterName, 'Instead of a load: open N connections that send nothing and hold them for --duration (or until Ctrl-C), printing how many are open')
            [CompletionResult]::new('--members', '--members', [CompletionResultType]::ParameterName, 'Instead of a load: N announced (named) members join one room and read everything; then one message must reach them all. Reports join time, the server''s CPU per join and memory per member, and the members the server closed')
            [CompletionResult]::new('--join-rate', '--join-rate', [CompletionResultType]::ParameterName, 'With --members: joins per second, or ''max'' (as fast as the server welcomes them, 128 handshakes in flight)')
            [CompletionResult]::new('--room', '--room', [CompletionResultType]::ParameterName, 'With --members: the room they join')
            [CompletionResult]::new('--name-prefix', '--name-prefix', [CompletionResultType]::ParameterName, 'With --members: member i is named PREFIX<i> (bench processes sharing a room need different prefixes)')
            [CompletionResult]::new('--server-pid', '--server-pid', [CompletionResultType]::ParameterName, 'With --members: the server process whose CPU and memory are read from /proc (by default the local process listening on the URL''s port, when it can be found)')
            [CompletionResult]::new('--first-source', '--first-source', [CompletionResultType]::ParameterName, 'Bind connections to a loopback server to source addresses from this one on (127.x.y.z), 10,000 per address; by default 127.0.0.1, .2, ... past 10,000 connections. Bench processes running side by side need their own: a bound port is unique per address')
            [CompletionResult]::new('--color', '--color', [CompletionResultType]::ParameterName, 'When to colour output: auto colours a terminal unless NO_COLOR is set')
            [CompletionResult]::new('--quiet-receivers', '--quiet-receivers', [CompletionResultType]::ParameterName, 'Receivers join quietly (`?quiet=1`): a wschat server announces each visible member to the whole room, which for thousands of receivers floods them before the run starts')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print one JSON object with every figure instead of the table')
            [CompletionResult]::new('--await-message', '--await-message', [CompletionResultType]::ParameterName, 'With --members: send nothing; wait up to --duration for a message starting with ''wsb-final:<unix nanos>'' from another client (e.g. wschat send), to time it')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            break
        }
        'wschat;replay' {
            [CompletionResult]::new('--url', '--url', [CompletionResultType]::ParameterName, 'Server URL (ws://, wss://; http:// and host:port also work)')
            [CompletionResult]::new('--room', '--room', [CompletionResultType]::ParameterName, 'Send every message to this room (default: the room each was recorded in)')
            [CompletionResult]::new('--speed', '--speed', [CompletionResultType]::ParameterName, 'Divide the recorded gaps by X (2: twice as fast); 0 sends each message as soon as the one before is acknowledged')
            [CompletionResult]::new('--connect-timeout', '--connect-timeout', [CompletionResultType]::ParameterName, 'Give up connecting after this long')
            [CompletionResult]::new('--token', '--token', [CompletionResultType]::ParameterName, 'Token for a server started with --token (sent as Authorization: Bearer)')
            [CompletionResult]::new('--ca', '--ca', [CompletionResultType]::ParameterName, 'Trust the CA in this PEM file for wss:// (instead of the system''s roots)')
            [CompletionResult]::new('--timeout', '--timeout', [CompletionResultType]::ParameterName, 'Fail (exit 7) when the server has not acknowledged a message within this long')
            [CompletionResult]::new('--color', '--color', [CompletionResultType]::ParameterName, 'When to colour output: auto colours a terminal unless NO_COLOR is set')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            break
        }
        'wschat;doctor' {
            [CompletionResult]::new('--timeout', '--timeout', [CompletionResultType]::ParameterName, 'Longest wait of each step')
            [CompletionResult]::new('--pings', '--pings', [CompletionResultType]::ParameterName, 'Round trips to time')
            [CompletionResult]::new('--token', '--token', [CompletionResultType]::ParameterName, 'Token for a server started with --token (sent as Authorization: Bearer)')
            [CompletionResult]::new('--ca', '--ca', [CompletionResultType]::ParameterName, 'Trust the CA in this PEM file for wss:// (instead of the system''s roots)')
            [CompletionResult]::new('--color', '--color', [CompletionResultType]::ParameterName, 'When to colour output: auto colours a terminal unless NO_COLOR is set')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print one JSON object with every step instead of lines')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            break
        }
        'wschat;completions' {
            [CompletionResult]::new('--color', '--color', [CompletionResultType]::ParameterName, 'When to colour output: auto colours a terminal unless NO_COLOR is set')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            break
        }
        'wschat;help' {
            [CompletionResult]::new('serve', 'serve', [CompletionResultType]::ParameterValue, 'Run a chat server (HTTP and WebSocket on one port)')
            [CompletionResult]::new('join', 'join', [CompletionResultType]::ParameterValue, 'Join a room: print what arrives, send each line typed or piped in')
            [CompletionResult]::new('send', 'send', [CompletionResultType]::ParameterValue, 'Send messages and exit once the server has acknowledged them')
            [CompletionResult]::new('history', 'history', [CompletionResultType]::ParameterValue, 'Print a room''s history (from a running server) and exit')
            [CompletionResult]::new('bench', 'bench', [CompletionResultType]::ParameterValue, 'Measure a WebSocket broadcast server: deliveries/s, losses and latency; or hold idle connections')
            [CompletionResult]::new('replay', 'replay', [CompletionResultType]::ParameterValue, 'Send the chat messages a `join --record` kept, under their senders'' names, with the recorded gaps; exit once every one is acknowledged')
            [CompletionResult]::new('doctor', 'doctor', [CompletionResultType]::ParameterValue, 'Check an endpoint step by step (DNS, TCP, TLS, upgrade, server, round trips, close) and say what to try when a step fails')
            [CompletionResult]::new('completions', 'completions', [CompletionResultType]::ParameterValue, 'Print a shell completion script (bash, zsh, fish, powershell, elvish)')
            [CompletionResult]::new('help', 'help', [CompletionResultType]::ParameterValue, 'Print this message or the help of the given subcommand(s)')
            break
        }
        'wschat;help;serve' {
            break
        }
        'wschat;help;join' {
            break
        }
        'wschat;help;send' {
            break
        }
        'wschat;help;history' {
            break
        }
        'wschat;help;bench' {
            break
        }
        'wschat;help;replay' {
            break
        }
        'wschat;help;doctor' {
            break
        }
        'wschat;help;completions' {
            break
        }
        'wschat;help;help' {
            break
        }
    })

    $completions.Where{ $_.CompletionText -like "$wordToComplete*" } |
        Sort-Object -Property ListItemText
}
