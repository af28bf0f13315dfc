// A gRPC-Web client on fetch, in the few lines the wire format needs (5-byte frames; flag 0x80
// marks the trailers frame; github.com/grpc/grpc/blob/master/doc/PROTOCOL-WEB.md). fetch streams
// the response body, so answer deltas show as they are generated. Browsers cannot stream a
// request body, so gRPC-Web carries unary and server-streaming calls only: the page sends
// AnswerFromCodesBundle, AnswerFromCodes's one-message form.

export const CODES = ["OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED",
  "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
  "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
  "UNAUTHENTICATED"];

export class RpcError extends Error {
  constructor(code, message) {
    super(`${CODES[code] || code}: ${message}`);
    this.code = code;
    this.codeName = CODES[code] || String(code);
    this.details = message;
  }
}

function frame(message) {
  const out = new Uint8Array(5 + message.length);
  new DataView(out.buffer).setUint32(1, message.length);
  out.set(message, 5);
  return out;
}

function parseTrailers(bytes) {
  const trailers = {};
  for (const line of new TextDecoder().decode(bytes).split("\r\n")) {
    const at = line.indexOf(":");
    if (at > 0) trailers[line.slice(0, at).trim().toLowerCase()] = line.slice(at + 1).trim();
  }
  return trailers;
}

// Calls `path` with one serialized request message; `onMessage(bytes)` for each response
// message as it arrives. Resolves with the response headers (x-request-id) when the call ends
// OK; rejects with an RpcError otherwise.
export async function call(path, request, { metadata = {}, onMessage = () => {},
  timeoutSeconds = 120 } = {}) {
  let response;
  try {
    response = await fetch(path, {
      method: "POST", body: frame(request), cache: "no-store",
      headers: { "content-type": "application/grpc-web+proto", "x-grpc-web": "1",
        "grpc-timeout": `${timeoutSeconds}S`, ...metadata },
    });
  } catch (e) {
    throw new RpcError(14, `cannot reach the server (${e.message})`);
  }
  if (!response.ok) throw new RpcError(14, `HTTP ${response.status} from the web port`);
  // A trailers-only answer carries the status in the headers.
  let trailers = response.headers.get("grpc-status") !== null
    ? { "grpc-status": response.headers.get("grpc-status"),
      "grpc-message": response.headers.get("grpc-message") || "" } : null;
  const reader = response.body.getReader();
  let buffer = new Uint8Array(0);
  for (;;) {
    const { done, value } = await reader.read();
    if (value) {
      const joined = new Uint8Array(buffer.length + value.length);
      joined.set(buffer);
      joined.set(value, buffer.length);
      buffer = joined;
    }
    while (buffer.length >= 5) {
      const length = new DataView(buffer.buffer, buffer.byteOffset).getUint32(1);
      if (buffer.length < 5 + length) break;
      const payload = buffer.slice(5, 5 + length);
      if (buffer[0] & 0x80) trailers = parseTrailers(payload);
      else onMessage(payload);
      buffer = buffer.slice(5 + length);
    }
    if (done) break;
  }
  if (!trailers) throw new RpcError(13, "the response ended without a status");
  const code = Number(trailers["grpc-status"]);
  if (code !== 0) {
    throw new RpcError(code, decodeURIComponent(trailers["grpc-message"] || ""));
  }
  return response.headers;
}
