package org.autoglm.engine;

/** What one request produced, with the timings the app shows. */
public final class GenerationResult {
  public final String text;
  public final int[] tokenIds;
  public final int promptTokens;
  /** "eos" or "max_new_tokens". */
  public final String stopReason;
  public final double preprocessMs;
  public final double prefillMs;
  public final double decodeMs;

  GenerationResult(
      String text,
      int[] tokenIds,
      int promptTokens,
      String stopReason,
      double preprocessMs,
      double prefillMs,
      double decodeMs) {
    this.text = text;
    this.tokenIds = tokenIds;
    this.promptTokens = promptTokens;
    this.stopReason = stopReason;
    this.preprocessMs = preprocessMs;
    this.prefillMs = prefillMs;
    this.decodeMs = decodeMs;
  }

  /** Decode speed: tokens after the first (which comes from prefill) per decode second. */
  public double decodeTokensPerSecond() {
    int steps = Math.max(tokenIds.length - 1, 1);
    return decodeMs > 0 ? steps * 1000.0 / decodeMs : 0;
  }

  public double prefillTokensPerSecond() {
    return prefillMs > 0 ? promptTokens * 1000.0 / prefillMs : 0;
  }
}
