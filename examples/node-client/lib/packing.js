// Packing codebook indices as protos/README.md specifies (common/wire/packing.py in Python): each
// index as exactly `bits` bits, least-significant bit first; stream bit p is bit p % 8 of byte
// p / 8; the last byte is zero-padded; ceil(count * bits / 8) bytes.

"use strict";

function pack(indices, bits) {
  if (!(bits >= 1 && bits <= 16)) throw new Error(`bits per index must be in 1..16, got ${bits}`);
  const out = Buffer.alloc(Math.ceil((indices.length * bits) / 8));
  let p = 0;
  for (const idx of indices) {
    if (!(idx >= 0 && idx < 2 ** bits)) throw new Error(`index ${idx} does not fit ${bits} bits`);
    for (let b = 0; b < bits; b++, p++) {
      if ((idx >> b) & 1) out[p >> 3] |= 1 << (p & 7);
    }
  }
  return out;
}

module.exports = { pack };
