package org.autoglm.engine;

/**
 * ARGB pixels to the vision tower's pixel_values [patches, 3*t*p*p] (runtime preprocess/image.py):
 * transparency composited onto white, Pillow-exact bicubic stretch to the export size, rescale,
 * normalise with the manifest's mean/std in float32, then Glm4vImageProcessor's patch order (rows
 * grouped by merge window; columns channel, time, py, px; a still image repeated in time).
 */
public final class ImagePreprocessor {
  private final ImageSpec spec;
  private final boolean verticalFirst;

  public ImagePreprocessor(ImageSpec spec) {
    this(spec, false);
  }

  /** verticalFirst: run the resize's vertical pass first (see BicubicResize). */
  public ImagePreprocessor(ImageSpec spec, boolean verticalFirst) {
    this.spec = spec;
    this.verticalFirst = verticalFirst;
  }

  /** argb: width*height pixels, row-major, 0xAARRGGBB (Android's Bitmap.getPixels layout). */
  public Tensor preprocess(int[] argb, int width, int height) {
    if (width <= 0 || height <= 0 || argb.length != width * height) {
      throw new EngineException(
          "image of " + width + "x" + height + " needs " + (width * height) + " pixels, got "
              + argb.length);
    }
    int[] rgb = toRgb(argb);
    if (width != spec.width || height != spec.height) {
      rgb = BicubicResize.resize(rgb, width, height, spec.width, spec.height, verticalFirst);
    }
    return patchify(normalize(rgb));
  }

  /** Opaque pixels as they are; translucent ones over white (transformers' convert_to_rgb). */
  static int[] toRgb(int[] argb) {
    int[] rgb = new int[argb.length * 3];
    for (int i = 0; i < argb.length; i++) {
      int p = argb[i];
      int a = (p >>> 24) & 0xff;
      int r = (p >> 16) & 0xff;
      int g = (p >> 8) & 0xff;
      int b = p & 0xff;
      if (a != 255) {
        // Pillow's alpha_composite rounds in fixed point; this may differ by 1 on translucent pixels.
        r = (r * a + 255 * (255 - a) + 127) / 255;
        g = (g * a + 255 * (255 - a) + 127) / 255;
        b = (b * a + 255 * (255 - a) + 127) / 255;
      }
      rgb[i * 3] = r;
      rgb[i * 3 + 1] = g;
      rgb[i * 3 + 2] = b;
    }
    return rgb;
  }

  private float[] normalize(int[] rgb) {
    float[] x = new float[rgb.length];
    for (int i = 0; i < rgb.length; i++) {
      int c = i % 3;
      // Same dtype steps as the runtime: rescale in float64, cast, normalise in float32.
      float v = (float) (rgb[i] * spec.rescaleFactor);
      x[i] = (v - spec.mean[c]) / spec.std[c];
    }
    return x;
  }

  private Tensor patchify(float[] hwc) {
    int p = spec.patchSize;
    int m = spec.mergeSize;
    int t = spec.temporalPatchSize;
    int gh = spec.height / p;
    int gw = spec.width / p;
    int dim = spec.patchDim();
    float[] out = new float[spec.numPatches() * dim];
    int row = 0;
    for (int bh = 0; bh < gh / m; bh++) {
      for (int bw = 0; bw < gw / m; bw++) {
        for (int mh = 0; mh < m; mh++) {
          for (int mw = 0; mw < m; mw++) {
            int py0 = (bh * m + mh) * p;
            int px0 = (bw * m + mw) * p;
            int base = row * dim;
            for (int c = 0; c < 3; c++) {
              for (int tt = 0; tt < t; tt++) {
                for (int y = 0; y < p; y++) {
                  for (int x = 0; x < p; x++) {
                    int col = ((c * t + tt) * p + y) * p + x;
                    out[base + col] = hwc[((py0 + y) * spec.width + px0 + x) * 3 + c];
                  }
                }
              }
            }
            row++;
          }
        }
      }
    }
    return Tensor.ofFloats(out, spec.numPatches(), dim);
  }
}
