// The baseline wschat bench compares against: the broadcast loop from the npm `ws` README
// ("broadcast to every other connected WebSocket client, excluding itself").
// Usage: node relay.js PORT   (listens on 127.0.0.1 only)
'use strict';

const { WebSocketServer, WebSocket } = require('ws');

const port = Number(process.argv[2] || 8081);
const wss = new WebSocketServer({ host: '127.0.0.1', port });

wss.on('connection', function connection(ws) {
  ws.on('error', console.error);

  ws.on('message', function message(data, isBinary) {
    wss.clients.forEach(function each(client) {
      if (client !== ws && client.readyState === WebSocket.OPEN) {
        client.send(data, { binary: isBinary });
      }
    });
  });
});

wss.on('listening', () => {
  console.log(`listening on ws://127.0.0.1:${wss.address().port}/`);
});
