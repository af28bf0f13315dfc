// Reading an image the way the Python edges do (common/imaging/policy.py): RGB, alpha flattened onto
// white with Pillow's rounding. PNG via pngjs, JPEG via jpeg-js (pure JavaScript decoders).
//
// PNG decoding is exact, so a PNG gives the Python edge's pixels bit for bit. JPEG decoders are
// not bit-exact across libraries (IDCT rounding, chroma upsampling): jpeg-js may differ from
// libjpeg-turbo (Pillow) by a few levels, so a JPEG's indices can differ on some tokens.
// A JPEG's EXIF orientation is applied as Pillow's ImageOps.exif_transpose does. Not handled
// here (Pillow does them): a PNG's eXIf orientation, 16-bit PNGs, CMYK JPEGs.

"use strict";

const fs = require("fs");
const { PNG } = require("pngjs");
const jpeg = require("jpeg-js");
const { blendOnWhite, rgbaToRgb } = require("./pixels");

class ImageError extends Error {}

// The EXIF orientation tag (1-8) of a JPEG, 1 when there is none: APP1 "Exif\0\0", then a
// TIFF header and IFD0, whose tag 0x0112 holds it.
function jpegOrientation(buf) {
  let p = 2;
  while (p + 4 <= buf.length && buf[p] === 0xff) {
    const marker = buf[p + 1];
    const length = buf.readUInt16BE(p + 2);
    if (marker === 0xda) break; // start of scan: no metadata after this
    if (marker === 0xe1 && buf.toString("latin1", p + 4, p + 10) === "Exif\0\0") {
      const tiff = p + 10;
      const le = buf.toString("latin1", tiff, tiff + 2) === "II";
      const u16 = (o) => (le ? buf.readUInt16LE(o) : buf.readUInt16BE(o));
      const u32 = (o) => (le ? buf.readUInt32LE(o) : buf.readUInt32BE(o));
      const ifd = tiff + u32(tiff + 4);
      if (ifd + 2 > buf.length) return 1;
      const n = u16(ifd);
      for (let i = 0; i < n && ifd + 2 + i * 12 + 12 <= buf.length; i++) {
        const entry = ifd + 2 + i * 12;
        if (u16(entry) === 0x0112) {
          const v = u16(entry + 8);
          return v >= 1 && v <= 8 ? v : 1;
        }
      }
      return 1;
    }
    p += 2 + length;
  }
  return 1;
}

// Pillow's exif_transpose: 2 FLIP_LEFT_RIGHT, 3 ROTATE_180, 4 FLIP_TOP_BOTTOM, 5 TRANSPOSE,
// 6 ROTATE_270, 7 TRANSVERSE, 8 ROTATE_90 (Pillow's rotations are counter-clockwise). Each maps
// an output pixel (x, y) to its source pixel.
const ORIENTATIONS = {
  2: { swap: false, src: (x, y, w, h) => [w - 1 - x, y] },
  3: { swap: false, src: (x, y, w, h) => [w - 1 - x, h - 1 - y] },
  4: { swap: false, src: (x, y, w, h) => [x, h - 1 - y] },
  5: { swap: true, src: (x, y) => [y, x] },
  6: { swap: true, src: (x, y, w, h) => [y, h - 1 - x] },
  7: { swap: true, src: (x, y, w, h) => [w - 1 - y, h - 1 - x] },
  8: { swap: true, src: (x, y, w) => [w - 1 - y, x] },
};

function orient(img, orientation) {
  const o = ORIENTATIONS[orientation];
  if (!o) return img;
  const { width: w, height: h, data } = img;
  const ow = o.swap ? h : w;
  const oh = o.swap ? w : h;
  const out = new Uint8Array(ow * oh * 3);
  for (let y = 0; y < oh; y++) {
    for (let x = 0; x < ow; x++) {
      const [sx, sy] = o.src(x, y, w, h);
      const s = (sy * w + sx) * 3;
      const d = (y * ow + x) * 3;
      out[d] = data[s];
      out[d + 1] = data[s + 1];
      out[d + 2] = data[s + 2];
    }
  }
  return { width: ow, height: oh, data: out };
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
    return orient({ width: img.width, height: img.height,
                    data: rgbaToRgb(img.data, img.width, img.height, false) }, jpegOrientation(buf));
  }
  throw new ImageError(`${file} is neither PNG nor JPEG (the only formats edge.js reads)`);
}

module.exports = { readImage, ImageError, blendOnWhite, jpegOrientation };
