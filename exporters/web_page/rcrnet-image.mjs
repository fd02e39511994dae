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

/** The 4 cubic taps (clamped source indices) and float32 weights of each destination pixel. */
function cubicTaps(src, dst) {
  const { pos, frac } = sourcePositions(src, dst);
  const index = new Int32Array(dst * 4), weight = new Float32Array(dst * 4);
  for (let d = 0; d < dst; d++) {
    weight.set(cubicWeights(frac[d]), d * 4);
    for (let k = 0; k < 4; k++) index[d * 4 + k] = clamp(pos[d] - 1 + k, 0, src - 1);
  }
  return { index, weight };
}

/**
 * The frame letterboxed onto a grey square and resized with cv2.INTER_CUBIC to size x size.
 * `rgba`: Uint8ClampedArray of width * height * 4. Returns { rgb: Uint8Array(size*size*3), box }.
 * OpenCV 5 resizes uint8 with float weights (4.x used 11-bit fixed point: 95 % of values equal,
 * the rest one level off), rounding half to even at the end.
 */
export function letterbox(rgba, width, height, size, padValue = 128) {
  const side = Math.max(width, height);
  const top = (side - height) >> 1;
  const left = (side - width) >> 1;
  const box = { width, height, side, top, left, size };
  const xs = cubicTaps(side, size), ys = cubicTaps(side, size);
  // Each tap's frame column (x4, for RGBA), or -1 where it falls on the padding.
  const column = new Int32Array(size * 4);
  for (let i = 0; i < size * 4; i++) {
    const x = xs.index[i] - left;
    column[i] = x >= 0 && x < width ? x * 4 : -1;
  }
  const padRow = new Float64Array(size * 3);
  for (let d = 0; d < size; d++) {
    let w = 0;
    for (let k = 0; k < 4; k++) w += xs.weight[d * 4 + k];
    padRow.fill(padValue * w, d * 3, d * 3 + 3);
  }
  // Horizontal pass of one square row (memoised: neighbouring output rows share source rows).
  const rows = new Map();
  const hrow = (sy) => {
    const y = sy - top;
    if (y < 0 || y >= height) return padRow;
    let row = rows.get(y);
    if (row) return row;
    row = new Float64Array(size * 3);
    const base = y * width * 4;
    for (let d = 0; d < size; d++) {
      let r = 0, g = 0, b = 0;
      for (let k = 0; k < 4; k++) {
        const c = column[d * 4 + k], w = xs.weight[d * 4 + k];
        if (c < 0) {
          r += padValue * w;
          g += padValue * w;
          b += padValue * w;
        } else {
          r += rgba[base + c] * w;
          g += rgba[base + c + 1] * w;
          b += rgba[base + c + 2] * w;
        }
      }
      row[d * 3] = r;
      row[d * 3 + 1] = g;
      row[d * 3 + 2] = b;
    }
    if (rows.size > 8) rows.delete(rows.keys().next().value);
    rows.set(y, row);
    return row;
  };
  const rgb = new Uint8Array(size * size * 3);
  for (let dy = 0; dy < size; dy++) {
    const s0 = hrow(ys.index[dy * 4]), s1 = hrow(ys.index[dy * 4 + 1]);
    const s2 = hrow(ys.index[dy * 4 + 2]), s3 = hrow(ys.index[dy * 4 + 3]);
    const b0 = ys.weight[dy * 4], b1 = ys.weight[dy * 4 + 1], b2 = ys.weight[dy * 4 + 2], b3 = ys.weight[dy * 4 + 3];
    const out = dy * size * 3;
    for (let i = 0; i < size * 3; i++) {
      const v = roundEven(s0[i] * b0 + s1[i] * b1 + s2[i] * b2 + s3[i] * b3);
      rgb[out + i] = v < 0 ? 0 : v > 255 ? 255 : v;
    }
  }
  return { rgb, box };
}

/** The 2 linear taps (clamped as cv2.INTER_LINEAR clamps) and float32 weights of each destination pixel. */
function linearTaps(src, dst, from, count) {
  const { pos, frac } = sourcePositions(src, dst);
  const i0 = new Int32Array(count), i1 = new Int32Array(count), w0 = new Float32Array(count), w1 = new Float32Array(count);
  for (let j = 0; j < count; j++) {
    let s = pos[from + j], f = frac[from + j];
    if (s < 0) (s = 0), (f = 0);
    if (s >= src - 1) (s = src - 1), (f = 0);
    i0[j] = s;
    i1[j] = Math.min(s + 1, src - 1);
    w0[j] = f32(1 - f);
    w1[j] = f;
  }
  return { i0, i1, w0, w1 };
}

/**
 * cv2.resize(src, INTER_LINEAR) of a float32 single-channel image, restricted to the output
 * rows [y0, y0 + outH) and columns [x0, x0 + outW) of a dstW x dstH result.
 */
function resizeLinear(src, srcW, srcH, dstW, dstH, x0, y0, outW, outH) {
  const xs = linearTaps(srcW, dstW, x0, outW), ys = linearTaps(srcH, dstH, y0, outH);
  const out = new Float32Array(outW * outH);
  for (let j = 0; j < outH; j++) {
    const r0 = ys.i0[j] * srcW, r1 = ys.i1[j] * srcW, b0 = ys.w0[j], b1 = ys.w1[j];
    for (let i = 0; i < outW; i++) {
      const c0 = xs.i0[i], c1 = xs.i1[i], a0 = xs.w0[i], a1 = xs.w1[i];
      const h0 = f32(f32(src[r0 + c0] * a0) + f32(src[r0 + c1] * a1));
      const h1 = f32(f32(src[r1 + c0] * a0) + f32(src[r1 + c1] * a1));
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
