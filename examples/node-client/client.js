#!/usr/bin/env node
// A Node.js client for alignedvq.v1.InferenceService, built from the .proto alone (no generated
// code): asks GetServerInfo, then replays a request that `edge-agent --dump-payload FILE` wrote
// and prints the streamed answer.
//
//   node client.js --server 127.0.0.1:50051 --payload payload.json [--json]
//
// Why replay instead of encoding: the split path needs LLaVA's vision tower and the AlignedVQ
// encoder on the edge (Python/torch). The wire format itself is language-neutral
// (protos/README.md), so any device that produces the same messages can talk to the server; the
// payload file holds exactly those serialised messages, and this client sends them byte for byte.

"use strict";

const fs = require("fs");
const path = require("path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const {
  CONNECTION_FLAGS, CONNECTION_HELP, UsageError, parseFlags, quietIpServerNameWarning, readToken,
} = require("./lib/cli");

const PROG = "client.js";
const DEFAULT_PROTOS = path.resolve(__dirname, "..", "..", "protos");

const USAGE = `usage: node ${PROG} --payload FILE [options]

  --server TARGET         cloud server HOST:PORT or any gRPC target, e.g.
                          dns:///alignedvq-cloud.NS.svc.cluster.local:50051 (default 127.0.0.1:50051)
  --payload FILE          JSON written by edge-agent --dump-payload (required)
  --json                  print one JSON object at the end instead of streaming text
  --timeout SECONDS       deadline per call (default 120)
${CONNECTION_HELP}
  -h, --help              this text

Exit status: 0 answered, 1 gRPC error, 2 bad arguments or unreadable files.`;

quietIpServerNameWarning(PROG);

function parseArgs(argv) {
  const opts = parseFlags(argv, { ...CONNECTION_FLAGS, "--payload": "payload" },
                          { server: "127.0.0.1:50051", timeout: 120, protos: DEFAULT_PROTOS },
                          USAGE);
  if (!opts.payload) throw new UsageError("--payload FILE is required");
  opts.timeout = Number(opts.timeout);
  if (!(opts.timeout > 0)) throw new UsageError("--timeout must be a positive number of seconds");
  return opts;
}

// {method, messages_base64: [...]}: the serialised request messages, in order (edge_agent/cli.py).
function readPayload(file) {
  let doc;
  try {
    doc = JSON.parse(fs.readFileSync(file, "utf8"));
  } catch (e) {
    throw new UsageError(`cannot read payload ${file}: ${e.message}`);
  }
  if (typeof doc.method !== "string" || !Array.isArray(doc.messages_base64)
      || doc.messages_base64.length === 0) {
    throw new UsageError(`${file} is not an edge-agent --dump-payload file `
                         + "(needs 'method' and a non-empty 'messages_base64' list)");
  }
  return { method: doc.method, messages: doc.messages_base64.map((b) => Buffer.from(b, "base64")) };
}

function credentials(opts) {
  if (!opts.tlsCa && !opts.tlsCert) return grpc.credentials.createInsecure();
  tlsOn = true;
  const read = (f) => (f ? fs.readFileSync(f) : null);
  return grpc.credentials.createSsl(read(opts.tlsCa), read(opts.tlsKey), read(opts.tlsCert));
}

let tlsOn = false;

function rpcError(err) {
  const name = Object.keys(grpc.status).find((k) => grpc.status[k] === err.code) || err.code;
  let text = `${name}: ${err.details || err.message}`;
  if (tlsOn && err.code === grpc.status.UNAVAILABLE) {
    // grpc-js reports a failed TLS handshake only as "no connection established".
    text += "\n(if the server is up, the TLS handshake may have failed: --tls-ca must be the CA "
      + "that signed its certificate, for the name in --server or --tls-server-name; a server "
      + "that requires client certificates also needs --tls-cert/--tls-key)";
  }
  return new Error(text);
}

function deadline(opts) {
  return new Date(Date.now() + opts.timeout * 1000);
}

