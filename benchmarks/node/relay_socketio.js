// The seed's stack: a Node.js + socket.io relay doing geotrack's job. Publishers emit
// "publish" (a position or an array) with an ack callback, answered after the commit;
// subscribers connect with ?role=subscribe and receive "positions" events (arrays).
//   node relay_socketio.js --port 8765 --db reference.db
"use strict";

const http = require("node:http");
const { Server } = require("socket.io");
const { parseArgs, openStore, checkFrame, groupCommitter, onSignals } = require("./common");

const args = parseArgs(process.argv);
const store = openStore(args.db);
const server = http.createServer();
const io = new Server(server, {
  serveClient: false,
  transports: ["websocket"],
  perMessageDeflate: false,
  maxHttpBufferSize: 1 << 20,
});

// A room broadcast encodes the packet once and writes it to every member.
const submit = groupCommitter(store, (positions) => io.to("subscribers").emit("positions", positions));

io.on("connection", (socket) => {
  if (socket.handshake.query.role === "subscribe") {
    socket.join("subscribers");
    return;
  }
  socket.on("publish", (payload, ack) => {
    if (typeof ack !== "function") return;
    const frame = checkFrame(payload);
    if (typeof frame === "string") {
      ack({ type: "error", error: frame });
      return;
    }
    submit({ rows: frame.rows, rejected: frame.rejected, done: ack, fail: () => socket.disconnect(true) });
  });
});

server.listen(args.port, args.host, () =>
  console.log(`socket.io relay listening on ${args.host}:${args.port}`),
);
onSignals(() => {
  io.close(() => {
    store.db.close();
    process.exit(0);
  });
  setTimeout(() => process.exit(0), 3000).unref();
});
