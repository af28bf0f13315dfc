// Images in the page: decoding (the browser's decoders, no colour conversion) and the JPEG
// upload edge-agent --mode image would send. No onnxruntime here, so the upload path works
// when the graph cannot load.

const { rgbaToRgb } = globalThis.AlignedVQ.pixels;

// A Blob (a File, or a fetched URL's body) -> {width, height, data: RGB bytes}. Decoded by the
// browser with no colour conversion and no premultiplied alpha, then flattened onto white as
// Pillow does (lib/pixels.js). A PNG decodes exactly; a JPEG as the browser's decoder does.
export async function decodeImage(blob) {
  const bitmap = await createImageBitmap(blob, { colorSpaceConversion: "none",
    premultiplyAlpha: "none", imageOrientation: "from-image" });
  const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
  const context = canvas.getContext("2d", { willReadFrequently: true });
  context.drawImage(bitmap, 0, 0);
  const { data } = context.getImageData(0, 0, bitmap.width, bitmap.height);
  let opaque = true;
  for (let i = 3; i < data.length; i += 4) if (data[i] !== 255) { opaque = false; break; }
  return { width: bitmap.width, height: bitmap.height,
    data: rgbaToRgb(data, bitmap.width, bitmap.height, !opaque) };
}

// The model's input square (shortest side resized with Pillow's bicubic, as lib/preprocess.js
// does, then the centre crop) as a JPEG at quality 90: edge-agent's upload (its --mode image),
// encoded by the browser. What the page shows beside the codes, and sends when it cannot run
// the graph.
export async function jpegUpload(image, size) {
  const { resize, resizedSize } = globalThis.AlignedVQ.preprocess;
  const [w, h] = resizedSize(image.width, image.height, size);
  const resized = resize(image, w, h, 3);
  const top = Math.floor((h - size) / 2);
  const left = Math.floor((w - size) / 2);
  const rgba = new Uint8ClampedArray(size * size * 4);
  for (let y = 0; y < size; y++) {
    for (let x = 0; x < size; x++) {
      const s = ((y + top) * w + (x + left)) * 3;
      const d = (y * size + x) * 4;
      rgba[d] = resized.data[s]; rgba[d + 1] = resized.data[s + 1]; rgba[d + 2] = resized.data[s + 2];
      rgba[d + 3] = 255;
    }
  }
  const canvas = new OffscreenCanvas(size, size);
  canvas.getContext("2d").putImageData(new ImageData(rgba, size, size), 0, 0);
  const blob = await canvas.convertToBlob({ type: "image/jpeg", quality: 0.9 });
  return new Uint8Array(await blob.arrayBuffer());
}