async function main(argv) {
  const opts = parseArgs(argv);
  const payload = readPayload(opts.payload);
  const metadata = new grpc.Metadata();
  if (opts.authTokenFile) {
    metadata.set("authorization", `Bearer ${readToken(opts.authTokenFile)}`);
    if (!opts.tlsCa && !opts.tlsCert) {
      console.error(`${PROG}: warning: sending the bearer token without TLS (add --tls-ca)`);
    }
  }
  if (opts.requestId) metadata.set("x-request-id", opts.requestId);

  const protoFile = path.join(opts.protos, "alignedvq", "v1", "inference.proto");
  if (!fs.existsSync(protoFile)) throw new UsageError(`no ${protoFile} (see --protos)`);
  const definition = protoLoader.loadSync(protoFile, {
    includeDirs: [opts.protos],
    keepCase: true, // field names as in the .proto: model_id, text_delta, ...
    longs: Number, // uint64 payload_bytes / max_message_bytes fit a double
    enums: String,
    defaults: true,
    oneofs: true, // sets `part` to the name of the oneof member present
  });
  const service = grpc.loadPackageDefinition(definition).alignedvq.v1.InferenceService;
  const channelOptions = {
    // Client-side balancing over every address a dns:/// target resolves to (the headless
    // Kubernetes Service in deploy/k8s), the same policy edge-agent uses.
    "grpc.service_config": JSON.stringify({ loadBalancingConfig: [{ round_robin: {} }] }),
    "grpc.max_receive_message_length": 8 * 1024 * 1024,
  };
  if (opts.tlsServerName) channelOptions["grpc.ssl_target_name_override"] = opts.tlsServerName;
  const client = new service(opts.server, credentials(opts), channelOptions);

  try {
    // 1. What the server runs: an edge whose fingerprints differ must not send (protos/README.md).
    const info = await new Promise((resolve, reject) => {
      client.GetServerInfo({}, metadata, { deadline: deadline(opts) },
        (err, res) => (err ? reject(rpcError(err)) : resolve(res)));
    });
    const codecFingerprint = Buffer.from(info.codec_fingerprint).toString("hex");
    if (!opts.json) {
      console.error(`server: model ${info.model_id}, codec fingerprint ${codecFingerprint || "(none)"}, `
                    + `${info.bits} bits x ${info.tokens} tokens, ${info.stages} stage(s)`);
    }

    // 2. Replay. The header is decoded only to check it against the server before sending; the
    // bytes on the wire are the dumped ones, unchanged.
    const methods = {
      "/alignedvq.v1.InferenceService/AnswerFromCodes": "AnswerFromCodes",
      "/alignedvq.v1.InferenceService/AnswerFromImage": "AnswerFromImage",
    };
    const rpc = methods[payload.method];
    if (!rpc) throw new UsageError(`unsupported method ${payload.method} in ${opts.payload}`);
    const def = service.service[rpc];
    let question;
    if (rpc === "AnswerFromCodes") {
      const first = def.requestDeserialize(payload.messages[0]);
      if (first.part !== "header") throw new UsageError("the payload does not start with a header");
      const header = first.header;
      question = header.question;
      if (header.encoding === "FEATURE_ENCODING_ALIGNEDVQ"
          && Buffer.from(header.codec_fingerprint).toString("hex") !== codecFingerprint) {
        throw new UsageError(`payload was encoded with codec `
          + `${Buffer.from(header.codec_fingerprint).toString("hex")}; the server decodes `
          + `${codecFingerprint || "(none)"}: re-run edge-agent against this server`);
      }
    } else {
      question = def.requestDeserialize(payload.messages[0]).question;
    }
    const payloadBytes = payload.messages.reduce((n, m) => n + m.length, 0);

    const identity = (buf) => buf;
    const started = process.hrtime.bigint();
    const callOptions = { deadline: deadline(opts) };
    const call = rpc === "AnswerFromCodes"
      ? client.makeBidiStreamRequest(payload.method, identity, def.responseDeserialize,
        metadata, callOptions)
      : client.makeServerStreamRequest(payload.method, identity, def.responseDeserialize,
        payload.messages[0], metadata, callOptions);

    const result = await new Promise((resolve, reject) => {
      let text = "";
      let summary = null;
      let firstDeltaMs = null;
      call.on("data", (res) => {
        if (res.part === "text_delta") {
          if (firstDeltaMs === null) firstDeltaMs = Number(process.hrtime.bigint() - started) / 1e6;
          text += res.text_delta;
          if (!opts.json) process.stdout.write(res.text_delta);
        } else if (res.part === "summary") {
          summary = res.summary;
        }
      });
      call.on("error", (err) => reject(rpcError(err)));
      call.on("end", () => {
        if (!summary) reject(new Error("the stream ended without a summary"));
        else resolve({ text, summary, firstDeltaMs });
      });
      if (rpc === "AnswerFromCodes") {
        for (const m of payload.messages) call.write(m);
        call.end();
      }
    });
    const totalMs = Number(process.hrtime.bigint() - started) / 1e6;
    const s = result.summary;
    if (opts.json) {
      console.log(JSON.stringify({
        answer: s.answer,
        streamed_text: result.text,
        question,
        method: payload.method,
        messages: payload.messages.length,
        payload_bytes: payloadBytes,
        server_payload_bytes: s.payload_bytes,
        tokens_generated: s.tokens_generated,
        model_id: s.model_id,
        codec_fingerprint: codecFingerprint,
        bits: info.bits,
        request_id: s.request_id,
        // v1.2: why the answer ended, the seed of a sampled one, cached prompt tokens, and
        // the image's handle (hex) for follow-up questions.
        finish_reason: ({ FINISH_REASON_END: "end", FINISH_REASON_LENGTH: "length",
          FINISH_REASON_STOP_STRING: "stop_string" })[s.finish_reason] || "",
        seed: s._seed === "seed" ? s.seed : null,
        cached_tokens: s.cached_tokens,
        image_handle: Buffer.from(s.image_handle || []).toString("hex"),
        first_delta_ms: result.firstDeltaMs === null ? null : Number(result.firstDeltaMs.toFixed(2)),
        total_ms: Number(totalMs.toFixed(2)),
      }));
    } else {
      process.stdout.write("\n");
      console.error(`[${rpc}: ${payloadBytes} B sent in ${payload.messages.length} message(s), `
                    + `answer "${s.answer}", ${s.tokens_generated} tokens, total ${totalMs.toFixed(0)} ms]`);
    }
  } finally {
    client.close();
  }
}

main(process.argv.slice(2)).then(() => process.exit(0), (err) => {
  console.error(`${PROG}: ${err.message}`);
  if (err instanceof UsageError) console.error(`run 'node ${PROG} --help' for usage`);
  process.exit(err instanceof UsageError || err.code === "ENOENT" || err.code === "EACCES" ? 2 : 1);
});
