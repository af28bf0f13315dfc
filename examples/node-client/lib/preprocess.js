// CLIP preprocessing in JavaScript, bit for bit as the Python ONNX edge does it
// (edge_agent/clip_preprocess.py, itself equal to transformers' CLIPImageProcessorPil): the resize
// is a port of Pillow's Resample.c (8-bit fixed point, horizontal pass then vertical), the sizes
// and offsets round as transformers does, and the arithmetic follows numpy's float32/float64.
// The rule is also spelled out in the exported graph's edge.json ("preprocess.rule").
//
// One file for Node and the browser (examples/web imports it; nothing is copied): a UMD wrapper,
// CommonJS under Node (require("./lib/preprocess")), a global AlignedVQ.preprocess elsewhere.

(function (root, factory) {
  if (typeof module === "object" && module.exports) module.exports = factory();
  else (root.AlignedVQ = root.AlignedVQ || {}).preprocess = factory();
})(typeof globalThis !== "undefined" ? globalThis : this, function () {
// The wrapper's body is not indented, so the code reads as it did before.
"use strict";

// Pillow's filters (Resample.c) and their support radius.
const FILTERS = {
  1: { name: "lanczos", support: 3.0, fn: (x) => (-3.0 <= x && x < 3.0 ? sinc(x) * sinc(x / 3.0) : 0.0) },
  2: { name: "bilinear", support: 1.0, fn: (x) => { x = Math.abs(x); return x < 1.0 ? 1.0 - x : 0.0; } },
  3: { name: "bicubic", support: 2.0, fn: bicubic },
  4: { name: "box", support: 0.5, fn: (x) => (x > -0.5 && x <= 0.5 ? 1.0 : 0.0) },
  5: { name: "hamming", support: 1.0, fn: hamming },
};

function sinc(x) {
  if (x === 0.0) return 1.0;
  x *= Math.PI;
  return Math.sin(x) / x;
}

function bicubic(x) {
  const a = -0.5;
  if (x < 0.0) x = -x;
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

function hamming(x) {
  if (x < 0.0) x = -x;
  if (x === 0.0) return 1.0;
  if (x >= 1.0) return 0.0;
  x *= Math.PI;
  return (Math.sin(x) / x) * (0.54 + 0.46 * Math.cos(x));
}

const PRECISION_BITS = 32 - 8 - 2;

// Resample.c precompute_coeffs + normalize_coeffs_8bpc: per output pixel, the first input pixel,
// the count, and integer weights scaled by 2^PRECISION_BITS.
function coefficients(inSize, outSize, filter) {
  const scale = inSize / outSize;
  const filterscale = Math.max(scale, 1.0);
  const support = filter.support * filterscale;
  const ksize = Math.ceil(support) * 2 + 1;
  const bounds = new Int32Array(outSize * 2);
  const kk = new Int32Array(outSize * ksize);
  const w = new Float64Array(ksize);
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const ss = 1.0 / filterscale;
    const xmin = Math.max(0, Math.trunc(center - support + 0.5));       // C's (int) truncates
    const xmax = Math.min(inSize, Math.trunc(center + support + 0.5)) - xmin;
    let ww = 0.0;
    for (let x = 0; x < xmax; x++) {
      w[x] = filter.fn((x + xmin - center + 0.5) * ss);
      ww += w[x];
    }
    for (let x = 0; x < xmax; x++) {
      const k = ww !== 0.0 ? w[x] / ww : w[x];
      kk[xx * ksize + x] = k < 0 ? Math.trunc(-0.5 + k * (1 << PRECISION_BITS))
        : Math.trunc(0.5 + k * (1 << PRECISION_BITS));
    }
    bounds[xx * 2] = xmin;
    bounds[xx * 2 + 1] = xmax;
  }
  return { ksize, bounds, kk };
}

function clip8(v) {
  if (v >= (1 << PRECISION_BITS) * 256) return 255;
  if (v <= 0) return 0;
  return Math.floor(v / (1 << PRECISION_BITS));
}

// One pass over RGB rows (horizontal) or columns (vertical).
function resamplePass(src, width, height, outSize, filter, horizontal) {
  const inSize = horizontal ? width : height;
  const { ksize, bounds, kk } = coefficients(inSize, outSize, filter);
  const ow = horizontal ? outSize : width;
  const oh = horizontal ? height : outSize;
  const out = new Uint8Array(ow * oh * 3);
  const half = 1 << (PRECISION_BITS - 1);
  for (let y = 0; y < oh; y++) {
    for (let x = 0; x < ow; x++) {
      const o = horizontal ? x : y;
      const min = bounds[o * 2];
      const n = bounds[o * 2 + 1];
      let s0 = half; let s1 = half; let s2 = half;
      for (let i = 0; i < n; i++) {
        const k = kk[o * ksize + i];
        const p = horizontal ? (y * width + min + i) * 3 : ((min + i) * width + x) * 3;
        s0 += src[p] * k;
        s1 += src[p + 1] * k;
        s2 += src[p + 2] * k;
      }
      const q = (y * ow + x) * 3;
      out[q] = clip8(s0);
      out[q + 1] = clip8(s1);
      out[q + 2] = clip8(s2);
    }
  }
  return out;
}

// Image.resize((newW, newH), resample) with the default box: a copy when the size is unchanged,
// else horizontal then vertical pass (each only when that dimension changes).
function resize(img, newW, newH, resample) {
  if (img.width === newW && img.height === newH) return img;
  const filter = FILTERS[resample];
  if (!filter) throw new Error(`resample filter ${resample} is not supported by edge.js`);
  let { data, width, height } = img;
  if (newW !== width) {
    data = resamplePass(data, width, height, newW, filter, true);
    width = newW;
  }
  if (newH !== height) {
    data = resamplePass(data, width, height, newH, filter, false);
    height = newH;
  }
  return { width, height, data };
}

// transformers' get_resize_output_image_size(default_to_square=False): the long side truncated.
function resizedSize(width, height, shortestEdge) {
  if (width <= height) return [shortestEdge, Math.trunc(shortestEdge * height / width)];
  return [Math.trunc(shortestEdge * width / height), shortestEdge];
}

// RGB image -> Float32Array (3, cropH, cropW), as common/clip_preprocess.preprocess_one.
function preprocess(img, pre) {
  if (pre.do_resize) {
    const [w, h] = resizedSize(img.width, img.height, pre.shortest_edge);
    img = resize(img, w, h, pre.resample);
  }
  let top = 0; let left = 0; let ch = img.height; let cw = img.width;
  if (pre.do_center_crop) {
    ch = pre.crop_height; cw = pre.crop_width;
    // Floor offsets; a negative one means the image is smaller: zero padding, placed with ceil.
    top = Math.floor((img.height - ch) / 2);
    left = Math.floor((img.width - cw) / 2);
    if (top < 0 || left < 0) {
      const nh = Math.max(ch, img.height); const nw = Math.max(cw, img.width);
      const tp = Math.ceil((nh - img.height) / 2); const lp = Math.ceil((nw - img.width) / 2);
      const padded = new Uint8Array(nw * nh * 3);
      for (let y = 0; y < img.height; y++) {
        padded.set(img.data.subarray(y * img.width * 3, (y + 1) * img.width * 3),
          ((y + tp) * nw + lp) * 3);
      }
      img = { width: nw, height: nh, data: padded };
      top += tp; left += lp;
    }
  }
  const mean = pre.image_mean.map(Math.fround);
  const std = pre.image_std.map(Math.fround);
  const out = new Float32Array(3 * ch * cw);
  for (let c = 0; c < 3; c++) {
    for (let y = 0; y < ch; y++) {
      for (let x = 0; x < cw; x++) {
        let v = img.data[((y + top) * img.width + (x + left)) * 3 + c];
        // numpy: uint8 -> float64, times the factor, -> float32; then float32 arithmetic.
        v = pre.do_rescale ? Math.fround(v * pre.rescale_factor) : v;
        if (pre.do_normalize) v = Math.fround(Math.fround(v - mean[c]) / std[c]);
        out[(c * ch + y) * cw + x] = v;
      }
    }
  }
  return out;
}

return { preprocess, resize, resizedSize, coefficients };
});
