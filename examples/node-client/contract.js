#!/usr/bin/env node
// Builds alignedvq.v1 requests from scratch, using only what protos/ documents
// (inference.proto and protos/README.md): no generated code, no Python, no copy of our packing.
// tests/test_node_contract.py runs every command against a live cloud-server and compares the
// answers with the Python edge's.
//
//   node contract.js info                                  GetServerInfo as JSON
//   node contract.js fp16 --features F --question Q        FP16 request from raw features
//   node contract.js int8 --features F --question Q        INT8 request from the same features
//   node contract.js alignedvq --indices F --question Q    ALIGNEDVQ request from codebook indices
//   node contract.js dump --payload F                      read an edge-agent --dump-payload file,
//                                                          decode it, rebuild the request, send it
//
// Every command prints one JSON object. Messages are serialised here (protobufjs, which writes a
// zero-valued field that is set explicitly, e.g. `stage: 0`) and sent as those exact bytes, so
// `sent_bytes` is what went on the wire.

"use strict";

const fs = require("fs");
const path = require("path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const PROG = "contract.js";
const SERVICE = "/alignedvq.v1.InferenceService/";
const USAGE = `usage: node ${PROG} info|fp16|int8|alignedvq|dump [options]

  --server HOST:PORT     cloud server (default 127.0.0.1:50051), plaintext
  --features FILE        fp16/int8: float32 little-endian, tokens x feature_dim, token by token
  --indices FILE         alignedvq: JSON [[stage 0 indices], [stage 1 indices], ...]
  --payload FILE         dump: a file written by edge-agent --dump-payload
  --question TEXT        fp16/int8/alignedvq: the question
  --max-new-tokens N     0 (default) = the server's default
  --request-id ID        sent as x-request-id metadata
  --timeout SECONDS      deadline per call (default 60)
  --protos DIR           proto root (default: the repository's protos/)
  -h, --help             this text

Exit status: 0 answered, 1 gRPC error, 2 bad arguments or input files.`;

class UsageError extends Error {}

function parseArgs(argv) {
  if (argv.includes("-h") || argv.includes("--help")) {
    console.log(USAGE);
    process.exit(0);
  }
  const [command, ...rest] = argv;
  if (!["info", "fp16", "int8", "alignedvq", "dump"].includes(command)) {
    throw new UsageError(command ? `unknown command ${command}` : "a command is required");
  }
  const opts = { command, server: "127.0.0.1:50051", timeout: 60, maxNewTokens: 0,
    protos: path.resolve(__dirname, "..", "..", "protos") };
  const valued = { "--server": "server", "--features": "features", "--indices": "indices",
    "--payload": "payload", "--question": "question", "--max-new-tokens": "maxNewTokens",
    "--request-id": "requestId", "--timeout": "timeout", "--protos": "protos" };
  for (let i = 0; i < rest.length; i++) {
    if (!(rest[i] in valued)) throw new UsageError(`unknown argument ${rest[i]}`);
    if (i + 1 >= rest.length) throw new UsageError(`${rest[i]} needs a value`);
    opts[valued[rest[i]]] = rest[++i];
  }
  opts.timeout = Number(opts.timeout);
  opts.maxNewTokens = Number(opts.maxNewTokens);
  const needs = { fp16: "features", int8: "features", alignedvq: "indices", dump: "payload" };
  if (needs[command] && !opts[needs[command]]) {
    throw new UsageError(`${command} needs --${needs[command]} FILE`);
  }
  if (["fp16", "int8", "alignedvq"].includes(command) && !opts.question) {
    throw new UsageError(`${command} needs --question TEXT`);
  }
  return opts;
}

// ---------------------------------------------------------------- protos/README.md, "Packing"

// Each index as exactly `bits` bits, least-significant bit first; stream bit p is bit p % 8 of
// byte p / 8; the last byte is padded with zero bits; ceil(n * bits / 8) bytes.
function pack(indices, bits) {
  const out = Buffer.alloc(Math.ceil((indices.length * bits) / 8));
  indices.forEach((index, i) => {
    for (let b = 0; b < bits; b++) {
      const p = i * bits + b;
      if ((index >>> b) & 1) out[p >> 3] |= 1 << (p & 7);
    }
  });
  return out;
}

function unpack(data, count, bits, k) {
  if (data.length !== Math.ceil((count * bits) / 8)) {
    throw new UsageError(`${count} indices of ${bits} bits need ${Math.ceil((count * bits) / 8)} `
      + `bytes, the chunk holds ${data.length}`);
  }
  const bit = (p) => (data[p >> 3] >> (p & 7)) & 1;
  const indices = [];
  for (let i = 0; i < count; i++) {
    let index = 0;
    for (let b = 0; b < bits; b++) index |= bit(i * bits + b) << b;
    if (index >= k) throw new UsageError(`index ${index} at ${i} is not below K = ${k}`);
    indices.push(index);
  }
  for (let p = count * bits; p < data.length * 8; p++) {
    if (bit(p)) throw new UsageError("padding bits after the last index are not zero");
  }
  return indices;
}

// ---------------------------------------------------------------- IEEE 754 half precision

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

// float32 -> float16 bits, rounding to nearest even (what numpy's astype(float16) does).
function halfBits(value) {
  f32[0] = value;
  const x = u32[0];
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  let mant = x & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  const e = exp - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00;
  let shift = 13;
  let base = e << 10;
  if (e <= 0) { // a half subnormal (or zero): the implicit 1 becomes explicit
    if (e < -10) return sign;
    mant |= 0x800000;
    shift = 14 - e;
    base = 0;
  }
  let half = base | (mant >>> shift);
  const rest = mant & ((1 << shift) - 1);
  const halfway = 1 << (shift - 1);
  if (rest > halfway || (rest === halfway && (half & 1))) half += 1; // may carry into exponent
  return sign | half;
}

function halfValue(bits) {
  const sign = bits & 0x8000 ? -1 : 1;
  const exp = (bits >> 10) & 0x1f;
  const mant = bits & 0x3ff;
  if (exp === 0) return sign * mant * 2 ** -24;
  if (exp === 0x1f) return mant ? NaN : sign * Infinity;
  return sign * (1 + mant / 1024) * 2 ** (exp - 15);
}

// ---------------------------------------------------------------- the three encodings

function readFeatures(file, info) {
  const data = fs.readFileSync(file);
  const expected = info.tokens * info.feature_dim * 4;
  if (!info.feature_dim) throw new UsageError("the server does not report feature_dim (pre-v1.1)");
  if (data.length !== expected) {
    throw new UsageError(`${file} holds ${data.length} bytes; ${info.tokens} tokens x `
      + `${info.feature_dim} float32 channels are ${expected}`);
  }
  const values = new Float32Array(info.tokens * info.feature_dim);
  for (let i = 0; i < values.length; i++) values[i] = data.readFloatLE(i * 4);
  return values;
}

// tokens x feature_dim little-endian float16, token by token.
function fp16Chunk(values) {
  const out = Buffer.alloc(values.length * 2);
  values.forEach((v, i) => out.writeUInt16LE(halfBits(v), i * 2));
  return out;
}

// Per token: the scale as little-endian float16, then feature_dim int8 values; feature = q * scale.
// Scale = max|x| / 127 (after rounding to float16), q = x / scale rounded, within -127..127.
function int8Chunk(values, tokens, dim) {
  const out = Buffer.alloc(tokens * (2 + dim));
  for (let t = 0; t < tokens; t++) {
    const row = values.subarray(t * dim, (t + 1) * dim);
    const scaleBits = halfBits(row.reduce((m, v) => Math.max(m, Math.abs(v)), 0) / 127);
    const scale = halfValue(scaleBits);
    out.writeUInt16LE(scaleBits, t * (2 + dim));
    row.forEach((v, c) => {
      const q = scale > 0 ? Math.max(-127, Math.min(127, Math.round(v / scale))) : 0;
      out.writeInt8(q, t * (2 + dim) + 2 + c);
    });
  }
  return out;
}

// ---------------------------------------------------------------- gRPC

function load(opts) {
  const definition = protoLoader.loadSync(path.join(opts.protos, "alignedvq/v1/inference.proto"), {
    includeDirs: [opts.protos], keepCase: true, longs: Number, enums: String, defaults: true,
    oneofs: true,
  });
  const service = grpc.loadPackageDefinition(definition).alignedvq.v1.InferenceService;
  return { service, client: new service(opts.server, grpc.credentials.createInsecure()) };
}

function rpcError(err) {
  const name = Object.keys(grpc.status).find((k) => grpc.status[k] === err.code) || err.code;
  const e = new Error(`${name}: ${err.details || err.message}`);
  e.grpcCode = name;
  return e;
}

function metadataFor(opts) {
  const metadata = new grpc.Metadata();
  if (opts.requestId) metadata.set("x-request-id", opts.requestId);
  return metadata;
}

function deadline(opts) {
  return new Date(Date.now() + opts.timeout * 1000);
}

function getServerInfo(client, opts) {
  return new Promise((resolve, reject) => {
    client.GetServerInfo({}, new grpc.Metadata(), { deadline: deadline(opts) },
      (err, res) => (err ? reject(rpcError(err)) : resolve(res)));
  });
}

// Sends `requests` (objects) as serialised here; reads text deltas until the summary. For
// AnswerFromCodes the stream is half-closed after the last message: the server answers only then.
function call(client, service, rpc, requests, opts) {
  const def = service.service[rpc];
  const messages = requests.map((r) => def.requestSerialize(r));
  const identity = (buf) => buf;
  const options = { deadline: deadline(opts) };
  const stream = rpc === "AnswerFromCodes"
    ? client.makeBidiStreamRequest(SERVICE + rpc, identity, def.responseDeserialize,
      metadataFor(opts), options)
    : client.makeServerStreamRequest(SERVICE + rpc, identity, def.responseDeserialize,
      messages[0], metadataFor(opts), options);
  return new Promise((resolve, reject) => {
    let text = "";
    let summary = null;
    let echoed = null;
    stream.on("metadata", (md) => { echoed = (md.get("x-request-id") || [null])[0]; });
    stream.on("data", (res) => {
      if (res.part === "text_delta") text += res.text_delta;
      else if (res.part === "summary") summary = res.summary;
    });
    stream.on("error", (err) => reject(rpcError(err)));
    stream.on("end", () => (summary ? resolve({ text, summary, echoed, messages })
      : reject(new Error("the stream ended without a summary"))));
    if (rpc === "AnswerFromCodes") {
      for (const m of messages) stream.write(m);
      stream.end(); // half-close
    }
  });
}

function hex(bytes) {
  return Buffer.from(bytes || []).toString("hex");
}

function header(info, encoding, question, opts, extra) {
  return {
    vision_fingerprint: info.vision_fingerprint,
    codec_fingerprint: encoding === "FEATURE_ENCODING_ALIGNEDVQ" ? info.codec_fingerprint
      : Buffer.alloc(0),
    encoding,
    tokens: info.tokens,
    question,
    generation: { max_new_tokens: opts.maxNewTokens },
    ...extra,
  };
}

// The requests of each command, built from GetServerInfo and the input file alone.
function buildRequests(info, opts) {
  const encodings = info.encodings || [];
  const need = (encoding) => {
    if (!encodings.includes(encoding)) {
      throw new UsageError(`the server does not accept ${encoding} (it accepts ${encodings})`);
    }
  };
  if (opts.command === "fp16" || opts.command === "int8") {
    const encoding = `FEATURE_ENCODING_${opts.command.toUpperCase()}`;
    need(encoding);
    const values = readFeatures(opts.features, info);
    const data = opts.command === "fp16" ? fp16Chunk(values)
      : int8Chunk(values, info.tokens, info.feature_dim);
    return { rpc: "AnswerFromCodes", requests: [
      { header: header(info, encoding, opts.question, opts, { bits: 0, stages: 1 }) },
      { chunk: { stage: 0, packed_indices: data } }] };
  }
  if (opts.command === "alignedvq") {
    need("FEATURE_ENCODING_ALIGNEDVQ");
    const stages = JSON.parse(fs.readFileSync(opts.indices, "utf8"));
    if (!Array.isArray(stages) || stages.length !== info.stages
        || stages.some((s) => !Array.isArray(s) || s.length !== info.tokens)) {
      throw new UsageError(`${opts.indices} must hold ${info.stages} list(s) of ${info.tokens} indices`);
    }
    if (stages.flat().some((i) => !Number.isInteger(i) || i < 0 || i >= info.codebook_size)) {
      throw new UsageError(`every index must be an integer in 0..${info.codebook_size - 1}`);
    }
    return { rpc: "AnswerFromCodes", requests: [
      { header: header(info, "FEATURE_ENCODING_ALIGNEDVQ", opts.question, opts,
        { bits: info.bits, stages: info.stages }) },
      ...stages.map((indices, stage) => ({ chunk: { stage, packed_indices: pack(indices, info.bits) } }))] };
  }
  throw new Error(`no request for ${opts.command}`);
}

// protos/README.md, "The dump file": {"method": "/alignedvq.v1.InferenceService/RPC",
// "messages_base64": [one serialised request message each, in send order]}. Decodes every
// message and rebuilds the request from the decoded fields (for ALIGNEDVQ: unpacking the indices
// and packing them again), so the bytes sent are this client's own serialisation.
function readDump(service, info, opts) {
  let doc;
  try {
    doc = JSON.parse(fs.readFileSync(opts.payload, "utf8"));
  } catch (e) {
    throw new UsageError(`cannot read ${opts.payload}: ${e.message}`);
  }
  const rpc = typeof doc.method === "string" && doc.method.startsWith(SERVICE)
    ? doc.method.slice(SERVICE.length) : null;
  if (!["AnswerFromCodes", "AnswerFromImage"].includes(rpc) || !Array.isArray(doc.messages_base64)) {
    throw new UsageError(`${opts.payload} is not an edge-agent --dump-payload file`);
  }
  const raw = doc.messages_base64.map((b) => Buffer.from(b, "base64"));
  const decoded = raw.map((m) => service.service[rpc].requestDeserialize(m));
  const out = { rpc, dump_bytes: raw.reduce((n, m) => n + m.length, 0), dump_messages: raw.length };
  const generation = (g) => (g ? { max_new_tokens: g.max_new_tokens } : undefined);
  if (rpc === "AnswerFromImage") {
    const r = decoded[0];
    out.question = r.question;
    out.requests = [{ image: r.image, question: r.question, generation: generation(r.generation) }];
    return out;
  }
  if (decoded[0].part !== "header" || decoded.slice(1).some((m) => m.part !== "chunk")) {
    throw new UsageError("a codes dump is one header followed by chunks");
  }
  const h = decoded[0].header;
  if (hex(h.vision_fingerprint) !== hex(info.vision_fingerprint)) {
    throw new UsageError(`the dump was made for vision weights ${hex(h.vision_fingerprint)}; `
      + `the server runs ${hex(info.vision_fingerprint)}`);
  }
  out.question = h.question;
  out.encoding = h.encoding;
  let chunks = decoded.slice(1).map((m) => m.chunk);
  if (h.encoding === "FEATURE_ENCODING_ALIGNEDVQ") {
    out.indices = chunks.map((c) => unpack(c.packed_indices, h.tokens, h.bits, info.codebook_size));
    chunks = out.indices.map((indices, stage) => ({ stage, packed_indices: pack(indices, h.bits) }));
  } else {
    chunks = chunks.map((c) => ({ stage: c.stage, packed_indices: c.packed_indices }));
  }
  out.requests = [
    { header: { vision_fingerprint: h.vision_fingerprint, codec_fingerprint: h.codec_fingerprint,
      encoding: h.encoding, tokens: h.tokens, bits: h.bits, stages: h.stages, question: h.question,
      generation: generation(h.generation) } },
    ...chunks.map((chunk) => ({ chunk }))];
  return out;
}

async function main(argv) {
  const opts = parseArgs(argv);
  const { service, client } = load(opts);
  try {
    const info = await getServerInfo(client, opts);
    if (opts.command === "info") {
      console.log(JSON.stringify({ ...info, vision_fingerprint: hex(info.vision_fingerprint),
        codec_fingerprint: hex(info.codec_fingerprint) }));
      return;
    }
    const built = opts.command === "dump" ? readDump(service, info, opts) : buildRequests(info, opts);
    const result = await call(client, service, built.rpc || "AnswerFromCodes", built.requests, opts);
    const s = result.summary;
    const chunks = built.requests.filter((r) => r.chunk).map((r) => Buffer.from(r.chunk.packed_indices));
    console.log(JSON.stringify({
      command: opts.command,
      answer: s.answer,
      streamed_text: result.text,
      sent_bytes: result.messages.reduce((n, m) => n + m.length, 0),
      sent_messages: result.messages.length,
      chunks_hex: chunks.map((c) => c.toString("hex")),
      server_payload_bytes: s.payload_bytes,
      request_id: s.request_id,
      echoed_request_id: result.echoed,
      codec_fingerprint: s.codec_fingerprint,
      codec_fingerprint_bytes: hex(s.codec_fingerprint_bytes),
      tokens_generated: s.tokens_generated,
      prepare_ms: s.prepare_ms,
      ...(opts.command === "dump" ? { rpc: built.rpc, question: built.question,
        encoding: built.encoding, indices: built.indices, dump_bytes: built.dump_bytes,
        dump_messages: built.dump_messages } : {}),
    }));
  } finally {
    client.close();
  }
}

main(process.argv.slice(2)).then(() => process.exit(0), (err) => {
  console.error(`${PROG}: ${err.message}`);
  if (err instanceof UsageError) console.error(USAGE);
  process.exit(err instanceof UsageError || err.code === "ENOENT" ? 2 : 1);
});
