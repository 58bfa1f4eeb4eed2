package org.autoglm.engine;

/**
 * Whisper log-mel features (runtime preprocess/audio.py log_mel, itself WhisperFeatureExtractor's
 * numpy path): pad or trim to the fixed window, centred frames with reflect padding, periodic
 * Hann, power spectrum, Slaney mel filters up to 8 kHz, log10, 80 dB range, (x + 4) / 4.
 */
public final class LogMel {
  private final AudioSpec spec;
  private final double[][] filters; // [mel][freq]
  private final double[] window;
  private final Fft fft;

  public LogMel(AudioSpec spec) {
    this.spec = spec;
    this.filters = melFilters(spec.numMelBins, spec.nFft, spec.samplingRate);
    this.window = new double[spec.nFft];
    for (int i = 0; i < spec.nFft; i++) {
      window[i] = 0.5 - 0.5 * Math.cos(2.0 * Math.PI * i / spec.nFft);
    }
    this.fft = new Fft(spec.nFft);
  }

  /** Mono samples at spec.samplingRate to [numMelBins * numFrames] (row-major mel x frame). */
  public float[] compute(float[] audio) {
    int nSamples = spec.numSamples();
    int nFft = spec.nFft;
    int pad = nFft / 2;
    double[] x = new double[nSamples + 2 * pad];
    for (int i = 0; i < nSamples; i++) {
      x[pad + i] = i < audio.length ? audio[i] : 0.0;
    }
    for (int i = 1; i <= pad; i++) { // numpy "reflect": the edge sample is not repeated
      x[pad - i] = x[pad + i];
      x[pad + nSamples - 1 + i] = x[pad + nSamples - 1 - i];
    }
    int frames = spec.numFrames; // Whisper drops the last of numFrames + 1 STFT frames
    int bins = nFft / 2 + 1;
    int mels = spec.numMelBins;
    double[][] logspec = new double[mels][frames];
    double[] re = new double[nFft];
    double[] im = new double[nFft];
    double[] power = new double[bins];
    float max = Float.NEGATIVE_INFINITY;
    for (int f = 0; f < frames; f++) {
      int start = f * spec.hopLength;
      for (int i = 0; i < nFft; i++) {
        re[i] = x[start + i] * window[i];
        im[i] = 0;
      }
      fft.transform(re, im);
      for (int k = 0; k < bins; k++) {
        // HF stores the STFT as complex64 before squaring in float64: keep that rounding.
        double r = (float) re[k];
        double c = (float) im[k];
        power[k] = r * r + c * c;
      }
      for (int m = 0; m < mels; m++) {
        double acc = 0;
        double[] w = filters[m];
        for (int k = 0; k < bins; k++) {
          acc += w[k] * power[k];
        }
        float v = (float) Math.log10(Math.max(1e-10, acc));
        logspec[m][f] = v;
        max = Math.max(max, v);
      }
    }
    float floor = max - 8.0f;
    float[] out = new float[mels * frames];
    for (int m = 0; m < mels; m++) {
      for (int f = 0; f < frames; f++) {
        float v = Math.max((float) logspec[m][f], floor);
        out[m * frames + f] = (v + 4.0f) / 4.0f;
      }
    }
    return out;
  }

  private static double hzToMel(double f) {
    return f >= 1000.0 ? 15.0 + Math.log(Math.max(f, 1e-10) / 1000.0) * (27.0 / Math.log(6.4)) : 3.0 * f / 200.0;
  }

  private static double melToHz(double m) {
    return m >= 15.0 ? 1000.0 * Math.exp(Math.log(6.4) / 27.0 * (m - 15.0)) : 200.0 * m / 3.0;
  }

  /** Slaney-normalised triangular filters [mel][n_fft/2 + 1], 0 to 8 kHz (Whisper's choice). */
  static double[][] melFilters(int mels, int nFft, int rate) {
    int bins = nFft / 2 + 1;
    double lo = hzToMel(0.0);
    double hi = hzToMel(8000.0);
    double[] hz = new double[mels + 2];
    for (int i = 0; i < mels + 2; i++) {
      hz[i] = melToHz(lo + (hi - lo) * i / (mels + 1));
    }
    double[][] fb = new double[mels][bins];
    for (int k = 0; k < bins; k++) {
      double freq = (double) (rate / 2) * k / (bins - 1);
      for (int m = 0; m < mels; m++) {
        double down = (freq - hz[m]) / (hz[m + 1] - hz[m]);
        double up = (hz[m + 2] - freq) / (hz[m + 2] - hz[m + 1]);
        double v = Math.max(0.0, Math.min(down, up));
        fb[m][k] = v * 2.0 / (hz[m + 2] - hz[m]);
      }
    }
    return fb;
  }
}
