// The contract's messages from protos/alignedvq/v1/inference.proto itself, parsed at run time
// by protobufjs (its browser build, loaded by index.html as the global `protobuf`), with the
// field names as written there (keepCase), as the Node clients load it.

const PACKAGE = "alignedvq.v1.";

export async function loadContract(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`cannot load ${url}: HTTP ${response.status}`);
  const root = globalThis.protobuf.parse(await response.text(), { keepCase: true }).root;
  const type = (name) => root.lookupType(PACKAGE + name);
  return {
    AnswerFromCodesRequest: type("AnswerFromCodesRequest"),
    AnswerFromCodesBundleResponse: type("AnswerFromCodesBundleResponse"),
    AnswerFromImageRequest: type("AnswerFromImageRequest"),
    AnswerFromImageResponse: type("AnswerFromImageResponse"),
    GetServerInfoRequest: type("GetServerInfoRequest"),
    GetServerInfoResponse: type("GetServerInfoResponse"),
  };
}

export function encode(type, object) {
  return type.encode(type.fromObject(object)).finish();
}

export function decode(type, bytes) {
  return type.toObject(type.decode(bytes), { longs: Number, defaults: true, oneofs: true });
}

// AnswerFromCodesBundleRequest from the already serialized stream messages: each as field 1
// (tag 0x0a), its length as a varint, its bytes. Framed here rather than re-encoded, so what is
// sent holds exactly the bytes the page shows (and edge-agent --dump-payload writes).
export function bundle(parts) {
  const chunks = [];
  for (const part of parts) {
    const head = [0x0a];
    for (let n = part.length; ; n >>>= 7) {
      if (n < 0x80) { head.push(n); break; }
      head.push((n & 0x7f) | 0x80);
    }
    chunks.push(Uint8Array.from(head), part);
  }
  const out = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
  let at = 0;
  for (const c of chunks) { out.set(c, at); at += c.length; }
  return out;
}

export function base64(bytes) {
  let s = "";
  for (const b of bytes) s += String.fromCharCode(b);
  return btoa(s);
}

export function hex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}
