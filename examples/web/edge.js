// The browser edge: what examples/node-client/edge.js does, in a page. The image is decoded by
// the browser, preprocessed by lib/preprocess.js and packed by lib/packing.js (the Node edge's
// own files, loaded by index.html), and the exported edge graph (edge.json + edge.onnx, what
// `alignedvq export-edge` wrote) runs in onnxruntime-web's WebAssembly build.

import * as ort from "../vendor/onnxruntime-web/ort.wasm.min.mjs";

const { preprocess } = globalThis.AlignedVQ.preprocess;
const { pack, stageIndices } = globalThis.AlignedVQ.packing;

// One thread: a page that is not cross-origin isolated cannot share WebAssembly memory anyway,
// and the tiny graph gains little from more.
ort.env.wasm.numThreads = 1;

export class EdgeUnavailable extends Error {}

// edge.json and the graph's session; throws EdgeUnavailable saying why (the page then uploads).
export async function loadEdge(base) {
  let spec;
  try {
    const response = await fetch(`${base}edge.json`, { cache: "no-cache" });
    if (!response.ok) throw new Error(`HTTP ${response.status}: ${(await response.text()).trim()}`);
    spec = await response.json();
  } catch (e) {
    throw new EdgeUnavailable(`no exported edge (${e.message})`);
  }
  if (spec.format !== "alignedvq-edge-onnx/1") {
    throw new EdgeUnavailable(`edge.json is format ${spec.format}; this page reads alignedvq-edge-onnx/1`);
  }
  try {
    const session = await ort.InferenceSession.create(`${base}${spec.graph}`,
      { executionProviders: ["wasm"] });
    return { spec, session };
  } catch (e) {
    throw new EdgeUnavailable(`the edge graph did not load in WebAssembly (${e.message || e})`);
  }
}

// The graph on one image: per stage, the tokens' codebook indices.
export async function encode(edge, image) {
  const { spec, session } = edge;
  const size = spec.image_size;
  const input = new ort.Tensor("float32", preprocess(image, spec.preprocess), [1, 3, size, size]);
  const out = (await session.run({ [spec.input_name]: input }))[spec.output_name];
  return stageIndices(out, spec).map((idx) => pack(idx, spec.bits));
}
