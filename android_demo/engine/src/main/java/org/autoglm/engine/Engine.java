package org.autoglm.engine;

/**
 * The four components of a bundle, as the Python runtime's Backend protocol has them
 * (runtime/autoglm_runtime/backends/__init__.py). ExecuTorchProgramEngine implements it over
 * model.pte; tests implement it with a replay of a golden trace.
 */
public interface Engine {
  /** pixel_values [patches, patch_dim] to image embeddings [image_tokens, hidden]. */
  Tensor visionEncoder(Tensor pixelValues);

  /** input_features [1, mel_bins, frames] to audio embeddings [audio_tokens, hidden]. */
  Tensor audioEncoder(Tensor inputFeatures);

  /** token ids [S] to embeddings [1, S, hidden]. */
  Tensor tokenEmbedding(long[] tokenIds);

  /**
   * Runs S tokens through the decoder, writing KV-cache slots cachePosition[0..S).
   *
   * @param embeds [1, S, hidden]
   * @param positionIds [3][S] M-RoPE positions
   * @return logits [1, S, vocab]
   */
  Tensor textDecoder(Tensor embeds, long[] cachePosition, long[][] positionIds);

  /** Clears the KV cache before a new prompt. */
  void reset();
}
