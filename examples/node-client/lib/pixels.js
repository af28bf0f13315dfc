// RGBA to RGB the way the Python edges do it (common/imaging/policy.py): alpha flattened onto
// white with Pillow's rounding, or dropped. Shared by lib/image.js (Node) and the browser edge
// (examples/web), as lib/preprocess.js is: a UMD wrapper, a global AlignedVQ.pixels in a page.

(function (root, factory) {
  if (typeof module === "object" && module.exports) module.exports = factory();
  else (root.AlignedVQ = root.AlignedVQ || {}).pixels = factory();
})(typeof globalThis !== "undefined" ? globalThis : this, function () {
"use strict";

// Pillow's Paste.c: BLEND(mask, in1, in2) = DIV255(in1 * (255 - mask) + in2 * mask), with
// DIV255(v) = ((v + 128) >> 8 + (v + 128)) >> 8.
function blendOnWhite(value, alpha) {
  const t = 255 * (255 - alpha) + value * alpha + 128;
  return ((t >> 8) + t) >> 8;
}

// RGBA bytes -> RGB bytes; `flatten` composites onto white, otherwise alpha is dropped.
function rgbaToRgb(rgba, width, height, flatten) {
  const rgb = new Uint8Array(width * height * 3);
  for (let i = 0, j = 0; i < width * height; i++, j += 4) {
    const a = rgba[j + 3];
    for (let c = 0; c < 3; c++) {
      rgb[i * 3 + c] = flatten ? blendOnWhite(rgba[j + c], a) : rgba[j + c];
    }
  }
  return rgb;
}

return { blendOnWhite, rgbaToRgb };
});
