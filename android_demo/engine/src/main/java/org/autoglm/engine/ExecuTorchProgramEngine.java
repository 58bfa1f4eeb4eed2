package org.autoglm.engine;

import java.util.Arrays;
import java.util.List;

/**
 * {@link Engine} over the methods of an ExecuTorch bundle's model.pte, called exactly as the Python
 * runtime's ExecuTorchBackend calls them: token_embedding and text_decoder in chunks of at most
 * max_seq_len tokens (their exported dynamic bound), a one-token call to text_decoder_step when the
 * program has it (the same decoder at static shapes, sharing the KV cache), reset_cache before each
 * prompt.
 */
public final class ExecuTorchProgramEngine implements Engine {
  public static final String VISION_ENCODER = ModelNames.METHOD_VISION_ENCODER;
  public static final String AUDIO_ENCODER = ModelNames.METHOD_AUDIO_ENCODER;
  public static final String TOKEN_EMBEDDING = ModelNames.METHOD_TOKEN_EMBEDDING;
  public static final String TEXT_DECODER = ModelNames.METHOD_TEXT_DECODER;
  public static final String TEXT_DECODER_STEP = ModelNames.METHOD_TEXT_DECODER_STEP;
  public static final String RESET_CACHE = ModelNames.METHOD_RESET_CACHE;

  private final MethodRunner runner;
  private final BundleManifest manifest;

  public ExecuTorchProgramEngine(MethodRunner runner, BundleManifest manifest) {
    if (!"executorch".equals(manifest.target)) {
      throw new EngineException(
          manifest.root + ": a " + manifest.target + " bundle, not an ExecuTorch one (dist/android)");
    }
    // ExecuTorch takes inputs by position: the exported order must be the one this engine passes.
    expect(manifest, VISION_ENCODER, ModelNames.INPUT_PIXEL_VALUES);
    expect(manifest, TOKEN_EMBEDDING, ModelNames.INPUT_TOKEN_IDS);
    expect(manifest, TEXT_DECODER, ModelNames.INPUT_INPUTS_EMBEDS, ModelNames.INPUT_CACHE_POSITION,
        ModelNames.INPUT_POSITION_IDS);
    if (manifest.methods.containsKey(AUDIO_ENCODER)) {
      expect(manifest, AUDIO_ENCODER, ModelNames.INPUT_INPUT_FEATURES);
    }
    if (manifest.methods.containsKey(TEXT_DECODER_STEP)) {
      expect(manifest, TEXT_DECODER_STEP, ModelNames.INPUT_INPUTS_EMBEDS, ModelNames.INPUT_CACHE_POSITION,
          ModelNames.INPUT_POSITION_IDS);
    }
    this.runner = runner;
    this.manifest = manifest;
  }

  private static void expect(BundleManifest manifest, String method, String... inputs) {
    List<String> got = manifest.method(method).inputs; // fails with the list of methods there are
    if (!got.equals(Arrays.asList(inputs))) {
      throw new EngineException(
          manifest.root + ": " + method + " takes " + got + ", this app passes " + Arrays.asList(inputs)
              + "; re-export the bundle or update the app");
    }
  }

  @Override
  public Tensor visionEncoder(Tensor pixelValues) {
    return runner.execute(VISION_ENCODER, pixelValues)[0];
  }

  @Override
  public Tensor audioEncoder(Tensor inputFeatures) {
    if (!manifest.methods.containsKey(AUDIO_ENCODER)) {
      throw new EngineException("this model was exported without an audio encoder");
    }
    return runner.execute(AUDIO_ENCODER, inputFeatures)[0];
  }

  @Override
  public Tensor tokenEmbedding(long[] ids) {
    int step = manifest.maxSeqLen;
    int hidden = manifest.hiddenSize;
    float[] out = new float[ids.length * hidden];
    for (int i = 0; i < ids.length; i += step) {
      long[] chunk = Arrays.copyOfRange(ids, i, Math.min(i + step, ids.length));
      Tensor e = runner.execute(TOKEN_EMBEDDING, Tensor.ofLongs(chunk, 1, chunk.length))[0];
      System.arraycopy(e.floats(), 0, out, i * hidden, chunk.length * hidden);
    }
    return Tensor.ofFloats(out, 1, ids.length, hidden);
  }

  @Override
  public Tensor textDecoder(Tensor embeds, long[] cachePosition, long[][] positionIds) {
    int n = (int) embeds.dim(1);
    int hidden = (int) embeds.dim(2);
    int step = manifest.maxSeqLen;
    int vocab = manifest.vocabSize;
    float[] logits = new float[n * vocab];
    for (int i = 0; i < n; i += step) {
      int end = Math.min(i + step, n);
      int s = end - i;
      Tensor e = Tensor.ofFloats(Arrays.copyOfRange(embeds.floats(), i * hidden, end * hidden), 1, s, hidden);
      Tensor c = Tensor.ofLongs(Arrays.copyOfRange(cachePosition, i, end), s);
      Tensor p = Tensor.ofLongs(Positions.flatten(positionIds, i, end), 3, s);
      String method =
          s == 1 && manifest.methods.containsKey(TEXT_DECODER_STEP) ? TEXT_DECODER_STEP : TEXT_DECODER;
      Tensor out = runner.execute(method, e, c, p)[0];
      System.arraycopy(out.floats(), 0, logits, i * vocab, s * vocab);
    }
    return Tensor.ofFloats(logits, 1, n, vocab);
  }

  @Override
  public void reset() {
    // Without reset_cache the decoder's mask still hides stale slots; the runtime does the same.
    if (manifest.methods.containsKey(RESET_CACHE)) {
      runner.execute(RESET_CACHE);
    }
  }
}
