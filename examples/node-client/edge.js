#!/usr/bin/env node
// A complete edge in Node.js: reads an image, preprocesses it as the model's CLIP processor does,
// runs the edge graph that `alignedvq export-edge` wrote (vision blocks before the cut + the
// AlignedVQ encoder) with onnxruntime-node, packs the codebook indices (protos/README.md) and
// streams them to cloud-server over gRPC; prints the streamed answer. No Python, no torch.
//
//   node edge.js --image cat.png --question "what is this?" [--server 127.0.0.1:50051]
//                [--temperature 0.7 --seed 1 ...] [--follow-up "and its color?" ...]
//
// Sampling flags build GenerationParams (contract v1.2, vLLM's names); each --follow-up is a
// later question about the same image: only the question, the earlier turns and the image
// handle the server returned are sent (a header alone, no chunk).
//
// It sends what `edge-agent --runtime onnx` sends for the same image and question (a PNG gives
// the same indices bit for bit; tests/test_node_edge.py checks it against a live server).

"use strict";

const fs = require("fs");
const path = require("path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const { readImage, ImageError } = require("./lib/image");
const { preprocess } = require("./lib/preprocess");
const { pack, stageIndices } = require("./lib/packing");
const {
  CONNECTION_FLAGS, CONNECTION_HELP, UsageError, parseFlags, quietIpServerNameWarning, readToken,
} = require("./lib/cli");

const PROG = "edge.js";
const REPO = path.resolve(__dirname, "..", "..");
const DEFAULT_PROTOS = path.join(REPO, "protos");
const DEFAULT_ONNX_DIR = path.join(REPO, "common", "models", "tiny-llava-edge");
const METHOD = "/alignedvq.v1.InferenceService/AnswerFromCodes";

const USAGE = `usage: node ${PROG} --image FILE --question TEXT [options]

  --image FILE            PNG or JPEG
  --question TEXT         the question, in the model's language
  --server TARGET         cloud server HOST:PORT or any gRPC target (default 127.0.0.1:50051)
  --onnx-dir DIR          what \`alignedvq export-edge --out DIR\` wrote: edge.onnx + edge.json
                          (default: the repository's common/models/tiny-llava-edge)
  --max-new-tokens N      0 = the server's default
  --temperature T         sampling (vLLM's SamplingParams names and ranges): 0-2, 0 = greedy
  --top-p P, --top-k K, --min-p P, --seed N, --repetition-penalty R
                          the other sampling fields (unset: the server's defaults)
  --stop TEXT             end the answer before TEXT (repeatable)
  --follow-up QUESTION    a later question about the same image, sent by its handle
                          (repeatable; asked in order after the first answer)
  --json                  print one JSON object at the end instead of streaming text
  --dump-payload FILE     write the request messages (JSON, base64), as edge-agent --dump-payload
  --timeout SECONDS       deadline per call (default 120)
  --threads N             onnxruntime intra-op threads (default: its own choice)
${CONNECTION_HELP}
  -h, --help              this text

Exit status: 0 answered, 1 gRPC error, 2 bad arguments or unreadable files, 3 incompatible server.`;

class IncompatibleServer extends Error {}

// Sampling flags and the GenerationParams fields they set (the server checks the ranges).
const SAMPLING = [["--temperature", "temperature"], ["--top-p", "top_p"], ["--top-k", "top_k"],
  ["--min-p", "min_p"], ["--seed", "seed"], ["--repetition-penalty", "repetition_penalty"]];

// GenerationParams from the flags, or undefined when none is given (as before v1.2).
function generationParams(opts) {
  const params = {};
  if (opts.maxNewTokens) params.max_new_tokens = opts.maxNewTokens;
  for (const [, field] of SAMPLING) if (opts[field] !== undefined) params[field] = opts[field];
  if (opts.stop.length) params.stop = opts.stop;
  return Object.keys(params).length ? params : undefined;
}

const FINISH_REASONS = { FINISH_REASON_END: "end", FINISH_REASON_LENGTH: "length",
  FINISH_REASON_STOP_STRING: "stop_string", FINISH_REASON_CANCELLED: "cancelled" };

// The v1.2 summary fields; `seed` is proto3 optional, present only for a sampled answer.
function summaryFields(s) {
  return {
    seed: s._seed === "seed" ? s.seed : null,
    finish_reason: FINISH_REASONS[s.finish_reason] || "",
    cached_tokens: s.cached_tokens,
  };
}

quietIpServerNameWarning(PROG);

function parseArgs(argv) {
  const opts = parseFlags(argv, {
    ...CONNECTION_FLAGS, "--image": "image", "--question": "question", "--onnx-dir": "onnxDir",
    "--max-new-tokens": "maxNewTokens", "--dump-payload": "dumpPayload", "--threads": "threads",
    ...Object.fromEntries(SAMPLING.map(([flag, field]) => [flag, field])),
    "--stop": "stop", "--follow-up": "followUps",
  }, { server: "127.0.0.1:50051", timeout: 120, protos: DEFAULT_PROTOS,
       onnxDir: DEFAULT_ONNX_DIR, maxNewTokens: 0, threads: 0, stop: [], followUps: [] }, USAGE);
  for (const [flag, field] of SAMPLING) {
    if (opts[field] === undefined) continue;
    opts[field] = Number(opts[field]);
    if (!Number.isFinite(opts[field])) throw new UsageError(`${flag} must be a number`);
  }
  if (!opts.image) throw new UsageError("--image FILE is required");
  if (opts.question === undefined) throw new UsageError("--question TEXT is required");
  for (const [key, flag] of [["timeout", "--timeout"], ["maxNewTokens", "--max-new-tokens"],
    ["threads", "--threads"]]) {
    opts[key] = Number(opts[key]);
    if (!(opts[key] >= 0) || (key !== "timeout" && !Number.isInteger(opts[key]))) {
      throw new UsageError(`${flag} must be a non-negative number`);
    }
  }
  return opts;
}

// edge.json, the graph's sidecar (edge_agent/edge_spec.py).
function readSpec(dir) {
  const file = path.join(dir, "edge.json");
  if (!fs.existsSync(file)) {
    throw new UsageError(`no exported edge in ${dir} (expected edge.json and edge.onnx); create `
      + `it with \`alignedvq export-edge --out ${dir}\``);
  }
  const spec = JSON.parse(fs.readFileSync(file, "utf8"));
  if (spec.format !== "alignedvq-edge-onnx/1") {
    throw new UsageError(`${file} is format ${spec.format}; edge.js reads alignedvq-edge-onnx/1`);
  }
  if (!fs.existsSync(path.join(dir, spec.graph))) {
    throw new UsageError(`${path.join(dir, spec.graph)} is missing; export the edge again`);
  }
  return spec;
}

// The graph on one image: Float32Array pixels -> per stage, the tokens' indices.
async function encode(session, spec, pixels) {
  const ort = require("onnxruntime-node");
  const size = spec.image_size;
  const input = new ort.Tensor("float32", pixels, [1, 3, size, size]);
  const out = (await session.run({ [spec.input_name]: input }))[spec.output_name];
  return stageIndices(out, spec);
}

function rpcError(err, tls) {
  const name = Object.keys(grpc.status).find((k) => grpc.status[k] === err.code) || err.code;
  let text = `${name}: ${err.details || err.message}`;
  if (tls && err.code === grpc.status.UNAVAILABLE) {
    text += "\n(if the server is up, the TLS handshake may have failed: check --tls-ca, and "
      + "--tls-cert/--tls-key for a server that requires client certificates)";
  }
  const e = new Error(text);
  e.grpc = true;
  return e;
}

async function main(argv) {
  const opts = parseArgs(argv);
  const spec = readSpec(opts.onnxDir);
  const metadata = new grpc.Metadata();
  if (opts.authTokenFile) metadata.set("authorization", `Bearer ${readToken(opts.authTokenFile)}`);
  if (opts.requestId) metadata.set("x-request-id", opts.requestId);

  let image;
  try {
    image = readImage(opts.image);
  } catch (e) {
    throw new UsageError(e instanceof ImageError ? e.message : `cannot read ${opts.image}: ${e.message}`);
  }

  const protoFile = path.join(opts.protos, "alignedvq", "v1", "inference.proto");
  if (!fs.existsSync(protoFile)) throw new UsageError(`no ${protoFile} (see --protos)`);
  const definition = protoLoader.loadSync(protoFile, {
    includeDirs: [opts.protos], keepCase: true, longs: Number, enums: String, defaults: true,
    oneofs: true,
  });
  const service = grpc.loadPackageDefinition(definition).alignedvq.v1.InferenceService;
  const tls = Boolean(opts.tlsCa || opts.tlsCert);
  const read = (f) => (f ? fs.readFileSync(f) : null);
  const creds = tls ? grpc.credentials.createSsl(read(opts.tlsCa), read(opts.tlsKey), read(opts.tlsCert))
    : grpc.credentials.createInsecure();
  const channelOptions = {
    "grpc.service_config": JSON.stringify({ loadBalancingConfig: [{ round_robin: {} }] }),
    "grpc.max_receive_message_length": 8 * 1024 * 1024,
  };
  if (opts.tlsServerName) channelOptions["grpc.ssl_target_name_override"] = opts.tlsServerName;
  const client = new service(opts.server, creds, channelOptions);
  const deadline = () => new Date(Date.now() + opts.timeout * 1000);

  try {
    // The graph loads while GetServerInfo is in flight.
    const ort = require("onnxruntime-node");
    const sessionOptions = opts.threads ? { intraOpNumThreads: opts.threads } : {};
    const sessionReady = ort.InferenceSession.create(path.join(opts.onnxDir, spec.graph),
      sessionOptions);
    const info = await new Promise((resolve, reject) => {
      client.GetServerInfo({}, metadata, { deadline: deadline(), waitForReady: true },
        (err, res) => (err ? reject(rpcError(err, tls)) : resolve(res)));
    });
    // An edge whose fingerprints differ must not send (protos/README.md).
    const hex = (b) => Buffer.from(b).toString("hex");
    if (hex(info.vision_fingerprint) !== spec.vision_fingerprint.slice(0, 16)) {
      throw new IncompatibleServer(`server runs vision weights ${hex(info.vision_fingerprint)} `
        + `(model ${info.model_id}); this edge has ${spec.vision_fingerprint}`);
    }
    if (hex(info.codec_fingerprint) !== spec.codec_fingerprint.slice(0, 16)) {
      throw new IncompatibleServer(`server decodes codec ${hex(info.codec_fingerprint) || "(none)"}; `
        + `this edge encodes with ${spec.codec_fingerprint}`);
    }
    const session = await sessionReady;

    const started = process.hrtime.bigint();
    const pixels = preprocess(image, spec.preprocess);
    const indices = await encode(session, spec, pixels);
    const def = service.service.AnswerFromCodes;
    const header = {
      vision_fingerprint: Buffer.from(spec.vision_fingerprint.slice(0, 16), "hex"),
      codec_fingerprint: Buffer.from(spec.codec_fingerprint.slice(0, 16), "hex"),
      encoding: "FEATURE_ENCODING_ALIGNEDVQ", tokens: spec.tokens, bits: spec.bits,
      stages: spec.stages, question: opts.question,
    };
    const generation = generationParams(opts);
    if (generation) header.generation = generation;
    const messages = [def.requestSerialize({ header })];
    indices.forEach((idx, stage) => {
      // protobufjs writes a field that is set even when it holds the default (proto3 omits it):
      // stage 0 is left unset so the bytes equal the Python edge's.
      const chunk = { packed_indices: pack(idx, spec.bits) };
      if (stage) chunk.stage = stage;
      messages.push(def.requestSerialize({ chunk }));
    });
    const edgeMs = Number(process.hrtime.bigint() - started) / 1e6;
    const payloadBytes = messages.reduce((n, m) => n + m.length, 0);
    if (opts.dumpPayload) {
      fs.writeFileSync(opts.dumpPayload, JSON.stringify({
        method: METHOD, messages_base64: messages.map((m) => m.toString("base64")) }));
    }

    const identity = (buf) => buf;
    // One AnswerFromCodes call: the messages, half-close, the streamed answer and its summary.
    const answer = (msgs, stream) => new Promise((resolve, reject) => {
      const call = client.makeBidiStreamRequest(METHOD, identity, def.responseDeserialize,
        metadata, { deadline: deadline() });
      let text = "";
      let summary = null;
      call.on("data", (res) => {
        if (res.part === "text_delta") {
          text += res.text_delta;
          if (stream) process.stdout.write(res.text_delta);
        } else if (res.part === "summary") {
          summary = res.summary;
        }
      });
      call.on("error", (err) => reject(rpcError(err, tls)));
      call.on("end", () => (summary ? resolve({ text, summary })
        : reject(new Error("the stream ended without a summary"))));
      for (const m of msgs) call.write(m);
      call.end();
    });
    const result = await answer(messages, !opts.json);
    const totalMs = Number(process.hrtime.bigint() - started) / 1e6;
    const s = result.summary;

    // Follow-ups: the header alone, naming the image by the handle the server returned, with
    // the conversation so far (the client keeps it; protos/README.md, "Conversations").
    const history = [{ question: opts.question, answer: s.answer }];
    const followUps = [];
    for (const question of opts.followUps) {
      if (!s.image_handle || !s.image_handle.length) {
        throw new Error("the server returned no image handle (it keeps no images); "
          + "ask each question with the image instead");
      }
      const followUp = { question, image_handle: s.image_handle, history: [...history] };
      if (generation) followUp.generation = generation;
      const msg = def.requestSerialize({ header: followUp });
      if (!opts.json) process.stdout.write("\n");
      const r = await answer([msg], !opts.json);
      history.push({ question, answer: r.summary.answer });
      followUps.push({ question, answer: r.summary.answer, payload_bytes: msg.length,
        server_payload_bytes: r.summary.payload_bytes, ...summaryFields(r.summary) });
    }
    if (opts.json) {
      console.log(JSON.stringify({
        answer: s.answer, streamed_text: result.text, mode: "alignedvq", runtime: "onnxruntime-node",
        payload_bytes: payloadBytes, server_payload_bytes: s.payload_bytes,
        tokens_generated: s.tokens_generated, model_id: s.model_id, request_id: s.request_id,
        edge_ms: Number(edgeMs.toFixed(2)), total_ms: Number(totalMs.toFixed(2)),
        ...summaryFields(s), image_handle: Buffer.from(s.image_handle || []).toString("hex"),
        follow_ups: followUps,
      }));
    } else {
      process.stdout.write("\n");
      console.error(`[alignedvq via onnxruntime-node: ${payloadBytes} B sent, edge `
        + `${edgeMs.toFixed(0)} ms, total ${totalMs.toFixed(0)} ms`
        + `${followUps.length ? `; ${followUps.length} follow-up(s) by image handle` : ""}]`);
    }
  } finally {
    client.close();
  }
}

main(process.argv.slice(2)).then(() => process.exit(0), (err) => {
  console.error(`${PROG}: ${err instanceof IncompatibleServer ? "incompatible server: " : ""}${err.message}`);
  if (err instanceof UsageError) console.error(`run 'node ${PROG} --help' for usage`);
  let code = 1;
  if (err instanceof UsageError || err.code === "ENOENT" || err.code === "EACCES") code = 2;
  else if (err instanceof IncompatibleServer) code = 3;
  process.exit(code);
});
