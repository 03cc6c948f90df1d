# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_wschat_global_optspecs
    string join \n color= h/help V/version
end

function __fish_wschat_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_wschat_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_wschat_using_subcommand
    set -l cmd (__fish_wschat_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c wschat -n "__fish_wschat_needs_command" -l color -d 'When to colour output: auto colours a terminal unless NO_COLOR is set' -r -f -a "auto\t''
always\t''
never\t''"
complete -c wschat -n "__fish_wschat_needs_command" -s h -l help -d 'Print help'
complete -c wschat -n "__fish_wschat_needs_command" -s V -l version -d 'Print version'
complete -c wschat -n "__fish_wschat_needs_command" -f -a "serve" -d 'Run a chat server (HTTP and WebSocket on one port)'
complete -c wschat -n "__fish_wschat_needs_command" -f -a "join" -d 'Join a room: print what arrives, send each line typed or piped in'
complete -c wschat -n "__fish_wschat_needs_command" -f -a "send" -d 'Send messages and exit once the server has acknowledged them'
complete -c wschat -n "__fish_wschat_needs_command" -f -a "history" -d 'Print a room\'s history (from a running server) and exit'
complete -c wschat -n "__fish_wschat_needs_command" -f -a "bench" -d 'Measure a WebSocket broadcast server: deliveries/s, losses and latency; or hold idle connections'
complete -c wschat -n "__fish_wschat_needs_command" -f -a "replay" -d 'Send the chat messages a `join --record` kept, under their senders\' names, with the recorded gaps; exit once every one is acknowledged'
complete -c wschat -n "__fish_wschat_needs_command" -f -a "doctor" -d 'Check an endpoint step by step (DNS, TCP, TLS, upgrade, server, round trips, close) and say what to try when a step fails'
complete -c wschat -n "__fish_wschat_needs_command" -f -a "completions" -d 'Print a shell completion script (bash, zsh, fish, powershell, elvish)'
complete -c wschat -n "__fish_wschat_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c wschat -n "__fish_wschat_using_subcommand serve" -l host -d 'Address to listen on (0.0.0.0 for every interface)' -r
complete -c wschat -n "__fish_wschat_using_subcommand serve" -s p -l port -d 'Port to listen on; 0 picks a free one (the real URL is printed)' -r
complete -c wschat -n "__fish_wschat_using_subcommand serve" -l max-message-bytes -d 'Largest message accepted from a client (bytes, or with KiB/MiB); larger ones close it with 1009' -r
complete -c wschat -n "__fish_wschat_using_subcommand serve" -l outbox -d 'Frames queued for one client before it counts as too slow and is closed with 4008' -r
complete -c wschat -n "__fish_wschat_using_subcommand serve" -l outbox-bytes -d 'Bytes queued for one client before it counts as too slow and is closed with 4008 (at least twice --max-message-bytes); a history replay takes at most half of it' -r
complete -c wschat -n "__fish_wschat_using_subcommand serve" -l grace -d 'How long shutdown waits for clients to answer the close frame (a further signal ends the wait)' -r
complete -c wschat -n "__fish_wschat_using_subcommand serve" -l drain-delay -d 'On SIGINT/SIGTERM, keep serving this long with GET /healthz answering 503, so that a load balancer stops sending clients before they are closed; a second signal ends it' -r
complete -c wschat -n "__fish_wschat_using_subcommand serve" -l history -d 'Messages of a room\'s history sent to each member that joins it' -r
complete -c wschat -n "__fish_wschat_using_subcommand serve" -l keep -d 'Messages kept in memory per room, for history and resume' -r
complete -c wschat -n "__fish_wschat_using_subcommand serve" -l keep-bytes -d 'Bytes of history kept in memory across all rooms; past it, the least recently active rooms lose their oldest messages from memory first (with --db or --redis they stay there)' -r
complete -c wschat -n "__fish_wschat_using_subcommand serve" -l db -d 'Keep history in this SQLite file, durable across restarts (created if missing)' -r -F
complete -c wschat -n "__fish_wschat_using_subcommand serve" -l redis -d 'Run as one of several instances sharing rooms, history, names and presence through this Redis server (redis://HOST:PORT); see docs/scaling.md' -r
complete -c wschat -n "__fish_wschat_using_subcommand serve" -l rate -d 'Messages per second one connection may send; past --burst it is read more slowly, and after --flood-timeout of that it is closed with 4029. 0: no limit' -r
complete -c wschat -n "__fish_wschat_using_subcommand serve" -l burst -d 'Messages a connection may send at once before --rate applies' -r
complete -c wschat -n "__fish_wschat_using_subcommand serve" -l flood-timeout -d 'How long a connection may stay over --rate before it is closed' -r
complete -c wschat -n "__fish_wschat_using_subcommand serve" -l max-clients -d 'Open connections allowed; more are refused with HTTP 503. 0: no limit' -r
complete -c wschat -n "__fish_wschat_using_subcommand serve" -l max-per-ip -d 'Open connections allowed from one address. 0 (the default): no limit, as every client behind a load balancer or NAT shares one address' -r
complete -c wschat -n "__fish_wschat_using_subcommand serve" -l ping-interval -d 'Ping clients this often; one silent for two intervals is dropped. 0s: never' -r
complete -c wschat -n "__fish_wschat_using_subcommand serve" -l handshake-timeout -d 'Longest time a client may take to send its request headers' -r
complete -c wschat -n "__fish_wschat_using_subcommand serve" -l token -d 'Clients must present this token (CLI: --token; browsers: ?token=)' -r
complete -c wschat -n "__fish_wschat_using_subcommand serve" -l token-file -d 'Read the token from this file (its first line)' -r -F
complete -c wschat -n "__fish_wschat_using_subcommand serve" -l allow-origin -d 'Also accept WebSocket connections from pages of this origin (e.g. https://chat.example.com; * for any). Repeatable' -r
complete -c wschat -n "__fish_wschat_using_subcommand serve" -l public-url -d 'The address people use to reach this server (e.g. https://chat.example.com): pages served under its name, or of its origin behind a proxy that rewrites Host, are this server\'s own. Without it only an IP address or localhost counts as the server\'s name (other names may be DNS rebinding). Repeatable, or a comma-separated list' -r
complete -c wschat -n "__fish_wschat_using_subcommand serve" -l tls-cert -d 'Serve wss:// and https:// with this PEM certificate (chain)' -r -F
complete -c wschat -n "__fish_wschat_using_subcommand serve" -l tls-key -d 'The PEM private key of --tls-cert' -r -F
complete -c wschat -n "__fish_wschat_using_subcommand serve" -l log-format -d 'Log format on stderr' -r -f -a "text\t''
json\t''"
complete -c wschat -n "__fish_wschat_using_subcommand serve" -l chaos -d 'Misbehave on purpose, to test clients: comma-separated drop=P (cut each connection without a close frame with probability P per second), close=P (the same with close 1001), delay=MIN-MAX (hold each outgoing frame that long, order kept), fragment=N (send messages in N-byte fragments). Stored messages are never lost' -r
complete -c wschat -n "__fish_wschat_using_subcommand serve" -l chaos-seed -d 'Seed for --chaos\'s random choices, to repeat a run' -r
complete -c wschat -n "__fish_wschat_using_subcommand serve" -l color -d 'When to colour output: auto colours a terminal unless NO_COLOR is set' -r -f -a "auto\t''
always\t''
never\t''"
complete -c wschat -n "__fish_wschat_using_subcommand serve" -l echo -d 'Send each message back to its sender too'
complete -c wschat -n "__fish_wschat_using_subcommand serve" -l raw -d 'Plain relay: frames (text or binary) go out exactly as they came in; no JSON envelopes, no notices'
complete -c wschat -n "__fish_wschat_using_subcommand serve" -s h -l help -d 'Print help'
complete -c wschat -n "__fish_wschat_using_subcommand join" -l url -d 'Server URL (ws://, wss://; http:// and host:port also work)' -r
complete -c wschat -n "__fish_wschat_using_subcommand join" -l room -d 'Room to join' -r
complete -c wschat -n "__fish_wschat_using_subcommand join" -l connect-timeout -d 'Give up connecting after this long' -r
complete -c wschat -n "__fish_wschat_using_subcommand join" -l token -d 'Token for a server started with --token (sent as Authorization: Bearer)' -r
complete -c wschat -n "__fish_wschat_using_subcommand join" -l ca -d 'Trust the CA in this PEM file for wss:// (instead of the system\'s roots)' -r -F
complete -c wschat -n "__fish_wschat_using_subcommand join" -l count -d 'Exit 0 after receiving this many chat messages' -r
complete -c wschat -n "__fish_wschat_using_subcommand join" -l for -d 'Exit 0 after this long (e.g. 30s, 5m)' -r
complete -c wschat -n "__fish_wschat_using_subcommand join" -l until -d 'Exit 0 once a chat message received matches this regular expression (its text; with --json too). With --for, exit 7 when none did in time' -r
complete -c wschat -n "__fish_wschat_using_subcommand join" -l exec -d 'For each chat message from others, run CMD with `sh -c`: the text on its stdin and in WSCHAT_TEXT, with WSCHAT_FROM, WSCHAT_ROOM and WSCHAT_ID; each line it prints is sent to the room. One at a time, in order; a failure is reported on stderr' -r
complete -c wschat -n "__fish_wschat_using_subcommand join" -l jobs -d 'Commands --exec runs at once (their lines are still sent in the messages\' order)' -r
complete -c wschat -n "__fish_wschat_using_subcommand join" -l exec-timeout -d 'Kill an --exec command (and what it started) after this long' -r
complete -c wschat -n "__fish_wschat_using_subcommand join" -l record -d 'Append every received event to FILE as NDJSON with its arrival time (for `wschat replay`)' -r -F
complete -c wschat -n "__fish_wschat_using_subcommand join" -l color -d 'When to colour output: auto colours a terminal unless NO_COLOR is set' -r -f -a "auto\t''
always\t''
never\t''"
complete -c wschat -n "__fish_wschat_using_subcommand join" -l json -d 'Print one JSON object per line instead of text'
complete -c wschat -n "__fish_wschat_using_subcommand join" -l no-reconnect -d 'Exit (code 5) when the connection is lost instead of reconnecting'
complete -c wschat -n "__fish_wschat_using_subcommand join" -s h -l help -d 'Print help'
complete -c wschat -n "__fish_wschat_using_subcommand send" -l url -d 'Server URL (ws://, wss://; http:// and host:port also work)' -r
complete -c wschat -n "__fish_wschat_using_subcommand send" -l connect-timeout -d 'Give up connecting after this long' -r
complete -c wschat -n "__fish_wschat_using_subcommand send" -l token -d 'Token for a server started with --token (sent as Authorization: Bearer)' -r
complete -c wschat -n "__fish_wschat_using_subcommand send" -l ca -d 'Trust the CA in this PEM file for wss:// (instead of the system\'s roots)' -r -F
complete -c wschat -n "__fish_wschat_using_subcommand send" -l wait -d 'After delivery, print what arrives for this long' -r
complete -c wschat -n "__fish_wschat_using_subcommand send" -l min-recipients -d 'Fail (exit 6) when a message reached fewer than N other members (it was still delivered to those)' -r
complete -c wschat -n "__fish_wschat_using_subcommand send" -l timeout -d 'Fail (exit 7) when the server has not acknowledged within this long' -r
complete -c wschat -n "__fish_wschat_using_subcommand send" -l room -d 'Room to send to' -r
complete -c wschat -n "__fish_wschat_using_subcommand send" -l color -d 'When to colour output: auto colours a terminal unless NO_COLOR is set' -r -f -a "auto\t''
always\t''
never\t''"
complete -c wschat -n "__fish_wschat_using_subcommand send" -l json -d 'Print one JSON object per line instead of text'
complete -c wschat -n "__fish_wschat_using_subcommand send" -s h -l help -d 'Print help'
complete -c wschat -n "__fish_wschat_using_subcommand history" -l url -d 'Server URL (ws://, wss://; http:// and host:port also work)' -r
complete -c wschat -n "__fish_wschat_using_subcommand history" -l connect-timeout -d 'Give up connecting after this long' -r
complete -c wschat -n "__fish_wschat_using_subcommand history" -l token -d 'Token for a server started with --token (sent as Authorization: Bearer)' -r
complete -c wschat -n "__fish_wschat_using_subcommand history" -l ca -d 'Trust the CA in this PEM file for wss:// (instead of the system\'s roots)' -r -F
complete -c wschat -n "__fish_wschat_using_subcommand history" -l since -d 'Only messages after this id (what a client that saw ID missed)' -r
complete -c wschat -n "__fish_wschat_using_subcommand history" -l limit -d 'At most this many of the latest messages (without --since)' -r
complete -c wschat -n "__fish_wschat_using_subcommand history" -l room -d 'Room whose history to print' -r
complete -c wschat -n "__fish_wschat_using_subcommand history" -l color -d 'When to colour output: auto colours a terminal unless NO_COLOR is set' -r -f -a "auto\t''
always\t''
never\t''"
complete -c wschat -n "__fish_wschat_using_subcommand history" -l json -d 'Print each message as one JSON object per line'
complete -c wschat -n "__fish_wschat_using_subcommand history" -s h -l help -d 'Print help'
complete -c wschat -n "__fish_wschat_using_subcommand bench" -l url -d 'Server URL (ws://; http:// and host:port also work)' -r
complete -c wschat -n "__fish_wschat_using_subcommand bench" -l receivers -d 'Connections that receive and count every message' -r
complete -c wschat -n "__fish_wschat_using_subcommand bench" -l publishers -d 'Connections that send' -r
complete -c wschat -n "__fish_wschat_using_subcommand bench" -l rate -d 'Messages per second, all publishers together, or \'max\': as fast as the server delivers (each publisher keeps a bounded number of messages in flight)' -r
complete -c wschat -n "__fish_wschat_using_subcommand bench" -l duration -d 'How long the publishers send (with --idle: how long connections are held)' -r
complete -c wschat -n "__fish_wschat_using_subcommand bench" -l size -d 'Length of each message\'s text in bytes (a token of about 30 bytes, padded)' -r
complete -c wschat -n "__fish_wschat_using_subcommand bench" -l rooms -d 'Spread receivers and publishers over K rooms, round robin (a server that ignores rooms shows it as unexpected deliveries)' -r
complete -c wschat -n "__fish_wschat_using_subcommand bench" -l drain -d 'After sending, wait at most this long for deliveries still on their way' -r
complete -c wschat -n "__fish_wschat_using_subcommand bench" -l connect-timeout -d 'Give up when one connection\'s handshake takes longer than this' -r
complete -c wschat -n "__fish_wschat_using_subcommand bench" -l token -d 'Token for a server started with --token (sent as Authorization: Bearer)' -r
complete -c wschat -n "__fish_wschat_using_subcommand bench" -l idle -d 'Instead of a load: open N connections that send nothing and hold them for --duration (or until Ctrl-C), printing how many are open' -r
complete -c wschat -n "__fish_wschat_using_subcommand bench" -l members -d 'Instead of a load: N announced (named) members join one room and read everything; then one message must reach them all. Reports join time, the server\'s CPU per join and memory per member, and the members the server closed' -r
complete -c wschat -n "__fish_wschat_using_subcommand bench" -l join-rate -d 'With --members: joins per second, or \'max\' (as fast as the server welcomes them, 128 handshakes in flight)' -r
complete -c wschat -n "__fish_wschat_using_subcommand bench" -l room -d 'With --members: the room they join' -r
complete -c wschat -n "__fish_wschat_using_subcommand bench" -l name-prefix -d 'With --members: member i is named PREFIX<i> (bench processes sharing a room need different prefixes)' -r
complete -c wschat -n "__fish_wschat_using_subcommand bench" -l server-pid -d 'With --members: the server process whose CPU and memory are read from /proc (by default the local process listening on the URL\'s port, when it can be found)' -r
complete -c wschat -n "__fish_wschat_using_subcommand bench" -l first-source -d 'Bind connections to a loopback server to source addresses from this one on (127.x.y.z), 10,000 per address; by default 127.0.0.1, .2, ... past 10,000 connections. Bench processes running side by side need their own: a bound port is unique per address' -r
complete -c wschat -n "__fish_wschat_using_subcommand bench" -l color -d 'When to colour output: auto colours a terminal unless NO_COLOR is set' -r -f -a "auto\t''
always\t''
never\t''"
complete -c wschat -n "__fish_wschat_using_subcommand bench" -l quiet-receivers -d 'Receivers join quietly (`?quiet=1`): a wschat server announces each visible member to the whole room, which for thousands of receivers floods them before the run starts'
complete -c wschat -n "__fish_wschat_using_subcommand bench" -l json -d 'Print one JSON object with every figure instead of the table'
complete -c wschat -n "__fish_wschat_using_subcommand bench" -l await-message -d 'With --members: send nothing; wait up to --duration for a message starting with \'wsb-final:<unix nanos>\' from another client (e.g. wschat send), to time it'
complete -c wschat -n "__fish_wschat_using_subcommand bench" -s h -l help -d 'Print help'
complete -c wschat -n "__fish_wschat_using_subcommand replay" -l url -d 'Server URL (ws://, wss://; http:// and host:port also work)' -r
complete -c wschat -n "__fish_wschat_using_subcommand replay" -l room -d 'Send every message to this room (default: the room each was recorded in)' -r
complete -c wschat -n "__fish_wschat_using_subcommand replay" -l speed -d 'Divide the recorded gaps by X (2: twice as fast); 0 sends each message as soon as the one before is acknowledged' -r
complete -c wschat -n "__fish_wschat_using_subcommand replay" -l connect-timeout -d 'Give up connecting after this long' -r
complete -c wschat -n "__fish_wschat_using_subcommand replay" -l token -d 'Token for a server started with --token (sent as Authorization: Bearer)' -r
complete -c wschat -n "__fish_wschat_using_subcommand replay" -l ca -d 'Trust the CA in this PEM file for wss:// (instead of the system\'s roots)' -r -F
complete -c wschat -n "__fish_wschat_using_subcommand replay" -l timeout -d 'Fail (exit 7) when the server has not acknowledged a message within this long' -r
complete -c wschat -n "__fish_wschat_using_subcommand replay" -l color -d 'When to colour output: auto colours a terminal unless NO_COLOR is set' -r -f -a "auto\t''
always\t''
never\t''"
complete -c wschat -n "__fish_wschat_using_subcommand replay" -s h -l help -d 'Print help'
complete -c wschat -n "__fish_wschat_using_subcommand doctor" -l timeout -d 'Longest wait of each step' -r
complete -c wschat -n "__fish_wschat_using_subcommand doctor" -l pings -d 'Round trips to time' -r
complete -c wschat -n "__fish_wschat_using_subcommand doctor" -l token -d 'Token for a server started with --token (sent as Authorization: Bearer)' -r
complete -c wschat -n "__fish_wschat_using_subcommand doctor" -l ca -d 'Trust the CA in this PEM file for wss:// (instead of the system\'s roots)' -r -F
complete -c wschat -n "__fish_wschat_using_subcommand doctor" -l color -d 'When to colour output: auto colours a terminal unless NO_COLOR is set' -r -f -a "auto\t''
always\t''
never\t''"
complete -c wschat -n "__fish_wschat_using_subcommand doctor" -l json -d 'Print one JSON object with every step instead of lines'
complete -c wschat -n "__fish_wschat_using_subcommand doctor" -s h -l help -d 'Print help'
complete -c wschat -n "__fish_wschat_using_subcommand completions" -l color -d 'When to colour output: auto colours a terminal unless NO_COLOR is set' -r -f -a "auto\t''
always\t''
never\t''"
complete -c wschat -n "__fish_wschat_using_subcommand completions" -s h -l help -d 'Print help'
complete -c wschat -n "__fish_wschat_using_subcommand help; and not __fish_seen_subcommand_from serve join send history bench replay doctor completions help" -f -a "serve" -d 'Run a chat server (HTTP and WebSocket on one port)'
complete -c wschat -n "__fish_wschat_using_subcommand help; and not __fish_seen_subcommand_from serve join send history bench replay doctor completions help" -f -a "join" -d 'Join a room: print what arrives, send each line typed or piped in'
complete -c wschat -n "__fish_wschat_using_subcommand help; and not __fish_seen_subcommand_from serve join send history bench replay doctor completions help" -f -a "send" -d 'Send messages and exit once the server has acknowledged them'
complete -c wschat -n "__fish_wschat_using_subcommand help; and not __fish_seen_subcommand_from serve join send history bench replay doctor completions help" -f -a "history" -d 'Print a room\'s history (from a running server) and exit'
complete -c wschat -n "__fish_wschat_using_subcommand help; and not __fish_seen_subcommand_from serve join send history bench replay doctor completions help" -f -a "bench" -d 'Measure a WebSocket broadcast server: deliveries/s, losses and latency; or hold idle connections'
complete -c wschat -n "__fish_wschat_using_subcommand help; and not __fish_seen_subcommand_from serve join send history bench replay doctor completions help" -f -a "replay" -d 'Send the chat messages a `join --record` kept, under their senders\' names, with the recorded gaps; exit once every one is acknowledged'
complete -c wschat -n "__fish_wschat_using_subcommand help; and not __fish_seen_subcommand_from serve join send history bench replay doctor completions help" -f -a "doctor" -d 'Check an endpoint step by step (DNS, TCP, TLS, upgrade, server, round trips, close) and say what to try when a step fails'
complete -c wschat -n "__fish_wschat_using_subcommand help; and not __fish_seen_subcommand_from serve join send history bench replay doctor completions help" -f -a "completions" -d 'Print a shell completion script (bash, zsh, fish, powershell, elvish)'
complete -c wschat -n "__fish_wschat_using_subcommand help; and not __fish_seen_subcommand_from serve join send history bench replay doctor completions help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
