package org.autoglm.engine;

/** Greedy (temperature 0) or temperature + nucleus (top-p) sampling (runtime sampling.py). */
public final class SamplingConfig {
  public final float temperature;
  public final float topP;
  public final long seed;

  public SamplingConfig(float temperature, float topP, long seed) {
    if (!(temperature >= 0)) {
      throw new EngineException("temperature must be >= 0, got " + temperature);
    }
    if (!(topP > 0 && topP <= 1)) {
      throw new EngineException("top_p must be in (0, 1], got " + topP);
    }
    this.temperature = temperature;
    this.topP = topP;
    this.seed = seed;
  }

  public static SamplingConfig greedy() {
    return new SamplingConfig(0f, 1f, 0);
  }
}
