// Packing codebook indices as protos/README.md specifies (common/wire/packing.py in Python): each
// index as exactly `bits` bits, least-significant bit first; stream bit p is bit p % 8 of byte
// p / 8; the last byte is zero-padded; ceil(count * bits / 8) bytes.
//
// One file for Node and the browser, as lib/preprocess.js (a UMD wrapper).

(function (root, factory) {
  if (typeof module === "object" && module.exports) module.exports = factory();
  else (root.AlignedVQ = root.AlignedVQ || {}).packing = factory();
})(typeof globalThis !== "undefined" ? globalThis : this, function () {
// The wrapper's body is not indented, so the code reads as it did before.
"use strict";

function pack(indices, bits) {
  if (!(bits >= 1 && bits <= 16)) throw new Error(`bits per index must be in 1..16, got ${bits}`);
  // A Uint8Array (a Buffer is one), so the browser needs no Buffer polyfill.
  const out = new Uint8Array(Math.ceil((indices.length * bits) / 8));
  let p = 0;
  for (const idx of indices) {
    if (!(idx >= 0 && idx < 2 ** bits)) throw new Error(`index ${idx} does not fit ${bits} bits`);
    for (let b = 0; b < bits; b++, p++) {
      if ((idx >> b) & 1) out[p >> 3] |= 1 << (p & 7);
    }
  }
  return out;
}

// The exported edge graph's output (batch 1: dims [1, tokens, stages], row-major int64 data) as
// one index array per stage, checked against its sidecar; the Node and the browser edge both
// read the graph through it.
function stageIndices(output, spec) {
  const [, tokens, stages] = output.dims;
  if (tokens !== spec.tokens || stages !== spec.stages) {
    throw new Error(`the graph returned ${tokens} x ${stages} indices, edge.json says `
      + `${spec.tokens} x ${spec.stages}`);
  }
  const perStage = [];
  for (let s = 0; s < stages; s++) {
    const idx = new Array(tokens);
    for (let t = 0; t < tokens; t++) idx[t] = Number(output.data[t * stages + s]);
    perStage.push(idx);
  }
  return perStage;
}

return { pack, stageIndices };
});
