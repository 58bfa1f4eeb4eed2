package org.autoglm.engine;

/**
 * Pillow's Image.resize(size, BICUBIC) for 8-bit RGB, ported exactly (Pillow's libImaging/Resample.c):
 * a separable filter whose support grows with the downscale factor (antialiasing), fixed-point
 * coefficients with 22 fraction bits, a horizontal pass then a vertical pass, each rounded and
 * clipped to uint8. The runtime resizes with Pillow, so the same integers come out here.
 *
 * <p>Pillow up to 12.x always runs the horizontal pass first (its Resample.c). Pillow 13.0.0, which
 * the Python runtime here uses, runs the vertical pass first for some sizes (observed, e.g. 412x915
 * to 84x168; its rule is not mirrored here), which moves edge pixels by a few levels. Both orders
 * are implemented so the tests can show the arithmetic is otherwise exact.
 */
public final class BicubicResize {
  private static final int PRECISION_BITS = 32 - 8 - 2;
  private static final double SUPPORT = 2.0;

  private BicubicResize() {}

  /** Fixed-point taps of one output pixel: first input index, tap count, coefficients. */
  private static final class Taps {
    final int[] start;
    final int[] count;
    final int[][] coeffs;

    Taps(int n) {
      start = new int[n];
      count = new int[n];
      coeffs = new int[n][];
    }
  }

  private static double cubic(double x) {
    final double a = -0.5;
    if (x < 0.0) {
      x = -x;
    }
    if (x < 1.0) {
      return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
    }
    if (x < 2.0) {
      return (((x - 5) * x + 8) * x - 4) * a;
    }
    return 0.0;
  }

  private static Taps precompute(int inSize, int outSize) {
    double scale = (double) inSize / outSize;
    double filterScale = Math.max(scale, 1.0);
    double support = SUPPORT * filterScale;
    Taps taps = new Taps(outSize);
    for (int xx = 0; xx < outSize; xx++) {
      double center = (xx + 0.5) * scale;
      double ss = 1.0 / filterScale;
      int xmin = Math.max((int) (center - support + 0.5), 0);
      int xmax = Math.min((int) (center + support + 0.5), inSize) - xmin;
      double[] k = new double[xmax];
      double ww = 0.0;
      for (int x = 0; x < xmax; x++) {
        k[x] = cubic((x + xmin - center + 0.5) * ss);
        ww += k[x];
      }
      int[] fixed = new int[xmax];
      for (int x = 0; x < xmax; x++) {
        double w = ww != 0.0 ? k[x] / ww : k[x];
        fixed[x] = (int) (w < 0 ? -0.5 + w * (1 << PRECISION_BITS) : 0.5 + w * (1 << PRECISION_BITS));
      }
      taps.start[xx] = xmin;
      taps.count[xx] = xmax;
      taps.coeffs[xx] = fixed;
    }
    return taps;
  }

  private static int clip8(int v) {
    if (v >= (1 << PRECISION_BITS << 8)) {
      return 255;
    }
    if (v <= 0) {
      return 0;
    }
    return v >> PRECISION_BITS;
  }

  /**
   * @param rgb interleaved RGB bytes as ints 0..255, [height][width][3] row-major
   * @return the resized image in the same layout
   */
  public static int[] resize(int[] rgb, int width, int height, int outWidth, int outHeight) {
    return resize(rgb, width, height, outWidth, outHeight, false);
  }

  /** As {@link #resize(int[], int, int, int, int)}, choosing which pass runs first. */
  public static int[] resize(
      int[] rgb, int width, int height, int outWidth, int outHeight, boolean verticalFirst) {
    if (verticalFirst) {
      int[] tall = vertical(rgb, width, height, outHeight);
      return horizontal(tall, width, outHeight, outWidth);
    }
    return vertical(horizontal(rgb, width, height, outWidth), outWidth, height, outHeight);
  }

  private static int[] horizontal(int[] cur, int width, int height, int outWidth) {
    if (outWidth != width) {
      Taps t = precompute(width, outWidth);
      int[] out = new int[outWidth * height * 3];
      for (int y = 0; y < height; y++) {
        int row = y * width * 3;
        for (int xx = 0; xx < outWidth; xx++) {
          int[] k = t.coeffs[xx];
          int s0 = 1 << (PRECISION_BITS - 1);
          int s1 = s0;
          int s2 = s0;
          for (int x = 0; x < t.count[xx]; x++) {
            int p = row + (x + t.start[xx]) * 3;
            s0 += cur[p] * k[x];
            s1 += cur[p + 1] * k[x];
            s2 += cur[p + 2] * k[x];
          }
          int o = (y * outWidth + xx) * 3;
          out[o] = clip8(s0);
          out[o + 1] = clip8(s1);
          out[o + 2] = clip8(s2);
        }
      }
      return out;
    }
    return cur;
  }

  private static int[] vertical(int[] cur, int curW, int height, int outHeight) {
    if (outHeight != height) {
      Taps t = precompute(height, outHeight);
      int[] out = new int[curW * outHeight * 3];
      for (int yy = 0; yy < outHeight; yy++) {
        int[] k = t.coeffs[yy];
        for (int x = 0; x < curW; x++) {
          int s0 = 1 << (PRECISION_BITS - 1);
          int s1 = s0;
          int s2 = s0;
          for (int y = 0; y < t.count[yy]; y++) {
            int p = ((y + t.start[yy]) * curW + x) * 3;
            s0 += cur[p] * k[y];
            s1 += cur[p + 1] * k[y];
            s2 += cur[p + 2] * k[y];
          }
          int o = (yy * curW + x) * 3;
          out[o] = clip8(s0);
          out[o + 1] = clip8(s1);
          out[o + 2] = clip8(s2);
        }
      }
      return out;
    }
    return cur;
  }
}
