// The page: a photo and a question in, the answer streamed out, with what the request cost.
// Codes when the edge graph runs here (AnswerFromCodesBundle), else the JPEG upload
// (AnswerFromImage), and the page says which. Deep links and tests: ?image=URL&question=TEXT
// (data: URLs too) asks at once; ?server=ORIGIN calls another origin's web port (CORS);
// ?edge=URL loads the exported edge from elsewhere (a folder with edge.json). The token is kept
// for the tab (sessionStorage), never in the URL, where it would end up in logs and history.
// For automation: the answer is in #answer, the bytes sent in #bytes, <body data-state> is
// loading / ready / asking / done / error, and window.alignedvq holds the last result.

import { call, RpcError } from "./grpc-web.js";
import { base64, bundle, decode, encode, hex, loadContract } from "./proto.js";
import { decodeImage, jpegUpload } from "./image.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const SERVER = new URL(params.get("server") || ".", document.baseURI);
const SERVICE = "alignedvq.v1.InferenceService";
const CODES_METHOD = `/${SERVICE}/AnswerFromCodes`;
const IMAGE_METHOD = `/${SERVICE}/AnswerFromImage`;

const state = { contract: null, edge: null, edgeModule: null, edgeNote: "", image: null };
const api = { timings: {}, last: null, ask: askUrl };
window.alignedvq = api;

function setState(name) { document.body.dataset.state = name; }

function rpc(method, request, options) {
  return call(new URL(`${SERVICE}/${method}`, SERVER).href, request, options);
}

function metadata() {
  const token = $("token").value.trim();
  sessionStorage.setItem("alignedvq-token", token);
  return token ? { authorization: `Bearer ${token}` } : {};
}

async function serverInfo() {
  const { GetServerInfoRequest, GetServerInfoResponse } = state.contract;
  let info = null;
  await rpc("GetServerInfo", encode(GetServerInfoRequest, {}), {
    metadata: metadata(), onMessage: (m) => { info = decode(GetServerInfoResponse, m); } });
  return info;
}

// Whether the server decodes this edge's codes: a served split point with its vision weights
// and codec (protos/README.md: an edge whose fingerprints differ must not send).
function compatible(info, spec) {
  const points = info.split_points.length ? info.split_points : [info];
  const point = points.find((p) => hex(p.vision_fingerprint) === spec.vision_fingerprint.slice(0, 16));
  if (!point) return `the server runs other vision weights (model ${info.model_id})`;
  if (hex(point.codec_fingerprint) !== spec.codec_fingerprint.slice(0, 16)) {
    return `the server decodes another codec (${hex(point.codec_fingerprint) || "none"})`;
  }
  return "";
}

function showMode() {
  $("mode").textContent = state.edge
    ? "The edge runs in this browser (WebAssembly): only codebook indices are sent."
    : `Uploading a JPEG instead of codes: ${state.edgeNote}.`;
}

function ms(v) { return `${v.toFixed(0)} ms`; }

// The codes request's messages, serialized exactly as the Python and Node edges send them.
function codesMessages(spec, chunks, question) {
  const { AnswerFromCodesRequest } = state.contract;
  const fingerprint = (h) => Uint8Array.from(h.slice(0, 16).match(/../g), (b) => parseInt(b, 16));
  const header = { vision_fingerprint: fingerprint(spec.vision_fingerprint),
    codec_fingerprint: fingerprint(spec.codec_fingerprint), encoding: "FEATURE_ENCODING_ALIGNEDVQ",
    tokens: spec.tokens, bits: spec.bits, stages: spec.stages, question };
  const messages = [encode(AnswerFromCodesRequest, { header })];
  chunks.forEach((packed, stage) => {
    // protobufjs writes a field that is set even when it holds the default: stage 0 is left
    // unset so the bytes equal the Python edge's (as edge.js does).
    const chunk = { packed_indices: packed };
    if (stage) chunk.stage = stage;
    messages.push(encode(AnswerFromCodesRequest, { chunk }));
  });
  return messages;
}

