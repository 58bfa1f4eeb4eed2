package org.autoglm.engine;

/** The manifest's runtime.audio: Whisper log-mel parameters (preprocess/audio.py AudioSpec). */
public final class AudioSpec {
  public final int samplingRate;
  public final int numMelBins;
  public final int nFft;
  public final int hopLength;
  public final int numFrames;

  public AudioSpec(int samplingRate, int numMelBins, int nFft, int hopLength, int numFrames) {
    if (samplingRate <= 0 || numMelBins <= 0 || nFft <= 0 || hopLength <= 0 || numFrames <= 0) {
      throw new EngineException("audio parameters in manifest.json must be positive");
    }
    this.samplingRate = samplingRate;
    this.numMelBins = numMelBins;
    this.nFft = nFft;
    this.hopLength = hopLength;
    this.numFrames = numFrames;
  }

  /** Waveform length (at samplingRate) the log-mel pads or trims to. */
  public int numSamples() {
    return numFrames * hopLength;
  }
}
