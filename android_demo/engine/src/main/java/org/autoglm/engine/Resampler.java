package org.autoglm.engine;

/**
 * Polyphase windowed-sinc resampling (Kaiser beta 5, scipy.signal.resample_poly's default filter),
 * ported from runtime preprocess/audio.py resample: output length ceil(n * up / down), no delay.
 */
public final class Resampler {
  private Resampler() {}

  public static float[] resample(float[] x, int origRate, int targetRate) {
    int g = gcd(origRate, targetRate);
    int up = targetRate / g;
    int down = origRate / g;
    if (up == down) {
      return x.clone();
    }
    int maxRate = Math.max(up, down);
    int half = 10 * maxRate;
    int len = 2 * half + 1;
    double[] h = new double[len];
    double sum = 0;
    double i0Beta = besselI0(5.0);
    for (int j = 0; j < len; j++) {
      int n = j - half;
      double t = (double) n / maxRate;
      double sinc = n == 0 ? 1.0 : Math.sin(Math.PI * t) / (Math.PI * t);
      double ratio = 2.0 * j / (len - 1) - 1.0;
      double kaiser = besselI0(5.0 * Math.sqrt(Math.max(0.0, 1.0 - ratio * ratio))) / i0Beta;
      h[j] = sinc * kaiser;
      sum += h[j];
    }
    int taps = (len + up - 1) / up;
    double[][] bank = new double[up][taps]; // phase p uses h[p], h[p+up], ...
    for (int j = 0; j < len; j++) {
      bank[j % up][j / up] = h[j] * up / sum; // unity DC gain after zero-stuffing by up
    }
    int nOut = (int) ((x.length * (long) up + down - 1) / down);
    float[] y = new float[nOut];
    for (int o = 0; o < nOut; o++) {
      long t = (long) o * down + half;
      int phase = (int) (t % up);
      long base = t / up;
      double[] b = bank[phase];
      double acc = 0;
      for (int j = 0; j < taps; j++) {
        long k = base - j;
        if (k >= 0 && k < x.length) {
          acc += x[(int) k] * b[j];
        }
      }
      y[o] = (float) acc;
    }
    return y;
  }

  /** Modified Bessel function of the first kind, order 0, by its power series (beta <= 5 here). */
  static double besselI0(double x) {
    double term = 1;
    double sum = 1;
    double q = x * x / 4;
    for (int k = 1; k < 200; k++) {
      term *= q / ((double) k * k);
      sum += term;
      if (term < sum * 1e-17) {
        break;
      }
    }
    return sum;
  }

  private static int gcd(int a, int b) {
    return b == 0 ? a : gcd(b, a % b);
  }
}