async function ask(blob, question) {
  setState("asking");
  for (const id of ["answer", "error", "bytes", "jpeg-bytes", "edge-ms", "server-ms", "total-ms",
    "request"]) $(id).textContent = "";
  const started = performance.now();
  try {
    const info = await serverInfo();
    const image = await decodeImage(blob);
    const edgeStarted = performance.now();
    const { AnswerFromImageRequest, AnswerFromCodesBundleResponse, AnswerFromImageResponse } = state.contract;
    const jpegRequest = encode(AnswerFromImageRequest, { image: await jpegUpload(image, info.image_size), question });
    $("jpeg-bytes").textContent = `${jpegRequest.length} B (JPEG-90 of the ${info.image_size}-px square)`;
    let note = state.edge ? compatible(info, state.edge.spec) : state.edgeNote;
    let method, messages, body, responseType;
    if (state.edge && !note) {
      const chunks = await state.edgeModule.encode(state.edge, image);
      messages = codesMessages(state.edge.spec, chunks, question);
      body = bundle(messages);
      method = "AnswerFromCodesBundle";
      responseType = AnswerFromCodesBundleResponse;
    } else {
      if (state.edge) { state.edgeNote = note; state.edge = null; showMode(); }
      messages = [jpegRequest];
      body = jpegRequest;
      method = "AnswerFromImage";
      responseType = AnswerFromImageResponse;
    }
    const edgeMs = performance.now() - edgeStarted;
    $("edge-ms").textContent = ms(edgeMs) + (method === "AnswerFromImage" ? " (JPEG)" : " (graph + packing)");
    const dump = { method: method === "AnswerFromImage" ? IMAGE_METHOD : CODES_METHOD,
      messages_base64: messages.map(base64) };
    $("request").textContent = JSON.stringify(dump);
    let summary = null;
    let firstMs = null;
    let streamed = "";
    await rpc(method, body, { metadata: metadata(), onMessage: (m) => {
      const part = decode(responseType, m);
      if (part.part === "text_delta") {
        if (firstMs === null) firstMs = performance.now() - started;
        streamed += part.text_delta;
        $("answer").textContent = streamed.trimStart();
      } else if (part.part === "summary") {
        summary = part.summary;
      }
    } });
    if (!summary) throw new Error("the answer ended without a summary");
    const totalMs = performance.now() - started;
    $("answer").textContent = summary.answer;
    $("bytes").textContent = `${summary.payload_bytes} B (${method === "AnswerFromImage" ? "JPEG upload" : "codes"})`;
    $("server-ms").textContent = `${ms(summary.prepare_ms)} prepare, ${ms(summary.queue_ms)} queue, `
      + `${ms(summary.generate_ms)} generate`;
    $("total-ms").textContent = `${firstMs === null ? "-" : ms(firstMs)} / ${ms(totalMs)}`;
    api.last = { answer: summary.answer, path: method === "AnswerFromImage" ? "image" : "codes",
      method, payload_bytes: summary.payload_bytes, jpeg_request_bytes: jpegRequest.length,
      messages_base64: dump.messages_base64, body_base64: base64(body),
      request_id: summary.request_id, edge_ms: edgeMs, first_ms: firstMs, total_ms: totalMs,
      server: { prepare_ms: summary.prepare_ms, queue_ms: summary.queue_ms,
        generate_ms: summary.generate_ms } };
    if (api.timings.first_answer_ms === undefined) api.timings.first_answer_ms = performance.now();
    setState("done");
    return api.last;
  } catch (e) {
    const text = e instanceof RpcError && e.codeName === "UNAUTHENTICATED"
      ? `The server refused the request: it needs an access token (${e.message})`
      : `The request failed: ${e.message}`;
    $("error").textContent = text;
    api.last = { error: e.message, code: e.codeName || null };
    setState("error");
    return api.last;
  }
}

async function askUrl(url, question) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`cannot fetch the image ${url}: HTTP ${response.status}`);
  const blob = await response.blob();
  $("question").value = question;
  $("preview").src = url;
  $("preview").hidden = false;
  return ask(blob, question);
}

async function init() {
  $("token").value = sessionStorage.getItem("alignedvq-token") || "";
  try {
    state.contract = await loadContract(new URL("protos/inference.proto", document.baseURI).href);
  } catch (e) {
    $("mode").textContent = `The page cannot start: ${e.message}`;
    setState("error");
    return;
  }
  try {
    // Imported here, not at the top: when onnxruntime-web is missing, the upload still works.
    state.edgeModule = await import("./edge.js");
    state.edge = await state.edgeModule.loadEdge(new URL(params.get("edge") || "edge/",
      document.baseURI).href.replace(/\/?$/, "/"));
  } catch (e) {
    state.edgeNote = e.message || String(e);
  }
  showMode();
  $("go").disabled = false;
  api.timings.ready_ms = performance.now();
  setState("ready");
  $("file").addEventListener("change", () => {
    const file = $("file").files[0];
    if (file) { $("preview").src = URL.createObjectURL(file); $("preview").hidden = false; }
  });
  $("ask").addEventListener("submit", (event) => {
    event.preventDefault();
    const file = $("file").files[0];
    if (!file) { $("error").textContent = "Choose or take a photo first."; return; }
    ask(file, $("question").value);
  });
  if (params.get("image") && params.get("question")) {
    try {
      await askUrl(params.get("image"), params.get("question"));
    } catch (e) {
      $("error").textContent = e.message;
      setState("error");
    }
  }
}

init();
