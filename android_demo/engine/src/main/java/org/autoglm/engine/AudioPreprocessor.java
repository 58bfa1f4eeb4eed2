package org.autoglm.engine;

/**
 * PCM audio to the audio tower's input_features [1, mel_bins, frames] (runtime
 * preprocess/audio.py preprocess_audio): resample to the manifest's rate, then Whisper log-mel.
 */
public final class AudioPreprocessor {
  public static final int MIN_RATE = 8000;
  public static final int MAX_RATE = 192000;

  private final AudioSpec spec;
  private final LogMel logMel;

  public AudioPreprocessor(AudioSpec spec) {
    this.spec = spec;
    this.logMel = new LogMel(spec);
  }

  /** 16-bit PCM (what AudioRecord gives), interleaved channels, averaged to mono. */
  public Tensor preprocess(short[] pcm, int channels, int sampleRate) {
    if (channels < 1 || pcm.length % channels != 0) {
      throw new EngineException(pcm.length + " samples do not split into " + channels + " channels");
    }
    float[] mono = new float[pcm.length / channels];
    for (int i = 0; i < mono.length; i++) {
      float acc = 0;
      for (int c = 0; c < channels; c++) {
        acc += pcm[i * channels + c] / 32768f;
      }
      mono[i] = acc / channels;
    }
    return preprocess(mono, sampleRate);
  }

  /** Mono float samples in [-1, 1]. */
  public Tensor preprocess(float[] mono, int sampleRate) {
    if (mono.length == 0) {
      throw new EngineException("the recording contains no samples");
    }
    if (sampleRate < MIN_RATE || sampleRate > MAX_RATE) {
      throw new EngineException(
          "sample rate " + sampleRate + " Hz is outside the supported " + MIN_RATE + "-" + MAX_RATE
              + " Hz");
    }
    float[] x = sampleRate == spec.samplingRate ? mono : Resampler.resample(mono, sampleRate, spec.samplingRate);
    return Tensor.ofFloats(logMel.compute(x), 1, spec.numMelBins, spec.numFrames);
  }
}
