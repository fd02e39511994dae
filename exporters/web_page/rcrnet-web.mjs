// RCRNet portrait segmentation in the browser, on onnxruntime-web (WebAssembly, SIMD, threads
// where the page is cross-origin isolated). Written by `rcr-deploy export --format web`; every
// file it loads lies beside it, so nothing is fetched from anywhere else.
//
//   import { createSegmenter, composite } from "./rcrnet-web.mjs";
//   const segmenter = await createSegmenter();                 // rcrnet.onnx + its manifest, beside this file
//   const result = await segmenter.segment(video, { stream: true }); // the previous mask feeds the prior channel
//   composite(canvas, result, "blur");                         // or "#00B140", or an image
//
// Pre- and post-processing follow the model's manifest (rcrnet.onnx.json): see rcrnet-image.mjs.

import * as ort from "./ort/ort.wasm.min.mjs";
import { letterbox, letterboxPrior, normalize, personProbability, unletterbox } from "./rcrnet-image.mjs";

export { ort };

/** Person where the probability is above this (the manifest's output.postprocess). */
export const THRESHOLD = 0.5;
const here = (name) => new URL(name, import.meta.url).href;

async function fetchOk(url, what) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status} fetching the ${what}; serve the whole exported folder`);
  return response;
}

async function sha256Hex(bytes) {
  const digest = await crypto.subtle.digest("SHA-256", bytes);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

/** Refuse a manifest whose preprocessing this module does not implement. */
function checkManifest(manifest, url) {
  const input = manifest.input ?? {};
  const wanted = [
    [manifest.format, "rcr-deploy-manifest", "format"],
    [input.layout, "NCHW", "input.layout"],
    [input.resize?.interpolation, "INTER_CUBIC", "input.resize.interpolation"],
    [input.prior_resize?.interpolation ?? "INTER_LINEAR", "INTER_LINEAR", "input.prior_resize.interpolation"],
    [manifest.output?.classes?.includes("person"), true, "output.classes has 'person'"],
  ];
  for (const [got, want, field] of wanted) {
    if (got !== want) throw new Error(`${url}: ${field} is ${got}, this page implements ${want}; re-export with rcr-deploy export --format web`);
  }
}

/**
 * Load the model and its manifest and start an onnxruntime-web session.
 * Options: model (URL of the .onnx; default: rcrnet.onnx beside this module), manifest (default:
 * model + ".json"), threads (WebAssembly threads; more than 1 needs a cross-origin isolated page),
 * executionProviders (default ["wasm"]).
 * The model's sha256 is checked against its manifest where the page can hash (a secure context).
 */
export async function createSegmenter({ model = here("rcrnet.onnx"), manifest, threads, executionProviders = ["wasm"] } = {}) {
  ort.env.wasm.wasmPaths = here("ort/");
  if (threads) ort.env.wasm.numThreads = threads;
  const manifestUrl = manifest ?? `${model}.json`;
  const info = await (await fetchOk(manifestUrl, "model's manifest")).json();
  checkManifest(info, manifestUrl);
  const bytes = new Uint8Array(await (await fetchOk(model, "model")).arrayBuffer());
  const expected = info.artifact?.sha256;
  if (expected && globalThis.crypto?.subtle) {
    const actual = await sha256Hex(bytes);
    if (actual !== expected) throw new Error(`${model}: sha256 ${actual} is not the manifest's ${expected}; re-export the folder`);
  } else if (expected) {
    console.warn(`${model}: not a secure context, so its sha256 cannot be checked against the manifest`);
  }
  const session = await ort.InferenceSession.create(bytes, { executionProviders, graphOptimizationLevel: "all" });
  return new Segmenter(session, info);
}

/** Any image source (ImageData, image, bitmap, video, canvas) as RGBA ImageData, transparency over grey. */
export function toImageData(source, pad = 128) {
  if (source instanceof ImageData) return source;
  const width = source.videoWidth ?? source.naturalWidth ?? source.width;
  const height = source.videoHeight ?? source.naturalHeight ?? source.height;
  const canvas = new OffscreenCanvas(width, height);
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.fillStyle = `rgb(${pad}, ${pad}, ${pad})`; // the manifest composites transparent pixels over grey
  ctx.fillRect(0, 0, width, height);
  ctx.drawImage(source, 0, 0, width, height);
  return ctx.getImageData(0, 0, width, height);
}

