package org.autoglm.engine;

import static org.junit.Assert.assertEquals;

import java.util.Random;
import org.junit.Test;

/** The mixed-radix FFT against a direct DFT, at Whisper's 400 and at awkward lengths. */
public class FftTest {
  @Test
  public void matchesDirectDft() {
    for (int n : new int[] {1, 2, 7, 12, 400, 441}) {
      Random rng = new Random(n);
      double[] re = new double[n];
      double[] im = new double[n];
      for (int i = 0; i < n; i++) {
        re[i] = rng.nextGaussian();
        im[i] = rng.nextGaussian();
      }
      double[] wantRe = new double[n];
      double[] wantIm = new double[n];
      for (int k = 0; k < n; k++) {
        for (int j = 0; j < n; j++) {
          double a = -2 * Math.PI * ((long) j * k % n) / n;
          wantRe[k] += re[j] * Math.cos(a) - im[j] * Math.sin(a);
          wantIm[k] += re[j] * Math.sin(a) + im[j] * Math.cos(a);
        }
      }
      new Fft(n).transform(re, im);
      for (int k = 0; k < n; k++) {
        assertEquals("n=" + n + " re[" + k + "]", wantRe[k], re[k], 1e-9);
        assertEquals("n=" + n + " im[" + k + "]", wantIm[k], im[k], 1e-9);
      }
    }
  }
}
