// Pre- and post-processing of an rcr-deploy artifact, as its manifest describes them, in plain
// JavaScript (no DOM, no onnxruntime): the letterbox, OpenCV's INTER_CUBIC resize of uint8 and
// INTER_LINEAR resize of float32 (the arithmetic of cv2.resize, so that the browser feeds the
// model what `rcr-deploy infer` feeds it), normalisation, the prior channel, the softmax and the
// mapping back onto the frame. Images are RGBA bytes, as a canvas's ImageData holds them.

const f32 = Math.fround;

/** OpenCV's cvRound: round half to even. */
function roundEven(v) {
  const r = Math.round(v);
  return r - v === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** OpenCV's interpolateCubic (A = -0.75), in float32 as OpenCV computes it. */
function cubicWeights(x) {
  const A = -0.75;
  const x1 = f32(x + 1);
  const c0 = f32(f32(f32(f32(f32(f32(A * x1) - 5 * A) * x1) + 8 * A) * x1) - 4 * A);
  const c1 = f32(f32(f32(f32(f32((A + 2) * x) - (A + 3)) * x) * x) + 1);
  const y = f32(1 - x);
  const c2 = f32(f32(f32(f32(f32((A + 2) * y) - (A + 3)) * y) * y) + 1);
  const c3 = f32(f32(f32(1 - c0) - c1) - c2);
  return [c0, c1, c2, c3];
}

/** Source index and fraction of each destination pixel, as cv2.resize computes them. */
function sourcePositions(src, dst) {
  const scale = 1 / (dst / src);
  const pos = new Int32Array(dst);
  const frac = new Float32Array(dst);
  for (let d = 0; d < dst; d++) {
    const f = f32((d + 0.5) * scale - 0.5);
    pos[d] = Math.floor(f);
    frac[d] = f32(f - pos[d]);
  }
  return { pos, frac };
}

const clamp = (v, lo, hi) => (v < lo ? lo : v > hi ? hi : v);

/**
 * The frame letterboxed onto a grey square and resized with cv2.INTER_CUBIC to size x size.
 * `rgba`: Uint8ClampedArray of width * height * 4. Returns { rgb: Uint8Array(size*size*3), box }.
 */
export function letterbox(rgba, width, height, size, padValue = 128) {
  const side = Math.max(width, height);
  const top = (side - height) >> 1;
  const left = (side - width) >> 1;
  const box = { width, height, side, top, left, size };
  // The square's pixel (sy, sx): the frame where it lies, the pad value around it.
  const sample = (sy, sx, c) => {
    const y = sy - top, x = sx - left;
    return y >= 0 && y < height && x >= 0 && x < width ? rgba[(y * width + x) * 4 + c] : padValue;
  };
  const xs = sourcePositions(side, size), ys = sourcePositions(side, size);
  // OpenCV 5 resizes uint8 with float weights (4.x used 11-bit fixed point: 95 % of values equal, the rest 1 off).
  const alpha = new Float32Array(size * 4), beta = new Float32Array(size * 4);
  for (let d = 0; d < size; d++) {
    alpha.set(cubicWeights(xs.frac[d]), d * 4);
    beta.set(cubicWeights(ys.frac[d]), d * 4);
  }
  // Horizontal pass, one source row at a time, kept for the (at most 4) output rows that need it.
  const rows = new Map();
  const hrow = (sy) => {
    let row = rows.get(sy);
    if (row) return row;
    row = new Float64Array(size * 3);
    for (let d = 0; d < size; d++) {
      for (let c = 0; c < 3; c++) {
        let v = 0;
        for (let k = 0; k < 4; k++) v += sample(sy, clamp(xs.pos[d] - 1 + k, 0, side - 1), c) * alpha[d * 4 + k];
        row[d * 3 + c] = v;
      }
    }
    rows.set(sy, row);
    return row;
  };
  const rgb = new Uint8Array(size * size * 3);
  for (let dy = 0; dy < size; dy++) {
    const src = [0, 1, 2, 3].map((k) => hrow(clamp(ys.pos[dy] - 1 + k, 0, side - 1)));
    for (const key of rows.keys()) if (key < ys.pos[dy] - 1) rows.delete(key);
    for (let i = 0; i < size * 3; i++) {
      let v = 0;
      for (let k = 0; k < 4; k++) v += src[k][i] * beta[dy * 4 + k];
      rgb[dy * size * 3 + i] = clamp(roundEven(v), 0, 255);
    }
  }
  return { rgb, box };
}

/**
 * cv2.resize(src, INTER_LINEAR) of a float32 single-channel image, restricted to the output
 * rows [y0, y0 + outH) and columns [x0, x0 + outW) of a dstW x dstH result.
 */
function resizeLinear(src, srcW, srcH, dstW, dstH, x0, y0, outW, outH) {
  const xs = sourcePositions(srcW, dstW), ys = sourcePositions(srcH, dstH);
  const taps = (p, i, n) => {
    let s = p.pos[i], f = p.frac[i];
    if (s < 0) (s = 0), (f = 0);
    if (s >= n - 1) (s = n - 1), (f = 0);
    return [s, Math.min(s + 1, n - 1), f32(1 - f), f];
  };
  const cols = Array.from({ length: outW }, (_, i) => taps(xs, x0 + i, srcW));
  const out = new Float32Array(outW * outH);
  for (let j = 0; j < outH; j++) {
    const [r0, r1, b0, b1] = taps(ys, y0 + j, srcH);
    for (let i = 0; i < outW; i++) {
      const [c0, c1, a0, a1] = cols[i];
      const h0 = f32(f32(src[r0 * srcW + c0] * a0) + f32(src[r0 * srcW + c1] * a1));
      const h1 = f32(f32(src[r1 * srcW + c0] * a0) + f32(src[r1 * srcW + c1] * a1));
      out[j * outW + i] = f32(f32(h0 * b0) + f32(h1 * b1));
    }
  }
  return out;
}

/** A frame-sized mask (0/1) letterboxed like the frame (padding 0) and resized with INTER_LINEAR. */
export function letterboxPrior(mask, box) {
  const square = new Float32Array(box.side * box.side);
  for (let y = 0; y < box.height; y++) {
    for (let x = 0; x < box.width; x++) square[(y + box.top) * box.side + x + box.left] = mask[y * box.width + x];
  }
  return resizeLinear(square, box.side, box.side, box.size, box.size, 0, 0, box.size, box.size);
}

/**
 * The model input, 1 x C x size x size float32: (rgb - mean) / std per channel, then the prior
 * channel (the letterboxed previous mask, or zeros) when the model has one.
 */
export function normalize(rgb, size, mean, std, prior = null, channels = 4) {
  const n = size * size;
  const x = new Float32Array(channels * n);
  for (let c = 0; c < 3; c++) {
    const m = f32(mean[c]), s = f32(1 / std[c]);
    for (let i = 0; i < n; i++) x[c * n + i] = f32(f32(rgb[i * 3 + c] - m) * s);
  }
  if (channels === 4 && prior) x.set(prior, 3 * n);
  return x;
}

/** Person probability (softmax over classes, class `person`) of N=1 logits C x size x size. */
export function personProbability(logits, classes, size) {
  const n = size * size, k = classes.length, person = classes.indexOf("person");
  const prob = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    let max = -Infinity, sum = 0;
    for (let c = 0; c < k; c++) max = Math.max(max, logits[c * n + i]);
    for (let c = 0; c < k; c++) sum += Math.exp(logits[c * n + i] - max);
    prob[i] = Math.exp(logits[person * n + i] - max) / sum;
  }
  return prob;
}

/** A size x size probability map back onto the frame: resized to side x side (INTER_LINEAR), cropped. */
export function unletterbox(prob, box) {
  return resizeLinear(prob, box.size, box.size, box.side, box.side, box.left, box.top, box.width, box.height);
}
