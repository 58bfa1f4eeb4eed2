package org.autoglm.engine;

/**
 * Mixed-radix complex FFT for any length (Whisper's n_fft = 400 = 2^4 * 5^2 is not a power of two):
 * recursive decimation in time by the smallest prime factor, twiddles from one table.
 */
public final class Fft {
  private final int n;
  private final double[] cos;
  private final double[] sin;

  public Fft(int n) {
    if (n < 1) {
      throw new IllegalArgumentException("FFT length must be positive, got " + n);
    }
    this.n = n;
    cos = new double[n];
    sin = new double[n];
    for (int j = 0; j < n; j++) {
      double a = -2.0 * Math.PI * j / n;
      cos[j] = Math.cos(a);
      sin[j] = Math.sin(a);
    }
  }

  /** Forward transform in place: X[k] = sum_j x[j] e^{-2 pi i jk/n}. */
  public void transform(double[] re, double[] im) {
    if (re.length != n || im.length != n) {
      throw new IllegalArgumentException("expected arrays of length " + n);
    }
    double[] r = re.clone();
    double[] i = im.clone();
    rec(r, i, 0, 1, n, re, im, 0);
  }

  // Transforms x[offset + k*stride], k < len, into out[outOff .. outOff+len).
  private void rec(
      double[] xr, double[] xi, int offset, int stride, int len, double[] or, double[] oi, int outOff) {
    if (len == 1) {
      or[outOff] = xr[offset];
      oi[outOff] = xi[offset];
      return;
    }
    int p = smallestFactor(len);
    int m = len / p;
    for (int r = 0; r < p; r++) { // sub-transform r lands in out[outOff + r*m ..]
      rec(xr, xi, offset + r * stride, stride * p, m, or, oi, outOff + r * m);
    }
    double[] sr = new double[p];
    double[] si = new double[p];
    int tw = n / len; // W_len^j = W_n^(j * n/len)
    for (int k = 0; k < m; k++) {
      for (int r = 0; r < p; r++) {
        sr[r] = or[outOff + r * m + k];
        si[r] = oi[outOff + r * m + k];
      }
      for (int q = 0; q < p; q++) {
        int kk = k + q * m;
        double accR = 0;
        double accI = 0;
        for (int r = 0; r < p; r++) {
          int idx = (int) (((long) r * kk * tw) % n);
          double c = cos[idx];
          double s = sin[idx];
          accR += sr[r] * c - si[r] * s;
          accI += sr[r] * s + si[r] * c;
        }
        or[outOff + kk] = accR;
        oi[outOff + kk] = accI;
      }
    }
  }

  private static int smallestFactor(int v) {
    for (int f = 2; (long) f * f <= v; f++) {
      if (v % f == 0) {
        return f;
      }
    }
    return v;
  }
}