export class Segmenter {
  constructor(session, manifest) {
    this.session = session;
    this.manifest = manifest;
    const input = manifest.input;
    this.size = input.size[0];
    this.channels = input.shape[1];
    this.previous = null; // the last frame's mask, the next frame's prior (stream mode)
  }

  /** Forget the previous frame (a new video or camera starts without a prior). */
  reset() {
    this.previous = null;
  }

  /** One model run on a ready input (1 x C x size x size float32); returns the logits. */
  async run(x) {
    const { input, output } = this.manifest;
    const tensor = new ort.Tensor("float32", x, [1, this.channels, this.size, this.size]);
    const result = await this.session.run({ [input.name]: tensor });
    return result[output.name].data;
  }

  /**
   * Segment one frame. With `stream: true` the previous call's mask feeds the prior channel, as
   * `rcr-deploy infer` does on video; a still image (the default) gets a zero prior.
   * Returns { width, height, frame (ImageData), prob (Float32Array), mask (Uint8Array of 0/1), ms }.
   */
  async segment(source, { stream = false } = {}) {
    const { input, output } = this.manifest;
    const t0 = performance.now();
    const frame = toImageData(source, input.pad_value);
    const { width, height } = frame;
    const { rgb, box } = letterbox(frame.data, width, height, this.size, input.pad_value);
    const sameSize = this.previous && this.previous.length === width * height;
    const prior = stream && this.channels === 4 && sameSize ? letterboxPrior(this.previous, box) : null;
    const x = normalize(rgb, this.size, input.mean, input.std, prior, this.channels);
    const t1 = performance.now();
    const logits = await this.run(x);
    const t2 = performance.now();
    const prob = unletterbox(personProbability(logits, output.classes, this.size), box);
    const mask = new Uint8Array(prob.length);
    for (let i = 0; i < prob.length; i++) mask[i] = prob[i] > THRESHOLD ? 1 : 0;
    this.previous = stream ? mask : null;
    const t3 = performance.now();
    return { width, height, frame, prob, mask, ms: { preprocess: t1 - t0, model: t2 - t1, postprocess: t3 - t2 } };
  }

  release() {
    return this.session.release();
  }
}

/**
 * Draw a segmented frame onto `canvas` over a new background: "blur" (the frame blurred, as
 * `rcr-deploy infer --background blur`), a CSS colour such as "#00B140", or any drawable image
 * (stretched to the frame). `feather` softens the mask's edge (Gaussian sigma in pixels).
 */
export function composite(canvas, result, background = "blur", { feather = 0 } = {}) {
  const { width, height, frame, mask } = result;
  canvas.width = width;
  canvas.height = height;
  const ctx = canvas.getContext("2d");
  const layer = new OffscreenCanvas(width, height);
  const lctx = layer.getContext("2d");
  if (background === "blur") {
    lctx.putImageData(frame, 0, 0);
    ctx.drawImage(layer, 0, 0); // under the blur, so that its soft border shows the frame, not black
    ctx.filter = `blur(${0.02 * Math.max(width, height)}px)`;
    ctx.drawImage(layer, 0, 0);
    ctx.filter = "none";
  } else if (typeof background === "string") {
    ctx.fillStyle = background;
    ctx.fillRect(0, 0, width, height);
  } else {
    ctx.drawImage(background, 0, 0, width, height);
  }
  const person = new ImageData(new Uint8ClampedArray(frame.data), width, height);
  for (let i = 0; i < mask.length; i++) person.data[i * 4 + 3] = mask[i] * 255;
  lctx.putImageData(person, 0, 0);
  if (feather > 0) ctx.filter = `blur(${feather}px)`;
  ctx.drawImage(layer, 0, 0);
  ctx.filter = "none";
}
