// Reading an image the way the Python edges do (common/images.py): RGB, alpha flattened onto
// white with Pillow's rounding. PNG via pngjs, JPEG via jpeg-js (pure JavaScript decoders).
//
// PNG decoding is exact, so a PNG gives the Python edge's pixels bit for bit. JPEG decoders are
// not bit-exact across libraries (IDCT rounding, chroma upsampling): jpeg-js may differ from
// libjpeg-turbo (Pillow) by a few levels, so a JPEG's indices can differ on some tokens.
// Not handled here (Pillow does them): EXIF orientation, 16-bit PNGs, CMYK JPEGs.

"use strict";

const fs = require("fs");
const { PNG } = require("pngjs");
const jpeg = require("jpeg-js");

class ImageError extends Error {}

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

// {width, height, data: Uint8Array of H*W*3 RGB}.
function readImage(file) {
  const buf = fs.readFileSync(file);
  if (buf.length >= 8 && buf.readUInt32BE(0) === 0x89504e47) {
    let png;
    try {
      png = PNG.sync.read(buf);
    } catch (e) {
      throw new ImageError(`cannot decode PNG ${file}: ${e.message}`);
    }
    // Pillow flattens modes with alpha (LA, RGBA) and palettes (transparency); a grey or RGB
    // image's tRNS colour key is ignored, as Pillow's convert("RGB") ignores it.
    const flatten = png.colorType === 3 || (png.colorType & 4) !== 0;
    return { width: png.width, height: png.height,
             data: rgbaToRgb(png.data, png.width, png.height, flatten) };
  }
  if (buf.length >= 3 && buf[0] === 0xff && buf[1] === 0xd8 && buf[2] === 0xff) {
    let img;
    try {
      img = jpeg.decode(buf, { useTArray: true, formatAsRGBA: true, maxMemoryUsageInMB: 512 });
    } catch (e) {
      throw new ImageError(`cannot decode JPEG ${file}: ${e.message}`);
    }
    return { width: img.width, height: img.height,
             data: rgbaToRgb(img.data, img.width, img.height, false) };
  }
  throw new ImageError(`${file} is neither PNG nor JPEG (the only formats edge.js reads)`);
}

module.exports = { readImage, ImageError, blendOnWhite };
