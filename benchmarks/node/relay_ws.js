// A plain Node.js `ws` relay doing geotrack's job with geotrack's wire protocol:
// /publish (one ack per frame, in order, after the commit) and /subscribe (JSON arrays).
//   node relay_ws.js --port 8765 --db reference.db
"use strict";

const { WebSocketServer } = require("ws");
const { parseArgs, openStore, parseFrame, groupCommitter, onSignals } = require("./common");

const args = parseArgs(process.argv);
const store = openStore(args.db);
const subscribers = new Set();

// Encoded once per frame, sent to every subscriber.
const submit = groupCommitter(store, (positions) => {
  const text = JSON.stringify(positions);
  for (const ws of subscribers) ws.send(text);
});

const wss = new WebSocketServer({
  host: args.host,
  port: args.port,
  perMessageDeflate: false,
  maxPayload: 1 << 20,
});

wss.on("connection", (ws, request) => {
  const path = request.url.split("?")[0];
  if (path === "/subscribe") {
    subscribers.add(ws);
    ws.on("close", () => subscribers.delete(ws));
    return;
  }
  if (path !== "/publish") {
    ws.close(1008, "use /publish or /subscribe");
    return;
  }
  // Answers leave in frame order: frame errors wait behind earlier frames' acks.
  const answers = [];
  const flushAnswers = () => {
    while (answers.length && answers[0].text !== null) ws.send(answers.shift().text);
  };
  ws.on("message", (data, isBinary) => {
    const answer = { text: null };
    answers.push(answer);
    const frame = isBinary ? "binary frames are not accepted" : parseFrame(data.toString());
    if (typeof frame === "string") {
      answer.text = JSON.stringify({ type: "error", error: frame });
      flushAnswers();
      return;
    }
    submit({
      rows: frame.rows,
      rejected: frame.rejected,
      done: (ack) => {
        answer.text = JSON.stringify(ack);
        flushAnswers();
      },
      fail: (e) => ws.close(1011, `store write failed: ${e.message}`.slice(0, 120)),
    });
  });
});

wss.on("listening", () => console.log(`ws relay listening on ${args.host}:${args.port}`));
onSignals(() => {
  for (const ws of wss.clients) ws.close(1001, "relay shutting down");
  wss.close(() => {
    store.db.close();
    process.exit(0);
  });
  setTimeout(() => process.exit(0), 3000).unref();
});
